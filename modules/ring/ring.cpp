// sysv.ring: the ring's logic over the bytes of a segment (layout in sysv.ring.cppm).
module;

#include <boost/system/error_code.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

module sysv.ring;

namespace sysv::ring {

error_code validate(const layout& l) noexcept {
    if (l.max_readers < 1 || l.max_message_size < 1 || l.capacity % 8 != 0)
        return make_error_code(errc::invalid_argument);
    if (l.max_readers > 1024 || l.max_message_size > (16u << 20) ||
        l.capacity > (std::uint64_t(1) << 40))
        return make_error_code(errc::limit_exceeded);
    if (l.capacity < 2 * record_size(l.max_message_size))
        return make_error_code(errc::invalid_argument);
    return {};
}

std::string describe(const layout& l) {
    std::string s = "readers " + std::to_string(l.max_readers) + ", messages up to " +
                    std::to_string(l.max_message_size) + " bytes, ring " +
                    std::to_string(l.capacity) + " bytes";
    if (l.max_readers < 1 || l.max_readers > 1024)
        s += "; readers must be 1..1024";
    if (l.max_message_size < 1 || l.max_message_size > (16u << 20))
        s += "; message size must be 1..16 MiB";
    if (l.capacity % 8 != 0)
        s += "; the ring size must be a multiple of 8";
    else if (l.capacity < 2 * record_size(l.max_message_size))
        s += "; the ring must hold at least two of the largest records (" +
             std::to_string(2 * record_size(l.max_message_size)) + " bytes)";
    return s;
}

bool operator==(const layout& a, const layout& b) noexcept {
    return a.max_readers == b.max_readers && a.max_message_size == b.max_message_size &&
           a.capacity == b.capacity;
}

std::uint64_t segment_size(const layout& l) noexcept {
    return offsets::header_size + std::uint64_t(l.max_readers) * offsets::entry_size + l.capacity;
}

namespace {
template <class T>
void put(std::span<std::byte> s, std::size_t offset, T v) noexcept {
    std::memcpy(s.data() + offset, &v, sizeof v);
}
template <class T>
T get(std::span<const std::byte> s, std::size_t offset) noexcept {
    T v;
    std::memcpy(&v, s.data() + offset, sizeof v);
    return v;
}

// Copies a message between the ring and a process's own memory. glibc 2.36 (Debian 12) copies large
// blocks with `rep movsb`, which AMD processors with FSRM run 10-20 times slower when the
// destination's offset in its page is just above the source's ((dst - src) mod 4096 in 1..63,
// glibc bug 30994): 2 GB/s instead of 35 for a 64 KiB copy, measured on an AMD EPYC.
// Records sit at 8-byte steps through the ring and a reader's buffers wherever malloc puts
// them, so some large messages would hit it, and every one of them for a process whose buffers
// keep that distance: such copies go through a plain 64-byte loop instead (25 GB/s there).
bool slow_for_memcpy(const std::byte* dst, const std::byte* src, std::size_t n) noexcept {
    const auto distance =
        (reinterpret_cast<std::uintptr_t>(dst) - reinterpret_cast<std::uintptr_t>(src)) & 4095;
    return n >= 1024 && distance != 0 && distance < 64;
}
void copy_in_blocks(std::byte* dst, const std::byte* src, std::size_t n) noexcept {
    std::size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __builtin_memcpy_inline(dst + i, src + i, 64);
        asm volatile("" ::: "memory"); // or the compiler turns the loop back into one memcpy
    }
    std::memcpy(dst + i, src + i, n - i);
}
void copy_bytes(std::byte* dst, const std::byte* src, std::size_t n) noexcept {
    if (slow_for_memcpy(dst, src, n))
        copy_in_blocks(dst, src, n);
    else
        std::memcpy(dst, src, n);
}
// A message's bytes, copied out of the ring (reserved first: where they go decides the copy).
void copy_out(std::vector<std::byte>& bytes, const std::byte* data, std::size_t n) {
    bytes.reserve(n);
    if (!slow_for_memcpy(bytes.data(), data, n)) {
        bytes.assign(data, data + n);
        return;
    }
    bytes.resize(n);
    copy_in_blocks(bytes.data(), data, n);
}

// The two kinds of read output.
void add_message(std::vector<message>& out, const std::byte* data, std::uint32_t length,
                 std::uint32_t sender_pid, std::uint64_t sequence) {
    message m;
    m.sender_pid = sender_pid;
    m.sequence = sequence;
    copy_out(m.bytes, data, length);
    out.push_back(std::move(m));
}
void add_message(message_batch& out, const std::byte* data, std::uint32_t length,
                 std::uint32_t sender_pid, std::uint64_t sequence) {
    out.push_back({data, length}, sender_pid, sequence);
}
void truncate_messages(std::vector<message>& out, std::size_t n) {
    out.resize(n);
}
void truncate_messages(message_batch& out, std::size_t n) noexcept {
    out.truncate(n);
}
} // namespace

