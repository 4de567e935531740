// sysv.channel internals: the channel's semaphores and channel_state, the non-template part
// of basic_channel (channel.cpp defines it).
// Part of the purview of sysv.channel.cppm, which includes it textually where its
// declarations belong: not a standalone header (no include guard, no includes; the
// interface unit's global module fragment has them).

namespace detail {
/// Semaphores of a channel's set: the initialisation lock (SEM_UNDO; the lock of a segment that
/// has no header yet), the writers' "space" doorbell, the member count, one liveness semaphore
/// per reader slot (1 = free, taken with SEM_UNDO by its reader so the kernel frees it when the
/// reader dies), one doorbell per reader slot, and the bell of the lock word (0 or 1: rung by
/// an unlock when a waiter sleeps on the lock).
struct channel_semaphores {
    std::size_t readers;
    static constexpr std::size_t lock = 0, space = 1, members = 2;
    std::size_t slot(std::size_t r) const noexcept { return 3 + r; }
    std::size_t doorbell(std::size_t r) const noexcept { return 3 + readers + r; }
    std::size_t lock_bell() const noexcept { return 3 + 2 * readers; }
    std::size_t count() const noexcept { return 4 + 2 * readers; }
    std::vector<int> initial_values() const;
};

/// The non-template part of basic_channel: its objects, its state in this process, and every
/// step that runs with the lock held, as plain functions (implemented in channel.cpp). The
/// template around it only composes these steps into asynchronous operations (which wait, when,
/// on which semaphore), so the channel's logic is compiled once, not in every importer.
///
/// The semaphore set lives in the template (it is an async one): this part reads it as the
/// async semaphore set's handle (set()), and applies and removes through the async set
/// (apply_now(), remove_set()), which wakes this process's own waiters on it at once.
class channel_state {
public:
    static constexpr std::size_t no_slot = static_cast<std::size_t>(-1);

    const ring::layout& shape() const noexcept { return options_.shape; }
    std::size_t slot() const noexcept { return slot_; }
    const shared_memory& segment() const noexcept { return segment_; }
    std::size_t buffered() const noexcept { return inbox_.size(); }
    bool is_closed() const noexcept { return closed_; }
    void remove(error_code& ec);
    void remove();
    std::optional<channel_lock_holder> lock_holder(error_code& ec) const;
    std::optional<channel_lock_holder> lock_holder() const;

protected:
    explicit channel_state(const channel_options& options);
    channel_state(channel_state&&) noexcept = default;
    channel_state& operator=(channel_state&&) noexcept = default;
    virtual ~channel_state() = default;

    /// The set, read-only: changes go through apply_now() and remove_set().
    virtual const semaphore_set& set() const noexcept = 0;
    /// try_apply on the async set (a release wakes this process's waiters at once); with a
    /// timeout, try_apply_for (blocks the calling thread at most that long).
    virtual bool apply_now(operation_list ops, error_code& ec,
                           std::chrono::nanoseconds timeout = {}) = 0;
    virtual void remove_set(error_code& ec) = 0;

    // Opening (open_or_create is open_objects, then the template adopts the set, then
    // check_or_initialise). A false `done`: objects of different generations were found (or
    // removed meanwhile); the stale one was removed, try again.
    bool open_objects(key k, semaphore_set& set, error_code& ec);
    bool check_or_initialise(error_code& ec);
    std::string open_detail(const error_code& ec, key k) const;

    // The room's objects.
    error_code check_objects();
    error_code check_objects_every(std::chrono::milliseconds interval);
    error_code room_error(error_code ec);
    ring::view open_view(error_code& ec);

    // The lock word.
    enum class lock_step { acquired, spin, sleep, failed };
    lock_step lock_attempt(bool may_spin, error_code& ec);
    void pass_wake_on() noexcept;
    void unlock(std::vector<operation>& extra, error_code& ec);
    void unlock(error_code& ec);
    bool try_lock() noexcept;
    static process_state holder_state(std::uint64_t word) noexcept;
    bool closed_at_step(bool lock_taken);
    backoff asleep_backoff() const noexcept;

