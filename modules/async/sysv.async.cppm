// sysv.async: semaphore waits as Asio asynchronous operations.
//
//  * sysv::backoff and sysv::backoff_schedule: how a wait polls (plain value code);
//  * sysv::basic_async_semaphore_set: async_acquire, async_wait_zero, async_apply;
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

// Only the Asio headers this unit uses: a header parsed here costs compile time in every build
// of the module (an importer's own #include <boost/asio.hpp> merges with these declarations).
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/append.hpp>
#include <boost/asio/associated_allocator.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/compose.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/execution.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/is_executor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <sys/sem.h>
#include <sys/types.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

export module sysv.async;

export import sysv.core;
export import sysv.immediate;

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
/// The defaults come from the benchmarks (docs/benchmarks.md has the measured numbers):
///  * immediate_yields 64: each yield is one semop and one executor round trip, so the yield
///    phase lasts tens of microseconds, longer than a running peer needs to answer (a
///    ping-pong between two event loops completes within it, below a blocked thread's round
///    trip); fewer were too few when both processes share a CPU (sched_yield is what hands
///    the CPU to the peer).
///  * first_sleep 20 us: shorter sleeps cost a timer round trip for nothing; doubling from
///    20 us reaches the cap after about 8 sleeps.
///  * max_sleep 3 ms: sets both the worst extra latency of a wake-up after long idle (p99 about
///    max_sleep) and the idle cost: a tick costs a timer, an epoll_wait and a semop (or one
///    GETALL per set for many waits on it), so idle cost grows with 1 / max_sleep and with the
///    number of distinct sets polled: group waits on few sets when you can.
///
/// With doorbells (wake_mode io_uring or helper_thread, see wake_mode_of()), a release made
/// through this library wakes the wait at once, and the polls above are only the backstop for
/// releasers that do not ring (other programs, `ipcrm`). `doorbell_max_sleep`, when set, caps
/// the backstop's sleeps instead of max_sleep: set it long (library_releasers(): 1 s) when every
/// releaser uses this library, and idle waits cost next to nothing. Without doorbells it is not
/// used: a wait then polls as above.
struct backoff {
    unsigned immediate_yields = 64;
    std::chrono::microseconds first_sleep{20};
    double growth = 2.0;
    std::chrono::microseconds max_sleep{3000};
    double jitter = 0.0;
    std::chrono::microseconds doorbell_max_sleep{0}; ///< 0: max_sleep

    /// errc::invalid_argument unless first_sleep > 0, max_sleep >= first_sleep, growth >= 1,
    /// 0 <= jitter < 1, and doorbell_max_sleep is 0 or >= first_sleep.
    error_code validate() const noexcept {
        if (first_sleep.count() <= 0 || max_sleep < first_sleep || !(growth >= 1.0) ||
            !(jitter >= 0.0 && jitter < 1.0) ||
            (doorbell_max_sleep.count() != 0 && doorbell_max_sleep < first_sleep))
            return make_error_code(errc::invalid_argument);
        return {};
    }

    /// For waits whose releasers all use this library (so every release rings): with
    /// doorbells, the backstop polls once a second (an idle wait costs next to no CPU); without
    /// them, the defaults. A release by another program (or `ipcrm`) is then seen within a second,
    /// and so is the kernel's release of a lock whose holder died (SEM_UNDO does not ring):
    /// for locks, a shorter doorbell_max_sleep bounds that stall.
    static backoff library_releasers() noexcept {
        backoff b;
        b.doorbell_max_sleep = std::chrono::microseconds(1'000'000);
        b.growth = 4.0;
        return b;
    }

    /// Tuned for latency: short sleeps capped at 200 us (a wake-up after idle within about
    /// that), at many times the default's idle cost: for a few latency-critical waits, not for
    /// thousands.
    static backoff latency_tuned() noexcept {
        return backoff{64, std::chrono::microseconds(20), 1.5, std::chrono::microseconds(200), 0.0};
    }
    /// Tuned for CPU: long sleeps capped at 10 ms (a third of the default's idle cost, wake-up
    /// after idle within about 10 ms); keeps 16 yields so an active ping-pong still completes
    /// without sleeping.
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

    /// Whether the wait also hears doorbells: then the sleeps are capped by
    /// backoff::doorbell_max_sleep when it is set.
    void set_doorbells(bool on) noexcept { doorbells_ = on; }
    bool doorbells() const noexcept { return doorbells_; }