void message_batch::push_back(std::span<const std::byte> bytes, std::uint32_t sender_pid,
                              std::uint64_t sequence) {
    const std::size_t offset = (used_ + 15) & ~std::size_t(15);
    if (offset + bytes.size() > capacity_) {
        // Doubles (at least 4 KiB): a drain of many messages grows it a few times, then never.
        const std::size_t capacity =
            std::max({offset + bytes.size(), 2 * capacity_, std::size_t(4096)});
        std::unique_ptr<std::byte[]> grown(new std::byte[capacity]);
        if (used_ != 0)
            std::memcpy(grown.get(), buffer_.get(), used_);
        buffer_ = std::move(grown);
        capacity_ = capacity;
    }
    entries_.push_back({offset, static_cast<std::uint32_t>(bytes.size()), sender_pid, sequence});
    if (!bytes.empty())
        copy_bytes(buffer_.get() + offset, bytes.data(), bytes.size());
    used_ = offset + bytes.size();
}

void message_batch::truncate(std::size_t n) noexcept {
    if (n >= entries_.size())
        return;
    entries_.resize(n);
    used_ = n == 0 ? 0 : entries_.back().offset + entries_.back().size;
}

void initialise(std::span<std::byte> segment, const layout& l, std::uint64_t owner,
                std::uint64_t pid_namespace) noexcept {
    std::memset(segment.data(), 0, offsets::header_size + l.max_readers * offsets::entry_size);
    put<std::uint64_t>(segment, offsets::owner, owner);
    put<std::uint64_t>(segment, offsets::pid_namespace, pid_namespace);
    put<std::uint32_t>(segment, offsets::version, version);
    put<std::uint32_t>(segment, offsets::max_readers, l.max_readers);
    put<std::uint32_t>(segment, offsets::max_message_size, l.max_message_size);
    put<std::uint64_t>(segment, offsets::capacity, l.capacity);
    // Last, with release ordering: a crash before leaves it blank, and a process that sees the
    // magic (is_blank() loads it with acquire) sees the fields written before it.
    __atomic_store_n(reinterpret_cast<std::uint64_t*>(segment.data() + offsets::magic), magic,
                     __ATOMIC_RELEASE);
}

bool is_blank(std::span<const std::byte> segment) noexcept {
    return segment.size() < offsets::header_size ||
           __atomic_load_n(reinterpret_cast<const std::uint64_t*>(segment.data() + offsets::magic),
                           __ATOMIC_ACQUIRE) == 0;
}

namespace {
// The header's identity and the layout it stores: errc::corrupt_segment for a segment shorter
// than a header, errc::foreign_object for another magic or version.
error_code read_layout(std::span<const std::byte> s, layout& stored) noexcept {
    if (s.size() < offsets::header_size)
        return make_error_code(errc::corrupt_segment);
    if (get<std::uint64_t>(s, offsets::magic) != magic ||
        get<std::uint32_t>(s, offsets::version) != version)
        return make_error_code(errc::foreign_object);
    stored.max_readers = get<std::uint32_t>(s, offsets::max_readers);
    stored.max_message_size = get<std::uint32_t>(s, offsets::max_message_size);
    stored.capacity = get<std::uint64_t>(s, offsets::capacity);
    return {};
}
} // namespace

