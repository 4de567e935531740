// sysv.ring: the byte layout and logic of a broadcast message ring in a shared segment, as plain
// code over a std::span<std::byte> (no syscalls), so it is unit-tested and fuzzed without IPC.
// sysv::channel (module sysv.channel) drives it under its lock.
//
// Segment layout (native endianness, every field at a fixed offset):
//   header | reader_entry[max_readers] | ring bytes[capacity]
// Ring positions are absolute byte counts that only grow; the offset in the ring is
// position % capacity. Records are 8-byte aligned: u32 length, u32 sender pid, u64 sequence,
// payload, padding. A record never wraps: when it does not fit before the end of the ring, a
// wrap marker (length 0xFFFFFFFF) fills the rest of the lap.
//   tail .. head   : records still readable (sequences tail_seq .. head_seq - 1)
//   reader cursor  : the next record a reader will read; a cursor behind tail has missed
//                    tail_seq - cursor_seq messages (dropped for a reader that did not keep up)
//   lock           : the channel's lock word: 0 when free, else the holder's identity (pid and
//                    start time, lock_identity()); taken and released by compare-and-swap.
//                    lock_sleepers is set by a waiter about to sleep, so the releaser wakes it.
//
// The segment is untrusted input: another process may have written anything. Every field is
// read once into a local, every position and length is checked against the layout that was
// validated against the real segment size, and every loop is bounded by the ring's capacity.
module;

#include <boost/system/error_code.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

export module sysv.ring;

export import sysv.core;

