// sysv: System V IPC for Boost.Asio. The one module users import:
//
//     #include <boost/asio.hpp>   // std, Boost and POSIX headers first...
//     import sysv;                // ...then the module
//
// It re-exports sysv.core (keys, shared memory, semaphore sets, errors) and adds the asynchronous
// layer, which needs Boost.Asio in this unit's global module fragment:
//  * sysv::backoff and sysv::backoff_schedule: how a wait polls (plain value code);
//  * sysv::basic_async_semaphore_set: async_acquire, async_wait_zero, async_apply;
//  * sysv::basic_mutex: a crash-safe (SEM_UNDO) lock with async_lock returning a scoped guard;
//  * sysv::async_open_or_create: the race-free open of a semaphore set, without blocking.
//
// How a wait works: the initiating function tries semop(IPC_NOWAIT) once (the fast path). If the
// semaphores are not available, the wait joins its execution context's poll service, which
// retries it first by yielding (posting a pass to the executor) and then on a steady_timer whose
// period grows from backoff::first_sleep to backoff::max_sleep. Waits on one execution context
// share the passes and the timer: a pass makes one GETALL per set with several due waiters,
// tries semop only for waiters the snapshot says can proceed, and waiters at the same period
// converge on the same ticks. No thread ever blocks in the kernel.
module;

#include <boost/asio.hpp>

#include <sys/sem.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <unistd.h>
#include <utility>
#include <vector>

export module sysv;

export import sysv.core;
export import sysv.ring;

export namespace sysv {

// ---------------------------------------------------------------------------------------------
// Backoff: the polling schedule of a wait (sans-I/O)
// ---------------------------------------------------------------------------------------------

/// How an asynchronous wait polls while the semaphores are not available. After the first
/// attempt (made by the initiating function), the wait retries `immediate_yields` times by
/// yielding (a pass posted to its executor; a pass that freed nobody also calls sched_yield so
/// a peer process on the same CPU can run), then sleeps on a timer: first `first_sleep`, each
/// sleep `growth` times the previous one, never more than `max_sleep`. With `jitter` j > 0
/// each sleep is multiplied by a random factor in [1 - j, 1 + j] (spreads the polls of many
/// processes).
///
/// The defaults come from benchmarks/ (README "Benchmarks"; 2-CPU VM, `./dev bench`):
///  * immediate_yields 64: a yield costs ~0.8 us (one semop, one executor round trip), so the
///    yield phase lasts ~50-70 us, longer than a running peer needs to answer (ping-pong
///    between two event loops: ~1.5 us round trip on two CPUs, 0.03x a blocked thread's ~46 us;
///    ~7 us on one CPU, where sched_yield hands the CPU to the peer). 16 yields were too few
///    when both processes share a CPU (a ~200 us round trip before sched_yield).
///  * first_sleep 20 us: shorter sleeps cost a timer round trip (~16 us here) for nothing;
///    doubling from 20 us reaches the cap after ~8 sleeps.
///  * max_sleep 3 ms: sets both the worst extra latency of a wake-up after long idle (p99 about
///    max_sleep) and the idle cost: one tick costs ~22 us of CPU (timer, epoll, semop), so one
///    idle wait costs ~0.7% of a core at 3 ms (2.1% at 1 ms), and 10,000 idle waits on one set
///    ~4-5% (one GETALL per tick plus a check per waiter). 1,000 waits on 1,000 different sets
///    cost a semop per set per tick (~9% at 3 ms): group waits on few sets when you can.
struct backoff {
    unsigned immediate_yields = 64;
    std::chrono::microseconds first_sleep{20};
    double growth = 2.0;
    std::chrono::microseconds max_sleep{3000};
    double jitter = 0.0;

    /// errc::invalid_argument unless first_sleep > 0, max_sleep >= first_sleep, growth >= 1 and
    /// 0 <= jitter < 1.
    error_code validate() const noexcept {
        if (first_sleep.count() <= 0 || max_sleep < first_sleep || !(growth >= 1.0) ||
            !(jitter >= 0.0 && jitter < 1.0))
            return make_error_code(errc::invalid_argument);
        return {};
    }

    /// Tuned for latency: short sleeps capped at 200 us (wake-up p99 ~0.2-0.4 ms), at ~10% of a
    /// core per idle wait: for a few latency-critical waits, not for thousands.
    static backoff latency_tuned() noexcept {
        return backoff{64, std::chrono::microseconds(20), 1.5, std::chrono::microseconds(200), 0.0};
    }
    /// Tuned for CPU: long sleeps capped at 10 ms (~0.3% of a core per idle wait, wake-up after
    /// idle up to ~10 ms); keeps 16 yields so an active ping-pong still completes without
    /// sleeping.
    static backoff cpu_tuned() noexcept {
        return backoff{16, std::chrono::microseconds(200), 2.0, std::chrono::microseconds(10000),
                       0.0};
    }

    friend bool operator==(const backoff&, const backoff&) = default;
};

/// The sequence of pauses of one wait under a backoff: plain value code, no clock, no I/O.
class backoff_schedule {
public:
    explicit backoff_schedule(const backoff& b = {}) noexcept : backoff_(b) {}

    /// The pause before the next attempt: zero means "yield to the executor, then retry";
    /// otherwise sleep that long. `random01` in [0, 1) drives the jitter (ignored without it).
    std::chrono::nanoseconds next(double random01 = 0.5) noexcept {
        if (yields_done_ < backoff_.immediate_yields) {
            ++yields_done_;
            return std::chrono::nanoseconds(0);
        }
        const std::chrono::nanoseconds cap = backoff_.max_sleep;
        if (current_.count() == 0)
            current_ = backoff_.first_sleep;
        const auto sleep = current_;
        const double grown = static_cast<double>(current_.count()) * backoff_.growth;
        current_ = grown >= static_cast<double>(cap.count())
                       ? cap
                       : std::chrono::nanoseconds(static_cast<std::int64_t>(grown));
        if (backoff_.jitter <= 0.0)
            return sleep;
        const double factor = 1.0 - backoff_.jitter + 2.0 * backoff_.jitter * random01;
        return std::max(std::chrono::nanoseconds(1000),
                        std::chrono::nanoseconds(static_cast<std::int64_t>(
                            static_cast<double>(sleep.count()) * factor)));
    }

    /// True while the schedule is still in its yield phase.
    bool yielding() const noexcept { return yields_done_ < backoff_.immediate_yields; }
    const backoff& settings() const noexcept { return backoff_; }

private:
    backoff backoff_;
    unsigned yields_done_ = 0;
    std::chrono::nanoseconds current_{0};
};

} // namespace sysv

