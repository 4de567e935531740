// sysv.async internals: the per-execution-context poll service, the pending-wait operation,
// the doorbell watchers' interface and the wake configurations' checks (async/*.cpp define
// them).
// Part of the purview of sysv.async.cppm, which includes it textually where its
// declarations belong: not a standalone header (no include guard, no includes; the
// interface unit's global module fragment has them).

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
    // Doorbells: the words this wait hears (up, zero; null when not heard), their values read
    // before the last attempt, and the values it sleeps on (sleeper bit set).
    std::array<std::uint32_t*, 2> words{};
    doorbell_table* table = nullptr; ///< the table `words` are in (see poll_service::run_pass)
    std::array<std::uint32_t, 2> seen{};
    std::array<std::uint32_t, 2> expected{};
    bool on_doorbell = false; ///< asleep with `expected` marked in its words
};

/// A thread's time on a CPU and waiting for one (its schedstat), to tell a late delivery from
/// a busy thread.
struct thread_times {
    pid_t thread;
    std::uint64_t on_cpu_ns, waiting_ns;
};

/// One word to watch: wake when it no longer holds `expected`.
struct watched_word {
    std::uint32_t* word;
    std::uint32_t expected;
    // Defined once in poll_service.cpp: clang 16 emits a defaulted friend of a module interface
    // in every unit that uses it (a duplicate symbol at link time).
    friend bool operator==(const watched_word& a, const watched_word& b) noexcept;
};

/// The ways a context can be told of doorbells, fastest first (see sysv::wake_mode).
enum class wake_config : unsigned char { uring_deferred, uring_plain, helper_thread, polling };
/// Its wake_status::configuration text.
std::string_view describe(wake_config config) noexcept;
/// Its wake_mode.
wake_mode mode_of(wake_config config) noexcept;

/// The start-up check of a configuration (async/wake_checks.cpp): whether a FUTEX_WAKE made by
/// another thread of this process on a shared word reached a waiter through `config` within
/// wake_delivery_bound, and what was seen. Run once per process and configuration (the
/// verdict is kept, also across fork: the kernel is the same); blocks the caller for about a
/// millisecond when it delivers, about 11 ms when it does not. A measured failure is also
/// remembered in the user's doorbell table until the next boot, and later processes skip that
/// check (doorbell_table::failed_check).
struct delivery_check {
    bool delivered = false;
    std::string what;      ///< "delivered in 40 us" or why not
    bool measured = false; ///< a failure that was measured (late or absent), not a setup error
};
delivery_check check_delivery(wake_config config);
/// The checks themselves, uncached (async/uring_watcher.cpp, async/thread_watcher.cpp).
delivery_check probe_ring(wake_config config);
delivery_check probe_helper_thread();

/// Waits on doorbell words for a poll service, and tells it (on_doorbell) when one changed:
/// io_uring FUTEX_WAITV on a ring of the service's context, or the process's helper thread in
/// futex_waitv. Defined in async/uring_watcher.cpp and async/thread_watcher.cpp.
class doorbell_watcher {
public:
    virtual ~doorbell_watcher() = default;
    /// Watch exactly `words` from now on (empty: nothing, and keep no work pending). Called
    /// from the service's passes, with its lock held. Returns whether every word is watched
    /// (false: some rely on their backstop polls, or the watcher cannot watch any more; see
    /// failure()).
    virtual bool watch(const std::vector<watched_word>& words) = 0;
    /// Whether a delivery is on its way to the service now (the ring's eventfd is readable,
    /// the helper thread has posted): asked before a rung word that only a poll found is
    /// called missed. Called with the service's lock held.
    virtual bool delivery_pending() = 0;
    /// The configuration in use (a deferring ring becomes a plain one when a second thread
    /// runs the context).
    virtual wake_config config() const = 0;
    /// Why the watcher can no longer watch (the service then demotes it), or empty.
    virtual std::string failure() const { return {}; }
};

#ifdef SYSV_CRASH_POINTS
/// Test hooks (builds with SYSV_CRASH_POINTS only): from now on, in this process, watchers
/// of `config` drop every delivery (the words still change, the kernel still completes the
/// waits; the service is never told), or call the service `delay` after the delivery.
void swallow_deliveries(wake_config config) noexcept;
void delay_deliveries(wake_config config, std::chrono::milliseconds delay) noexcept;
#endif
/// Whether the hooks above drop (or how long they delay) `config`'s deliveries.
bool deliveries_swallowed(wake_config config) noexcept;
std::chrono::milliseconds delivery_delay(wake_config config) noexcept;

