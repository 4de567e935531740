// sysv.channel: a bounded broadcast message channel between processes (sysv::basic_channel),
// the ring of sysv.ring in a shared segment, guarded by the semaphores of sysv.async.
module;

// Only the Asio headers this unit uses (see sysv.async.cppm).
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/compose.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/post.hpp>

#include <cerrno>
#include <csignal>
#include <sys/sem.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

export module sysv.channel;

export import sysv.async;
export import sysv.ring;

export namespace sysv {

/// The shape and behaviour of a channel (the shape is fixed at creation and checked on open).
struct channel_options {
    ring::layout shape{};
    /// How long a writer waits for a live reader that does not consume before dropping the
    /// oldest messages (that reader then gets errc::messages_missed). Bounds how long a stopped
    /// or slow reader can stall the writers.
    std::chrono::milliseconds slow_reader_grace{1000};
    mode_t mode = 0600;
    /// Backoff of the channel's sleeps (on the lock's bell, a reader's doorbell, `space`),
    /// which follow a short spin on posted passes. With doorbells (see wake_mode_of()) the
    /// channel's own releases wake its sleepers at once, and the polls are only a backstop,
    /// for releasers that do not ring (the kernel's undo of a dead reader's slot, `ipcrm`): the
    /// default polls every 100 ms at most then, instead of 3 ms, which takes an idle member's
    /// CPU to next to nothing (a dead lock holder is noticed by a lock waiter's naps, at most
    /// 50 ms apart). Without doorbells it polls as backoff{} does.
    backoff wait_backoff = [] {
        backoff b;
        b.doorbell_max_sleep = std::chrono::milliseconds(100);
        return b;
    }();
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

/// Who holds a channel's lock (channel::lock_holder()).
struct channel_lock_holder {
    std::uint32_t pid = 0;
    std::string label;   ///< its reader label if it joined, else empty (text from the segment)
    process_state state; ///< stopped: the channel waits until it is continued
};

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
///  * The lock is a 64-bit word in the segment's header, taken and released by compare-and-
///    swap: uncontended, a send is a copy and a few atomics, with no syscall (see "Why a lock
///    word" below). A waiter retries it on posted passes for a few tens of microseconds, then
///    marks itself asleep and sleeps on the lock's bell semaphore, which the holder's unlock
///    rings only when it sees that mark. The word names its holder (pid and start time): a
///    waiter about to sleep looks at the holder, and takes the lock over (compare-and-swap
///    from that exact word) when the holder is dead, its pid gone, a zombie, or reused by a
///    process with another start time. A holder that is stopped keeps it (lock_holder()).
///    A writer killed mid-write leaves no partial message visible (the record is published by
///    moving head after it is complete; a dirty marker records the interruption and the next
///    writer repairs it).
///  * A reader's slot is a semaphore it holds with SEM_UNDO: when it dies its slot is freed,
///    writers stop waiting for it, and async_reap_lost() reports it once.
///  * Everything read from the segment is validated against its real size; a malformed
///    segment gives errc::corrupt_segment, never a crash.
///  * Readers drain every available message per wake-up (one lock round trip for a batch);
///    async_receive then hands them out one by one without syscalls.
///
///  * An awake reader (one async_receive after another) finds new messages on posted passes
///    without syscalls; only a reader with nothing to read for receive_spin_time marks itself
///    asleep and costs the writer a doorbell semop. A writer that finds the ring full retries
///    on posted passes for space_spin_time before it sleeps on `space`.
///
/// Why a lock word (decided by measurement, README "Channel throughput"): the semaphore lock
/// (SEM_UNDO) cost every send two semops (lock, unlock with the doorbells) and the per-call
/// path ran at 0.1-0.4 million 64-byte messages a second, against 3.4-3.7 million for
/// boost::interprocess::message_queue, whose lock is a futex-based mutex in the segment. The
/// lock word keeps what SEM_UNDO gave: the kernel does not release it for a dead holder, but
/// the next waiter does, after checking the holder is gone (pid, start time: pid reuse cannot
/// fool it), then repairs with the dirty marker as before; so all members must share a PID
/// namespace (checked at open: another one gets errc::foreign_object). A glibc robust mutex
/// (PTHREAD_MUTEX_ROBUST, process-shared) would give EOWNERDEAD the same way, but keeps its
/// robust list as pointers into this untrusted segment, and its waiters block a thread in
/// futex_wait, which an io_context thread must not do: rejected. The SEM_UNDO semaphore
/// remains for initialising a blank segment (there is no header, so no lock word, yet).
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
    ///
    /// A segment and a set are used together only if the segment was initialised for that set
    /// (its header holds the set's id), so objects of different generations are never paired:
    /// a segment whose set was removed (`ipcrm -s`) is removed and replaced, and a set whose
    /// segment was removed (`ipcrm -m`) while members remain is removed (its members' next
    /// operation fails with errc::removed) and replaced. A room that keeps being removed while
    /// this runs gives errc::removed after a few attempts.
    static basic_channel open_or_create(const executor_type& ex, key k,
                                        const channel_options& options, error_code& ec) {
        ec = ring::validate(options.shape);
        if (ec)
            return basic_channel(ex, options);
        for (int attempt = 1;; ++attempt) {
            basic_channel ch(ex, options);
            if (ch.open_once(k, ec) || attempt == 5) {
                if (!ec && !ch.set_.is_open())
                    ec = make_error_code(errc::removed);
                return ch;
            }
        }
    }
    static basic_channel open_or_create(const executor_type& ex, key k,
                                        const channel_options& options = {}) {
        error_code ec;
        auto ch = open_or_create(ex, k, options, ec);
        if (ec)
            detail::throw_error(ec, ch.failed_step_, "channel (key " + to_string(k) + ")",
                                ch.open_detail(ec));
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
        detail::crash_here(detail::crash_point::channel_leave_removing);
        set_.remove(ec);
    }
    void remove() {
        error_code ec;
        remove(ec);
        if (ec)
            detail::throw_error(ec, "channel remove", set_.description());
    }