// ---------------------------------------------------------------------------------------------
// Internals: the per-execution-context poll service and the pending-wait operation.
// ---------------------------------------------------------------------------------------------
export namespace sysv::detail {

namespace asio = boost::asio;

/// An owned copy of an operation group (the caller's list may be a temporary; deferred
/// operations start later). Small groups are stored inline.
class operation_group {
public:
    operation_group() = default;
    explicit operation_group(operation_list ops) {
        if (ops.size() <= inline_.size()) {
            std::copy(ops.begin(), ops.end(), inline_.begin());
            size_ = ops.size();
        } else {
            heap_.assign(ops.begin(), ops.end());
            size_ = heap_.size();
        }
    }
    operation_list list() const noexcept {
        return std::span<const operation>(heap_.empty() ? inline_.data() : heap_.data(), size_);
    }
    bool releases() const noexcept;

private:
    std::array<operation, 4> inline_{
        operation(operation::kind::wait_zero, 0, 0), operation(operation::kind::wait_zero, 0, 0),
        operation(operation::kind::wait_zero, 0, 0), operation(operation::kind::wait_zero, 0, 0)};
    std::vector<operation> heap_;
    std::size_t size_ = 0;
};

/// Whether any operation gives units (a success may let this process's other waiters proceed).
inline bool releases(operation_list ops) noexcept {
    for (const operation& o : ops)
        if (o.type() == operation::kind::release)
            return true;
    return false;
}
inline bool operation_group::releases() const noexcept {
    return detail::releases(list());
}

/// Whether `ops` could be applied to a GETALL snapshot of the values right now (sans-I/O: the
/// decision a pass makes before spending a semop). Applies them to `values` if so.
bool apply_to_snapshot(std::span<int> values, std::span<const sembuf> ops) noexcept;

class poll_service;

/// A pending wait, as the poll service sees it. The typed part (handler, work) is wait_op.
/// Fields after `service-managed` are guarded by the service's mutex.
struct pending_wait {
    using finish_fn = void (*)(pending_wait*, error_code, bool post);
    using destroy_fn = void (*)(pending_wait*);

    pending_wait(int set, std::size_t set_size, std::uint64_t owner, operation_group group,
                 const backoff& b, finish_fn finish, destroy_fn destroy)
        : set_id(set), set_size(set_size), owner(owner), ops(group.list(), IPC_NOWAIT), schedule(b),
          finish(finish), destroy(destroy) {}

    int set_id;
    std::size_t set_size;
    std::uint64_t owner;
    semop_buffer ops;
    backoff_schedule schedule;
    finish_fn finish;
    destroy_fn destroy;

    // service-managed
    pending_wait* prev = nullptr;
    pending_wait* next = nullptr;
    bool linked = false;
    bool done = false;
    bool cancel_requested = false;
    bool sleeping = false;
    std::optional<std::chrono::steady_clock::time_point> deadline; ///< async_apply_for
    std::chrono::steady_clock::time_point due{};
    std::chrono::nanoseconds interval{0};
};

/// One per execution context: owns every pending wait of that context, the yield passes and the
/// one timer they share.
class poll_service final : public asio::execution_context::service {
public:
    inline static asio::execution_context::id id;

    explicit poll_service(asio::execution_context& context)
        : asio::execution_context::service(context) {}
    ~poll_service() override = default;

    /// Takes a wait whose first attempt would have blocked; `ex` runs the passes (the first
    /// executor seen is kept for the context's passes and timer).
    void start(pending_wait* wait, const asio::any_io_executor& ex);
    /// Per-operation cancellation: completes the wait with operation_aborted if it is still
    /// pending (a wait already applied reports success: no unit is ever lost).
    void cancel(pending_wait* wait);
    /// Cancels every pending wait started by the object `owner`.
    void cancel_owner(std::uint64_t owner);
    /// This process changed set `set_id` (a release, a removal): poll its waiters now.
    void kick(int set_id);

    /// Number of waits currently pending (for tests and benchmarks).
    std::size_t pending() const;

    static std::uint64_t new_owner_id() noexcept {
        static std::atomic<std::uint64_t> next{1};
        return next.fetch_add(1, std::memory_order_relaxed);
    }

private:
    void shutdown() override;

    void link(pending_wait* w);
    void unlink(pending_wait* w);
    void post_pass_locked();
    void arm_timer_at_locked(std::optional<std::chrono::steady_clock::time_point> earliest);
    void run_pass();

    mutable std::mutex mutex_;
    pending_wait* head_ = nullptr;
    pending_wait* tail_ = nullptr;
    std::size_t count_ = 0;
    bool pass_posted_ = false;
    bool shut_down_ = false;
    std::optional<asio::any_io_executor> executor_;
    std::optional<asio::steady_timer> timer_;
    std::optional<std::chrono::steady_clock::time_point> timer_at_;
    std::minstd_rand random_{0x5eed};
    // Scratch space of run_pass, kept to avoid allocating on every pass.
    std::vector<pending_wait*> candidates_;
    std::vector<unsigned short> raw_;
    std::vector<int> values_;
};

/// The typed pending wait: the completion handler and the work that keeps its executor alive.
template <class Handler, class IoExecutor>
class wait_op final : public pending_wait {
    using handler_executor = std::decay_t<decltype(asio::prefer(
        asio::get_associated_executor(std::declval<Handler&>(), std::declval<IoExecutor>()),
        asio::execution::outstanding_work.tracked))>;
    using allocator_type = typename std::allocator_traits<
        asio::associated_allocator_t<Handler>>::template rebind_alloc<wait_op>;

public:
    /// Allocates with the handler's associated allocator.
    static wait_op* create(Handler&& handler, const IoExecutor& io_ex, int set,
                           std::size_t set_size, std::uint64_t owner, operation_group group,
                           const backoff& b) {
        allocator_type alloc(asio::get_associated_allocator(handler));
        wait_op* op = std::allocator_traits<allocator_type>::allocate(alloc, 1);
        try {
            std::allocator_traits<allocator_type>::construct(
                alloc, op, std::move(handler), io_ex, set, set_size, owner, std::move(group), b);
        } catch (...) {
            std::allocator_traits<allocator_type>::deallocate(alloc, op, 1);
            throw;
        }
        return op;
    }

    wait_op(Handler&& handler, const IoExecutor& io_ex, int set, std::size_t set_size,
            std::uint64_t owner, operation_group group, const backoff& b)
        : pending_wait(set, set_size, owner, std::move(group), b, &do_finish, &do_destroy),
          handler_(std::move(handler)),
          work_(asio::prefer(asio::get_associated_executor(handler_, io_ex),
                             asio::execution::outstanding_work.tracked)) {}

private:
    // Runs on the handler's executor: frees the operation, then calls the handler. Destroyed
    // without being called (context shut down), it frees the operation without calling.
    class completion {
    public:
        completion(wait_op* op, error_code ec) noexcept : op_(op), ec_(ec) {}
        completion(completion&& other) noexcept
            : op_(std::exchange(other.op_, nullptr)), ec_(other.ec_) {}
        completion& operator=(completion&&) = delete;
        ~completion() {
            if (op_)
                release(op_);
        }

        using allocator_type = asio::associated_allocator_t<Handler>;
        allocator_type get_allocator() const noexcept {
            return asio::get_associated_allocator(op_->handler_);
        }

        void operator()() {
            wait_op* op = std::exchange(op_, nullptr);
            auto slot = asio::get_associated_cancellation_slot(op->handler_);
            if (slot.is_connected())
                slot.clear();
            Handler handler(std::move(op->handler_));
            handler_executor work(std::move(op->work_));
            release(op);
            std::move(handler)(ec_);
        }

    private:
        wait_op* op_;
        error_code ec_;
    };

    static void release(wait_op* op) {
        allocator_type alloc(asio::get_associated_allocator(op->handler_));
        std::allocator_traits<allocator_type>::destroy(alloc, op);
        std::allocator_traits<allocator_type>::deallocate(alloc, op, 1);
    }

    static void do_finish(pending_wait* base, error_code ec, bool post) {
        auto* op = static_cast<wait_op*>(base);
        handler_executor ex = op->work_;
        if (post)
            asio::post(ex, completion(op, ec));
        else
            asio::dispatch(ex, completion(op, ec));
    }