export namespace sysv::ring {

inline constexpr std::uint64_t magic = 0x314e484356535953ULL; // "SYSVCHN1"
inline constexpr std::uint32_t version = 5;
inline constexpr std::uint32_t wrap_marker = 0xFFFFFFFFu;
inline constexpr std::size_t label_capacity = 48;
inline constexpr std::size_t record_header_size = 16;

/// The shape of a channel: fixed at creation, stored in the header, checked on every open.
struct layout {
    std::uint32_t max_readers = 32;
    std::uint32_t max_message_size = 4096;
    std::uint64_t capacity = 256 * 1024; ///< ring bytes (a multiple of 8)
    /// Defined in ring.cpp, not defaulted: clang 16 emits a defaulted operator== of a module's
    /// type in every unit that uses it, a duplicate symbol for the linker.
    friend bool operator==(const layout& a, const layout& b) noexcept;
};

/// Size of a record holding `payload` bytes.
constexpr std::uint64_t record_size(std::uint64_t payload) noexcept {
    return (record_header_size + payload + 7) & ~std::uint64_t(7);
}

// Field offsets (the header is 192 bytes, a reader entry 96). The header's three cache lines are
// split by who reads and writes them, so that a message moves one line of the header between
// the writer's core and the reader's:
//   0..63    written at creation or rarely (shape, owner, repairs, waiting_writers): read by
//            everyone on every operation, it stays in every core's cache;
//   64..127  the ring's positions (head, tail and their sequences): written by every send, read
//            by every unlocked read, the one line that moves with each message;
//   128..191 the writers' own (the lock, its sleepers' mark, the dirty marker, the sleeping
//            readers' count, full_since): touched by every send, never by an awake reader's
//            unlocked read, so a writer's lock, unlock and dirty marker stay in its core's
//            cache instead of each pulling back the line the reader has just read.
// Reader entries are written by their reader (its cursor) and, rarely, by the lock holder.
namespace offsets {
inline constexpr std::size_t magic = 0, version = 8, max_readers = 12, max_message_size = 16,
                             capacity = 24, owner = 32, pid_namespace = 40, repairs = 48,
                             waiting_writers = 56, head = 64, head_seq = 72, tail = 80,
                             tail_seq = 88, lock = 128, dirty = 136, dirty_pid = 140,
                             lock_sleepers = 144, sleeping_readers = 148, full_since = 152,
                             header_size = 192;
inline constexpr std::size_t cursor = 0, cursor_seq = 8, pid = 16, in_use = 20, sleeping = 24,
                             label = 32, entry_size = 96;
} // namespace offsets

/// errc::invalid_argument / limit_exceeded unless the layout is usable: 1..1024 readers,
/// messages of 1..16 MiB, capacity a multiple of 8 holding at least two largest records.
error_code validate(const layout& l) noexcept;

/// "readers 32, messages up to 4096 bytes, ring 262144 bytes", plus what validate() objects to.
std::string describe(const layout& l);

/// Bytes of a segment with this layout (validate() it first).
std::uint64_t segment_size(const layout& l) noexcept;

/// Writes a fresh header (magic last) and clears the reader table. `owner` tags the segment with
/// what it belongs to (the channel stores its semaphore set's id: a segment and a set of
/// different generations are never paired).
/// `pid_namespace` records the PID namespace of the processes that may use it (lock identities
/// hold pids).
void initialise(std::span<std::byte> segment, const layout& l, std::uint64_t owner = 0,
                std::uint64_t pid_namespace = 0) noexcept;

/// The lock word of a process: its pid and the low 32 bits of its start time (a pid reused by a
/// later process comes with another start time). Never 0 for a real pid.
constexpr std::uint64_t lock_identity(std::uint32_t pid, std::uint64_t start_time) noexcept {
    return (std::uint64_t(pid) << 32) | (start_time & 0xffffffffu);
}
constexpr std::uint32_t lock_identity_pid(std::uint64_t identity) noexcept {
    return static_cast<std::uint32_t>(identity >> 32);
}

/// True if the segment has no header yet (all-zero magic: a freshly created segment, or a
/// creator that died before finishing initialise()).
bool is_blank(std::span<const std::byte> segment) noexcept;

/// The channel's lock word in a segment's header (at a fixed offset, so it is usable even when
/// the rest of the header was found corrupt). Atomic operations: none assumes the lock is held.
class lock_word {
public:
    /// `segment` must hold at least the header (offsets::header_size bytes).
    explicit lock_word(std::span<std::byte> segment) noexcept : segment_(segment) {}
    /// Who holds the lock (a lock_identity()), 0 when it is free.
    std::uint64_t holder() const noexcept;
    /// Takes the lock if it is free (compare-and-swap 0 -> `me`).
    bool try_lock(std::uint64_t me) noexcept;
    /// Takes the lock from `holder`, found dead, if it still holds it (compare-and-swap).
    bool steal(std::uint64_t holder, std::uint64_t me) noexcept;
    /// A waiter is about to sleep: the next unlock() reports it. Call before the last try_lock()
    /// (either that attempt sees the lock free, or the releaser sees the mark).
    void mark_sleeper() noexcept;
    enum class unlock_result { released, released_wake_sleepers, not_held };
    /// Releases the lock held by `me` and takes the sleepers' mark; not_held (nothing changed)
    /// if the word does not hold `me`: another process wrote it.
    unlock_result unlock(std::uint64_t me) noexcept;

private:
    std::span<std::byte> segment_;
};

/// One message taken from the ring.
struct message {
    std::vector<std::byte> bytes;
    std::uint32_t sender_pid = 0;
    std::uint64_t sequence = 0;
};

/// Messages copied out of the ring into one buffer that is reused from fill to fill: once it
/// has grown to what a read brings, reading allocates nothing (a std::vector<message> allocates
/// one buffer per message). What view::read() and read_unlocked() can fill, and what
/// sysv::channel's async_receive_batch(channel_batch&) does. Each message's bytes start at a
/// multiple of 16 in the buffer (like malloc's), and stay valid until the batch is next filled,
/// cleared or destroyed.
class message_batch {
public:
    /// One message of the batch (a view: see above for how long it is valid).
    struct message_view {
        std::span<const std::byte> bytes;
        std::uint32_t sender_pid = 0;
        std::uint64_t sequence = 0;
        std::string_view text() const noexcept {
            return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
        }
    };
    class const_iterator {
    public:
        using value_type = message_view;
        using difference_type = std::ptrdiff_t;
        const_iterator() = default;
        message_view operator*() const noexcept { return (*batch_)[index_]; }
        const_iterator& operator++() noexcept {
            ++index_;
            return *this;
        }
        const_iterator operator++(int) noexcept {
            auto old = *this;
            ++index_;
            return old;
        }
        friend bool operator==(const const_iterator& a, const const_iterator& b) noexcept {
            return a.index_ == b.index_;
        }

    private:
        friend class message_batch;
        const_iterator(const message_batch* batch, std::size_t index) noexcept
            : batch_(batch), index_(index) {}
        const message_batch* batch_ = nullptr;
        std::size_t index_ = 0;
    };

