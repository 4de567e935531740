// sysv.mutex: a lock shared between processes, awaited without blocking (sysv::basic_mutex).
module;

// Only the Asio headers this unit uses (see sysv.async.cppm).
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/compose.hpp>
#include <boost/asio/execution_context.hpp>

#include <sys/sem.h>

#include <cstddef>
#include <type_traits>
#include <utility>

export module sysv.mutex;

export import sysv.async;

export namespace sysv {

/// A lock shared between processes: one semaphore of a set, 1 when free, taken and given back
/// with SEM_UNDO, so the kernel releases it when a holder dies (kill -9 included). Data it
/// protects may then be half-written: record what you need in the shared data to repair it.
///
///     auto guard = co_await m.async_lock(boost::asio::use_awaitable);
///     // ... critical section; released when guard goes out of scope, also on exceptions and
///     // when the coroutine is destroyed.
template <class Executor = boost::asio::any_io_executor>
class basic_mutex {
public:
    using executor_type = Executor;
    template <class OtherExecutor>
    struct rebind_executor {
        using other = basic_mutex<OtherExecutor>;
    };

    /// Ownership of a lock: releases it on destruction. Move-only; the mutex must outlive it.
    class guard {
    public:
        guard() noexcept = default;
        explicit guard(basic_mutex* m) noexcept : mutex_(m) {}
        guard(guard&& other) noexcept : mutex_(std::exchange(other.mutex_, nullptr)) {}
        guard& operator=(guard&& other) noexcept {
            if (this != &other) {
                unlock();
                mutex_ = std::exchange(other.mutex_, nullptr);
            }
            return *this;
        }
        ~guard() { unlock(); }

        bool owns_lock() const noexcept { return mutex_ != nullptr; }
        explicit operator bool() const noexcept { return owns_lock(); }
        /// Releases now (idempotent). Errors (the set was removed) are ignored.
        void unlock() noexcept {
            if (basic_mutex* m = std::exchange(mutex_, nullptr)) {
                error_code ignored;
                m->unlock(ignored);
            }
        }
        /// Gives up ownership without unlocking (the caller unlocks with mutex::unlock()).
        basic_mutex* release() noexcept { return std::exchange(mutex_, nullptr); }

    private:
        basic_mutex* mutex_ = nullptr;
    };

    /// A mutex on semaphore `index` of `set` (its value must be 1 when free, 0 when held).
    basic_mutex(const executor_type& ex, semaphore_set set, std::size_t index = 0,
                const backoff& b = {})
        : semaphores_(ex, std::move(set), b), index_(index) {}
    template <class ExecutionContext>
        requires std::is_convertible_v<ExecutionContext&, boost::asio::execution_context&>
    basic_mutex(ExecutionContext& context, semaphore_set set, std::size_t index = 0,
                const backoff& b = {})
        : basic_mutex(context.get_executor(), std::move(set), index, b) {}

    /// A mutex in its own one-semaphore set at `k` (created free, or opened race-free and
    /// verified like semaphore_set::open_or_create; blocks at most options' timeout while
    /// another process is creating it).
    static basic_mutex open_or_create(const executor_type& ex, key k, mode_t mode = 0600,
                                      const open_options& options = {}) {
        return basic_mutex(ex, semaphore_set::open_or_create(k, {1}, mode, options), 0);
    }

    executor_type get_executor() const noexcept { return semaphores_.get_executor(); }
    basic_async_semaphore_set<Executor>& semaphores() noexcept { return semaphores_; }
    std::size_t index() const noexcept { return index_; }

    /// Waits for the lock. Completion signature `void(error_code, guard)`; the guard owns the
    /// lock when the error_code is clear. Same executor, allocator and cancellation rules as
    /// basic_async_semaphore_set::async_apply (cancellation: terminal, partial, total; a lock
    /// taken when cancellation arrives is delivered, and released if the guard is dropped).
    template <boost::asio::completion_token_for<void(error_code, guard)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto async_lock(Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return boost::asio::async_compose<Token, void(error_code, guard)>(
            lock_op{this}, token, semaphores_.get_executor());
    }

    /// Takes the lock if it is free now.
    bool try_lock(error_code& ec) { return semaphores_.try_apply(lock_operation(), ec); }
    bool try_lock() { return semaphores_.try_apply(lock_operation()); }

    /// Releases a lock taken with try_lock() or released from a guard. Must be called by the
    /// process holding the lock, exactly once per lock.
    void unlock(error_code& ec) { semaphores_.try_apply(op::release(index_).undo(), ec); }
    void unlock() { semaphores_.try_apply(op::release(index_).undo()); }

    /// Whether the lock is held by anyone right now (a snapshot).
    bool is_locked() const { return semaphores_.value(index_) == 0; }

private:
    operation lock_operation() const noexcept { return op::acquire(index_).undo(); }

    struct lock_op {
        basic_mutex* self;
        bool started = false;
        template <class Self>
        void operator()(Self& handler, error_code ec = {}) {
            if (!started) {
                started = true;
                self->semaphores_.async_apply(self->lock_operation(), std::move(handler));
                return;
            }
            handler.complete(ec, ec ? guard() : guard(self));
        }
    };

    basic_async_semaphore_set<Executor> semaphores_;
    std::size_t index_;
};

using mutex = basic_mutex<>;

} // namespace sysv