    /// Who holds the lock right now, if anyone (a snapshot of the lock word, and a read of
    /// /proc). A holder's critical section lasts microseconds, and the lock of a holder that
    /// dies is taken over by the next waiter, but a holder that is stopped (SIGSTOP, Ctrl-Z, a
    /// debugger) keeps it until it is continued: every member's operations wait meanwhile, and
    /// slow_reader_grace does not cover it (it bounds waiting for readers that do not read, and
    /// taking the lock from a stopped holder would expose its half-written record). Call this
    /// when an operation has been pending for a while, to tell the user who the room waits for
    /// (the chat says "waiting for <name> (pid N, stopped)").
    std::optional<channel_lock_holder> lock_holder(error_code& ec) const {
        ec.clear();
        if (!set_.is_open() || memory_.bytes().size() < ring::offsets::header_size) {
            ec = make_error_code(errc::not_open);
            return std::nullopt;
        }
        const std::uint64_t word = ring::lock_word(memory_.bytes()).holder();
        if (word == 0)
            return std::nullopt;
        channel_lock_holder holder{ring::lock_identity_pid(word), {}, holder_state(word)};
        // The reader table names it; read without the lock, so only a hint for display.
        error_code view_error;
        const auto view = ring::view::open(memory_.bytes(), view_error);
        if (!view_error)
            for (std::size_t r = 0; r < options_.shape.max_readers; ++r)
                if (view.in_use(r) && view.pid(r) == holder.pid) {
                    holder.label = view.label(r);
                    break;
                }
        return holder;
    }
    std::optional<channel_lock_holder> lock_holder() const {
        error_code ec;
        auto holder = lock_holder(ec);
        if (ec)
            detail::throw_error(ec, "channel lock_holder", set_.description());
        return holder;
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
          pid_(static_cast<std::uint32_t>(::getpid())),
          lock_id_(ring::lock_identity(pid_, start_time_of(::getpid()).value_or(0))),
          pid_namespace_(pid_namespace_id()) {}

    /// One attempt of open_or_create. False: the objects found belonged to different
    /// generations (or were removed meanwhile); the stale one was removed, try again.
    bool open_once(key k, error_code& ec) {
        const auto values = sems_.initial_values();
        failed_step_ = "channel open_or_create: semget (open or create the semaphore set)";
        auto set = semaphore_set::open_or_create(k, values, options_.mode, options_.open, ec);
        if (ec == errc::not_initialised) {
            // Its creator died (or stalled beyond options.open.initialisation_timeout) before
            // publishing the initial values: nobody can have used it. Replace it.
            error_code ignored;
            auto stale = semaphore_set::open(k, ignored);
            if (!ignored) {
                const auto status = stale.stat(ignored);
                if (!ignored && !status.last_operation)
                    stale.remove(ignored);
            }
            ec.clear();
            return false;
        }
        if (ec)
            return true;
        failed_step_ = "channel open_or_create: shmget (open or create the segment)";
        auto segment = shared_memory::open_or_create(
            k, static_cast<std::size_t>(ring::segment_size(options_.shape)), options_.mode, ec);
        if (ec) {
            // No segment at the key and none can be made (a limit, another owner's object): a
            // set without members is of no use to anyone, and is not left behind.
            error_code ignored;
            if (set.value(sems_.members, ignored) == 0 && !ignored)
                set.remove(ignored);
            return true;
        }
        failed_step_ = "channel open_or_create: shmat";
        auto memory = segment.attach(ec);
        if (ec)
            return true;
        failed_step_ = "channel open_or_create";
        set_ = basic_async_semaphore_set<Executor>(set_.get_executor(), std::move(set),
                                                   options_.wait_backoff);
        segment_ = std::move(segment);
        memory_ = std::move(memory);
        owner_ = static_cast<std::uint64_t>(set_.id());
        enum { fine, stale_set, stale_segment } found = fine;
        const auto check_header = [&] {
            // Shape and owner never change after initialisation: no lock needed to read them.
            auto v = ring::view::open(memory_.bytes(), ec);
            if (!ec && !(v.shape() == options_.shape))
                ec = make_error_code(errc::foreign_object);
            else if (!ec && v.pid_namespace() != pid_namespace_)
                ec = make_error_code(errc::foreign_object); // its lock names pids we cannot see
            else if (!ec && v.owner() != owner_)
                found = stale_segment; // initialised for a set that no longer has this key
        };
        if (!ring::is_blank(memory_.bytes())) {
            // An initialised channel is opened without its lock, so a holder that is stopped
            // (see lock_holder()) does not keep others from opening it.
            check_header();
        } else {
            // Initialise under the lock: one process does it.
            if (!set_.try_apply_for(lock_op(),
                                    std::chrono::milliseconds(options_.open.initialisation_timeout),
                                    ec)) {
                if (ec == errc::removed) { // removed by a joiner that found it stale: try again
                    ec.clear();
                    return false;
                }
                if (!ec)
                    ec = make_error_code(errc::not_initialised);
                return true;
            }
            detail::crash_here(detail::crash_point::channel_open_locked);
            const auto bytes = memory_.bytes();
            if (!ring::is_blank(bytes)) {
                check_header(); // initialised by another process meanwhile
            } else {
                // Live members (their count is undone by the kernel when they die) with a blank
                // segment: theirs was removed and this one is new. The set is the stale one.
                const int members = set_.value(sems_.members, ec);
                if (!ec && members > 0)
                    found = stale_set;
                else if (!ec) {
                    ring::initialise(bytes, options_.shape, owner_, pid_namespace_);
                    detail::crash_here(detail::crash_point::channel_open_initialised);
                }
            }
            error_code unlock_error;
            set_.try_apply(unlock_op(), unlock_error);
            if (!ec)
                ec = unlock_error;
        }
        if (ec == errc::removed) {
            ec.clear();
            return false;
        }
        if (ec || found == fine)
            return true;
        error_code ignored;
        if (found == stale_set)
            set_.remove(ignored);
        else
            segment_.remove(ignored);
        return false;
    }

    /// What the thrown error of open_or_create adds: the shape, and for a limit, what the
    /// channel needs against what the kernel allows.
    std::string open_detail(const error_code& ec) const {
        std::string s = ring::describe(options_.shape);
        if (ec != errc::limit_exceeded)
            return s;
        const auto l = limits();
        if (sems_.count() > static_cast<std::size_t>(l.max_semaphores_per_set))
            s += "; its semaphore set needs " + std::to_string(sems_.count()) +
                 " semaphores (4 + 2 per reader), more than SEMMSL = " +
                 std::to_string(l.max_semaphores_per_set) +
                 " per set: raise it in /proc/sys/kernel/sem (first field), or allow fewer "
                 "readers";
        const auto bytes = ring::segment_size(options_.shape);
        if (bytes > l.max_segment_size)
            s += "; its segment needs " + std::to_string(bytes) +
                 " bytes, more than SHMMAX = " + std::to_string(l.max_segment_size) +
                 ": raise it in /proc/sys/kernel/shmmax, or make the ring smaller";
        return s;
    }

    /// Whether the room's objects are still the ones this channel opened: the segment is not
    /// marked for removal (`ipcrm -m`, or a member that found the set gone) and still has the
    /// key. A room is whole or gone: when either object is found removed, the other is removed
    /// too, so every member learns it (errc::removed) and the next joiner starts afresh.
    error_code check_objects() {
        last_check_ = std::chrono::steady_clock::now();
        error_code ec;
        const auto status = segment_.stat(ec);
        if (!ec && (status.marked_for_removal || status.ipc_key != segment_.ipc_key()))
            ec = make_error_code(errc::removed);
        return room_error(ec);
    }
    /// check_objects(), at most every `interval` (a syscall; the per-message path stays
    /// without one).
    error_code check_objects_every(std::chrono::milliseconds interval) {
        if (std::chrono::steady_clock::now() - last_check_ < interval)
            return {};
        return check_objects();
    }
    /// Passes `ec` on; errc::removed (of the set or of the segment) removes the other object.
    error_code room_error(error_code ec) {
        if (ec == errc::removed) {
            error_code ignored;
            if (segment_.is_open())
                segment_.remove(ignored);
            if (set_.is_open())
                set_.remove(ignored);
        }
        return ec;
    }

    static operation lock_op() noexcept {
        return op::acquire(detail::channel_semaphores::lock).undo();
    }
    static operation unlock_op() noexcept {
        return op::release(detail::channel_semaphores::lock).undo();
    }

    /// The ring, checked against what was fixed when the channel was opened: the same shape
    /// (reader count, message limit, capacity) and the same owning set. Anything else is
    /// errc::corrupt_segment: another process rewrote the header.
    ring::view open_view(error_code& ec) {
        auto v = ring::view::open(memory_.bytes(), ec);
        if (ec || !(v.shape() == options_.shape) || v.owner() != owner_)
            ec = make_error_code(errc::corrupt_segment);
        return v;
    }

    /// Applies `extra` (readers' doorbells, `space`, the member count and slot of a leaver:
    /// one semop, only when there is something to ring) while the lock is still held, then
    /// releases the lock word, and rings the lock's bell if a waiter marked itself asleep on it.
    /// Uncontended, with no reader asleep: no syscall. A doorbell at SEMVMX (ERANGE) is not an
    /// error: it already says "wake up".
    void unlock(std::vector<operation>& extra, error_code& ec) {
        ec.clear();
        if (!extra.empty() && !set_.try_apply(std::span<const operation>(extra), ec) &&
            ec != errc::removed)
            ec.clear();
        error_code unlock_error;
        unlock(unlock_error);
        if (!ec)
            ec = unlock_error;
    }
    void unlock(error_code& ec) {
        ec.clear();
        const auto released = ring::lock_word(memory_.bytes()).unlock(lock_id_);
        detail::crash_here(detail::crash_point::channel_unlocked);
        if (released == ring::lock_word::unlock_result::not_held) {
            ec = make_error_code(errc::corrupt_segment); // another process wrote the lock word
        } else if (released == ring::lock_word::unlock_result::released_wake_sleepers) {
            // 0 -> 1 only: a bell already rung stays rung (it never counts up to SEMVMX).
            const operation ring_bell[] = {op::wait_zero(sems_.lock_bell()),
                                           op::release(sems_.lock_bell())};
            error_code bell_error;
            set_.try_apply(ring_bell, bell_error);
            if (bell_error == errc::removed)
                ec = bell_error;
        }
    }
    /// The uncontended case: takes the lock word without a syscall.
    bool try_lock() noexcept { return ring::lock_word(memory_.bytes()).try_lock(lock_id_); }

    /// What a lock word says of its holder: dead also when its pid has been reused by a later
    /// process (another start time) or is no pid at all (the word was overwritten), unknown
    /// when /proc does not tell (it is then not taken over).
    static process_state holder_state(std::uint64_t word) noexcept {
        const auto pid = static_cast<pid_t>(ring::lock_identity_pid(word));
        if (pid <= 0 || pid > max_pid)
            return process_state::dead;
        if (::kill(pid, 0) == -1 && errno == ESRCH)
            return process_state::dead;
        const auto start = start_time_of(pid);
        if (!start)
            return process_state::unknown; // hidden (hidepid), or gone a moment ago
        if (ring::lock_identity(ring::lock_identity_pid(word), *start) != word)
            return process_state::dead; // the pid now names another process
        return state_of(pid);
    }

    /// Continues `handler` with the lock held (error_code{}), or with what ended the wait.
    template <class Handler>
    void async_lock(Handler&& handler) {
        auto h = std::forward<Handler>(handler);
        boost::asio::async_compose<std::decay_t<Handler>, void(error_code)>(lock_wait_op{this}, h,
                                                                            get_executor());
    }

    /// Waits for the lock word: posted passes retry it for lock_spin_time (a holder's critical
    /// section lasts microseconds), then the waiter marks itself asleep and sleeps on the lock's
    /// bell. Each time it is about to sleep it looks at the holder: a dead one (its pid gone,
    /// reused, or a zombie) has its lock taken over by compare-and-swap, after which the
    /// caller's critical section repairs what the holder left (the dirty marker). Naps are
    /// bounded (lock_nap_max), so a wake lost to a mark another waiter took is only late.
    struct lock_wait_op {
        basic_channel* self;
        enum { start, spinning, sleeping } state = start;
        std::chrono::steady_clock::time_point spin_until{};
        std::chrono::milliseconds nap{1};

        template <class Self>
        void operator()(Self& handler, error_code ec = {}) {
            auto& ch = *self;
            if (state == start) { // never completes from the initiating function
                state = spinning;
                spin_until = std::chrono::steady_clock::now() + lock_spin_time;
                return boost::asio::post(ch.get_executor(), std::move(handler));
            }
            bool rang = false;
            if (state == sleeping) {
                if (ec == boost::asio::error::timed_out)
                    ec.clear();
                else if (!ec)
                    rang = true;
                else
                    return handler.complete(ch.room_error(ec));
            }
            if (ch.closed_ || handler.cancelled() != boost::asio::cancellation_type::none)
                return handler.complete(aborted());
            ring::lock_word word(ch.memory_.bytes());
            if (word.try_lock(ch.lock_id_))
                return acquired(handler, word, rang);
            if (state == spinning && std::chrono::steady_clock::now() < spin_until)
                return boost::asio::post(ch.get_executor(), std::move(handler));
            word.mark_sleeper();
            detail::crash_here(detail::crash_point::channel_lock_sleeper_marked);
            if (word.try_lock(ch.lock_id_))
                return acquired(handler, word, rang);
            const std::uint64_t holder = word.holder();
            if (holder != 0 && holder != ch.lock_id_ &&
                holder_state(holder) == process_state::dead && word.steal(holder, ch.lock_id_)) {
                detail::crash_here(detail::crash_point::channel_lock_stolen);
                return acquired(handler, word, rang);
            }
            if ((ec = ch.check_objects_every(object_check_interval)))
                return handler.complete(ec);
            state = sleeping;
            const auto this_nap = nap;
            nap = std::min(nap * 2, lock_nap_max);
            ch.set_.async_apply_for(op::acquire(ch.sems_.lock_bell()), this_nap,
                                    ch.asleep_backoff(), std::move(handler));
        }

        template <class Self>
        static void acquired(Self& handler, ring::lock_word& word, bool rang) {
            // One ring wakes one sleeper: pass it on at our unlock, in case others sleep too.
            if (rang)
                word.mark_sleeper();
            handler.complete(error_code{});
        }
    };

    /// Which reader slots have a table entry (no syscall; a dead reader's entry stays until
    /// reaped, so this holds back at least what live_slots() does).
    std::vector<std::uint8_t> joined_slots(const ring::view& view) const {
        std::vector<std::uint8_t> joined(options_.shape.max_readers, 0);
        for (std::size_t r = 0; r < joined.size(); ++r)
            joined[r] = view.in_use(r) ? 1 : 0;
        return joined;
    }

    /// The backoff of a wait that follows a spin on posted passes: no yield phase (with
    /// doorbells it sleeps at once; a ring between its look and its sleep is never missed).
    backoff asleep_backoff() const noexcept {
        backoff b = options_.wait_backoff;
        b.immediate_yields = 0;
        return b;
    }

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
                if ((ec = ch.check_objects()))
                    return ch.defer(handler, deferred, ec);
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
                detail::crash_here(detail::crash_point::channel_join_slot_taken);
                locking = true;
                ch.async_lock(std::move(handler));
                return;
            }
            if (!ec) {
                auto view = ch.open_view(ec);
                if (!ec) {
                    // A dead predecessor in our slot is reported by our async_reap_lost.
                    if (view.in_use(ch.slot_))
                        ch.lost_.push_back({ch.slot_, view.pid(ch.slot_), view.label(ch.slot_)});
                    view.join(ch.slot_, ch.pid_, label);
                    ch.cursor_ = view.cursor(ch.slot_);
                    ch.cursor_seq_ = view.cursor_sequence(ch.slot_);
                    detail::crash_here(detail::crash_point::channel_join_entry_written);
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
            handler.complete(ch.room_error(ec));
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
                ch.async_lock(std::move(handler));
                return;
            }
            bool removed = false;
            if (!ec) {
                detail::crash_here(detail::crash_point::channel_leave_locked);
                error_code view_error;
                auto view = ch.open_view(view_error);
                if (!view_error)
                    view.leave(ch.slot_);
                detail::crash_here(detail::crash_point::channel_leave_entry_cleared);
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
            handler.complete(ch.room_error(ec), removed);
        }
    };