view view::open(std::span<std::byte> segment, error_code& ec) noexcept {
    layout l;
    if ((ec = read_layout(segment, l)))
        return view(segment, layout{});
    if (validate(l) || segment_size(l) > segment.size()) {
        ec = make_error_code(errc::corrupt_segment);
        return view(segment, layout{});
    }
    return view(segment, l);
}

view view::open(std::span<std::byte> segment, const layout& expected, error_code& ec) noexcept {
    layout stored;
    if (segment.size() < segment_size(expected)) {
        ec = make_error_code(errc::corrupt_segment);
        return view(segment, layout{});
    }
    if ((ec = read_layout(segment, stored)))
        return view(segment, layout{});
    if (!(stored == expected)) {
        ec = make_error_code(errc::corrupt_segment);
        return view(segment, layout{});
    }
    return view(segment, expected);
}

std::uint64_t view::load64(std::size_t offset) const noexcept {
    return get<std::uint64_t>(segment_, offset);
}
std::uint32_t view::load32(std::size_t offset) const noexcept {
    return get<std::uint32_t>(segment_, offset);
}
void view::store64(std::size_t offset, std::uint64_t v) noexcept {
    put(segment_, offset, v);
}
void view::store32(std::size_t offset, std::uint32_t v) noexcept {
    put(segment_, offset, v);
}
std::uint64_t view::load64_acquire(std::size_t offset) const noexcept {
    return __atomic_load_n(reinterpret_cast<const std::uint64_t*>(segment_.data() + offset),
                           __ATOMIC_ACQUIRE);
}
void view::store64_release(std::size_t offset, std::uint64_t v) noexcept {
    __atomic_store_n(reinterpret_cast<std::uint64_t*>(segment_.data() + offset), v,
                     __ATOMIC_RELEASE);
}

namespace {
std::uint64_t* word64(std::span<std::byte> s, std::size_t offset) noexcept {
    return reinterpret_cast<std::uint64_t*>(s.data() + offset);
}
std::uint32_t* word32(std::span<std::byte> s, std::size_t offset) noexcept {
    return reinterpret_cast<std::uint32_t*>(s.data() + offset);
}
} // namespace