    static void do_destroy(pending_wait* base) { release(static_cast<wait_op*>(base)); }

    Handler handler_;
    handler_executor work_;
};

/// Installed in the handler's cancellation slot while a wait is pending.
class cancel_handler {
public:
    cancel_handler(poll_service& service, pending_wait* wait) noexcept
        : service_(&service), wait_(wait) {}
    void operator()(asio::cancellation_type_t type) {
        if ((type & (asio::cancellation_type::terminal | asio::cancellation_type::partial |
                     asio::cancellation_type::total)) != asio::cancellation_type::none)
            service_->cancel(wait_);
    }

private:
    poll_service* service_;
    pending_wait* wait_;
};

} // namespace sysv::detail

export namespace sysv {

// ---------------------------------------------------------------------------------------------
// Asynchronous semaphore set
// ---------------------------------------------------------------------------------------------

/// A semaphore set with an executor: everything semaphore_set does, plus waits that are Asio
/// asynchronous operations and never block a thread.
///
/// Every async_* function:
///  * has the completion signature `void(boost::system::error_code)` and accepts any completion
///    token (use_awaitable, deferred, callbacks, use_future, as_tuple, awaitable operators);
///  * makes its first semop(IPC_NOWAIT) attempt in the initiating function, but never calls the
///    handler from there: the handler runs on its associated executor (by default this object's
///    executor), its memory comes from its associated allocator, and the work is tracked while
///    the wait is pending (io_context::run() does not return);
///  * supports per-operation cancellation of type terminal, partial and total through the
///    handler's associated cancellation slot: a cancelled wait has applied nothing and completes
///    with asio::error::operation_aborted; a wait whose semop already succeeded when the
///    cancellation arrives completes with success (units are never lost);
///  * completes with sysv::errc::removed, within one poll of the backoff (at most max_sleep),
///    when the set is removed by anyone while it waits.
/// Cancel every wait of this object with cancel() or close(). Waits time out by racing a timer
/// (awaitable operators `||`, or experimental::make_parallel_group).
///
/// Thread safety: as for Asio's I/O objects, one object must not be used from two threads at
/// once; waits of one execution context may complete on any of its threads (use a strand).
template <class Executor = boost::asio::any_io_executor>
class basic_async_semaphore_set : public semaphore_set {
public:
    using executor_type = Executor;
    template <class OtherExecutor>
    struct rebind_executor {
        using other = basic_async_semaphore_set<OtherExecutor>;
    };

    /// An object using `ex` for its waits, taking over `set`.
    explicit basic_async_semaphore_set(const executor_type& ex, semaphore_set set = {},
                                       const backoff& default_backoff = {})
        : semaphore_set(std::move(set)), executor_(ex), backoff_(default_backoff),
          owner_(detail::poll_service::new_owner_id()) {}

    template <class ExecutionContext>
        requires std::is_convertible_v<ExecutionContext&, boost::asio::execution_context&>
    explicit basic_async_semaphore_set(ExecutionContext& context, semaphore_set set = {},
                                       const backoff& default_backoff = {})
        : basic_async_semaphore_set(context.get_executor(), std::move(set), default_backoff) {}

    /// Pending waits of the moved-from object now belong to this one (cancel() reaches them).
    basic_async_semaphore_set(basic_async_semaphore_set&& other) noexcept
        : semaphore_set(std::move(other)), executor_(other.executor_), backoff_(other.backoff_),
          owner_(std::exchange(other.owner_, detail::poll_service::new_owner_id())),
          service_(other.service_) {}
    /// Conversion from an object with another executor type (e.g. as_default_on).
    template <class OtherExecutor>
        requires std::is_constructible_v<Executor, const OtherExecutor&> &&
                     (!std::is_same_v<OtherExecutor, Executor>)
    basic_async_semaphore_set(basic_async_semaphore_set<OtherExecutor>&& other) noexcept
        : semaphore_set(std::move(other)), executor_(other.executor_), backoff_(other.backoff_),
          owner_(std::exchange(other.owner_, detail::poll_service::new_owner_id())),
          service_(other.service_) {}
    basic_async_semaphore_set& operator=(basic_async_semaphore_set&& other) noexcept {
        if (this != &other) {
            cancel();
            semaphore_set::operator=(std::move(other));
            executor_ = other.executor_;
            backoff_ = other.backoff_;
            owner_ = std::exchange(other.owner_, detail::poll_service::new_owner_id());
            service_ = other.service_;
        }
        return *this;
    }
    /// Cancels pending waits (they complete with operation_aborted); the set stays.
    ~basic_async_semaphore_set() { cancel(); }

    executor_type get_executor() const noexcept { return executor_; }

    /// The backoff of waits started without one.
    const backoff& default_backoff() const noexcept { return backoff_; }
    void set_default_backoff(const backoff& b) noexcept { backoff_ = b; }

    /// Waits until all `ops` can be applied together, then applies them atomically.
    template <boost::asio::completion_token_for<void(error_code)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto async_apply(operation_list ops,
                     Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return async_apply(ops, backoff_, std::forward<Token>(token));
    }
    /// async_apply with a backoff for this wait only.
    template <boost::asio::completion_token_for<void(error_code)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto async_apply(operation_list ops, const backoff& b,
                     Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return boost::asio::async_initiate<Token, void(error_code)>(
            initiate_wait{this}, token, detail::operation_group(ops), b);
    }

    /// async_apply that gives up after `timeout`: completes with asio::error::timed_out, having
    /// applied nothing. The deadline is checked on the poll service's ticks, so the completion
    /// may come up to one backoff period (at most max_sleep) after it.
    template <boost::asio::completion_token_for<void(error_code)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto async_apply_for(operation_list ops, std::chrono::steady_clock::duration timeout,
                         Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return boost::asio::async_initiate<Token, void(error_code)>(
            initiate_wait{this}, token, detail::operation_group(ops), backoff_,
            std::optional<std::chrono::steady_clock::duration>(timeout));
    }

    /// P: waits until `n` units (1..32767) of semaphore `index` are available and takes them.
    template <boost::asio::completion_token_for<void(error_code)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto async_acquire(std::size_t index,
                       Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return async_apply(op::acquire(index), std::forward<Token>(token));
    }
    template <boost::asio::completion_token_for<void(error_code)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto async_acquire(std::size_t index, int n,
                       Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return async_apply(op::acquire(index, n), std::forward<Token>(token));
    }

    /// Waits until semaphore `index` is zero.
    template <boost::asio::completion_token_for<void(error_code)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto async_wait_zero(std::size_t index,
                         Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return async_apply(op::wait_zero(index), std::forward<Token>(token));
    }

    /// Applies `ops` now if possible (see semaphore_set::try_apply); a release wakes this
    /// process's waiters on the set at once instead of at their next poll.
    bool try_apply(operation_list ops, error_code& ec) {
        const bool applied = semaphore_set::try_apply(ops, ec);
        if (applied && detail::releases(ops))
            service().kick(id());
        return applied;
    }
    bool try_apply(operation_list ops) {
        const bool applied = semaphore_set::try_apply(ops);
        if (applied && detail::releases(ops))
            service().kick(id());
        return applied;
    }