    struct send_op {
        basic_channel* self;
        boost::asio::const_buffer single;                 ///< async_send's message
        const boost::asio::const_buffer* batch = nullptr; ///< async_send_batch's messages
        std::size_t count = 1;
        std::size_t next = 0; ///< the first message not sent yet
        enum { start, locking, retrying, waiting_for_space } state = start;
        bool initiating = false; ///< in the initiating function: complete through defer()
        std::chrono::steady_clock::time_point spin_until{}; ///< set when the ring was full
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
                // The fast path: the lock is free, the copy is made here and the completion
                // posted (never inline).
                if (ch.try_lock()) {
                    initiating = true;
                    return critical_section(handler);
                }
                break;
            case retrying: // a pass after finding the ring full: the reader may have made room
                if (handler.cancelled() != boost::asio::cancellation_type::none)
                    return handler.complete(aborted());
                if (ch.try_lock())
                    return critical_section(handler);
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
                return handler.complete(ch.room_error(ec));
            state = locking;
            ch.async_lock(std::move(handler));
        }

        /// Completes from wherever the operation is: through the executor when still in the
        /// initiating function.
        template <class Self>
        void finish(Self& handler, error_code ec) {
            if (std::exchange(initiating, false))
                return self->defer(handler, deferred, ec);
            handler.complete(ec);
        }

