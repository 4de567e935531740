// sysv.mutex: locks shared between processes, awaited without blocking: sysv::basic_mutex, and
// sysv::basic_robust_mutex, which also tells the next owner when a holder died holding it.
module;

// Only the Asio headers this unit uses (see sysv.async.cppm).
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/compose.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/post.hpp>

#include <sys/sem.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <optional>
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
            detail::with_cancellation(lock_op{this}), token, semaphores_.get_executor());
    }

    /// async_lock that gives up after `timeout`: completes with asio::error::timed_out and an
    /// empty guard, having taken nothing (a server answers "busy" instead of queueing forever
    /// behind a holder that is stopped). The deadline is kept by the poll service's timer, so
    /// the completion comes when it passes, not at the next backoff tick.
    template <boost::asio::completion_token_for<void(error_code, guard)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto async_lock_for(std::chrono::steady_clock::duration timeout,
                        Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return boost::asio::async_compose<Token, void(error_code, guard)>(
            detail::with_cancellation(lock_op{this, false, timeout}), token,
            semaphores_.get_executor());
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
        std::optional<std::chrono::steady_clock::duration> timeout{};
        template <class Self>
        void operator()(Self& handler, error_code ec = {}) {
            if (!started) {
                started = true;
                if (timeout)
                    self->semaphores_.async_apply_for(self->lock_operation(), *timeout,
                                                      std::move(handler));
                else
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

/// A lock shared between processes that tells the next owner when a holder died holding it, so
/// the data it protects can be repaired (like a pthread robust mutex's EOWNERDEAD).
///
/// Two semaphores of a set: `index` is the lock (1 when free, taken with SEM_UNDO: the kernel
/// releases a dead holder's lock) and `index + 1` counts locks taken and not yet released (no
/// SEM_UNDO: a death leaves it raised). A lock is one semop {take the lock, count 0 -> 1}; when
/// that cannot proceed, the wait takes the lock whatever the count, and a count above 1 once
/// the lock is held means a previous holder died: async_lock then completes with
/// errc::owner_dead and a guard that owns the lock. Until a holder calls
/// guard::mark_consistent(), every later owner is told the same (a repair cut short by another
/// death is not taken for a finished one). Costs: an uncontended lock or unlock is one semop, as
/// for basic_mutex; a lock that had to wait reads the count once more (one semctl).
///
///     auto [ec, lock] = co_await m.async_lock(asio::as_tuple(asio::use_awaitable));
///     if (ec == sysv::errc::owner_dead) { repair(); lock.mark_consistent(); }
///     else if (ec) throw sysv::system_error(ec);
template <class Executor = boost::asio::any_io_executor>
class basic_robust_mutex {
public:
    using executor_type = Executor;
    template <class OtherExecutor>
    struct rebind_executor {
        using other = basic_robust_mutex<OtherExecutor>;
    };

    /// Ownership of a lock: releases it on destruction. Move-only; the mutex must outlive it.
    class guard {
    public:
        guard() noexcept = default;
        guard(basic_robust_mutex* m, bool owner_died) noexcept
            : mutex_(m), owner_died_(owner_died) {}
        guard(guard&& other) noexcept
            : mutex_(std::exchange(other.mutex_, nullptr)), owner_died_(other.owner_died_) {}
        guard& operator=(guard&& other) noexcept {
            if (this != &other) {
                unlock();
                mutex_ = std::exchange(other.mutex_, nullptr);
                owner_died_ = other.owner_died_;
            }
            return *this;
        }
        ~guard() { unlock(); }

        bool owns_lock() const noexcept { return mutex_ != nullptr; }
        explicit operator bool() const noexcept { return owns_lock(); }
        /// Whether the lock was taken from a holder that died, and not yet marked consistent.
        bool owner_died() const noexcept { return owner_died_; }

        /// Declares the protected data repaired: later owners are no longer told of the
        /// death. Requires owning the lock.
        void mark_consistent(error_code& ec) {
            ec.clear();
            if (mutex_ == nullptr) {
                ec = make_error_code(errc::not_open);
                return;
            }
            mutex_->reset_count(ec);
            if (!ec)
                owner_died_ = false;
        }
        void mark_consistent() {
            error_code ec;
            mark_consistent(ec);
            if (ec)
                detail::throw_error(ec, "robust mutex mark_consistent",
                                    mutex_ ? mutex_->semaphores().description() : "no lock");
        }

        /// Releases now (idempotent). Errors (the set was removed) are ignored.
        void unlock() noexcept {
            if (basic_robust_mutex* m = std::exchange(mutex_, nullptr)) {
                error_code ignored;
                m->unlock(ignored);
            }
        }
        /// Gives up ownership without unlocking (the caller unlocks with robust_mutex::unlock()).
        basic_robust_mutex* release() noexcept { return std::exchange(mutex_, nullptr); }

    private:
        basic_robust_mutex* mutex_ = nullptr;
        bool owner_died_ = false;
    };

    /// A robust mutex on semaphores `index` (the lock: 1 when free) and `index + 1` (the
    /// count: 0 when free) of `set`.
    basic_robust_mutex(const executor_type& ex, semaphore_set set, std::size_t index = 0,
                       const backoff& b = {})
        : semaphores_(ex, std::move(set), b), index_(index) {}
    template <class ExecutionContext>
        requires std::is_convertible_v<ExecutionContext&, boost::asio::execution_context&>
    basic_robust_mutex(ExecutionContext& context, semaphore_set set, std::size_t index = 0,
                       const backoff& b = {})
        : basic_robust_mutex(context.get_executor(), std::move(set), index, b) {}

    /// A robust mutex in its own two-semaphore set at `k` (created free, or opened race-free and
    /// verified like semaphore_set::open_or_create).
    static basic_robust_mutex open_or_create(const executor_type& ex, key k, mode_t mode = 0600,
                                             const open_options& options = {}) {
        return basic_robust_mutex(ex, semaphore_set::open_or_create(k, {1, 0}, mode, options), 0);
    }

    executor_type get_executor() const noexcept { return semaphores_.get_executor(); }
    basic_async_semaphore_set<Executor>& semaphores() noexcept { return semaphores_; }
    std::size_t index() const noexcept { return index_; }

    /// Waits for the lock. Completion signature `void(error_code, guard)`: the guard owns the
    /// lock when the error_code is clear and when it is errc::owner_dead (a holder died holding
    /// it: repair, then guard::mark_consistent()). Executor, allocator and cancellation as for
    /// basic_mutex::async_lock.
    template <boost::asio::completion_token_for<void(error_code, guard)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto async_lock(Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return boost::asio::async_compose<Token, void(error_code, guard)>(
            detail::with_cancellation(lock_op{this}), token, semaphores_.get_executor());
    }

    /// async_lock that gives up after `timeout` (asio::error::timed_out, an empty guard,
    /// nothing taken), as basic_mutex::async_lock_for.
    template <boost::asio::completion_token_for<void(error_code, guard)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto async_lock_for(std::chrono::steady_clock::duration timeout,
                        Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return boost::asio::async_compose<Token, void(error_code, guard)>(
            detail::with_cancellation(lock_op{this, lock_op::start, timeout}), token,
            semaphores_.get_executor());
    }

    /// Takes the lock if it is free now: a guard that owns it (guard::owner_died() tells
    /// whether a holder died holding it; the error_code overload also sets errc::owner_dead),
    /// or nothing.
    std::optional<guard> try_lock(error_code& ec) {
        ec.clear();
        if (semaphores_.try_apply(clean_lock(), ec))
            return guard(this, false);
        if (ec || !semaphores_.try_apply(any_lock(), ec))
            return std::nullopt;
        if (owner_died_check(ec))
            ec = make_error_code(errc::owner_dead);
        else if (ec)
            return unlock_after_error(ec);
        return guard(this, ec == errc::owner_dead);
    }
    std::optional<guard> try_lock() {
        error_code ec;
        auto result = try_lock(ec);
        if (ec && ec != errc::owner_dead)
            detail::throw_error(ec, "robust mutex try_lock", semaphores_.description());
        return result;
    }

    /// Releases a lock released from its guard. Must be called by the process holding the lock,
    /// exactly once per lock.
    void unlock(error_code& ec) { semaphores_.try_apply(unlock_group(), ec); }
    void unlock() { semaphores_.try_apply(unlock_group()); }

    /// Whether the lock is held by anyone right now (a snapshot).
    bool is_locked() const { return semaphores_.value(index_) == 0; }

private:
    std::array<operation, 3> clean_lock() const noexcept {
        return {op::acquire(index_).undo(), op::wait_zero(index_ + 1), op::release(index_ + 1)};
    }
    std::array<operation, 2> any_lock() const noexcept {
        return {op::acquire(index_).undo(), op::release(index_ + 1)};
    }
    std::array<operation, 2> unlock_group() const noexcept {
        return {op::release(index_).undo(), op::acquire(index_ + 1)};
    }

    /// With the lock held (taken by any_lock): whether holders died before (the count is
    /// above this lock's own 1).
    bool owner_died_check(error_code& ec) const {
        const int count = semaphores_.value(index_ + 1, ec);
        return !ec && count > 1;
    }
    /// With the lock held: the count back to this lock's own 1.
    void reset_count(error_code& ec) {
        const int count = semaphores_.value(index_ + 1, ec);
        if (!ec && count > 1)
            semaphores_.try_apply(op::acquire(index_ + 1, count - 1), ec);
    }
    std::nullopt_t unlock_after_error(const error_code&) {
        error_code ignored;
        unlock(ignored);
        return std::nullopt;
    }

    struct lock_op {
        basic_robust_mutex* self;
        enum { start, taken_clean, waiting } state = start;
        std::optional<std::chrono::steady_clock::duration> timeout{};
        template <class Self>
        void operator()(Self& handler, error_code ec = {}) {
            auto& m = *self;
            switch (state) {
            case start: // the clean lock now (one semop that never blocks), or wait for the lock
                if (m.semaphores_.try_apply(m.clean_lock(), ec)) {
                    state = taken_clean; // completed from the executor, never inline
                    return boost::asio::post(m.get_executor(), std::move(handler));
                }
                if (ec) // reported through the same wait, so it too completes on the executor
                    return m.semaphores_.async_apply(m.clean_lock(), std::move(handler));
                state = waiting; // held, or a holder died: wait for the lock itself
                if (timeout)
                    return m.semaphores_.async_apply_for(m.any_lock(), *timeout,
                                                         std::move(handler));
                return m.semaphores_.async_apply(m.any_lock(), std::move(handler));
            case taken_clean:
                return handler.complete(error_code{}, guard(self, false));
            case waiting:
                break;
            }
            if (ec)
                return handler.complete(ec, guard());
            const bool died = m.owner_died_check(ec);
            if (ec) {
                m.unlock_after_error(ec);
                return handler.complete(ec, guard());
            }
            handler.complete(died ? make_error_code(errc::owner_dead) : error_code{},
                             guard(self, died));
        }
    };

    basic_async_semaphore_set<Executor> semaphores_;
    std::size_t index_;
};

using robust_mutex = basic_robust_mutex<>;

} // namespace sysv