    /// Removes the set (IPC_RMID); this process's waiters on it complete with errc::removed at
    /// once, other processes' at their next poll.
    void remove(error_code& ec) {
        const int old_id = id();
        semaphore_set::remove(ec);
        if (!ec)
            service().kick(old_id);
    }
    void remove() {
        const int old_id = id();
        semaphore_set::remove();
        service().kick(old_id);
    }

    /// Completes every pending wait of this object with operation_aborted.
    void cancel() {
        if (service_ != nullptr) // no wait was ever started otherwise
            service_->cancel_owner(owner_);
    }
    /// Cancels pending waits and gives up the handle (the kernel object stays).
    void close() {
        cancel();
        semaphore_set::operator=(semaphore_set());
    }

    /// Number of waits pending on this object's execution context (all objects).
    std::size_t pending_waits() const { return service().pending(); }

private:
    struct initiate_wait {
        basic_async_semaphore_set* self;
        using executor_type = Executor;
        executor_type get_executor() const noexcept { return self->executor_; }

        template <class Handler>
        void operator()(Handler&& handler, detail::operation_group group, const backoff& b,
                        std::optional<std::chrono::steady_clock::duration> timeout = {}) const {
            self->start_wait(std::forward<Handler>(handler), std::move(group), b, timeout);
        }
    };

    detail::poll_service& service() const {
        if (service_ == nullptr)
            service_ = &boost::asio::use_service<detail::poll_service>(
                boost::asio::query(executor_, boost::asio::execution::context));
        return *service_;
    }

    template <class Handler>
    void start_wait(Handler&& handler, detail::operation_group group, const backoff& b,
                    std::optional<std::chrono::steady_clock::duration> timeout) {
        namespace asio = boost::asio;
        error_code ec = validate(group.list());
        if (!ec)
            ec = b.validate();
        if (!ec) {
            // The fast path: one semop before any allocation.
            detail::semop_buffer raw(group.list(), IPC_NOWAIT);
            switch (detail::try_semop(id(), raw, ec)) {
            case detail::attempt_result::applied:
                if (group.releases())
                    service().kick(id());
                break;
            case detail::attempt_result::failed:
                break;
            case detail::attempt_result::would_block: {
                using op_type = detail::wait_op<std::decay_t<Handler>, executor_type>;
                auto slot = asio::get_associated_cancellation_slot(handler);
                auto* wait = op_type::create(std::move(handler), executor_, id(), size(), owner_,
                                             std::move(group), b);
                if (timeout)
                    wait->deadline = std::chrono::steady_clock::now() + *timeout;
                auto& svc = service();
                if (slot.is_connected())
                    slot.template emplace<detail::cancel_handler>(svc, wait);
                svc.start(wait, asio::any_io_executor(executor_));
                return;
            }
            }
        }
        asio::post(executor_, asio::append(std::forward<Handler>(handler), ec));
    }

    template <class>
    friend class basic_async_semaphore_set;

    executor_type executor_;
    backoff backoff_;
    std::uint64_t owner_;
    mutable detail::poll_service* service_ = nullptr; // set by the first use
};

using async_semaphore_set = basic_async_semaphore_set<>;

// ---------------------------------------------------------------------------------------------
// Race-free open without blocking
// ---------------------------------------------------------------------------------------------

namespace detail {
/// The composed operation of async_open_or_create.
struct open_op {
    detail::set_opener opener;
    std::unique_ptr<boost::asio::steady_timer> timer;
    bool started = false;
    std::optional<std::pair<error_code, semaphore_set>> finished;

    template <class Self>
    void operator()(Self& self, error_code wait_error = {}) {
        if (finished) { // the posted completion of a first step that finished at once
            auto [ec, set] = std::move(*finished);
            self.complete(ec, std::move(set));
            return;
        }
        // Cancelled during the timer wait, or between two looks (the composed operation's
        // cancellation state remembers an emit that came while no wait was pending).
        if (wait_error || (started && self.cancelled() != boost::asio::cancellation_type::none)) {
            self.complete(wait_error ? wait_error : boost::asio::error::operation_aborted,
                          semaphore_set());
            return;
        }
        semaphore_set result;
        error_code ec;
        if (opener.step(result, ec)) {
            if (started) {
                self.complete(ec, std::move(result));
            } else { // never complete from the initiating function
                finished.emplace(ec, std::move(result));
                boost::asio::post(timer->get_executor(), std::move(self));
            }
            return;
        }
        if (!started) {
            started = true;
            self.reset_cancellation_state(boost::asio::enable_total_cancellation());
        }
        timer->expires_after(opener.options().poll_interval);
        timer->async_wait(std::move(self));
    }
};
} // namespace detail

/// semaphore_set::open_or_create without blocking the thread: creates the set, or opens it and
/// waits (on a timer of `ex`, every options.poll_interval) until its creator has published the
/// initial values, then verifies it is ours. Completion signature
/// `void(error_code, semaphore_set)`; errors as for the blocking version (foreign_object,
/// not_initialised after options.initialisation_timeout or when the creator died). The first
/// look happens in the initiating function; the handler runs on its associated executor (by
/// default `ex`). Supports terminal, partial and total cancellation while waiting for another
/// process's creator (operation_aborted; nothing was created by this call then).
template <class Executor, boost::asio::completion_token_for<void(error_code, semaphore_set)> Token =
                              boost::asio::default_completion_token_t<Executor>>
    requires boost::asio::execution::executor<Executor> || boost::asio::is_executor<Executor>::value
auto async_open_or_create(const Executor& ex, key k, std::span<const int> initial_values,
                          mode_t mode, const open_options& options,
                          Token&& token = boost::asio::default_completion_token_t<Executor>{}) {
    auto timer = std::make_unique<boost::asio::steady_timer>(ex);
    auto& timer_ref = *timer;
    return boost::asio::async_compose<Token, void(error_code, semaphore_set)>(
        detail::open_op{detail::set_opener(k, initial_values, mode, options), std::move(timer),
                        false, std::nullopt},
        token, timer_ref);
}

template <class Executor, boost::asio::completion_token_for<void(error_code, semaphore_set)> Token =
                              boost::asio::default_completion_token_t<Executor>>
    requires boost::asio::execution::executor<Executor> || boost::asio::is_executor<Executor>::value
auto async_open_or_create(const Executor& ex, key k, std::span<const int> initial_values,
                          Token&& token = boost::asio::default_completion_token_t<Executor>{}) {
    return async_open_or_create(ex, k, initial_values, 0600, open_options{},
                                std::forward<Token>(token));
}

// ---------------------------------------------------------------------------------------------
// Mutex
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Channel
// ---------------------------------------------------------------------------------------------

/// The shape and behaviour of a channel (the shape is fixed at creation and checked on open).
struct channel_options {
    ring::layout shape{};
    /// How long a writer waits for a live reader that does not consume before dropping the
    /// oldest messages (that reader then gets errc::messages_missed). Bounds how long a stopped
    /// or slow reader can stall the writers.
    std::chrono::milliseconds slow_reader_grace{1000};
    mode_t mode = 0600;
    /// Backoff of the channel's waits (lock, new messages, space).
    backoff wait_backoff{};
    /// Bound on waiting for another process that is creating the channel's semaphore set.
    open_options open{};
};

/// A message received from a channel.
struct channel_message {
    std::vector<std::byte> bytes;
    std::uint32_t sender_pid = 0;
    std::uint64_t sequence = 0; ///< position in the channel's history (all senders)
    std::uint64_t missed = 0;   ///< with errc::messages_missed: how many were dropped
    std::string_view text() const noexcept {
        return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
    }
};

namespace detail {
/// Semaphores of a channel's set: the lock, the writers' "space" doorbell, the member count,
/// one liveness semaphore per reader slot (1 = free, taken with SEM_UNDO by its reader so the
/// kernel frees it when the reader dies), one doorbell per reader slot.
struct channel_semaphores {
    std::size_t readers;
    static constexpr std::size_t lock = 0, space = 1, members = 2;
    std::size_t slot(std::size_t r) const noexcept { return 3 + r; }
    std::size_t doorbell(std::size_t r) const noexcept { return 3 + readers + r; }
    std::size_t count() const noexcept { return 3 + 2 * readers; }
    std::vector<int> initial_values() const {
        std::vector<int> v(count(), 0);
        v[lock] = 1;
        for (std::size_t r = 0; r < readers; ++r)
            v[slot(r)] = 1;
        return v;
    }
};
} // namespace detail

/// A bounded broadcast message channel between processes: one shared segment holding a ring
/// (sysv::ring) and one semaphore set, both at the same key. Any process may send; up to
/// shape.max_readers processes join as readers and each receives every message sent after it
/// joined, in order.
///
///  * Writers are held back while a live reader has not consumed what would be overwritten
///    (backpressure), but never longer than slow_reader_grace: then the oldest messages are
///    dropped and that reader's next receive reports errc::messages_missed with the count.
///  * The lock is taken with SEM_UNDO: a process killed while holding it releases it. A writer
///    killed mid-write leaves no partial message visible (the record is published by moving
///    head after it is complete; a dirty marker records the interruption and is repaired).
///  * A reader's slot is a semaphore it holds with SEM_UNDO: when it dies its slot is freed,
///    writers stop waiting for it, and async_reap_lost() reports it once.
///  * Everything read from the segment is validated against its real size; a malformed
///    segment gives errc::corrupt_segment, never a crash.
///  * Readers drain every available message per wake-up (one lock round trip for a batch);
///    async_receive then hands them out one by one without syscalls.
///
/// All async operations follow basic_async_semaphore_set's rules (any completion token,
/// handler on its associated executor, never completed inline, per-operation cancellation of
/// the underlying waits). The channel object must outlive its operations and must not be
/// moved while any is pending; one operation of a kind at a time per object (one send, one
/// receive).
template <class Executor = boost::asio::any_io_executor>
class basic_channel {
public:
    using executor_type = Executor;
    static constexpr std::size_t no_slot = static_cast<std::size_t>(-1);

