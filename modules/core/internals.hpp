// sysv.core internals shared with the other layers (not part of the public API): the semop
// buffer and attempt, the set opener, the doorbell table, crash points.
// Part of the purview of sysv.core.cppm, which includes it textually where its
// declarations belong: not a standalone header (no include guard, no includes; the
// interface unit's global module fragment has them).

// ---------------------------------------------------------------------------------------------
// Internals shared by the module's units (not part of the public API).
// ---------------------------------------------------------------------------------------------
export namespace sysv::detail {

/// errno of a call on an existing id: EIDRM, and EINVAL when the arguments were validated
/// first (the id no longer exists), become errc::removed.
error_code id_error(int err) noexcept;

/// A mode for messages, in octal with all its bits, so that a mode refused for bits outside 0777
/// is shown with them ("0600", "01600").
std::string mode_string(mode_t mode);

/// Builds the message of a thrown error: "<operation> on <object>: <cause>[; <limit hint>]".
[[noreturn]] void throw_error(const error_code& ec, std::string_view operation,
                              std::string_view object, std::string_view detail = {});

/// The sembuf array for one semop call: each operation's flags plus `extra_flags` (IPC_NOWAIT
/// for attempts that must not block). Small groups are stored inline: no allocation on the
/// hot path.
class semop_buffer {
public:
    semop_buffer() = default;
    semop_buffer(operation_list ops, short extra_flags);
    std::span<const sembuf> span() const noexcept {
        return {heap_.empty() ? inline_.data() : heap_.data(), size_};
    }
    sembuf* data() noexcept { return heap_.empty() ? inline_.data() : heap_.data(); }
    std::size_t size() const noexcept { return size_; }

private:
    std::array<sembuf, 4> inline_{};
    std::vector<sembuf> heap_;
    std::size_t size_ = 0;
};

enum class attempt_result { applied, would_block, failed };

/// One semop attempt of a buffer built with IPC_NOWAIT (EINTR retried): applied, would block,
/// or failed with `ec` (errc::removed for a set that is gone).
attempt_result try_semop(int set_id, semop_buffer& ops, error_code& ec) noexcept;

// ---- Doorbells (core/doorbell.cpp; the async layer waits on them) -----------------------------

/// What a change lets waiters do: `doorbell_up` (a value rose: acquires may now proceed),
/// `doorbell_zero` (a value fell: waits for zero may now proceed). Bit flags.
enum doorbell_kind : unsigned { doorbell_up = 1, doorbell_zero = 2, doorbell_all = 3 };

/// The doorbells a successful group rings: up for a release, zero for an acquire.
unsigned doorbells_rung_by(std::span<const sembuf> ops) noexcept;
/// The doorbells a blocked group listens to: up for an acquire, zero for a wait for zero.
unsigned doorbells_heard_by(std::span<const sembuf> ops) noexcept;

/// The per-user table of doorbell words: a System V segment (mode 0600) at a well-known key,
/// holding for each semaphore set (a slot chosen by hashing its id; sets that share a slot only
/// get spurious wake-ups) two 32-bit futex words, `up` and `zero`. Bit 0 of a word says that a
/// process sleeps on it; the other bits count changes. A successful change made through this
/// library rings its set's words: one atomic read-modify-write (add 2, clear bit 0) and, only if
/// bit 0 was set, FUTEX_WAKE. A waiter reads the word before its semop attempt and, to sleep,
/// sets bit 0 only if the word still holds what it read (so a change in between is never
/// missed: the semaphore stays the truth, a ring only means "try again"). A sleeper that dies
/// leaves bit 0 set: the next ring wakes nobody and clears it.
///
/// A ring that finds bit 0 set also stamps the slot before its FUTEX_WAKE: one 64-bit store of
/// the word's new value (high half) and CLOCK_MONOTONIC in microseconds, modulo 2^32 (low half),
/// at offset 8 (up) or 16 (zero) of the slot. The stamp is evidence, never the truth: it lets a
/// waiter tell how long ago the change it sleeps on was made (rung_at()), so that a wake that
/// reached it late, or that only its backstop poll found, is noticed (a wake path that accepts
/// waits and does not deliver them is demoted; see sysv::wake_status). A slot without a stamp
/// that matches (a ring by an older version of the library) tells nothing.
///
/// The key is 0x5d000000 | (effective uid & 0xffffff), or $SYSV_DOORBELL_KEY (a number, or
/// "off" for no doorbells). The segment stays after the last process exits (32 KiB; it is
/// re-used, and rebuilt if removed: remove_doorbell_table()). An object of another owner or
/// creator, mode or size at the key turns doorbells off for this process (unavailable_reason()
/// says why, and so does wake_mode_reason()); waits then poll only. A table whose magic is
/// wrong (corrupt) is replaced when no process has it attached, and refused otherwise.
/// A table removed while in use (`ipcrm`) is noticed by get() within a second (one IPC_STAT per
/// second per process) and the one now at the key is attached: this process then rings it, and
/// its waits move to it at their next pass, so old and new processes hear each other again.
/// Removed tables stay attached (waits and watchers may hold their words' addresses).
class doorbell_table {
public:
    static constexpr std::uint64_t magic = 0x31304244564d5953ULL; // "SYSVDB01"
    static constexpr std::size_t slots = 1024, slot_size = 32, header_size = 64;
    static constexpr std::size_t size = header_size + slots * slot_size;