    /// The pause before the next attempt: zero means "yield to the executor, then retry";
    /// otherwise sleep that long. `random01` in [0, 1) drives the jitter (ignored without it).
    std::chrono::nanoseconds next(double random01 = 0.5) noexcept {
        if (yields_done_ < backoff_.immediate_yields) {
            ++yields_done_;
            return std::chrono::nanoseconds(0);
        }
        const std::chrono::nanoseconds cap = doorbells_ && backoff_.doorbell_max_sleep.count() > 0
                                                 ? backoff_.doorbell_max_sleep
                                                 : backoff_.max_sleep;
        if (current_.count() == 0)
            current_ = backoff_.first_sleep;
        const auto sleep = std::min(current_, cap); // the cap changes when doorbells stop
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
    bool doorbells_ = false;
    unsigned yields_done_ = 0;
    std::chrono::nanoseconds current_{0};
};

} // namespace sysv

export namespace sysv {

/// How the waits of an execution context are woken when a release they wait for happens:
///  * io_uring: doorbells awaited by io_uring FUTEX_WAITV on a ring of the context, whose
///    eventfd the context watches like any other descriptor: no thread, no polling (Linux >=
///    6.7). Two ring configurations exist (wake_status::configuration): a ring that defers its
///    completions to the context's thread (the eventfd is signalled by the releaser's
///    FUTEX_WAKE itself), and a plain ring (the FUTEX_WAKE interrupts the context's epoll_wait
///    to post the completion, which signals the eventfd). The woken waits' handlers are
///    dispatched from the eventfd's completion, with no posted round trip;
///  * helper_thread: doorbells awaited by one internal thread of the process in futex_waitv,
///    which posts to the contexts (Linux >= 5.16; at most 127 distinct doorbell words are
///    watched, the others rely on the backstop);
///  * polling: the backoff schedule only (no doorbell table, nothing delivers here, or forced).
/// A release by another program (Python's sysv_ipc, C, `ipcrm`) never rings: it is seen by the
/// backoff polls, which go on in every mode as a backstop (see backoff::doorbell_max_sleep).
///
/// A configuration is trusted only after it delivered, on the running kernel: before a
/// context first relies on one, the process checks once, end to end, that a FUTEX_WAKE made
/// by another thread reaches a waiter through exactly that configuration within
/// wake_delivery_bound (kernel builds differ: on some, a deferring ring's eventfd is signalled
/// only after an RCU grace period, tens of milliseconds later). Configurations are tried from
/// the fastest (deferring ring, plain ring, helper thread); each refusal is recorded in
/// wake_mode_reason(). The check goes on while the context runs: a delivery that reaches it
/// more than wake_delivery_bound after the ring, or a rung word that a backstop poll found
/// more than wake_miss_age after its ring with no delivery on its way, is counted
/// (wake_status); wake_demotion_streak of them in a row, with no timely delivery in between,
/// demote the context to the next configuration, and the reason says why.
/// (On the helper thread, only missed deliveries demote: a late one can be this context's own
/// busy thread.) A wrong configuration thus costs a few backstop periods, never silently.
///
/// The mode is chosen once per context, at its first wait: the best that delivers, or the
/// one $SYSV_WAIT_MODE names (io_uring, io_uring_deferred, io_uring_plain, thread, polling; a
/// forced mode that is unavailable or does not deliver falls back, and wake_mode_reason()
/// says why). $SYSV_WAKE_CHECK=off skips the start-up check (the running check stays): for
/// measuring a configuration that the check would refuse.
enum class wake_mode { io_uring, helper_thread, polling };

/// "io_uring", "helper_thread" or "polling".
std::string_view to_string(wake_mode mode) noexcept;

/// A delivery later than this after its ring (the releaser's FUTEX_WAKE), not explained by
/// the time the context's thread spent busy or waiting for a CPU meanwhile, counts as late; a
/// configuration whose start-up check does not deliver within it is not used. A healthy
/// delivery takes tens of microseconds; the failures this guards against take milliseconds.
inline constexpr std::chrono::milliseconds wake_delivery_bound{5};
/// A rung word that a backstop poll finds this long after its ring, with no delivery on its
/// way (a ring's eventfd readable), is a missed delivery: a ring's delivery does not wait for
/// the context's thread to be idle (its task work runs at the thread's next return from the
/// kernel), so a healthy one is never that late. For the helper thread, which may wait for a
/// CPU before it can post, wake_delivery_bound.
inline constexpr std::chrono::milliseconds wake_miss_age{1};
/// Late or missed deliveries in a row (no timely one in between) that demote a context.
inline constexpr unsigned wake_demotion_streak = 3;

/// What a context's waits have heard so far (counters since the context's first wait).
struct wake_statistics {
    std::uint64_t delivered = 0; ///< deliveries that found a rung word (each wakes >= 1 wait)
    /// Deliveries more than wake_delivery_bound after their ring while this context's thread
    /// slept: the mechanism's lateness.
    std::uint64_t late = 0;
    /// Deliveries as late, but by the time this context's thread spent running other handlers
    /// or waiting for a CPU since it began to sleep (read from /proc/thread-self/schedstat): a
    /// busy context or machine, not a late mechanism; they never demote.
    std::uint64_t late_busy = 0;
    std::uint64_t missed = 0;    ///< rung words found by a backstop poll, not delivered in time
    std::uint64_t demotions = 0; ///< configurations given up while running
};

/// How a context's waits are woken, with what, and why not better.
struct wake_status {
    wake_mode mode = wake_mode::polling;
    /// The configuration in use: "io_uring deferring ring + eventfd", "io_uring ring +
    /// eventfd", "helper thread (futex_waitv)" or "polling".
    std::string configuration;
    /// Why not a faster configuration (start-up checks that failed, demotions); empty when
    /// the fastest one is used.
    std::string reason;
    wake_statistics stats;
};

} // namespace sysv