    /// Opens the channel at `k`, or creates it (segment and set, mode options.mode). The set
    /// is opened race-free (semaphore_set::open_or_create); the segment is initialised by the
    /// first process to take the lock. An existing channel with another shape, owner or mode is
    /// errc::foreign_object. May block briefly: while another process is creating the set (at
    /// most options.open.initialisation_timeout) and while another holds the lock (a critical
    /// section lasts microseconds; a dead holder's lock is released by the kernel).
    static basic_channel open_or_create(const executor_type& ex, key k,
                                        const channel_options& options, error_code& ec) {
        ec = ring::validate(options.shape);
        if (ec)
            return basic_channel(ex, options);
        const detail::channel_semaphores sems{options.shape.max_readers};
        const auto values = sems.initial_values();
        auto set = semaphore_set::open_or_create(k, values, options.mode, options.open, ec);
        if (ec)
            return basic_channel(ex, options);
        auto segment = shared_memory::open_or_create(
            k, static_cast<std::size_t>(ring::segment_size(options.shape)), options.mode, ec);
        if (ec)
            return basic_channel(ex, options);
        auto view = segment.attach(ec);
        if (ec)
            return basic_channel(ex, options);
        basic_channel ch(ex, options);
        ch.set_ = basic_async_semaphore_set<Executor>(ex, std::move(set), options.wait_backoff);
        ch.segment_ = std::move(segment);
        ch.memory_ = std::move(view);
        // Initialise (or check) the segment under the lock.
        if (!ch.set_.try_apply_for(
                lock_op(), std::chrono::milliseconds(options.open.initialisation_timeout), ec)) {
            if (!ec)
                ec = make_error_code(errc::not_initialised);
            return ch;
        }
        const auto bytes = ch.memory_.bytes();
        if (ring::is_blank(bytes)) {
            ring::initialise(bytes, options.shape);
        } else {
            auto v = ring::view::open(bytes, ec);
            if (!ec && !(v.shape() == options.shape))
                ec = make_error_code(errc::foreign_object);
        }
        error_code unlock_error;
        ch.set_.try_apply(op::release(sems.lock).undo(), unlock_error);
        if (!ec)
            ec = unlock_error;
        return ch;
    }
    static basic_channel open_or_create(const executor_type& ex, key k,
                                        const channel_options& options = {}) {
        error_code ec;
        auto ch = open_or_create(ex, k, options, ec);
        if (ec)
            detail::throw_error(ec, "channel open_or_create", "channel (key " + to_string(k) + ")",
                                ring::describe(options.shape));
        return ch;
    }

    basic_channel(basic_channel&&) noexcept = default;
    basic_channel& operator=(basic_channel&&) noexcept = default;
    ~basic_channel() = default;

    executor_type get_executor() const noexcept { return set_.get_executor(); }
    const ring::layout& shape() const noexcept { return options_.shape; }
    /// This process's reader slot, or no_slot before async_join.
    std::size_t slot() const noexcept { return slot_; }
    basic_async_semaphore_set<Executor>& semaphores() noexcept { return set_; }
    const shared_memory& segment() const noexcept { return segment_; }
    /// Messages received from the ring but not yet handed out by async_receive.
    std::size_t buffered() const noexcept { return inbox_.size(); }

    /// Takes a free reader slot (with SEM_UNDO) and counts this process as a member. `label`
    /// (up to 47 bytes) is shown to others by async_members and async_reap_lost. Completion:
    /// `void(error_code)`; errc::no_free_slot when all slots are taken.
    template <boost::asio::completion_token_for<void(error_code)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto async_join(std::string label,
                    Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return boost::asio::async_compose<Token, void(error_code)>(join_op{this, std::move(label)},
                                                                   token, get_executor());
    }

    /// Gives the reader slot back. The last member to leave removes the segment and the set.
    /// Completion: `void(error_code, bool removed)`.
    template <boost::asio::completion_token_for<void(error_code, bool)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto async_leave(Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return boost::asio::async_compose<Token, void(error_code, bool)>(leave_op{this}, token,
                                                                         get_executor());
    }

    /// Sends one message (at most shape().max_message_size bytes) to every joined reader. The
    /// buffer must stay valid until completion. Completion: `void(error_code)`.
    template <boost::asio::completion_token_for<void(error_code)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto async_send(boost::asio::const_buffer message,
                    Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return boost::asio::async_compose<Token, void(error_code)>(send_op{this, message}, token,
                                                                   get_executor());
    }

    /// Sends each buffer of `messages` as one message, in order, taking the lock once for as
    /// many as fit (the cost per message is then a copy, not two semops). Waits for room like
    /// async_send when the ring is full, and completes when all are sent. The buffers and the
    /// span's array must stay valid until completion. Completion: `void(error_code)`; a
    /// message above the size limit fails the whole batch before anything is sent. Cancelled
    /// while waiting for room, it completes with operation_aborted; the messages before that
    /// point were sent.
    template <boost::asio::completion_token_for<void(error_code)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto
    async_send_batch(std::span<const boost::asio::const_buffer> messages,
                     Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return boost::asio::async_compose<Token, void(error_code)>(
            send_op{this, {}, messages.data(), messages.size()}, token, get_executor());
    }