    std::size_t size() const noexcept { return entries_.size(); }
    bool empty() const noexcept { return entries_.empty(); }
    message_view operator[](std::size_t i) const noexcept {
        const entry& e = entries_[i];
        return {{buffer_.get() + e.offset, e.size}, e.sender_pid, e.sequence};
    }
    const_iterator begin() const noexcept { return {this, 0}; }
    const_iterator end() const noexcept { return {this, entries_.size()}; }
    /// How many messages were dropped before the reader read them, when a receive into this
    /// batch completed with errc::messages_missed (the batch is then empty); else 0.
    std::uint64_t missed() const noexcept { return missed_; }
    void set_missed(std::uint64_t count) noexcept { missed_ = count; }
    /// Empties the batch (and its missed count), keeping the buffer.
    void clear() noexcept {
        entries_.clear();
        used_ = 0;
        missed_ = 0;
    }
    /// Appends a copy of `bytes`.
    void push_back(std::span<const std::byte> bytes, std::uint32_t sender_pid,
                   std::uint64_t sequence);
    /// Removes the messages after the first `n`.
    void truncate(std::size_t n) noexcept;

private:
    struct entry {
        std::size_t offset;
        std::uint32_t size;
        std::uint32_t sender_pid;
        std::uint64_t sequence;
    };
    std::vector<entry> entries_;
    std::unique_ptr<std::byte[]> buffer_;
    std::size_t used_ = 0, capacity_ = 0;
    std::uint64_t missed_ = 0;
};

/// A reader-table entry as seen by members().
struct member {
    std::size_t slot;
    std::uint32_t pid;
    std::string label;
};

/// The ring in a segment whose header was checked against the segment's real size. All
/// methods assume the caller holds the channel's lock.
class view {
public:
    /// Checks magic, version and that the stored layout matches the segment size: errc::
    /// corrupt_segment (or foreign_object when the magic is not ours) otherwise.
    static view open(std::span<std::byte> segment, error_code& ec) noexcept;
    /// open() for a member that validated its layout once (validate(), and a segment of at
    /// least segment_size()): the stored layout must equal `expected` (errc::corrupt_segment
    /// otherwise), which spares validating it again on every operation.
    static view open(std::span<std::byte> segment, const layout& expected, error_code& ec) noexcept;

    const layout& shape() const noexcept { return layout_; }
    /// The tag written by initialise().
    std::uint64_t owner() const noexcept { return load64(offsets::owner); }
    /// The PID namespace written by initialise().
    std::uint64_t pid_namespace() const noexcept { return load64(offsets::pid_namespace); }

    // ---- writer side ----
    /// Whether a record of `payload` bytes fits without dropping anything.
    bool fits(std::size_t payload) const noexcept;
    /// Frees what every reader in `live` (slot -> alive, non-zero) has read: tail moves up to the
    /// slowest live cursor (or to head when no reader is live).
    void collect(std::span<const std::uint8_t> live) noexcept;
    /// Drops the oldest records until `payload` fits; returns how many were dropped. Readers
    /// behind the new tail will see them as missed. errc::corrupt_segment if a record is bad
    /// (the ring is then emptied: tail = head).
    std::uint64_t drop_oldest(std::size_t payload, error_code& ec) noexcept;
    /// Appends a record (call fits() or drop_oldest() first). Returns its sequence.
    std::uint64_t append(std::span<const std::byte> payload, std::uint32_t sender_pid,
                         error_code& ec) noexcept;
    /// Marks a write in progress (a crash leaves it set) / done.
    void begin_write(std::uint32_t pid) noexcept;
    void end_write() noexcept;
    /// If a writer died mid-write: clears the marker and counts a repair. Nothing of its
    /// record is visible (head moves only after the record is complete). Returns true if
    /// there was something to repair.
    bool repair() noexcept;
    std::uint64_t repairs() const noexcept;
    std::uint32_t waiting_writers() const noexcept;
    void set_waiting_writers(std::uint32_t n) noexcept;
    /// When (steady clock, ns) writers first found the ring full with nothing left to free;
    /// 0 while it is not. Shared by all writers, so the grace for a slow reader is counted
    /// once, not per message.
    std::uint64_t full_since() const noexcept;
    void set_full_since(std::uint64_t ns) noexcept;

