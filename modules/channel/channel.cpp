// sysv.channel: the non-template part of the channel (detail::channel_state): opening, the
// lock word, and every step that runs with the lock held.
module;

#include <boost/asio/buffer.hpp>
#include <boost/asio/error.hpp>

#include <cerrno>
#include <csignal>
#include <sys/sem.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

module sysv.channel;

namespace sysv::detail {

namespace {
/// The most messages one receive takes from the ring at a time (and so the most one
/// async_receive_batch completes with). Measured with 64-byte messages: 256 moves 1.3-1.4x
/// as many per second as 4096 or 512 (what a batch allocates stays in the caches; 128 is
/// between).
constexpr std::size_t max_batch = 256;
/// PID_MAX_LIMIT on 64-bit Linux: a lock word naming a larger pid was written by something
/// else than a member.
constexpr pid_t max_pid = 4194304;
/// How long a writer that found the ring full retries on posted passes (an awake reader frees
/// room without the lock) before it counts itself as waiting and sleeps on `space`.
constexpr std::chrono::microseconds space_spin_time{100};
/// How often a busy channel looks at its objects (one IPC_STAT): a removed room is noticed
/// within this time by any operation that runs.
constexpr std::chrono::milliseconds object_check_interval{100};

// CLOCK_MONOTONIC_COARSE: the monotonic clock at the last tick, read without the TSC.
std::chrono::nanoseconds coarse_now() noexcept {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}
} // namespace

channel_state::channel_state(const channel_options& options)
    : options_(options), sems_{options.shape.max_readers},
      pid_(static_cast<std::uint32_t>(::getpid())),
      lock_id_(ring::lock_identity(pid_, start_time_of(static_cast<pid_t>(pid_)).value_or(0))),
      pid_namespace_(pid_namespace_id()) {}

void channel_state::remove(error_code& ec) {
    error_code ignored;
    segment_.remove(ignored);
    crash_here(crash_point::channel_leave_removing);
    remove_set(ec);
}

void channel_state::remove() {
    error_code ec;
    remove(ec);
    if (ec)
        throw_error(ec, "channel remove", set().description());
}

std::optional<channel_lock_holder> channel_state::lock_holder() const {
    error_code ec;
    auto holder = lock_holder(ec);
    if (ec)
        throw_error(ec, "channel lock_holder", set().description());
    return holder;
}

std::optional<channel_lock_holder> channel_state::lock_holder(error_code& ec) const {
    ec.clear();
    if (!set().is_open() || memory_.bytes().size() < ring::offsets::header_size) {
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

// Opening -----------------------------------------------------------------------------------

bool channel_state::open_objects(key k, semaphore_set& set, error_code& ec) {
    const auto values = sems_.initial_values();
    failed_step_ = "channel open_or_create: semget (open or create the semaphore set)";
    set = semaphore_set::open_or_create(k, values, options_.mode, options_.open, ec);
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
    segment_ = std::move(segment);
    memory_ = std::move(memory);
    return true;
}

bool channel_state::check_or_initialise(error_code& ec) {
    owner_ = static_cast<std::uint64_t>(set().id());
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
        if (!apply_now(lock_op(), ec,
                       std::chrono::milliseconds(options_.open.initialisation_timeout))) {
            if (ec == errc::removed) { // removed by a joiner that found it stale: try again
                ec.clear();
                return false;
            }
            if (!ec)
                ec = make_error_code(errc::not_initialised);
            return true;
        }
        crash_here(crash_point::channel_open_locked);
        const auto bytes = memory_.bytes();
        if (!ring::is_blank(bytes)) {
            check_header(); // initialised by another process meanwhile
        } else {
            // Live members (their count is undone by the kernel when they die) with a blank
            // segment: theirs was removed and this one is new. The set is the stale one.
            const int members = set().value(sems_.members, ec);
            if (!ec && members > 0)
                found = stale_set;
            else if (!ec) {
                ring::initialise(bytes, options_.shape, owner_, pid_namespace_);
                crash_here(crash_point::channel_open_initialised);
            }
        }
        error_code unlock_error;
        apply_now(unlock_op(), unlock_error);
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
        remove_set(ignored);
    else
        segment_.remove(ignored);
    return false;
}

std::string channel_state::open_detail(const error_code& ec, key k) const {
    // What the thrown error of open_or_create adds: the shape; for a foreign object, whose the
    // objects at the key are; for a limit, what the channel needs against what the kernel allows.
    std::string s = ring::describe(options_.shape);
    if (ec == errc::foreign_object) {
        const auto owners = [](const permissions& owner, uid_t creator) {
            return "owner uid " + std::to_string(owner.owner_uid) + ", created by uid " +
                   std::to_string(creator) + ", mode " + mode_string(owner.mode & 0777);
        };
        s += "; wanted owner and creator uid " + std::to_string(::geteuid()) + ", mode " +
             mode_string(options_.mode);
        error_code ignored;
        if (auto set = semaphore_set::open(k, ignored); !ignored)
            if (const auto st = set.stat(ignored); !ignored)
                s += "; the semaphore set at the key: " + owners(st.owner, st.creator_uid);
        if (auto segment = shared_memory::open(k, ignored); !ignored)
            if (const auto st = segment.stat(ignored); !ignored)
                s += "; the segment at the key: " + owners(st.owner, st.creator_uid);
        return s;
    }
    if (ec != errc::limit_exceeded)
        return s;
    const auto l = limits();
    if (sems_.count() > static_cast<std::size_t>(l.max_semaphores_per_set))
        s += "; its semaphore set needs " + std::to_string(sems_.count()) +
             " semaphores (4 + 2 per reader), more than SEMMSL = " +
             std::to_string(l.max_semaphores_per_set) +
             " per set: raise it in /proc/sys/kernel/sem (first field), or allow fewer readers";
    const auto bytes = ring::segment_size(options_.shape);
    if (bytes > l.max_segment_size)
        s += "; its segment needs " + std::to_string(bytes) +
             " bytes, more than SHMMAX = " + std::to_string(l.max_segment_size) +
             ": raise it in /proc/sys/kernel/shmmax, or make the ring smaller";
    return s;
}

// The room's objects -------------------------------------------------------------------------

// Whether the room's objects are still the ones this channel opened: the segment is not marked
// for removal (`ipcrm -m`, or a member that found the set gone) and still has the key. A room
// is whole or gone: when either object is found removed, the other is removed too, so every
// member learns it (errc::removed) and the next joiner starts afresh.
error_code channel_state::check_objects() {
    last_check_ = coarse_now();
    error_code ec;
    const auto status = segment_.stat(ec);
    if (!ec && (status.marked_for_removal || status.ipc_key != segment_.ipc_key()))
        ec = make_error_code(errc::removed);
    return room_error(ec);
}

// check_objects(), at most every `interval` (a syscall; the per-message path stays without one).
// The clock is the coarse one (a tick's resolution, a few ms): read on every send, it costs a
// few ns where the precise clock costs tens.
error_code channel_state::check_objects_every(std::chrono::milliseconds interval) {
    if (coarse_now() - last_check_ < interval)
        return {};
    return check_objects();
}

// Passes `ec` on; errc::removed (of the set or of the segment) removes the other object.
error_code channel_state::room_error(error_code ec) {
    if (ec == errc::removed) {
        error_code ignored;
        if (segment_.is_open())
            segment_.remove(ignored);
        if (set().is_open())
            remove_set(ignored);
    }
    return ec;
}

// The ring, checked against what was fixed when the channel was opened: the same shape (reader
// count, message limit, capacity) and the same owning set. Anything else is
// errc::corrupt_segment: another process rewrote the header.
ring::view channel_state::open_view(error_code& ec) {
    auto v = ring::view::open(memory_.bytes(), options_.shape, ec); // validated when opened
    if (ec || v.owner() != owner_)
        ec = make_error_code(errc::corrupt_segment);
    return v;
}

// The lock word ------------------------------------------------------------------------------

operation channel_state::lock_op() noexcept {
    return op::acquire(channel_semaphores::lock).undo();
}
operation channel_state::unlock_op() noexcept {
    return op::release(channel_semaphores::lock).undo();
}

// Why a lock word (decided by measurement, README "Channel throughput"): the semaphore lock
// (SEM_UNDO) cost every send two semops (lock, unlock with the doorbells) and the per-call
// path ran at 0.1-0.4 million 64-byte messages a second, against 3.4-3.7 million for
// boost::interprocess::message_queue, whose lock is a futex-based mutex in the segment. The
// lock word keeps what SEM_UNDO gave: the kernel does not release it for a dead holder, but
// the next waiter does, after checking the holder is gone (pid, start time: pid reuse cannot
// fool it), then repairs with the dirty marker as before; so all members must share a PID
// namespace (checked at open: another one gets errc::foreign_object). A glibc robust mutex
// (PTHREAD_MUTEX_ROBUST, process-shared) would give EOWNERDEAD the same way, but keeps its
// robust list as pointers into this untrusted segment, and its waiters block a thread in
// futex_wait, which an io_context thread must not do: rejected. The SEM_UNDO semaphore
// remains for initialising a blank segment (there is no header, so no lock word, yet).
//
// One look at the lock for a waiter: take it if free; else keep spinning on posted passes
// while `may_spin`; else mark itself asleep (so the holder's unlock rings the lock's bell),
// look once more, and take the lock over when its holder is dead (its pid gone, reused, or a
// zombie: compare-and-swap from that exact word, after which the caller's critical section
// repairs what the holder left with the dirty marker).
channel_state::lock_step channel_state::lock_attempt(bool may_spin, error_code& ec) {
    ring::lock_word word(memory_.bytes());
    if (word.try_lock(lock_id_))
        return lock_step::acquired;
    if (may_spin)
        return lock_step::spin;
    word.mark_sleeper();
    crash_here(crash_point::channel_lock_sleeper_marked);
    if (word.try_lock(lock_id_))
        return lock_step::acquired;
    const std::uint64_t holder = word.holder();
    if (holder != 0 && holder != lock_id_ && holder_state(holder) == process_state::dead &&
        word.steal(holder, lock_id_)) {
        crash_here(crash_point::channel_lock_stolen);
        return lock_step::acquired;
    }
    if ((ec = check_objects_every(object_check_interval)))
        return lock_step::failed;
    return lock_step::sleep;
}

void channel_state::pass_wake_on() noexcept {
    ring::lock_word(memory_.bytes()).mark_sleeper();
}

// Applies `extra` (readers' doorbells, `space`, the member count and slot of a leaver: one
// semop, only when there is something to ring) while the lock is still held, then releases the
// lock word, and rings the lock's bell if a waiter marked itself asleep on it. Uncontended, with
// no reader asleep: no syscall. A doorbell at SEMVMX (ERANGE) is not an error: it already says
// "wake up".
void channel_state::unlock(std::vector<operation>& extra, error_code& ec) {
    ec.clear();
    if (!extra.empty() && !apply_now(std::span<const operation>(extra), ec) && ec != errc::removed)
        ec.clear();
    error_code unlock_error;
    unlock(unlock_error);
    if (!ec)
        ec = unlock_error;
}

void channel_state::unlock(error_code& ec) {
    ec.clear();
    const auto released = ring::lock_word(memory_.bytes()).unlock(lock_id_);
    crash_here(crash_point::channel_unlocked);
    if (released == ring::lock_word::unlock_result::not_held) {
        ec = make_error_code(errc::corrupt_segment); // another process wrote the lock word
    } else if (released == ring::lock_word::unlock_result::released_wake_sleepers) {
        // 0 -> 1 only: a bell already rung stays rung (it never counts up to SEMVMX).
        const operation ring_bell[] = {op::wait_zero(sems_.lock_bell()),
                                       op::release(sems_.lock_bell())};
        error_code bell_error;
        apply_now(ring_bell, bell_error);
        if (bell_error == errc::removed)
            ec = bell_error;
    }
}

// The uncontended case: takes the lock word without a syscall.
bool channel_state::try_lock() noexcept {
    return ring::lock_word(memory_.bytes()).try_lock(lock_id_);
}

// What a lock word says of its holder: dead also when its pid has been reused by a later
// process (another start time) or is no pid at all (the word was overwritten), unknown when
// /proc does not tell (it is then not taken over).
process_state channel_state::holder_state(std::uint64_t word) noexcept {
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

// After close(): an operation re-entering with the lock just taken gives it back; every
// operation then completes with operation_aborted.
bool channel_state::closed_at_step(bool lock_taken) {
    if (!closed_)
        return false;
    if (lock_taken) {
        error_code ignored;
        unlock(ignored);
    }
    return true;
}

// The backoff of a wait that follows a spin on posted passes: no yield phase (with doorbells it
// sleeps at once; a ring between its look and its sleep is never missed).
backoff channel_state::asleep_backoff() const noexcept {
    backoff b = options_.wait_backoff;
    b.immediate_yields = 0;
    return b;
}

// Reader slots ---------------------------------------------------------------------------------

// Which reader slots have a table entry (no syscall; a dead reader's entry stays until reaped,
// so this holds back at least what live_slots() does).
std::vector<std::uint8_t> channel_state::joined_slots(const ring::view& view) const {
    std::vector<std::uint8_t> joined(options_.shape.max_readers, 0);
    for (std::size_t r = 0; r < joined.size(); ++r)
        joined[r] = view.in_use(r) ? 1 : 0;
    return joined;
}

// One GETALL: which reader slots are held by live readers.
std::vector<std::uint8_t> channel_state::live_slots(error_code& ec) const {
    std::vector<std::uint8_t> live(options_.shape.max_readers, 0);
    const auto values = set().values(ec);
    if (!ec)
        for (std::size_t r = 0; r < live.size(); ++r)
            live[r] = values[sems_.slot(r)] == 0 ? 1 : 0;
    return live;
}

// Finds dead readers' entries (in use, slot free), clears them and reports them.
void channel_state::reap(ring::view& view, const std::vector<int>& values,
                         std::vector<ring::member>& out) {
    for (std::size_t r = 0; r < options_.shape.max_readers; ++r)
        if (view.in_use(r) && values[sems_.slot(r)] == 1 && r != slot_) {
            out.push_back({r, view.pid(r), view.label(r)});
            view.leave(r);
        }
}

// This reader's position in the segment is the one it left there (only it writes it).
bool channel_state::cursor_is_ours(const ring::view& view) const noexcept {
    return view.cursor(slot_) == cursor_ && view.cursor_sequence(slot_) == cursor_seq_;
}
void channel_state::remember_cursor(const ring::view& view) noexcept {
    cursor_ = view.cursor(slot_);
    cursor_seq_ = view.cursor_sequence(slot_);
}

// Join and leave -------------------------------------------------------------------------------

// Takes a free slot: one GETALL, then tries the free ones, preferring slots whose table entry is
// clear (a stale entry of a dead reader stays for async_reap_lost to report). The table is only
// a hint here (no lock).
error_code channel_state::take_slot() {
    if (slot_ != no_slot || !set().is_open())
        return make_error_code(set().is_open() ? errc::invalid_argument : errc::not_open);
    error_code ec = check_objects();
    if (ec)
        return ec;
    auto values = set().values(ec);
    error_code view_error;
    auto hint = open_view(view_error);
    for (int pass = 0; pass < 2 && !ec && slot_ == no_slot; ++pass)
        for (std::size_t r = 0; !ec && r < options_.shape.max_readers; ++r) {
            const bool stale = !view_error && hint.in_use(r);
            if (values[sems_.slot(r)] != 1 || (pass == 0 && stale))
                continue;
            if (apply_now(op::acquire(sems_.slot(r)).undo(), ec)) {
                slot_ = r;
                break;
            }
        }
    if (!ec && slot_ == no_slot)
        ec = make_error_code(errc::no_free_slot);
    if (!ec)
        crash_here(crash_point::channel_join_slot_taken);
    return ec;
}

void channel_state::give_slot_back() noexcept {
    error_code ignored;
    apply_now(op::release(sems_.slot(slot_)).undo(), ignored);
    slot_ = no_slot;
}

// With the lock (unless `ec` says why not): writes the table entry, counts this process as a
// member, unlocks. On failure the slot is given back.
error_code channel_state::join_locked(const std::string& label, error_code ec) {
    if (!ec) {
        auto view = open_view(ec);
        if (!ec) {
            // A dead predecessor in our slot is reported by our async_reap_lost.
            if (view.in_use(slot_))
                lost_.push_back({slot_, view.pid(slot_), view.label(slot_)});
            view.join(slot_, pid_, label);
            remember_cursor(view);
            crash_here(crash_point::channel_join_entry_written);
            std::vector<operation> extra{op::release(sems_.members).undo()};
            unlock(extra, ec);
        } else {
            error_code ignored;
            unlock(ignored);
        }
    }
    if (ec)
        give_slot_back();
    return room_error(ec);
}

// With the lock (unless `ec` says why not): clears the table entry and gives the slot back; the
// last member removes the room. Returns whether it did.
std::pair<error_code, bool> channel_state::leave_locked(error_code ec) {
    bool removed = false;
    if (!ec) {
        crash_here(crash_point::channel_leave_locked);
        error_code view_error;
        auto view = open_view(view_error);
        if (!view_error)
            view.leave(slot_);
        crash_here(crash_point::channel_leave_entry_cleared);
        const int members = set().value(sems_.members, ec);
        if (!ec && members <= 1) {
            // The last member: remove everything (which also ends the lock).
            remove(ec);
            removed = !ec;
        } else if (!ec) {
            std::vector<operation> extra{op::acquire(sems_.members).undo(),
                                         op::release(sems_.slot(slot_)).undo()};
            unlock(extra, ec);
        } else {
            error_code ignored;
            unlock(ignored);
        }
    }
    slot_ = no_slot;
    return {room_error(ec), removed};
}

// Send -----------------------------------------------------------------------------------------

// With the lock: appends messages from `next` on, as many as fit (all of them, unless a live
// reader holds the ring full), rings the sleeping readers' doorbells, and releases the lock.
// When the ring stays full it says how long the writer may still wait for room
// (slow_reader_grace, counted from when writers first found it full) and whether to spin first.
channel_state::send_outcome
channel_state::send_locked(std::span<const boost::asio::const_buffer> messages, std::size_t& next,
                           std::chrono::steady_clock::time_point& spin_until) {
    send_outcome out;
    error_code& ec = out.ec;
    ec = check_objects_every(object_check_interval);
    error_code view_error; // not into `ec`: a removal found by the check must not be lost
    auto view = open_view(view_error);
    if (!ec)
        ec = view_error;
    if (ec) {
        error_code ignored;
        unlock(ignored);
        ec = room_error(ec);
        return out;
    }
    crash_here(crash_point::channel_send_locked);
    view.repair();
    // Still within the writer's spin (see below): no GETALL yet.
    const bool may_spin = spin_until == std::chrono::steady_clock::time_point{} ||
                          std::chrono::steady_clock::now() < spin_until;
    bool collected = false, checked_liveness = false;
    const auto collect_live = [&] { // one GETALL per lock hold at most
        checked_liveness = true;
        const auto live = live_slots(ec);
        if (!ec)
            view.collect(live);
        return !ec;
    };
    auto& wait_for_room = out.wait_for_room;
    for (; next < messages.size(); ++next) {
        const auto& m = messages[next];
        bool fits = view.fits(m.size());
        if (!fits && !collected) {
            // What every joined reader has read is free (no syscall): the table's cursors hold
            // back at least as much as the live readers' do.
            view.collect(joined_slots(view));
            collected = true;
            fits = view.fits(m.size());
        }
        if (!fits && !checked_liveness && !may_spin) { // still full: also what dead readers hold
            if (!collect_live())
                break;
            fits = view.fits(m.size());
        }
        if (fits) {
            if (view.full_since() != 0)
                view.set_full_since(0);
        } else {
            // The ring is full of what a live reader has not read. Wait for it (it rings
            // `space` when it reads), but only for the grace period counted from when writers
            // first found the ring full; then drop the oldest messages.
            const auto now = static_cast<std::uint64_t>(
                std::chrono::steady_clock::now().time_since_epoch().count());
            std::uint64_t since = view.full_since();
            if (since == 0 || since > now) { // unset, or nonsense from the segment
                since = now;
                view.set_full_since(since);
            }
            const auto waited = std::chrono::steady_clock::duration(now - since);
            if (waited < options_.slow_reader_grace) {
                wait_for_room = options_.slow_reader_grace - waited;
                break;
            }
            if (!checked_liveness && !collect_live())
                break;
            error_code corrupt;
            if (!view.fits(m.size()))
                view.drop_oldest(m.size(), corrupt); // a corrupt ring is emptied
        }
        view.begin_write(pid_);
        crash_here(crash_point::channel_send_dirty);
        view.append(std::span<const std::byte>(static_cast<const std::byte*>(m.data()), m.size()),
                    pid_, ec);
        crash_here(crash_point::channel_send_published);
        view.end_write();
        if (ec)
            break;
    }
    std::vector<operation> extra;
    if (view.any_sleeping()) { // else no reader entry is touched
        for (std::size_t r = 0; r < options_.shape.max_readers; ++r)
            if (view.take_sleeping(r))
                extra.push_back(op::release(sems_.doorbell(r)));
        view.clear_sleeping_count();
    }
    // A writer that found the ring full first retries on posted passes for a while (the reader,
    // awake, frees room without the lock); only then does it count itself as waiting, which
    // sends readers to the locked path that rings `space`.
    if (wait_for_room && !ec) {
        const auto now = std::chrono::steady_clock::now();
        if (spin_until == std::chrono::steady_clock::time_point{})
            spin_until = now + space_spin_time;
        out.spin = now < spin_until;
        if (!out.spin)
            view.set_waiting_writers(view.waiting_writers() + 1);
    }
    crash_here(crash_point::channel_send_unlocking);
    error_code unlock_error;
    unlock(extra, unlock_error);
    if (!ec)
        ec = unlock_error;
    ec = room_error(ec);
    return out;
}

// A send decided in its initiating function: valid, the lock free, and then either every message
// from `next` on was sent or an error is in `ec`. False (the ring is full: the messages before
// `next` were sent; or the lock is taken; or an error to report through the executor): the
// composed operation takes over.
bool channel_state::send_now(std::span<const boost::asio::const_buffer> messages, std::size_t& next,
                             error_code& ec) {
    if (closed_ || messages.empty() || send_error(messages) || !try_lock())
        return false;
    std::chrono::steady_clock::time_point spin_until{};
    const auto sent = send_locked(messages, next, spin_until);
    ec = sent.ec;
    return sent.ec || !sent.wait_for_room;
}

error_code channel_state::send_error(std::span<const boost::asio::const_buffer> messages) const {
    for (const auto& m : messages)
        if (m.size() > options_.shape.max_message_size)
            return make_error_code(errc::limit_exceeded);
    if (!set().is_open())
        return make_error_code(errc::not_open);
    return {};
}

// Receive --------------------------------------------------------------------------------------

std::vector<int> channel_semaphores::initial_values() const {
    std::vector<int> v(count(), 0);
    v[lock] = 1;
    for (std::size_t r = 0; r < readers; ++r)
        v[slot(r)] = 1;
    return v;
}

// A receive decided in its initiating function: messages (or a missed notice) are buffered, or
// in the ring for this reader without the lock.
bool channel_state::receive_now(channel_batch* into) {
    return !closed_ && slot_ != no_slot &&
           (has_buffered() || drain_without_lock(into) == drained::taken);
}

// The fast path (no syscall): messages between our cursor and head are ours to copy without the
// lock. Not taken when writers wait for room (the locked path wakes them) or when anything
// needs the lock's view (missed messages, a malformed ring).
channel_state::drained channel_state::drain_without_lock(channel_batch* into) {
    error_code ec;
    auto view = open_view(ec);
    if (ec || view.waiting_writers() > 0 || !cursor_is_ours(view))
        return drained::need_lock;
    if (into != nullptr && !has_buffered()) { // straight into the caller's batch
        const std::size_t before = into->size();
        const auto read = view.read_unlocked(slot_, *into, max_batch);
        if (read == ring::view::unlocked_read::need_lock)
            return drained::need_lock;
        if (read != ring::view::unlocked_read::taken || into->size() == before)
            return drained::empty;
        remember_cursor(view);
        return drained::taken;
    }
    auto& batch = unlocked_batch_;
    batch.clear();
    const auto read = view.read_unlocked(slot_, batch, max_batch);
    if (read == ring::view::unlocked_read::need_lock)
        return drained::need_lock;
    if (read != ring::view::unlocked_read::taken || batch.empty())
        return drained::empty;
    remember_cursor(view);
    for (auto& m : batch)
        inbox_.push_back(std::move(m));
    batch.clear();
    return drained::taken;
}

// With the lock: reads everything available into the inbox (or the missed count), wakes writers
// waiting for room, and, when there was nothing, marks this reader asleep (writers then ring its
// doorbell). Releases the lock.
channel_state::receive_outcome channel_state::receive_locked(channel_batch* into) {
    receive_outcome out;
    error_code& ec = out.ec;
    auto view = open_view(ec);
    std::vector<ring::message> batch;
    std::uint64_t missed = 0;
    // A receive into a batch reads straight into it when nothing is buffered before.
    if (into != nullptr && has_buffered())
        into = nullptr;
    const std::size_t into_before = into != nullptr ? into->size() : 0;
    crash_here(crash_point::channel_receive_locked);
    if (!ec && !cursor_is_ours(view)) {
        // Another process wrote this reader's position: report it, go on from head.
        ec = make_error_code(errc::corrupt_segment);
        view.resync_reader(slot_);
        remember_cursor(view);
    } else if (!ec) {
        if (into != nullptr)
            view.read(slot_, *into, missed, max_batch, ec);
        else
            view.read(slot_, batch, missed, max_batch, ec);
        remember_cursor(view); // also after a resync to head (corrupt_segment)
        crash_here(crash_point::channel_receive_read);
    }
    std::vector<operation> extra;
    const bool progressed =
        !batch.empty() || missed != 0 || (into != nullptr && into->size() != into_before);
    if (view.waiting_writers() > 0) {
        // Wake the writers waiting for room (they re-check under the lock). Even when this pass
        // read nothing: this reader may have made the room earlier, on its lock-free path,
        // while the writer was deciding to wait.
        extra.push_back(op::release(
            sems_.space, static_cast<int>(std::min<std::uint32_t>(view.waiting_writers(), 1000))));
        view.set_waiting_writers(0);
    }
    out.sleep = !ec && !progressed;
    if (out.sleep)
        view.set_sleeping(slot_, true);
    error_code unlock_error;
    unlock(extra, unlock_error);
    if (!ec)
        ec = unlock_error;
    if (!ec && out.sleep)
        ec = check_objects_every(object_check_interval);
    if (ec) {
        if (into != nullptr) // what was read goes with the error, as into the inbox
            into->truncate(into_before);
        ec = room_error(ec);
        return out;
    }
    pending_missed_ += missed;
    for (auto& m : batch)
        inbox_.push_back(std::move(m));
    if (into != nullptr && missed != 0) {
        // The missed notice completes this receive alone: what was read after the drop waits
        // in the inbox for the next one.
        for (std::size_t i = into_before; i < into->size(); ++i) {
            const auto m = (*into)[i];
            inbox_.push_back({{m.bytes.begin(), m.bytes.end()}, m.sender_pid, m.sequence});
        }
        into->truncate(into_before);
    }
    return out;
}

// The next buffered result: a missed-messages notice first, then messages in order.
std::pair<error_code, channel_message> channel_state::next_buffered() {
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

// A batch: a missed-messages notice alone, or every buffered message in order.
std::pair<error_code, std::vector<channel_message>> channel_state::take_all_buffered() {
    std::vector<channel_message> all;
    if (pending_missed_ != 0) {
        auto [ec, notice] = next_buffered();
        all.push_back(std::move(notice));
        return {ec, std::move(all)};
    }
    all.reserve(inbox_.size());
    while (!inbox_.empty())
        all.push_back(next_buffered().second);
    return {error_code{}, std::move(all)};
}

// A batch into the caller's buffer: a missed-messages notice alone, or what the inbox holds
// (messages a drain read straight into `into` are there already).
std::pair<error_code, std::size_t> channel_state::take_into(channel_batch& into) {
    if (pending_missed_ != 0) {
        into.clear();
        into.set_missed(std::exchange(pending_missed_, 0));
        return {make_error_code(errc::messages_missed), 0};
    }
    for (; !inbox_.empty(); inbox_.pop_front()) {
        const auto& m = inbox_.front();
        into.push_back(m.bytes, m.sender_pid, m.sequence);
    }
    return {error_code{}, into.size()};
}

// Members --------------------------------------------------------------------------------------

// With the lock (unless `ec` says why not): the live members, or (reap_lost) the dead readers
// found since the last call, whose entries are cleared.
std::pair<error_code, std::vector<ring::member>> channel_state::table_locked(bool reap_lost,
                                                                             error_code ec) {
    std::vector<ring::member> result;
    if (!ec && (ec = check_objects())) {
        error_code ignored;
        unlock(ignored);
    } else if (!ec) {
        auto view = open_view(ec);
        std::vector<int> values;
        if (!ec)
            values = set().values(ec);
        if (!ec && reap_lost) {
            crash_here(crash_point::channel_reap_locked);
            result = std::exchange(lost_, {});
            reap(view, values, result);
        } else if (!ec) {
            for (std::size_t r = 0; r < options_.shape.max_readers; ++r)
                if (view.in_use(r) && values[sems_.slot(r)] == 0)
                    result.push_back({r, view.pid(r), view.label(r)});
        }
        error_code unlock_error;
        unlock(unlock_error);
        if (!ec)
            ec = unlock_error;
    }
    return {room_error(ec), std::move(result)};
}

} // namespace sysv::detail