    /// Receives the next message (requires async_join). Completion:
    /// `void(error_code, channel_message)`. errc::messages_missed (with message.missed set)
    /// reports messages dropped because this reader did not keep up; the next receive continues
    /// with the oldest message still available.
    template <boost::asio::completion_token_for<void(error_code, channel_message)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto async_receive(Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return boost::asio::async_compose<Token, void(error_code, channel_message)>(
            receive_op<false>{this}, token, get_executor());
    }

    /// Receives every message available now (at least one; waits like async_receive when
    /// there is none): one completion for a whole batch. Completion:
    /// `void(error_code, std::vector<channel_message>)`; errc::messages_missed comes alone,
    /// as one message with `missed` set.
    template <boost::asio::completion_token_for<void(error_code, std::vector<channel_message>)>
                  Token = boost::asio::default_completion_token_t<executor_type>>
    auto
    async_receive_batch(Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return boost::asio::async_compose<Token, void(error_code, std::vector<channel_message>)>(
            receive_op<true>{this}, token, get_executor());
    }

    /// Readers that died without leaving (their slot semaphore was freed by the kernel): each
    /// is reported once, to the first process that asks, and its slot is cleared. Completion:
    /// `void(error_code, std::vector<ring::member>)`.
    template <boost::asio::completion_token_for<void(error_code, std::vector<ring::member>)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto async_reap_lost(Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return boost::asio::async_compose<Token, void(error_code, std::vector<ring::member>)>(
            table_op{this, true}, token, get_executor());
    }

    /// The joined readers that are alive. Completion:
    /// `void(error_code, std::vector<ring::member>)`.
    template <boost::asio::completion_token_for<void(error_code, std::vector<ring::member>)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto async_members(Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return boost::asio::async_compose<Token, void(error_code, std::vector<ring::member>)>(
            table_op{this, false}, token, get_executor());
    }

    /// Removes the segment and the set now (pending operations everywhere fail with
    /// errc::removed).
    void remove(error_code& ec) {
        error_code ignored;
        segment_.remove(ignored);
        set_.remove(ec);
    }
    void remove() {
        error_code ec;
        remove(ec);
        if (ec)
            detail::throw_error(ec, "channel remove", set_.description());
    }

    /// Aborts this object's pending waits (operation_aborted); operations continue to be
    /// accepted.
    void cancel() { set_.cancel(); }

    /// Aborts every operation of this object, pending or between two steps, and refuses new
    /// ones (operation_aborted). A step that has just taken the lock gives it back first. The
    /// kernel objects stay (see async_leave and remove()).
    void close() {
        closed_ = true;
        set_.cancel();
    }
    bool is_closed() const noexcept { return closed_; }

private:
    basic_channel(const executor_type& ex, const channel_options& options)
        : options_(options), sems_{options.shape.max_readers}, set_(ex),
          pid_(static_cast<std::uint32_t>(::getpid())) {}

    static operation lock_op() noexcept {
        return op::acquire(detail::channel_semaphores::lock).undo();
    }
    static operation unlock_op() noexcept {
        return op::release(detail::channel_semaphores::lock).undo();
    }

    ring::view open_view(error_code& ec) { return ring::view::open(memory_.bytes(), ec); }

    /// Releases the lock together with `extra` operations (doorbells), in one semop. If that
    /// group fails (a doorbell at SEMVMX), the lock alone is still released.
    void unlock(std::vector<operation>& extra, error_code& ec) {
        extra.insert(extra.begin(), unlock_op());
        if (!set_.try_apply(std::span<const operation>(extra), ec) && ec && ec != errc::removed &&
            extra.size() > 1)
            set_.try_apply(unlock_op(), ec);
    }
    void unlock(error_code& ec) { set_.try_apply(unlock_op(), ec); }

    /// One GETALL: which reader slots are held by live readers.
    std::vector<std::uint8_t> live_slots(error_code& ec) const {
        std::vector<std::uint8_t> live(options_.shape.max_readers, 0);
        const auto values = set_.values(ec);
        if (!ec)
            for (std::size_t r = 0; r < live.size(); ++r)
                live[r] = values[sems_.slot(r)] == 0 ? 1 : 0;
        return live;
    }

    /// Finds dead readers' entries (in use, slot free), clears them and reports them.
    void reap(ring::view& view, const std::vector<int>& values, std::vector<ring::member>& out) {
        for (std::size_t r = 0; r < options_.shape.max_readers; ++r)
            if (view.in_use(r) && values[sems_.slot(r)] == 1 && r != slot_) {
                out.push_back({r, view.pid(r), view.label(r)});
                view.leave(r);
            }
    }

    /// After close(): an operation re-entering with the lock just taken gives it back; every
    /// operation then completes with operation_aborted.
    bool closed_at_step(bool lock_taken) {
        if (!closed_)
            return false;
        if (lock_taken) {
            error_code ignored;
            unlock(ignored);
        }
        return true;
    }
    static error_code aborted() noexcept { return boost::asio::error::operation_aborted; }

    /// Defers a completion decided in an initiating function: the operation is posted to the
    /// channel's executor and completes from there (never inline).
    template <class Self, class Result>
    void defer(Self& handler, std::optional<Result>& slot, Result result) {
        slot.emplace(std::move(result));
        boost::asio::post(get_executor(), std::move(handler));
    }

    struct join_op {
        basic_channel* self;
        std::string label;
        bool locking = false;
        std::optional<error_code> deferred{};

        template <class Self>
        void operator()(Self& handler, error_code ec = {}) {
            auto& ch = *self;
            if (deferred)
                return handler.complete(*deferred);
            if (!locking && ch.closed_)
                return ch.defer(handler, deferred, aborted());
            if (locking && ch.closed_at_step(!ec)) {
                error_code ignored;
                ch.set_.try_apply(op::release(ch.sems_.slot(ch.slot_)).undo(), ignored);
                ch.slot_ = no_slot;
                return handler.complete(aborted());
            }
            if (!locking) {
                if (ch.slot_ != no_slot || !ch.set_.is_open())
                    return ch.defer(handler, deferred,
                                    make_error_code(ch.set_.is_open() ? errc::invalid_argument
                                                                      : errc::not_open));
                // Take a free slot: one GETALL, then try the free ones, preferring slots whose
                // table entry is clear (a stale entry of a dead reader stays for
                // async_reap_lost to report). The table is only a hint here (no lock).
                auto values = ch.set_.values(ec);
                error_code view_error;
                auto hint = ch.open_view(view_error);
                for (int pass = 0; pass < 2 && !ec && ch.slot_ == no_slot; ++pass)
                    for (std::size_t r = 0; !ec && r < ch.options_.shape.max_readers; ++r) {
                        const bool stale = !view_error && hint.in_use(r);
                        if (values[ch.sems_.slot(r)] != 1 || (pass == 0 && stale))
                            continue;
                        if (ch.set_.try_apply(op::acquire(ch.sems_.slot(r)).undo(), ec)) {
                            ch.slot_ = r;
                            break;
                        }
                    }
                if (!ec && ch.slot_ == no_slot)
                    ec = make_error_code(errc::no_free_slot);
                if (ec)
                    return ch.defer(handler, deferred, ec);
                locking = true;
                ch.set_.async_apply(lock_op(), std::move(handler));
                return;
            }
            if (!ec) {
                auto view = ch.open_view(ec);
                if (!ec) {
                    // A dead predecessor in our slot is reported by our async_reap_lost.
                    if (view.in_use(ch.slot_))
                        ch.lost_.push_back({ch.slot_, view.pid(ch.slot_), view.label(ch.slot_)});
                    view.join(ch.slot_, ch.pid_, label);
                    std::vector<operation> extra{op::release(ch.sems_.members).undo()};
                    ch.unlock(extra, ec);
                } else {
                    error_code ignored;
                    ch.unlock(ignored);
                }
            }
            if (ec) { // give the slot back
                error_code ignored;
                ch.set_.try_apply(op::release(ch.sems_.slot(ch.slot_)).undo(), ignored);
                ch.slot_ = no_slot;
            }
            handler.complete(ec);
        }
    };