    /// This process's table, attached on first use (also after fork: the mapping is inherited);
    /// nullptr when doorbells are off.
    static doorbell_table* get() noexcept;
    /// Why get() returns nullptr, or why a removed table could not be replaced; or empty.
    static std::string unavailable_reason();
    /// The key the table lives at (for messages and tests), or nothing when doorbells are off.
    static std::optional<key> table_key() noexcept;

    std::uint32_t* word(int set_id, doorbell_kind kind) const noexcept {
        const auto hash = static_cast<std::uint32_t>(set_id) * 2654435761u;
        const std::size_t slot = (hash >> 22) % slots; // the top 10 bits
        return reinterpret_cast<std::uint32_t*>(base_ + header_size + slot * slot_size +
                                                (kind == doorbell_zero ? 4 : 0));
    }
    int segment_id() const noexcept { return segment_id_; }

    /// The stamp of the word at `word` (see the class comment), read atomically.
    static std::uint64_t stamp_of(const std::uint32_t* word) noexcept;

    /// Wake configurations (0..7) whose start-up delivery check failed in a process of this
    /// user since the machine booted: bytes 16..23 of the header hold one 64-bit word, a
    /// 24-bit tag of the boot (boot_id and kernel release), the pid that last recorded a
    /// failure, and one bit per configuration. A later process skips those checks (each costs
    /// it about 10 ms); a wrong bit only makes it use a slower configuration that delivers.
    /// The pid that recorded `config`'s failure, or nothing.
    std::optional<pid_t> failed_check(unsigned config) const noexcept;
    void record_failed_check(unsigned config) noexcept;

private:
    doorbell_table(std::byte* base, int segment_id) noexcept
        : base_(base), segment_id_(segment_id) {}
    friend struct doorbell_access;
    std::byte* base_;
    int segment_id_;
};

#ifdef SYSV_CRASH_POINTS
/// Test builds: the next doorbell_table::get() of this process starts afresh (reads
/// $SYSV_DOORBELL_KEY and attaches again), as a new process would; for a forked child that
/// must not inherit its parent's table. Tables attached before stay attached.
void forget_doorbell_table() noexcept;
#endif

/// Rings doorbells `kinds` of set `set_id` (see doorbell_table). Without a table, nothing.
void ring_doorbells(int set_id, unsigned kinds) noexcept;
/// The word's current value (acquire).
std::uint32_t doorbell_value(const std::uint32_t* word) noexcept;
/// CLOCK_MONOTONIC in microseconds, modulo 2^32 (the clock of the doorbell stamps).
std::uint32_t doorbell_clock_us() noexcept;
/// How long ago (microseconds) a change of `word` made after it held `expected` (the value a
/// sleeper marked) was rung, according to the slot's stamp: nothing when the stamp does not
/// describe such a change (no ring with a sleeper since, or a ring by an older library). The
/// change may be older than this (a lower bound), never younger.
std::optional<std::uint32_t> doorbell_rung_ago(const std::uint32_t* word,
                                               std::uint32_t expected) noexcept;
/// For a waiter about to sleep: marks `word` as slept on if it still holds `seen` (read before
/// the failed attempt), and returns the value to sleep on (FUTEX_WAIT's expected value); nothing
/// if the word changed since (try again now).
std::optional<std::uint32_t> mark_sleeper(std::uint32_t* word, std::uint32_t seen) noexcept;

/// Removes this user's doorbell table (the next process that needs one makes a new one); for
/// tests and administrators. Processes that still have the old one attached keep ringing it, so
/// only do this when no program of this user is running.
void remove_doorbell_table(error_code& ec);

/// The named steps of the library's multi-process protocols. A build configured with
/// SYSV_CRASH_POINTS (the project's test presets; never a consumer's or a release build) can
/// arm one of them in a process, which then kills itself (SIGKILL) when it gets there, so a
/// test can check what the other processes see after a crash at every step
/// (tests/crash_points.cpp walks them all). Without SYSV_CRASH_POINTS crash_here() is an empty
/// inline function. A new protocol step gets a point here, and a scenario in that test.
enum class crash_point : unsigned char {
    set_created,                 ///< semaphore set created (semget), not initialised (SETALL)
    set_initialised,             ///< SETALL done, not yet published (sem_otime still 0)
    channel_open_locked,         ///< channel open: lock taken, segment not yet checked
    channel_open_initialised,    ///< channel open: ring initialised, lock not yet released
    channel_join_slot_taken,     ///< join: reader slot semaphore taken, lock not yet
    channel_join_entry_written,  ///< join: table entry written, lock and member count not yet
    channel_send_locked,         ///< send: lock taken, nothing written
    channel_send_dirty,          ///< send: write marked in progress, record not written
    ring_append_written,         ///< send: record bytes written, head not moved
    channel_send_published,      ///< send: head moved past the record, marker not cleared
    channel_send_unlocking,      ///< send: write finished, lock and doorbells not released
    channel_unlocked,            ///< any holder: lock word released, doorbells not yet rung
    channel_lock_sleeper_marked, ///< lock wait: marked as sleeping on the lock, not yet asleep
    channel_lock_stolen,         ///< lock wait: lock taken from a dead holder, nothing repaired
    channel_receive_locked,      ///< receive: lock taken, nothing read
    channel_receive_read,        ///< receive: cursor moved past what was read, lock held
    ring_unlocked_copied,        ///< receive without the lock: records copied, cursor not moved
    ring_sleeper_counted,        ///< receive: sleeping readers' count raised, own flag not set
    channel_reap_locked,         ///< reap_lost: lock taken, dead entries not cleared
    channel_leave_locked,        ///< leave: lock taken, table entry not cleared
    channel_leave_entry_cleared, ///< leave: entry cleared, slot and member count not released
    channel_leave_removing,      ///< last member leaving: segment removed, set not yet
};
inline constexpr std::size_t crash_point_count =
    static_cast<std::size_t>(crash_point::channel_leave_removing) + 1;
/// The point's name, as written above ("channel_send_locked").
std::string_view crash_point_name(crash_point point) noexcept;

#ifdef SYSV_CRASH_POINTS
/// This process dies (SIGKILL) at the next crash_here(point).
void arm_crash_point(crash_point point) noexcept;
void crash_here(crash_point point) noexcept;
#else
inline void crash_here(crash_point) noexcept {}
#endif

/// The decision of one open_or_create look at an existing set: sans-I/O, so it is unit-tested.
enum class open_step { ready, wait, foreign, creator_died };
open_step classify_existing_set(const semaphore_set_status& status, std::size_t expected_size,
                                mode_t expected_mode, uid_t expected_owner,
                                bool creator_alive) noexcept;

/// The race-free open_or_create as a resumable procedure: each step() makes the syscalls of one
/// look (create exclusively, or open and classify the existing set) and says whether it is
/// finished. Driven by a sleep loop in semaphore_set::open_or_create and by a timer in
/// sysv::async_open_or_create.
class set_opener {
public:
    set_opener(key k, std::span<const int> initial_values, mode_t mode,
               const open_options& options);
    /// True when finished: the set is in `result`, or the error in `ec`. False: the creator
    /// has not published yet; call again after options.poll_interval.
    bool step(semaphore_set& result, error_code& ec);
    const open_options& options() const noexcept { return options_; }

private:
    key key_;
    std::vector<int> values_;
    mode_t mode_;
    open_options options_;
    std::chrono::steady_clock::time_point deadline_;
    int attempts_ = 0;
    semaphore_set existing_;
};

} // namespace sysv::detail