#include "poll_service.hpp"

export namespace sysv {

/// The wake mode of `context`'s waits (chosen at its first wait; chosen now if none yet).
inline wake_mode wake_mode_of(boost::asio::execution_context& context) {
    return boost::asio::use_service<detail::poll_service>(context).mode();
}
/// Why the waits of `context` are not woken by a better configuration than the one in use
/// (empty when they are woken by the fastest: see wake_mode).
inline std::string wake_mode_reason(boost::asio::execution_context& context) {
    return boost::asio::use_service<detail::poll_service>(context).mode_reason();
}
/// The mode, configuration, reason and delivery counters of `context`'s waits (chosen now if
/// none yet). For tools and benchmarks: a row says which configuration it ran with.
inline wake_status wake_status_of(boost::asio::execution_context& context) {
    return boost::asio::use_service<detail::poll_service>(context).status();
}

// ---------------------------------------------------------------------------------------------
// Asynchronous semaphore set
// ---------------------------------------------------------------------------------------------

/// A semaphore set with an executor: an I/O object that holds a semaphore_set and adds waits that
/// are Asio asynchronous operations and never block a thread.
///
/// It holds its semaphore_set (it does not derive from it, the way Asio's I/O objects hold their
/// implementation): every synchronous member of semaphore_set is here too, and those that can
/// release units or remove the set (try_apply, apply, try_apply_for, set_value, set_values,
/// remove) also wake this process's own waiters on the set at once. There is no path to the
/// set that skips that: handle() gives read-only access, release_set() hands the set back.
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
///  * completes with sysv::errc::removed when the set is removed by anyone while it waits: at
///    once when it was removed through this library (the removal rings the set's doorbells,
///    in any process), at its next backstop poll otherwise (`ipcrm`, another program): within
///    max_sleep, or doorbell_max_sleep when that is set and doorbells are in use.
/// Cancel every wait of this object with cancel() or close(). Waits time out by racing a timer
/// (awaitable operators `||`, or experimental::make_parallel_group).
///
/// Thread safety: as for Asio's I/O objects, one object must not be used from two threads at
/// once; waits of one execution context may complete on any of its threads (use a strand).
template <class Executor = boost::asio::any_io_executor>
class basic_async_semaphore_set {
public:
    using executor_type = Executor;
    template <class OtherExecutor>
    struct rebind_executor {
        using other = basic_async_semaphore_set<OtherExecutor>;
    };