        /// Appends as many messages as fit (all of them, unless a live reader holds the ring
        /// full), rings the sleeping readers' doorbells, and releases the lock.
        template <class Self>
        void critical_section(Self& handler) {
            auto& ch = *self;
            error_code ec = ch.check_objects_every(object_check_interval);
            auto view = ch.open_view(ec);
            if (ec) {
                error_code ignored;
                ch.unlock(ignored);
                return finish(handler, ch.room_error(ec));
            }
            detail::crash_here(detail::crash_point::channel_send_locked);
            view.repair();
            // Still within the writer's spin (see below): no GETALL yet.
            const bool may_spin = spin_until == std::chrono::steady_clock::time_point{} ||
                                  std::chrono::steady_clock::now() < spin_until;
            bool collected = false, checked_liveness = false;
            const auto collect_live = [&] { // one GETALL per lock hold at most
                checked_liveness = true;
                const auto live = ch.live_slots(ec);
                if (!ec)
                    view.collect(live);
                return !ec;
            };
            std::optional<std::chrono::steady_clock::duration> wait_for_room;
            for (; next < count; ++next) {
                const auto& m = message(next);
                if (!view.fits(m.size()) && !collected) {
                    // What every joined reader has read is free (no syscall): the table's
                    // cursors hold back at least as much as the live readers' do.
                    view.collect(ch.joined_slots(view));
                    collected = true;
                }
                // Still full: free also what dead readers hold.
                if (!view.fits(m.size()) && !checked_liveness && !may_spin && !collect_live())
                    break;
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
                    if (!checked_liveness && !collect_live())
                        break;
                    error_code corrupt;
                    if (!view.fits(m.size()))
                        view.drop_oldest(m.size(), corrupt); // a corrupt ring is emptied
                }
                view.begin_write(ch.pid_);
                detail::crash_here(detail::crash_point::channel_send_dirty);
                view.append(
                    std::span<const std::byte>(static_cast<const std::byte*>(m.data()), m.size()),
                    ch.pid_, ec);
                detail::crash_here(detail::crash_point::channel_send_published);
                view.end_write();
                if (ec)
                    break;
            }
            std::vector<operation> extra;
            for (std::size_t r = 0; r < ch.options_.shape.max_readers; ++r)
                if (view.take_sleeping(r))
                    extra.push_back(op::release(ch.sems_.doorbell(r)));
            // A writer that found the ring full first retries on posted passes for a while
            // (the reader, awake, frees room without the lock); only then does it count itself
            // as waiting, which sends readers to the locked path that rings `space`.
            const auto now = std::chrono::steady_clock::now();
            if (wait_for_room && !ec && spin_until == std::chrono::steady_clock::time_point{})
                spin_until = now + space_spin_time;
            const bool spin = wait_for_room && !ec && now < spin_until;
            if (wait_for_room && !ec && !spin)
                view.set_waiting_writers(view.waiting_writers() + 1);
            detail::crash_here(detail::crash_point::channel_send_unlocking);
            error_code unlock_error;
            ch.unlock(extra, unlock_error);
            if (!ec)
                ec = unlock_error;
            if (ec || !wait_for_room)
                return finish(handler, ch.room_error(ec));
            // A cancellation that came while no wait was pending is not lost (messages before
            // `next` of a batch are sent; a single message was not).
            if (handler.cancelled() != boost::asio::cancellation_type::none)
                return finish(handler, aborted());
            initiating = false;
            if (spin) {
                state = retrying;
                return boost::asio::post(ch.get_executor(), std::move(handler));
            }
            spin_until = {};
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
        enum { start, spinning, locking, sleeping } state = start;
        bool initiating = false; ///< in the initiating function: complete through defer()
        std::chrono::steady_clock::time_point spin_until{};
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
                if (ch.pending_missed_ != 0 || !ch.inbox_.empty())
                    return ch.defer(handler, deferred, ch.template take_buffered<Batch>());
                switch (drain_without_lock()) {
                case drained::taken:
                    return ch.defer(handler, deferred, ch.template take_buffered<Batch>());
                case drained::empty:
                    // Awake: look again on posted passes for a while before going to sleep
                    // (a writer rings only readers that sleep; an awake one costs it nothing).
                    state = spinning;
                    spin_until = std::chrono::steady_clock::now() + receive_spin_time;
                    return boost::asio::post(ch.get_executor(), std::move(handler));
                case drained::need_lock:
                    break;
                }
                if (ch.try_lock()) {
                    initiating = true;
                    return critical_section(handler);
                }
                break;
            case spinning:
                if (handler.cancelled() != boost::asio::cancellation_type::none)
                    return handler.complete(aborted(), result_type{});
                switch (drain_without_lock()) {
                case drained::taken: {
                    auto [result, message] = ch.template take_buffered<Batch>();
                    return handler.complete(result, std::move(message));
                }
                case drained::empty:
                    if (std::chrono::steady_clock::now() < spin_until)
                        return boost::asio::post(ch.get_executor(), std::move(handler));
                    break;
                case drained::need_lock:
                    break;
                }
                if (ch.try_lock())
                    return critical_section(handler);
                break;
            case sleeping:
                if (ec == boost::asio::error::timed_out) {
                    // No doorbell for a while: check that the room still exists and, through
                    // the locked path, that the ring is sound (a reader that only waits must
                    // learn of a removal or a corruption too), then sleep on.
                    if ((ec = ch.check_objects()))
                        break;
                    if (handler.cancelled() != boost::asio::cancellation_type::none)
                        return handler.complete(aborted(), result_type{});
                    break;
                }
                if (!ec && drain_without_lock() == drained::taken) {
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
                return handler.complete(ch.room_error(ec), result_type{});
            state = locking;
            ch.async_lock(std::move(handler));
        }