    struct leave_op {
        basic_channel* self;
        bool locking = false;
        std::optional<error_code> deferred{};

        template <class Self>
        void operator()(Self& handler, error_code ec = {}) {
            auto& ch = *self;
            if (deferred)
                return handler.complete(*deferred, false);
            if (!locking && ch.closed_)
                return ch.defer(handler, deferred, aborted());
            if (locking && ch.closed_at_step(!ec))
                return handler.complete(aborted(), false);
            if (!locking) {
                if (ch.slot_ == no_slot)
                    return ch.defer(handler, deferred, make_error_code(errc::invalid_argument));
                locking = true;
                ch.set_.async_apply(lock_op(), std::move(handler));
                return;
            }
            bool removed = false;
            if (!ec) {
                error_code view_error;
                auto view = ch.open_view(view_error);
                if (!view_error)
                    view.leave(ch.slot_);
                const int members = ch.set_.value(ch.sems_.members, ec);
                if (!ec && members <= 1) {
                    // The last member: remove everything (which also ends the lock).
                    ch.remove(ec);
                    removed = !ec;
                } else if (!ec) {
                    std::vector<operation> extra{op::acquire(ch.sems_.members).undo(),
                                                 op::release(ch.sems_.slot(ch.slot_)).undo()};
                    ch.unlock(extra, ec);
                } else {
                    error_code ignored;
                    ch.unlock(ignored);
                }
            }
            ch.slot_ = no_slot;
            handler.complete(ec, removed);
        }
    };

    struct send_op {
        basic_channel* self;
        boost::asio::const_buffer single;                 ///< async_send's message
        const boost::asio::const_buffer* batch = nullptr; ///< async_send_batch's messages
        std::size_t count = 1;
        std::size_t next = 0; ///< the first message not sent yet
        enum { start, locking, waiting_for_space } state = start;
        std::optional<error_code> deferred{};

        // Not stored as a span: the operation moves, and `single` with it.
        const boost::asio::const_buffer& message(std::size_t i) const noexcept {
            return batch != nullptr ? batch[i] : single;
        }

        template <class Self>
        void operator()(Self& handler, error_code ec = {}) {
            auto& ch = *self;
            if (deferred)
                return handler.complete(*deferred);
            if (state == start && ch.closed_)
                return ch.defer(handler, deferred, aborted());
            if (state != start && ch.closed_at_step(state == locking && !ec))
                return handler.complete(aborted());
            switch (state) {
            case start:
                for (std::size_t i = 0; i < count; ++i)
                    if (message(i).size() > ch.options_.shape.max_message_size)
                        return ch.defer(handler, deferred, make_error_code(errc::limit_exceeded));
                if (!ch.set_.is_open())
                    return ch.defer(handler, deferred, make_error_code(errc::not_open));
                if (count == 0)
                    return ch.defer(handler, deferred, error_code{});
                break;
            case waiting_for_space:
                if (ec == boost::asio::error::timed_out)
                    ec.clear(); // the grace period is over: drop the oldest
                break;
            case locking:
                if (!ec)
                    return critical_section(handler);
                break;
            }
            if (ec)
                return handler.complete(ec);
            state = locking;
            ch.set_.async_apply(lock_op(), std::move(handler));
        }

        /// Appends as many messages as fit (all of them, unless a live reader holds the ring
        /// full), rings the sleeping readers' doorbells, and releases the lock in one semop.
        template <class Self>
        void critical_section(Self& handler) {
            auto& ch = *self;
            error_code ec;
            auto view = ch.open_view(ec);
            if (ec) {
                error_code ignored;
                ch.unlock(ignored);
                return handler.complete(ec);
            }
            view.repair();
            bool collected = false; // one GETALL per lock hold at most
            std::optional<std::chrono::steady_clock::duration> wait_for_room;
            for (; next < count; ++next) {
                const auto& m = message(next);
                if (!view.fits(m.size()) && !collected) {
                    const auto live = ch.live_slots(ec);
                    if (ec)
                        break;
                    view.collect(live);
                    collected = true;
                }
                if (view.fits(m.size())) {
                    if (view.full_since() != 0)
                        view.set_full_since(0);
                } else {
                    // The ring is full of what a live reader has not read. Wait for it (it
                    // rings `space` when it reads), but only for the grace period counted from
                    // when writers first found the ring full; then drop the oldest messages.
                    const auto now = static_cast<std::uint64_t>(
                        std::chrono::steady_clock::now().time_since_epoch().count());
                    std::uint64_t since = view.full_since();
                    if (since == 0 || since > now) { // unset, or nonsense from the segment
                        since = now;
                        view.set_full_since(since);
                    }
                    const auto waited = std::chrono::steady_clock::duration(now - since);
                    if (waited < ch.options_.slow_reader_grace) {
                        wait_for_room = ch.options_.slow_reader_grace - waited;
                        break;
                    }
                    error_code corrupt;
                    view.drop_oldest(m.size(), corrupt); // a corrupt ring is emptied
                }
                view.begin_write(ch.pid_);
                view.append(
                    std::span<const std::byte>(static_cast<const std::byte*>(m.data()), m.size()),
                    ch.pid_, ec);
                view.end_write();
                if (ec)
                    break;
            }
            std::vector<operation> extra;
            for (std::size_t r = 0; r < ch.options_.shape.max_readers; ++r)
                if (view.take_sleeping(r))
                    extra.push_back(op::release(ch.sems_.doorbell(r)));
            if (wait_for_room && !ec)
                view.set_waiting_writers(view.waiting_writers() + 1);
            error_code unlock_error;
            ch.unlock(extra, unlock_error);
            if (!ec)
                ec = unlock_error;
            if (ec || !wait_for_room)
                return handler.complete(ec);
            // A cancellation that came while no wait was pending is not lost (messages before
            // `next` of a batch are sent; a single message was not).
            if (handler.cancelled() != boost::asio::cancellation_type::none)
                return handler.complete(aborted());
            // Re-check at least every 50 ms even without a ring (belt and braces: a reader that
            // made room and stopped calling receive cannot ring).
            state = waiting_for_space;
            ch.set_.async_apply_for(op::acquire(ch.sems_.space),
                                    std::min<std::chrono::steady_clock::duration>(
                                        *wait_for_room, std::chrono::milliseconds(50)),
                                    std::move(handler));
        }
    };