    /// An object using `ex` for its waits, taking over `set`.
    explicit basic_async_semaphore_set(const executor_type& ex, semaphore_set set = {},
                                       const backoff& default_backoff = {})
        : set_(std::move(set)), executor_(ex), backoff_(default_backoff),
          owner_(detail::poll_service::new_owner_id()) {}

    template <class ExecutionContext>
        requires std::is_convertible_v<ExecutionContext&, boost::asio::execution_context&>
    explicit basic_async_semaphore_set(ExecutionContext& context, semaphore_set set = {},
                                       const backoff& default_backoff = {})
        : basic_async_semaphore_set(context.get_executor(), std::move(set), default_backoff) {}

    /// Pending waits of the moved-from object now belong to this one (cancel() reaches them).
    basic_async_semaphore_set(basic_async_semaphore_set&& other) noexcept
        : set_(std::move(other.set_)), executor_(other.executor_), backoff_(other.backoff_),
          owner_(std::exchange(other.owner_, detail::poll_service::new_owner_id())),
          service_(other.service_) {}
    /// Conversion from an object with another executor type (e.g. as_default_on).
    template <class OtherExecutor>
        requires std::is_constructible_v<Executor, const OtherExecutor&> &&
                     (!std::is_same_v<OtherExecutor, Executor>)
    basic_async_semaphore_set(basic_async_semaphore_set<OtherExecutor>&& other) noexcept
        : set_(std::move(other.set_)), executor_(other.executor_), backoff_(other.backoff_),
          owner_(std::exchange(other.owner_, detail::poll_service::new_owner_id())),
          service_(other.service_) {}
    basic_async_semaphore_set& operator=(basic_async_semaphore_set&& other) noexcept {
        if (this != &other) {
            cancel();
            set_ = std::move(other.set_);
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
    /// applied nothing. The poll service arms its timer for the deadline too (whatever the
    /// backoff, and while the wait sleeps on a doorbell), so the completion comes when it
    /// passes; an attempt due at the same moment is made first.
    template <boost::asio::completion_token_for<void(error_code)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto async_apply_for(operation_list ops, std::chrono::steady_clock::duration timeout,
                         Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return boost::asio::async_initiate<Token, void(error_code)>(
            initiate_wait{this}, token, detail::operation_group(ops), backoff_,
            std::optional<std::chrono::steady_clock::duration>(timeout));
    }

    /// async_apply_for with a backoff for this wait only.
    template <boost::asio::completion_token_for<void(error_code)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto async_apply_for(operation_list ops, std::chrono::steady_clock::duration timeout,
                         const backoff& b,
                         Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return boost::asio::async_initiate<Token, void(error_code)>(
            initiate_wait{this}, token, detail::operation_group(ops), b,
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

    // The set: what semaphore_set offers, through this object.

    /// The semaphore set, read-only (stat, values, description...). Changes go through this
    /// object, which wakes this process's waiters when they release units.
    const semaphore_set& handle() const noexcept { return set_; }
    bool is_open() const noexcept { return set_.is_open(); }
    int id() const noexcept { return set_.id(); }
    key ipc_key() const noexcept { return set_.ipc_key(); }
    std::size_t size() const noexcept { return set_.size(); }
    std::string description() const { return set_.description(); }
    error_code validate(operation_list ops) const noexcept { return set_.validate(ops); }

    /// Applies `ops` now if possible (see semaphore_set::try_apply); a release wakes this
    /// process's waiters on the set at once instead of at their next poll.
    bool try_apply(operation_list ops, error_code& ec) {
        return after_change(ops, set_.try_apply(ops, ec));
    }
    bool try_apply(operation_list ops) { return after_change(ops, set_.try_apply(ops)); }
    /// semaphore_set::apply: blocks the calling thread until `ops` can be applied (use
    /// async_apply in an event loop); a release wakes this process's waiters at once.
    void apply(operation_list ops, error_code& ec) {
        set_.apply(ops, ec);
        after_change(ops, !ec);
    }
    void apply(operation_list ops) {
        set_.apply(ops);
        after_change(ops, true);
    }
    /// semaphore_set::try_apply_for: blocks the calling thread at most `timeout`.
    bool try_apply_for(operation_list ops, std::chrono::nanoseconds timeout, error_code& ec) {
        return after_change(ops, set_.try_apply_for(ops, timeout, ec));
    }
    bool try_apply_for(operation_list ops, std::chrono::nanoseconds timeout) {
        return after_change(ops, set_.try_apply_for(ops, timeout));
    }

    int value(std::size_t index, error_code& ec) const { return set_.value(index, ec); }
    int value(std::size_t index) const { return set_.value(index); }
    std::vector<int> values(error_code& ec) const { return set_.values(ec); }
    std::vector<int> values() const { return set_.values(); }
    /// SETVAL / SETALL; this process's waiters on the set look again at once.
    void set_value(std::size_t index, int value, error_code& ec) {
        set_.set_value(index, value, ec);
        if (!ec)
            kick(id());
    }
    void set_value(std::size_t index, int value) {
        set_.set_value(index, value);
        kick(id());
    }
    void set_values(std::span<const int> values, error_code& ec) {
        set_.set_values(values, ec);
        if (!ec)
            kick(id());
    }
    void set_values(std::span<const int> values) {
        set_.set_values(values);
        kick(id());
    }
    void set_values(std::initializer_list<int> values) {
        set_values(std::span<const int>(values.begin(), values.size()));
    }
    pid_t last_pid(std::size_t index, error_code& ec) const { return set_.last_pid(index, ec); }
    pid_t last_pid(std::size_t index) const { return set_.last_pid(index); }
    int waiting_for_increase(std::size_t index, error_code& ec) const {
        return set_.waiting_for_increase(index, ec);
    }
    int waiting_for_increase(std::size_t index) const { return set_.waiting_for_increase(index); }
    int waiting_for_zero(std::size_t index, error_code& ec) const {
        return set_.waiting_for_zero(index, ec);
    }
    int waiting_for_zero(std::size_t index) const { return set_.waiting_for_zero(index); }
    semaphore_set_status stat(error_code& ec) const { return set_.stat(ec); }
    semaphore_set_status stat() const { return set_.stat(); }
    void set_permissions(const permissions& p, error_code& ec) { set_.set_permissions(p, ec); }
    void set_permissions(const permissions& p) { set_.set_permissions(p); }

    /// Removes the set (IPC_RMID); this process's waiters on it complete with errc::removed at
    /// once, other processes' when the removal's doorbell reaches them (at their next poll
    /// without doorbells).
    void remove(error_code& ec) {
        const int old_id = id();
        set_.remove(ec);
        if (!ec)
            kick(old_id);
    }
    void remove() {
        const int old_id = id();
        set_.remove();
        kick(old_id);
    }

    /// Completes every pending wait of this object with operation_aborted.
    void cancel() {
        if (service_ != nullptr) // no wait was ever started otherwise
            service_->cancel_owner(owner_);
    }
    /// Cancels pending waits and gives up the handle (the kernel object stays).
    void close() {
        cancel();
        set_ = semaphore_set();
    }
    /// Cancels pending waits and hands the set back (this object is then closed).
    semaphore_set release_set() {
        cancel();
        return std::move(set_);
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

    /// Wakes this process's waiters on `set_id` when `ops` released something and was applied.
    bool after_change(operation_list ops, bool applied) {
        if (applied && detail::releases(ops))
            kick(id());
        return applied;
    }
    void kick(int set_id) {
        if (set_id >= 0)
            service().kick(set_id);
    }

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
                    kick(id());
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

    semaphore_set set_;
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
/// A composed operation with cancellation types `allowed` let through from its first step on.
/// async_compose lets only terminal cancellation reach an operation (and the waits it starts)
/// unless the operation resets its cancellation state: a wait that applies nothing when
/// cancelled honours partial and total too, so the library's composed operations (the
/// mutexes' locks, the channel's operations) wrap their steps in this.
template <class Op>
struct cancellable {
    Op op;
    boost::asio::cancellation_type allowed = boost::asio::cancellation_type::all;
    bool started = false;

    template <class Self, class... Args>
    void operator()(Self& self, Args&&... args) {
        if (!std::exchange(started, true)) {
            const auto let_through = allowed;
            self.reset_cancellation_state(
                [let_through](boost::asio::cancellation_type t) { return t & let_through; });
        }
        op(self, std::forward<Args>(args)...);
    }
};
template <class Op>
cancellable<Op>
with_cancellation(Op op,
                  boost::asio::cancellation_type allowed = boost::asio::cancellation_type::all) {
    return {std::move(op), allowed};
}

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
} // namespace sysv