    // ---- reader side ----
    /// Takes reader slot `slot`: cursor at head (only messages from now on).
    void join(std::size_t slot, std::uint32_t pid, std::string_view label) noexcept;
    void leave(std::size_t slot) noexcept;
    bool in_use(std::size_t slot) const noexcept;
    std::uint32_t pid(std::size_t slot) const noexcept;
    std::string label(std::size_t slot) const;
    /// Reads up to `max_messages` records for reader `slot` into `out`; `missed` gets the
    /// number of messages dropped before this reader read them, which is never more than the
    /// ring bytes between the reader's cursor and tail could have held. A header whose
    /// positions and sequences disagree, a cursor outside what the ring can explain, or a
    /// malformed record gives errc::corrupt_segment; the cursor is then moved to head so the
    /// reader recovers with the next message.
    void read(std::size_t slot, std::vector<message>& out, std::uint64_t& missed,
              std::size_t max_messages, error_code& ec);
    /// read() into a batch (appended to what it holds).
    void read(std::size_t slot, message_batch& out, std::uint64_t& missed, std::size_t max_messages,
              error_code& ec);
    /// The reader's fast path, without the lock: copies the records between its cursor and
    /// head, then advances its cursor (after each quarter of the ring copied, so that a writer
    /// waiting for room goes on while large messages are still being copied; at the end for
    /// small ones). Safe because writers never reuse ring space at or after a live reader's
    /// cursor, except when they drop messages for a reader that did not keep up: then (or on
    /// anything unexpected) nothing more is taken (taken if an earlier part was, else
    /// need_lock), and the caller's next read goes under the lock with read(), which reports
    /// what was missed.
    enum class unlocked_read { taken, empty, need_lock };
    unlocked_read read_unlocked(std::size_t slot, std::vector<message>& out,
                                std::size_t max_messages);
    /// read_unlocked() into a batch (appended to what it holds).
    unlocked_read read_unlocked(std::size_t slot, message_batch& out, std::size_t max_messages);
    /// Moves reader `slot` to head (after its position was found overwritten).
    void resync_reader(std::size_t slot) noexcept;
    /// Sets the "waiting for a doorbell" flag of a reader / takes it (returns the old value).
    /// Setting it also counts it in the header (first the count, then the flag), so that a
    /// writer learns from one word on its own cache line whether to look at the flags at all.
    void set_sleeping(std::size_t slot, bool sleeping) noexcept;
    bool take_sleeping(std::size_t slot) noexcept;
    /// Whether a reader may be waiting for a doorbell: the count is never below the flags set
    /// (a crash between the two writes leaves it above), so 0 means none is.
    bool any_sleeping() const noexcept { return load32(offsets::sleeping_readers) != 0; }
    /// After taking every reader's flag: the count is 0 again (whatever it held).
    void clear_sleeping_count() noexcept { store32(offsets::sleeping_readers, 0); }

    /// A reader's position as stored in its table entry (only that reader writes it; a reader
    /// compares it with its own copy to notice anyone else writing it).
    std::uint64_t cursor(std::size_t slot) const noexcept;
    std::uint64_t cursor_sequence(std::size_t slot) const noexcept;

    std::uint64_t head() const noexcept { return load64(offsets::head); }
    std::uint64_t head_sequence() const noexcept { return load64(offsets::head_seq); }
    std::uint64_t tail() const noexcept { return load64(offsets::tail); }
    std::uint64_t tail_sequence() const noexcept { return load64(offsets::tail_seq); }

private:
    view(std::span<std::byte> segment, const layout& l) noexcept : segment_(segment), layout_(l) {}
    // The reads for either kind of output (defined and instantiated in ring.cpp only).
    template <class Out>
    void read_into(std::size_t slot, Out& out, std::uint64_t& missed, std::size_t max_messages,
                   error_code& ec);
    template <class Out>
    unlocked_read read_unlocked_into(std::size_t slot, Out& out, std::size_t max_messages);

    std::uint64_t load64(std::size_t offset) const noexcept;
    std::uint32_t load32(std::size_t offset) const noexcept;
    void store64(std::size_t offset, std::uint64_t v) noexcept;
    // Positions read by lock-free readers (head, tail, cursors): 8-byte aligned fields accessed
    // atomically, with acquire/release ordering against the record bytes.
    std::uint64_t load64_acquire(std::size_t offset) const noexcept;
    void store64_release(std::size_t offset, std::uint64_t v) noexcept;
    void store32(std::size_t offset, std::uint32_t v) noexcept;
    std::size_t entry(std::size_t slot) const noexcept {
        return offsets::header_size + slot * offsets::entry_size;
    }
    std::size_t ring_offset() const noexcept {
        return offsets::header_size + layout_.max_readers * offsets::entry_size;
    }
    /// The header's positions and sequences agree: tail <= head within one capacity, 8-byte
    /// aligned, and no more messages between them than record headers fit.
    bool consistent(std::uint64_t head, std::uint64_t head_seq, std::uint64_t tail,
                    std::uint64_t tail_seq) const noexcept;
    /// Empties the ring after finding it inconsistent: head rounded up to a record boundary,
    /// tail = head. Readers behind it resynchronise on their next read.
    void reset_to_head() noexcept {
        const std::uint64_t head = (load64(offsets::head) + 7) & ~std::uint64_t(7);
        store64(offsets::head, head);
        store64(offsets::tail_seq, load64(offsets::head_seq));
        store64_release(offsets::tail, head);
        // Readers that copy without the lock must see tail move before the space is reused.
        __atomic_thread_fence(__ATOMIC_RELEASE);
    }
    /// Parses the record at absolute position `pos` (must be < limit): its size in the ring
    /// (a wrap marker counts as the rest of the lap) and whether it is a message.
    bool parse(std::uint64_t pos, std::uint64_t limit, std::uint64_t expected_seq,
               std::uint64_t& size, bool& is_message) const noexcept;

    std::span<std::byte> segment_;
    layout layout_;
};

} // namespace sysv::ring