std::uint64_t lock_word::holder() const noexcept {
    return __atomic_load_n(reinterpret_cast<const std::uint64_t*>(segment_.data() + offsets::lock),
                           __ATOMIC_ACQUIRE);
}
bool lock_word::try_lock(std::uint64_t me) noexcept {
    std::uint64_t expected = 0;
    return __atomic_compare_exchange_n(word64(segment_, offsets::lock), &expected, me, false,
                                       __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
}
bool lock_word::steal(std::uint64_t holder, std::uint64_t me) noexcept {
    return holder != 0 && __atomic_compare_exchange_n(word64(segment_, offsets::lock), &holder, me,
                                                      false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
}
void lock_word::mark_sleeper() noexcept {
    __atomic_store_n(word32(segment_, offsets::lock_sleepers), 1u, __ATOMIC_SEQ_CST);
}
lock_word::unlock_result lock_word::unlock(std::uint64_t me) noexcept {
    std::uint64_t expected = me;
    // Sequentially consistent with mark_sleeper() + try_lock(): a waiter either sees the lock
    // free, or its mark is seen here.
    if (!__atomic_compare_exchange_n(word64(segment_, offsets::lock), &expected, 0, false,
                                     __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
        return unlock_result::not_held;
    if (__atomic_load_n(word32(segment_, offsets::lock_sleepers), __ATOMIC_SEQ_CST) == 0)
        return unlock_result::released;
    return __atomic_exchange_n(word32(segment_, offsets::lock_sleepers), 0u, __ATOMIC_SEQ_CST) != 0
               ? unlock_result::released_wake_sleepers
               : unlock_result::released;
}

bool view::consistent(std::uint64_t head, std::uint64_t head_seq, std::uint64_t tail,
                      std::uint64_t tail_seq) const noexcept {
    // Every message between tail and head takes at least a record header of ring bytes.
    return tail <= head && head - tail <= layout_.capacity && tail_seq <= head_seq &&
           head % 8 == 0 && tail % 8 == 0 &&
           head_seq - tail_seq <= (head - tail) / record_header_size;
}

std::uint64_t view::cursor(std::size_t slot) const noexcept {
    return slot < layout_.max_readers ? load64(entry(slot) + offsets::cursor) : 0;
}
std::uint64_t view::cursor_sequence(std::size_t slot) const noexcept {
    return slot < layout_.max_readers ? load64(entry(slot) + offsets::cursor_seq) : 0;
}

bool view::fits(std::size_t payload) const noexcept {
    const std::uint64_t head = load64(offsets::head), tail = load64(offsets::tail);
    if (tail > head || head - tail > layout_.capacity || payload > layout_.max_message_size ||
        head % 8 != 0 || tail % 8 != 0)
        return false;
    // Worst case the record also needs a wrap marker filling the rest of the lap.
    const std::uint64_t offset = head % layout_.capacity;
    std::uint64_t need = record_size(payload);
    if (offset + need > layout_.capacity)
        need += layout_.capacity - offset;
    return layout_.capacity - (head - tail) >= need;
}

void view::collect(std::span<const std::uint8_t> live) noexcept {
    const std::uint64_t head = load64(offsets::head), tail = load64(offsets::tail);
    const std::uint64_t head_seq = load64(offsets::head_seq), tail_seq = load64(offsets::tail_seq);
    if (!consistent(head, head_seq, tail, tail_seq)) {
        reset_to_head(); // inconsistent: drop everything rather than trust it
        return;
    }
    // The slowest live cursor. Readers move their cursor without the lock, so only the
    // position is read (atomically); the sequence number comes from walking the records.
    std::uint64_t new_tail = head;
    const std::size_t n = std::min<std::size_t>(live.size(), layout_.max_readers);
    for (std::size_t slot = 0; slot < n; ++slot) {
        if (!live[slot] || load32(entry(slot) + offsets::in_use) == 0)
            continue;
        const std::uint64_t cursor = load64_acquire(entry(slot) + offsets::cursor);
        if (cursor < tail || cursor > head || cursor % 8 != 0)
            continue; // behind tail (it missed messages) or corrupt: it resyncs when it reads
        new_tail = std::min(new_tail, cursor);
    }
    // Bounded: each record moves pos forward by at least 8 bytes, and new_tail - tail is at
    // most the capacity.
    std::uint64_t pos = tail, seq = tail_seq;
    while (pos < new_tail) {
        std::uint64_t size = 0;
        bool is_message = false;
        if (!parse(pos, new_tail, seq, size, is_message)) {
            reset_to_head(); // a bad record or a cursor inside a record
            return;
        }
        pos += size;
        if (is_message)
            ++seq;
    }
    if (pos > tail) {
        store64(offsets::tail_seq, seq);
        store64_release(offsets::tail, pos);
    }
}

bool view::parse(std::uint64_t pos, std::uint64_t limit, std::uint64_t expected_seq,
                 std::uint64_t& size, bool& is_message) const noexcept {
    if (pos % 8 != 0)
        return false;
    // Aligned and capacity % 8 == 0: offset <= capacity - 8, so the length field is inside.
    const std::uint64_t offset = pos % layout_.capacity;
    const std::size_t base = ring_offset();
    const std::uint32_t length = load32(base + offset);
    if (length == wrap_marker) {
        size = layout_.capacity - offset;
        is_message = false;
        return pos + size <= limit;
    }
    if (length > layout_.max_message_size)
        return false;
    size = record_size(length);
    is_message = true;
    if (offset + size > layout_.capacity || pos + size > limit)
        return false;
    return load64(base + offset + 8) == expected_seq;
}

std::uint64_t view::drop_oldest(std::size_t payload, error_code& ec) noexcept {
    ec.clear();
    std::uint64_t dropped = 0;
    const std::uint64_t head = load64(offsets::head), head_seq = load64(offsets::head_seq);
    std::uint64_t tail = load64(offsets::tail), tail_seq = load64(offsets::tail_seq);
    if (!consistent(head, head_seq, tail, tail_seq)) {
        ec = make_error_code(errc::corrupt_segment);
        reset_to_head();
        return 0;
    }
    // Bounded: every step moves tail forward by at least 8 bytes towards head.
    while (!ec && !fits(payload) && tail < head) {
        std::uint64_t size = 0;
        bool is_message = false;
        if (!parse(tail, head, tail_seq, size, is_message)) {
            ec = make_error_code(errc::corrupt_segment);
            dropped += head_seq - tail_seq;
            reset_to_head();
            return dropped;
        }
        tail += size;
        if (is_message) {
            ++tail_seq;
            ++dropped;
        }
        store64(offsets::tail, tail);
        store64(offsets::tail_seq, tail_seq);
    }
    store64(offsets::tail_seq, tail_seq);
    store64_release(offsets::tail, tail);
    // Readers that copy without the lock must see tail move before the space is reused.
    __atomic_thread_fence(__ATOMIC_RELEASE);
    return dropped;
}

std::uint64_t view::append(std::span<const std::byte> payload, std::uint32_t sender_pid,
                           error_code& ec) noexcept {
    ec.clear();
    if (payload.size() > layout_.max_message_size || !fits(payload.size())) {
        ec = make_error_code(errc::invalid_argument);
        return 0;
    }
    std::uint64_t head = load64(offsets::head);
    const std::uint64_t seq = load64(offsets::head_seq);
    const std::size_t base = ring_offset();
    std::uint64_t offset = head % layout_.capacity;
    const std::uint64_t size = record_size(payload.size());
    if (offset + size > layout_.capacity) {
        store32(base + offset, wrap_marker);
        head += layout_.capacity - offset;
        offset = 0;
    }
    store32(base + offset, static_cast<std::uint32_t>(payload.size()));
    store32(base + offset + 4, sender_pid);
    store64(base + offset + 8, seq);
    if (!payload.empty())
        copy_bytes(segment_.data() + base + offset + record_header_size, payload.data(),
                   payload.size());
    detail::crash_here(detail::crash_point::ring_append_written);
    // Publish: readers see the record only once head moved past it (release: the record's
    // bytes are visible to a reader that loads head with acquire).
    store64(offsets::head_seq, seq + 1);
    store64_release(offsets::head, head + size);
    return seq;
}

void view::begin_write(std::uint32_t pid) noexcept {
    store32(offsets::dirty_pid, pid);
    store32(offsets::dirty, 1);
}
void view::end_write() noexcept {
    store32(offsets::dirty, 0);
}

bool view::repair() noexcept {
    if (load32(offsets::dirty) == 0)
        return false;
    store32(offsets::dirty, 0);
    store64(offsets::repairs, load64(offsets::repairs) + 1);
    return true;
}
std::uint64_t view::repairs() const noexcept {
    return load64(offsets::repairs);
}
std::uint32_t view::waiting_writers() const noexcept {
    return load32(offsets::waiting_writers);
}
void view::set_waiting_writers(std::uint32_t n) noexcept {
    store32(offsets::waiting_writers, n);
}
std::uint64_t view::full_since() const noexcept {
    return load64(offsets::full_since);
}
void view::set_full_since(std::uint64_t ns) noexcept {
    store64(offsets::full_since, ns);
}

void view::join(std::size_t slot, std::uint32_t pid, std::string_view label) noexcept {
    if (slot >= layout_.max_readers)
        return;
    const std::size_t e = entry(slot);
    store64(e + offsets::cursor, load64(offsets::head));
    store64(e + offsets::cursor_seq, load64(offsets::head_seq));
    store32(e + offsets::pid, pid);
    store32(e + offsets::sleeping, 0);
    char buffer[label_capacity] = {};
    std::memcpy(buffer, label.data(), std::min(label.size(), label_capacity - 1));
    std::memcpy(segment_.data() + e + offsets::label, buffer, label_capacity);
    store32(e + offsets::in_use, 1);
}

void view::leave(std::size_t slot) noexcept {
    if (slot >= layout_.max_readers)
        return;
    store32(entry(slot) + offsets::in_use, 0);
    store32(entry(slot) + offsets::pid, 0);
    store32(entry(slot) + offsets::sleeping, 0);
}

bool view::in_use(std::size_t slot) const noexcept {
    return slot < layout_.max_readers && load32(entry(slot) + offsets::in_use) != 0;
}
std::uint32_t view::pid(std::size_t slot) const noexcept {
    return slot < layout_.max_readers ? load32(entry(slot) + offsets::pid) : 0;
}
std::string view::label(std::size_t slot) const {
    if (slot >= layout_.max_readers)
        return {};
    char buffer[label_capacity];
    std::memcpy(buffer, segment_.data() + entry(slot) + offsets::label, label_capacity);
    // Bounded by the field, whatever the peer wrote (no terminator needed).
    return std::string(buffer, ::strnlen(buffer, label_capacity));
}

void view::resync_reader(std::size_t slot) noexcept {
    if (slot >= layout_.max_readers)
        return;
    store64(entry(slot) + offsets::cursor_seq, load64(offsets::head_seq));
    store64_release(entry(slot) + offsets::cursor, load64(offsets::head));
}

void view::set_sleeping(std::size_t slot, bool sleeping) noexcept {
    if (slot >= layout_.max_readers)
        return;
    const bool was = load32(entry(slot) + offsets::sleeping) != 0;
    const std::uint32_t count = load32(offsets::sleeping_readers);
    if (sleeping && !was) {
        store32(offsets::sleeping_readers, count == UINT32_MAX ? count : count + 1);
        detail::crash_here(detail::crash_point::ring_sleeper_counted);
    }
    store32(entry(slot) + offsets::sleeping, sleeping ? 1 : 0);
    if (!sleeping && was && count != 0)
        store32(offsets::sleeping_readers, count - 1);
}
bool view::take_sleeping(std::size_t slot) noexcept {
    if (slot >= layout_.max_readers || load32(entry(slot) + offsets::sleeping) == 0)
        return false;
    store32(entry(slot) + offsets::sleeping, 0);
    if (const std::uint32_t count = load32(offsets::sleeping_readers); count != 0)
        store32(offsets::sleeping_readers, count - 1);
    return true;
}

void view::read(std::size_t slot, std::vector<message>& out, std::uint64_t& missed,
                std::size_t max_messages, error_code& ec) {
    read_into(slot, out, missed, max_messages, ec);
}
void view::read(std::size_t slot, message_batch& out, std::uint64_t& missed,
                std::size_t max_messages, error_code& ec) {
    read_into(slot, out, missed, max_messages, ec);
}

template <class Out>
void view::read_into(std::size_t slot, Out& out, std::uint64_t& missed, std::size_t max_messages,
                     error_code& ec) {
    ec.clear();
    missed = 0;
    if (slot >= layout_.max_readers) {
        ec = make_error_code(errc::invalid_argument);
        return;
    }
    const std::size_t e = entry(slot);
    const std::uint64_t head = load64(offsets::head), head_seq = load64(offsets::head_seq);
    const std::uint64_t tail = load64(offsets::tail), tail_seq = load64(offsets::tail_seq);
    std::uint64_t cursor = load64(e + offsets::cursor), seq = load64(e + offsets::cursor_seq);
    auto resync = [&] {
        ec = make_error_code(errc::corrupt_segment);
        store64(e + offsets::cursor, head);
        store64(e + offsets::cursor_seq, head_seq);
    };
    if (!consistent(head, head_seq, tail, tail_seq) || cursor % 8 != 0 || cursor > head ||
        seq > head_seq) {
        resync();
        return;
    }
    if (cursor < tail || seq < tail_seq) { // records were dropped before this reader read them
        // Positions and sequences must tell the same story: every dropped message took at least
        // a record header of ring bytes, and at most a largest record plus the wrap marker
        // before it (plus one trailing wrap marker). Otherwise the count is not one the ring
        // could have produced.
        const std::uint64_t dropped = tail_seq - seq, bytes = tail - cursor;
        if (cursor >= tail || seq >= tail_seq || dropped > bytes / record_header_size ||
            bytes / (2 * record_size(layout_.max_message_size)) > dropped) {
            resync();
            return;
        }
        missed = dropped;
        cursor = tail;
        seq = tail_seq;
    } else if (head_seq - seq > (head - cursor) / record_header_size) {
        resync();
        return;
    }
    const std::size_t base = ring_offset();
    // Bounded: each record advances the cursor by >= 8 bytes and cursor < head <= tail + capacity.
    while (cursor < head && out.size() < max_messages) {
        std::uint64_t size = 0;
        bool is_message = false;
        if (!parse(cursor, head, seq, size, is_message)) {
            resync();
            return;
        }
        if (is_message) {
            const std::uint64_t offset = cursor % layout_.capacity;
            add_message(out, segment_.data() + base + offset + record_header_size,
                        load32(base + offset), load32(base + offset + 4), seq);
            ++seq;
        }
        cursor += size;
    }
    store64(e + offsets::cursor_seq, seq);
    store64_release(e + offsets::cursor, cursor);
}

view::unlocked_read view::read_unlocked(std::size_t slot, std::vector<message>& out,
                                        std::size_t max_messages) {
    return read_unlocked_into(slot, out, max_messages);
}
view::unlocked_read view::read_unlocked(std::size_t slot, message_batch& out,
                                        std::size_t max_messages) {
    return read_unlocked_into(slot, out, max_messages);
}

template <class Out>
view::unlocked_read view::read_unlocked_into(std::size_t slot, Out& out, std::size_t max_messages) {
    if (slot >= layout_.max_readers)
        return unlocked_read::need_lock;
    const std::size_t e = entry(slot);
    // Our own fields: only this reader writes them.
    std::uint64_t cursor = load64(e + offsets::cursor), seq = load64(e + offsets::cursor_seq);
    const std::uint64_t head = load64_acquire(offsets::head);
    const std::uint64_t tail = load64_acquire(offsets::tail);
    if (cursor == head)
        return unlocked_read::empty;
    if (head % 8 != 0 || tail % 8 != 0 || cursor % 8 != 0 || cursor < tail || cursor > head ||
        head - cursor > layout_.capacity)
        return unlocked_read::need_lock; // lapped, or something to sort out under the lock
    const std::size_t base = ring_offset();
    const std::size_t first = out.size();
    // The cursor is published per chunk of a quarter of the ring (once for small messages):
    // a writer waiting for room reuses what was copied while the rest is still being copied.
    const std::uint64_t chunk = std::max<std::uint64_t>(layout_.capacity / 4, 8);
    std::uint64_t start = cursor;
    std::size_t chunk_first = first;
    // If a writer dropped records we were copying, it moved tail past the chunk's start before
    // reusing their space: then what we copied may be torn, and the locked path sorts it out.
    // Otherwise the chunk is ours: publish the cursor past it.
    const auto publish = [&] {
        detail::crash_here(detail::crash_point::ring_unlocked_copied);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(reinterpret_cast<const std::uint64_t*>(segment_.data() + offsets::tail),
                            __ATOMIC_RELAXED) > start)
            return false;
        store64(e + offsets::cursor_seq, seq);
        store64_release(e + offsets::cursor, cursor);
        start = cursor;
        chunk_first = out.size();
        return true;
    };
    // Stopped short: what earlier chunks published is taken; the rest is for the locked path.
    const auto stopped = [&] {
        truncate_messages(out, chunk_first);
        return chunk_first > first ? unlocked_read::taken : unlocked_read::need_lock;
    };
    // Bounded: each record advances the cursor by >= 8 bytes and head - cursor <= capacity.
    while (cursor < head && out.size() - first < max_messages) {
        std::uint64_t size = 0;
        bool is_message = false;
        if (!parse(cursor, head, seq, size, is_message))
            return stopped();
        if (is_message) {
            const std::uint64_t offset = cursor % layout_.capacity;
            add_message(out, segment_.data() + base + offset + record_header_size,
                        load32(base + offset), load32(base + offset + 4), seq);
            ++seq;
        }
        cursor += size;
        if (cursor - start >= chunk && cursor < head && !publish())
            return stopped();
    }
    return publish() ? unlocked_read::taken : stopped();
}

} // namespace sysv::ring