    /// async_receive (Batch = false: one message) and async_receive_batch (everything
    /// buffered).
    template <bool Batch>
    struct receive_op {
        using result_type =
            std::conditional_t<Batch, std::vector<channel_message>, channel_message>;
        basic_channel* self;
        enum { start, locking, sleeping } state = start;
        std::optional<std::pair<error_code, result_type>> deferred{};

        template <class Self>
        void operator()(Self& handler, error_code ec = {}) {
            auto& ch = *self;
            if (deferred)
                return handler.complete(deferred->first, std::move(deferred->second));
            if (state == start && ch.closed_)
                return ch.defer(handler, deferred, std::pair(aborted(), result_type{}));
            if (state != start && ch.closed_at_step(state == locking && !ec))
                return handler.complete(aborted(), result_type{});
            switch (state) {
            case start:
                if (ch.slot_ == no_slot)
                    return ch.defer(
                        handler, deferred,
                        std::pair(make_error_code(errc::invalid_argument), result_type{}));
                if (ch.pending_missed_ != 0 || !ch.inbox_.empty() || drain_without_lock())
                    return ch.defer(handler, deferred, ch.template take_buffered<Batch>());
                break;
            case sleeping:
                if (!ec && drain_without_lock()) {
                    auto [result, message] = ch.template take_buffered<Batch>();
                    return handler.complete(result, std::move(message));
                }
                break;
            case locking:
                if (!ec)
                    return critical_section(handler);
                break;
            }
            if (ec)
                return handler.complete(ec, result_type{});
            state = locking;
            ch.set_.async_apply(lock_op(), std::move(handler));
        }

        /// The fast path (no syscall): messages between our cursor and head are ours to copy
        /// without the lock. Not taken when writers wait for room (the locked path wakes them)
        /// or when anything needs the lock's view (missed messages, a malformed ring).
        bool drain_without_lock() {
            auto& ch = *self;
            error_code ec;
            auto view = ch.open_view(ec);
            if (ec || view.waiting_writers() > 0)
                return false;
            std::vector<ring::message> batch;
            if (view.read_unlocked(ch.slot_, batch, max_batch) !=
                    ring::view::unlocked_read::taken ||
                batch.empty())
                return false;
            for (auto& m : batch)
                ch.inbox_.push_back(std::move(m));
            return true;
        }

        template <class Self>
        void critical_section(Self& handler) {
            auto& ch = *self;
            error_code ec;
            auto view = ch.open_view(ec);
            std::vector<ring::message> batch;
            std::uint64_t missed = 0;
            if (!ec)
                view.read(ch.slot_, batch, missed, max_batch, ec);
            std::vector<operation> extra;
            const bool progressed = !batch.empty() || missed != 0;
            if (view.waiting_writers() > 0) {
                // Wake the writers waiting for room (they re-check under the lock). Even when
                // this pass read nothing: this reader may have made the room earlier, on its
                // lock-free path, while the writer was deciding to wait.
                extra.push_back(op::release(
                    ch.sems_.space,
                    static_cast<int>(std::min<std::uint32_t>(view.waiting_writers(), 1000))));
                view.set_waiting_writers(0);
            }
            const bool sleep = !ec && !progressed;
            if (sleep)
                view.set_sleeping(ch.slot_, true);
            error_code unlock_error;
            ch.unlock(extra, unlock_error);
            if (!ec)
                ec = unlock_error;
            if (ec)
                return handler.complete(ec, result_type{});
            if (sleep) { // until a writer rings this reader's doorbell
                // A cancellation that came while no wait was pending is not lost: nothing was
                // received, so abort before waiting again.
                if (handler.cancelled() != boost::asio::cancellation_type::none)
                    return handler.complete(aborted(), result_type{});
                state = sleeping;
                ch.set_.async_acquire(ch.sems_.doorbell(ch.slot_), std::move(handler));
                return;
            }
            ch.pending_missed_ += missed;
            for (auto& m : batch)
                ch.inbox_.push_back(std::move(m));
            auto [result, taken] = ch.template take_buffered<Batch>();
            handler.complete(result, std::move(taken));
        }
    };

    struct table_op {
        basic_channel* self;
        bool reap_lost;
        bool locking = false;
        std::optional<std::pair<error_code, std::vector<ring::member>>> deferred{};

        template <class Self>
        void operator()(Self& handler, error_code ec = {}) {
            auto& ch = *self;
            if (deferred)
                return handler.complete(deferred->first, std::move(deferred->second));
            if (!locking && ch.closed_)
                return ch.defer(handler, deferred,
                                std::pair(aborted(), std::vector<ring::member>{}));
            if (locking && ch.closed_at_step(!ec))
                return handler.complete(aborted(), std::vector<ring::member>{});
            if (!locking) {
                if (!ch.set_.is_open())
                    return ch.defer(
                        handler, deferred,
                        std::pair(make_error_code(errc::not_open), std::vector<ring::member>{}));
                locking = true;
                ch.set_.async_apply(lock_op(), std::move(handler));
                return;
            }
            std::vector<ring::member> result;
            if (!ec) {
                auto view = ch.open_view(ec);
                std::vector<int> values;
                if (!ec)
                    values = ch.set_.values(ec);
                if (!ec && reap_lost) {
                    result = std::exchange(ch.lost_, {});
                    ch.reap(view, values, result);
                } else if (!ec) {
                    for (std::size_t r = 0; r < ch.options_.shape.max_readers; ++r)
                        if (view.in_use(r) && values[ch.sems_.slot(r)] == 0)
                            result.push_back({r, view.pid(r), view.label(r)});
                }
                error_code unlock_error;
                ch.unlock(unlock_error);
                if (!ec)
                    ec = unlock_error;
            }
            handler.complete(ec, std::move(result));
        }
    };

    /// What a receive completes with: a missed-messages notice first (alone, as a message
    /// with `missed` set), then one message, or for a batch every buffered message in order.
    template <bool Batch>
    auto take_buffered() {
        if constexpr (Batch) {
            std::vector<channel_message> all;
            if (pending_missed_ != 0) {
                auto [ec, notice] = next_buffered();
                all.push_back(std::move(notice));
                return std::pair(ec, std::move(all));
            }
            all.reserve(inbox_.size());
            while (!inbox_.empty())
                all.push_back(next_buffered().second);
            return std::pair(error_code{}, std::move(all));
        } else {
            return next_buffered();
        }
    }

    /// The next buffered result: a missed-messages notice first, then messages in order.
    std::pair<error_code, channel_message> next_buffered() {
        channel_message m;
        if (pending_missed_ != 0) {
            m.missed = std::exchange(pending_missed_, 0);
            return {make_error_code(errc::messages_missed), std::move(m)};
        }
        auto& front = inbox_.front();
        m.bytes = std::move(front.bytes);
        m.sender_pid = front.sender_pid;
        m.sequence = front.sequence;
        inbox_.pop_front();
        return {error_code{}, std::move(m)};
    }

    static constexpr std::size_t max_batch = 4096;

    channel_options options_;
    detail::channel_semaphores sems_;
    basic_async_semaphore_set<Executor> set_;
    shared_memory segment_;
    attachment memory_;
    std::uint32_t pid_;
    std::size_t slot_ = no_slot;
    std::deque<ring::message> inbox_;
    std::uint64_t pending_missed_ = 0;
    std::vector<ring::member> lost_;
    bool closed_ = false;
};

using channel = basic_channel<>;

} // namespace sysv