        /// Completes from wherever the operation is: through the executor when still in the
        /// initiating function.
        template <class Self>
        void finish(Self& handler, error_code ec, result_type result) {
            if (std::exchange(initiating, false))
                return self->defer(handler, deferred, std::pair(ec, std::move(result)));
            handler.complete(ec, std::move(result));
        }

        /// Until a writer rings this reader's doorbell, or sleep_check_interval passes. The
        /// reader has looked on posted passes already: it sleeps at once (no yield phase).
        template <class Self>
        void sleep(Self& handler) {
            auto& ch = *self;
            state = sleeping;
            initiating = false;
            ch.set_.async_apply_for(op::acquire(ch.sems_.doorbell(ch.slot_)), sleep_check_interval,
                                    ch.asleep_backoff(), std::move(handler));
        }

        /// The fast path (no syscall): messages between our cursor and head are ours to copy
        /// without the lock. Not taken when writers wait for room (the locked path wakes them)
        /// or when anything needs the lock's view (missed messages, a malformed ring).
        enum class drained { taken, empty, need_lock };
        drained drain_without_lock() {
            auto& ch = *self;
            error_code ec;
            auto view = ch.open_view(ec);
            if (ec || view.waiting_writers() > 0 || !ch.cursor_is_ours(view))
                return drained::need_lock;
            std::vector<ring::message> batch;
            const auto read = view.read_unlocked(ch.slot_, batch, max_batch);
            if (read == ring::view::unlocked_read::need_lock)
                return drained::need_lock;
            if (read != ring::view::unlocked_read::taken || batch.empty())
                return drained::empty;
            ch.remember_cursor(view);
            for (auto& m : batch)
                ch.inbox_.push_back(std::move(m));
            return drained::taken;
        }