    // The operations' steps with the lock held (each releases it).
    error_code take_slot();
    void give_slot_back() noexcept;
    error_code join_locked(const std::string& label, error_code ec);
    std::pair<error_code, bool> leave_locked(error_code ec);
    struct send_outcome {
        error_code ec;
        std::optional<std::chrono::steady_clock::duration> wait_for_room; ///< the ring is full
        bool spin = false; ///< retry on posted passes before sleeping on `space`
    };
    send_outcome send_locked(std::span<const boost::asio::const_buffer> messages, std::size_t& next,
                             std::chrono::steady_clock::time_point& spin_until);
    /// The ready paths: a send decided now (the lock was free; sent from `next` on, or `ec`),
    /// and a receive with messages (or a missed notice) to hand out now, without the lock.
    bool send_now(std::span<const boost::asio::const_buffer> messages, std::size_t& next,
                  error_code& ec);
    /// Why a send cannot start: limit_exceeded (a message over the limit: none is sent), not_open.
    error_code send_error(std::span<const boost::asio::const_buffer> messages) const;
    /// `into`: an async_receive_batch(channel_batch&)'s, filled directly if nothing is buffered.
    bool receive_now(channel_batch* into);
    enum class drained { taken, empty, need_lock };
    drained drain_without_lock(channel_batch* into);
    struct receive_outcome {
        error_code ec;
        bool sleep = false; ///< nothing to read: marked asleep, wait for the doorbell
    };
    receive_outcome receive_locked(channel_batch* into);
    std::pair<error_code, std::vector<ring::member>> table_locked(bool reap_lost, error_code ec);

    // What a receive hands out.
    std::pair<error_code, channel_message> next_buffered();
    std::pair<error_code, std::vector<channel_message>> take_all_buffered();
    std::pair<error_code, std::size_t> take_into(channel_batch& into);
    bool has_buffered() const noexcept { return pending_missed_ != 0 || !inbox_.empty(); }

    static error_code aborted() noexcept { return boost::asio::error::operation_aborted; }

    /// How long an awake reader with nothing to read looks again on posted passes before it
    /// sleeps (marks itself asleep under the lock, so writers ring its doorbell), and how long
    /// a waiter for the lock retries it before sleeping on the lock's bell: a writer's
    /// critical section, and the gap between two messages of a busy writer, are microseconds.
    static constexpr std::chrono::microseconds receive_spin_time{50}, lock_spin_time{50};
    /// The longest nap of a lock waiter between two looks at the holder (a wake taken by
    /// another waiter, or a holder that died, is noticed within it).
    static constexpr std::chrono::milliseconds lock_nap_max{50};
    /// How long a receive sleeps before it looks at the objects and the ring again (a reader
    /// that only waits notices a removed segment or a rewritten header within this time; a
    /// removed set wakes it at once). Costs an IPC_STAT and a lock round trip per interval.
    static constexpr std::chrono::milliseconds sleep_check_interval{1000};

    channel_options options_;
    channel_semaphores sems_;
    shared_memory segment_;
    attachment memory_;
    std::uint32_t pid_;
    std::uint64_t lock_id_;       ///< this process in the lock word (pid and start time)
    std::uint64_t pid_namespace_; ///< must match the segment's (its lock names pids)
    const char* failed_step_ = "channel open_or_create"; ///< for open_or_create's message
    std::uint64_t owner_ = 0;               ///< the set id the segment was initialised for
    std::chrono::nanoseconds last_check_{}; ///< CLOCK_MONOTONIC_COARSE
    std::size_t slot_ = no_slot;
    std::uint64_t cursor_ = 0, cursor_seq_ = 0; ///< this reader's position, as it left it
    std::deque<ring::message> inbox_;
    std::vector<ring::message> unlocked_batch_; ///< drain_without_lock's, kept for its capacity
    std::uint64_t pending_missed_ = 0;
    std::vector<ring::member> lost_;
    bool closed_ = false;

private:
    std::vector<std::uint8_t> joined_slots(const ring::view& view) const;
    std::vector<std::uint8_t> live_slots(error_code& ec) const;
    void reap(ring::view& view, const std::vector<int>& values, std::vector<ring::member>& out);
    bool cursor_is_ours(const ring::view& view) const noexcept;
    void remember_cursor(const ring::view& view) noexcept;
    static operation lock_op() noexcept;
    static operation unlock_op() noexcept;
};
} // namespace detail