/// One per execution context: owns every pending wait of that context, the yield passes and the
/// one timer they share.
class poll_service final : public asio::execution_context::service {
public:
    inline static asio::execution_context::id id;

    explicit poll_service(asio::execution_context& context);
    ~poll_service() override;

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

    /// A doorbell word that waits sleep on changed: poll them now (a pass runs in this call, and
    /// dispatches the handlers of the waits it completes). Call it on a thread running the
    /// context (a watcher's completion handler), never with a watcher's lock held.
    void on_doorbell();

    /// How this service's waits are woken, and why not by a better way (empty when they are).
    wake_mode mode() const;
    std::string mode_reason() const;
    wake_status status() const;

    static std::uint64_t new_owner_id() noexcept {
        static std::atomic<std::uint64_t> next{1};
        return next.fetch_add(1, std::memory_order_relaxed);
    }

private:
    friend class uring_watcher;
    friend class thread_watcher;

    void shutdown() override;
    void notify_fork(asio::execution_context::fork_event event) override;

    /// Chooses and makes the wake mode (once, on the first wait).
    void choose_mode_locked();
    /// Makes the first configuration of `candidates` (in order) that is available and
    /// delivers; the failures go to `why`. Polling when none.
    void make_watcher_locked(std::span<const wake_config> candidates, std::string& why);
    /// A late or missed delivery (`what`), or a timely one (empty): demotes after a streak.
    void judge_delivery_locked(std::chrono::steady_clock::time_point now, bool bad,
                               const std::string& what);
    /// A pass's candidates that sleep on a doorbell rung long ago, not delivered: a miss.
    void check_missed_locked(std::span<pending_wait* const> candidates,
                             std::chrono::steady_clock::time_point now);
    /// Gives up the current configuration for the next one that delivers.
    void demote_locked(std::chrono::steady_clock::time_point now, const std::string& why);
    /// Watches the words of the waits that sleep on doorbells; a word that changed since a
    /// wait read it makes that wait due now.
    void update_watch_locked(std::chrono::steady_clock::time_point now);
    /// Points `w`'s words at its set's slot in `table` (the words its operations hear).
    static void assign_words(pending_wait* w, doorbell_table* table) noexcept;

    /// Whether the calling thread runs the service's context (an io_context's run()).
    bool runs_context_here() const;
    void link(pending_wait* w);
    void unlink(pending_wait* w);
    void post_pass_locked();
    void arm_timer_at_locked(std::optional<std::chrono::steady_clock::time_point> earliest);
    void run_pass();
    /// After a pass: another yield pass, the timer and the words to watch.
    void plan_locked(std::chrono::steady_clock::time_point now, bool retry_now);

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
    // Doorbells.
    bool mode_chosen_ = false;
    pid_t mode_pid_ = 0;
    wake_config config_ = wake_config::polling;
    std::string mode_reason_;
    std::unique_ptr<doorbell_watcher> watcher_;
    std::vector<watched_word> watched_;
    bool watch_complete_ = false; ///< the last watch() covered every word
    wake_statistics stats_;
    std::optional<thread_times> armed_times_; ///< the watching thread's, when it last armed
    unsigned bad_streak_ = 0; ///< late or missed deliveries since the last timely one
    std::string streak_what_; ///< what they were
    // Scratch space of run_pass, kept to avoid allocating on every pass.
    std::vector<pending_wait*> candidates_;
    std::vector<unsigned short> raw_;
    std::vector<int> values_;
};

/// getpid(), without its syscall after the first call in a process: the cache is cleared in a
/// child of fork() (pthread_atfork). A process made by a raw clone() that then uses this library
/// is not supported (it would pass for its parent).
pid_t this_process() noexcept;

/// The watchers (async/uring_watcher.cpp, async/thread_watcher.cpp): null, with `why`, when
/// the configuration is not available here. `config`: uring_deferred or uring_plain.
std::unique_ptr<doorbell_watcher> make_uring_watcher(poll_service& service, wake_config config,
                                                     std::string& why);
std::unique_ptr<doorbell_watcher> make_thread_watcher(poll_service& service, std::string& why);

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