        template <class Self>
        void critical_section(Self& handler) {
            auto& ch = *self;
            error_code ec;
            auto view = ch.open_view(ec);
            std::vector<ring::message> batch;
            std::uint64_t missed = 0;
            detail::crash_here(detail::crash_point::channel_receive_locked);
            if (!ec && !ch.cursor_is_ours(view)) {
                // Another process wrote this reader's position: report it, go on from head.
                ec = make_error_code(errc::corrupt_segment);
                view.resync_reader(ch.slot_);
                ch.remember_cursor(view);
            } else if (!ec) {
                view.read(ch.slot_, batch, missed, max_batch, ec);
                ch.remember_cursor(view); // also after a resync to head (corrupt_segment)
                detail::crash_here(detail::crash_point::channel_receive_read);
            }
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
            const bool go_to_sleep = !ec && !progressed;
            if (go_to_sleep)
                view.set_sleeping(ch.slot_, true);
            error_code unlock_error;
            ch.unlock(extra, unlock_error);
            if (!ec)
                ec = unlock_error;
            if (!ec && go_to_sleep)
                ec = ch.check_objects_every(object_check_interval);
            if (ec)
                return finish(handler, ch.room_error(ec), result_type{});
            if (go_to_sleep) {
                // A cancellation that came while no wait was pending is not lost: nothing was
                // received, so abort before waiting again.
                if (handler.cancelled() != boost::asio::cancellation_type::none)
                    return finish(handler, aborted(), result_type{});
                return sleep(handler);
            }
            ch.pending_missed_ += missed;
            for (auto& m : batch)
                ch.inbox_.push_back(std::move(m));
            auto [result, taken] = ch.template take_buffered<Batch>();
            finish(handler, result, std::move(taken));
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
                ch.async_lock(std::move(handler));
                return;
            }
            std::vector<ring::member> result;
            if (!ec && (ec = ch.check_objects())) {
                error_code ignored;
                ch.unlock(ignored);
            } else if (!ec) {
                auto view = ch.open_view(ec);
                std::vector<int> values;
                if (!ec)
                    values = ch.set_.values(ec);
                if (!ec && reap_lost) {
                    detail::crash_here(detail::crash_point::channel_reap_locked);
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
            handler.complete(ch.room_error(ec), std::move(result));
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

    /// This reader's position in the segment is the one it left there (only it writes it).
    bool cursor_is_ours(const ring::view& view) const noexcept {
        return view.cursor(slot_) == cursor_ && view.cursor_sequence(slot_) == cursor_seq_;
    }
    void remember_cursor(const ring::view& view) noexcept {
        cursor_ = view.cursor(slot_);
        cursor_seq_ = view.cursor_sequence(slot_);
    }

    static constexpr std::size_t max_batch = 4096;
    /// PID_MAX_LIMIT on 64-bit Linux: a lock word naming a larger pid was written by something
    /// else than a member.
    static constexpr pid_t max_pid = 4194304;
    /// How long an awake reader with nothing to read looks again on posted passes before it
    /// sleeps (marks itself asleep under the lock, so writers ring its doorbell), and how long
    /// a waiter for the lock retries it before sleeping on the lock's bell: a writer's
    /// critical section, and the gap between two messages of a busy writer, are microseconds.
    static constexpr std::chrono::microseconds receive_spin_time{50}, lock_spin_time{50};
    /// How long a writer that found the ring full retries on posted passes (an awake reader
    /// frees room without the lock) before it counts itself as waiting and sleeps on `space`.
    static constexpr std::chrono::microseconds space_spin_time{100};
    /// The longest nap of a lock waiter between two looks at the holder (a wake taken by
    /// another waiter, or a holder that died, is noticed within it).
    static constexpr std::chrono::milliseconds lock_nap_max{50};
    /// How often a busy channel looks at its objects (one IPC_STAT): a removed room is noticed
    /// within this time by any operation that runs.
    static constexpr std::chrono::milliseconds object_check_interval{100};
    /// How long a receive sleeps before it looks at the objects and the ring again (a reader
    /// that only waits notices a removed segment or a rewritten header within this time; a
    /// removed set wakes it at once). Costs an IPC_STAT and a lock round trip per interval.
    static constexpr std::chrono::milliseconds sleep_check_interval{1000};

    channel_options options_;
    detail::channel_semaphores sems_;
    basic_async_semaphore_set<Executor> set_;
    shared_memory segment_;
    attachment memory_;
    std::uint32_t pid_;
    std::uint64_t lock_id_;       ///< this process in the lock word (pid and start time)
    std::uint64_t pid_namespace_; ///< must match the segment's (its lock names pids)
    const char* failed_step_ = "channel open_or_create"; ///< for open_or_create's message
    std::uint64_t owner_ = 0; ///< the set id the segment was initialised for
    std::chrono::steady_clock::time_point last_check_{};
    std::size_t slot_ = no_slot;
    std::uint64_t cursor_ = 0, cursor_seq_ = 0; ///< this reader's position, as it left it
    std::deque<ring::message> inbox_;
    std::uint64_t pending_missed_ = 0;
    std::vector<ring::member> lost_;
    bool closed_ = false;
};

using channel = basic_channel<>;

} // namespace sysv
