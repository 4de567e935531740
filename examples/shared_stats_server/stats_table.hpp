// The shared table of shared_stats_server: named counters, per-worker statistics and per-client
// token buckets in one System V segment. Plain code over a byte span (no syscalls, no clock), so
// the crash-repair protocol is tested directly, one injected crash at a time
// (tests/stats_table.cpp).
//
// Segment layout (native endianness, every field at a fixed offset, every entry 8-byte aligned):
//   header (256 bytes, including the journal) | worker[max_workers] | counter[max_counters]
//   | bucket[max_clients]
//
// Who writes what:
//   * counters and buckets: whoever holds the table's lock (the server's sysv::mutex);
//   * a worker entry: only that worker (pid, request and lock statistics), without the lock,
//     one aligned 8-byte store per field; the master writes only `restarts` and clears `pid`
//     after reaping the worker;
//   * the header's shape fields: the master, once, before any worker exists (magic last).
//
// Crash repair (a holder killed with SIGKILL, the lock then released by the kernel's SEM_UNDO):
// every change to a counter or a bucket is one journaled step:
//   1. copy the old bytes of the region about to change into the journal (offset, length,
//      bytes) and the writer's pid; a crash here changed nothing (dirty is still 0);
//   2. set `dirty` (release: the undo record is complete before dirty can be seen);
//   3. change the region; a crash here leaves dirty set;
//   4. clear `dirty` (release: the change is complete before the step counts as done).
// The next lock holder calls repair() before anything else: if dirty is set, the previous holder
// died inside a step, so it copies the journal's bytes back (rolling the step back entirely),
// clears dirty and counts a repair. Copying back is idempotent, so a holder that dies while
// repairing leaves the same job to the next one. A journal whose region is not inside the
// counter or bucket arrays (the segment is untrusted) is discarded and counted, never applied.
//
// Lock-free readers (--watch, /stats' worker list) see each entry either before or after a step,
// never half of one: a counter's value is one aligned 8-byte store, and a new counter becomes
// visible only when its state is set, after its name and value (release/acquire). An increment
// made by a holder that died before committing may be seen until the next holder rolls it back.
//
// Everything read from the segment is untrusted: the header is checked against the real segment
// size, every length and index is bounds-checked, every loop is bounded by the validated shape,
// and names are re-validated before they leave the table.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace stats {

inline constexpr std::uint64_t magic = 0x3154415453565953ULL; // "SYSVSTA1"
inline constexpr std::uint32_t version = 1;
/// Longest counter name, in bytes.
inline constexpr std::size_t max_name = 64;
/// Bytes of a client address in a bucket (IPv4 addresses are stored IPv4-mapped).
inline constexpr std::size_t address_size = 16;
/// Buckets probed for one client: a bound on the work per request whatever the segment says.
inline constexpr std::size_t bucket_window = 16;
/// One token, in the fixed-point unit buckets store.
inline constexpr std::uint64_t micro = 1'000'000;

/// The shape of a table: fixed at creation, stored in the header, checked on every open.
struct shape {
    std::uint32_t max_counters = 1024;
    std::uint32_t max_workers = 64;
    std::uint32_t max_clients = 4096;
    friend bool operator==(const shape&, const shape&) = default;
};

namespace offsets {
// Header.
inline constexpr std::size_t magic = 0, version = 8, header_size = 12, max_counters = 16,
                             max_workers = 20, max_clients = 24, name_capacity = 28,
                             total_size = 32, master_pid = 40, started_ns = 48, repairs = 56,
                             discarded = 64;
// The journal (inside the header).
inline constexpr std::size_t dirty = 128, dirty_pid = 132, undo_offset = 136, undo_length = 144,
                             undo_bytes = 152, undo_capacity = 96, header_bytes = 256;
// A worker entry.
inline constexpr std::size_t worker_pid = 0, worker_restarts = 4, worker_requests = 8,
                             worker_limited = 16, worker_locks = 24, worker_contended = 32,
                             worker_wait_ns = 40, worker_hold_ns = 48, worker_max_wait_ns = 56,
                             worker_started_ns = 64, worker_connections = 72, worker_awaited = 80,
                             worker_semop_ns = 88, worker_hits = 96, worker_bytes = 128;
// A counter entry: the value, the state (0 empty, 1 used), the name's length and bytes.
inline constexpr std::size_t counter_value = 0, counter_state = 8, counter_length = 12,
                             counter_name = 16, counter_bytes = 16 + max_name;
// A bucket entry: client address, tokens (in micro-tokens), last refill (steady clock ns),
// state (0 empty, 1 used).
inline constexpr std::size_t bucket_address = 0, bucket_tokens = 16, bucket_last_ns = 24,
                             bucket_state = 32, bucket_bytes = 40;
} // namespace offsets
static_assert(offsets::counter_bytes <= offsets::undo_capacity &&
              offsets::bucket_bytes <= offsets::undo_capacity);
static_assert(offsets::undo_bytes + offsets::undo_capacity <= offsets::header_bytes);

inline constexpr std::uint32_t empty_entry = 0, used_entry = 1;

/// An empty string if the shape is usable, else what is wrong with it.
inline std::string check(const shape& s) {
    if (s.max_counters < 1 || s.max_counters > (1u << 20))
        return "the counter table must hold 1..1048576 names (--max-counters)";
    if (s.max_workers < 1 || s.max_workers > 1024)
        return "the worker table must hold 1..1024 workers";
    if (s.max_clients > (1u << 20))
        return "the client table must hold 0..1048576 clients (--max-clients)";
    return {};
}

/// Bytes of a segment holding a table of this shape.
constexpr std::uint64_t segment_size(const shape& s) noexcept {
    return offsets::header_bytes + std::uint64_t(s.max_workers) * offsets::worker_bytes +
           std::uint64_t(s.max_counters) * offsets::counter_bytes +
           std::uint64_t(s.max_clients) * offsets::bucket_bytes;
}

/// Counter names: 1..64 bytes of A-Z a-z 0-9 '.' '_' '-' (safe in URLs, JSON and terminals).
inline bool valid_name(std::string_view name) noexcept {
    if (name.empty() || name.size() > max_name)
        return false;
    for (char c : name)
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    return true;
}

/// FNV-1a: where a name or an address starts probing.
inline std::uint64_t hash_bytes(const void* data, std::size_t size) noexcept {
    std::uint64_t h = 0xcbf29ce484222325ULL;
    const auto* p = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < size; ++i) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/// What a journaled step changes (for hooks and messages).
enum class step { insert, increment, bucket, repair };
/// Where inside a step a hook runs: after the undo record and the dirty marker (nothing changed
/// yet), halfway through the change, and after the change but before the commit.
enum class point { journaled, half_written, written };

inline const char* to_string(step s) noexcept {
    switch (s) {
    case step::insert:
        return "insert";
    case step::increment:
        return "increment";
    case step::bucket:
        return "bucket";
    case step::repair:
        return "repair";
    }
    return "?";
}
inline const char* to_string(point p) noexcept {
    switch (p) {
    case point::journaled:
        return "journaled";
    case point::half_written:
        return "half_written";
    case point::written:
        return "written";
    }
    return "?";
}

/// The default hook: nothing. Tests inject crashes through a hook (a throw leaves the memory
/// exactly as a SIGKILL at that point would); the server's test builds can pause there.
struct no_hook {
    void operator()(step, point) const noexcept {}
};

/// One named counter, as read from the table.
struct counter {
    std::string name;
    std::uint64_t value = 0;
};

/// A worker entry, as read from the table.
struct worker_stats {
    std::uint32_t pid = 0;
    std::uint32_t restarts = 0;
    std::uint64_t requests = 0;
    std::uint64_t rate_limited = 0;
    std::uint64_t locks = 0;       ///< lock acquisitions
    std::uint64_t contended = 0;   ///< ... that had to wait (the first try_lock failed)
    std::uint64_t awaited = 0;     ///< ... of which spinning did not get it: co_await
    std::uint64_t semop_ns = 0;    ///< total time in the semops that took and gave it back
    std::uint64_t hits = 0;        ///< /hit requests applied under it (several per batch)
    std::uint64_t wait_ns = 0;     ///< total wait of the contended ones
    std::uint64_t hold_ns = 0;     ///< total time the lock was held
    std::uint64_t max_wait_ns = 0; ///< longest wait
    std::uint64_t started_ns = 0;  ///< steady clock when the worker started
    std::uint64_t connections = 0; ///< open now
};

/// The outcome of repair().
struct repair_result {
    bool repaired = false;  ///< a step interrupted by a crash was rolled back
    bool discarded = false; ///< the journal was invalid and was dropped
    std::uint32_t pid = 0;  ///< the writer recorded in the journal
};

/// The outcome of hit().
struct hit_result {
    bool stored = false; ///< false: the table is full (or the name is invalid)
    std::uint64_t value = 0;
};

/// The outcome of take_token().
struct token_result {
    bool admitted = false;
    std::uint64_t retry_after_ms = 0; ///< when refused: until the next token
};

namespace detail {
inline std::uint64_t load64(const std::byte* p) noexcept {
    return __atomic_load_n(reinterpret_cast<const std::uint64_t*>(p), __ATOMIC_RELAXED);
}
inline std::uint32_t load32(const std::byte* p) noexcept {
    return __atomic_load_n(reinterpret_cast<const std::uint32_t*>(p), __ATOMIC_RELAXED);
}
inline std::uint32_t load32_acquire(const std::byte* p) noexcept {
    return __atomic_load_n(reinterpret_cast<const std::uint32_t*>(p), __ATOMIC_ACQUIRE);
}
inline void store64(std::byte* p, std::uint64_t v) noexcept {
    __atomic_store_n(reinterpret_cast<std::uint64_t*>(p), v, __ATOMIC_RELAXED);
}
inline void store32(std::byte* p, std::uint32_t v) noexcept {
    __atomic_store_n(reinterpret_cast<std::uint32_t*>(p), v, __ATOMIC_RELAXED);
}
inline void store32_release(std::byte* p, std::uint32_t v) noexcept {
    __atomic_store_n(reinterpret_cast<std::uint32_t*>(p), v, __ATOMIC_RELEASE);
}
/// Copies 8-byte words (both regions 8-byte aligned, `size` a multiple of 8) with atomic word
/// accesses: lock-free readers may read the destination meanwhile.
inline void copy_words(std::byte* to, const std::byte* from, std::size_t size) noexcept {
    for (std::size_t i = 0; i < size; i += 8)
        store64(to + i, load64(from + i));
}
} // namespace detail

/// Writes a fresh table (magic last, so a crash before leaves a blank segment). `segment` must
/// hold segment_size(s) bytes and be 8-byte aligned; `started_ns` is the steady clock now.
inline void initialise(std::span<std::byte> segment, const shape& s, std::uint32_t master_pid,
                       std::uint64_t started_ns) noexcept {
    std::memset(segment.data(), 0, static_cast<std::size_t>(segment_size(s)));
    std::byte* base = segment.data();
    detail::store32(base + offsets::version, version);
    detail::store32(base + offsets::header_size, offsets::header_bytes);
    detail::store32(base + offsets::max_counters, s.max_counters);
    detail::store32(base + offsets::max_workers, s.max_workers);
    detail::store32(base + offsets::max_clients, s.max_clients);
    detail::store32(base + offsets::name_capacity, max_name);
    detail::store64(base + offsets::total_size, segment_size(s));
    detail::store32(base + offsets::master_pid, master_pid);
    detail::store64(base + offsets::started_ns, started_ns);
    __atomic_store_n(reinterpret_cast<std::uint64_t*>(base + offsets::magic), magic,
                     __ATOMIC_RELEASE);
}

/// The magic number at the start of a segment (0 for a blank one).
inline std::uint64_t read_magic(std::span<const std::byte> segment) noexcept {
    if (segment.size() < 8)
        return 0;
    return __atomic_load_n(reinterpret_cast<const std::uint64_t*>(segment.data()),
                           __ATOMIC_ACQUIRE);
}

/// A table in a segment whose header was checked against the segment's real size.
/// `Byte` is std::byte (read-write: the server) or const std::byte (read-only: --watch).
template <class Byte>
class basic_table {
    static constexpr bool writable = !std::is_const_v<Byte>;

public:
    /// Checks magic, version, header and entry sizes, the shape's limits and that the stored
    /// total size matches the shape and fits in `segment`. On failure: nullopt and `problem`
    /// says what is wrong.
    static std::optional<basic_table> open(std::span<Byte> segment, std::string& problem) {
        problem.clear();
        if (reinterpret_cast<std::uintptr_t>(segment.data()) % 8 != 0) {
            problem = "the segment is not 8-byte aligned";
            return std::nullopt;
        }
        if (segment.size() < offsets::header_bytes) {
            problem = "the segment (" + std::to_string(segment.size()) +
                      " bytes) is smaller than a table header";
            return std::nullopt;
        }
        const std::byte* base = segment.data();
        if (read_magic(segment) != magic) {
            problem = read_magic(segment) == 0 ? "the table is not initialised (blank header)"
                                               : "not a shared_stats_server table (wrong magic)";
            return std::nullopt;
        }
        const std::uint32_t v = detail::load32(base + offsets::version);
        if (v != version) {
            problem =
                "table version " + std::to_string(v) + ", expected " + std::to_string(version);
            return std::nullopt;
        }
        if (detail::load32(base + offsets::header_size) != offsets::header_bytes ||
            detail::load32(base + offsets::name_capacity) != max_name) {
            problem = "the header or entry sizes differ from this program's";
            return std::nullopt;
        }
        const shape s{detail::load32(base + offsets::max_counters),
                      detail::load32(base + offsets::max_workers),
                      detail::load32(base + offsets::max_clients)};
        if (auto bad = check(s); !bad.empty()) {
            problem = "the stored shape is invalid: " + bad;
            return std::nullopt;
        }
        const std::uint64_t total = detail::load64(base + offsets::total_size);
        if (total != segment_size(s) || total > segment.size()) {
            problem = "the stored size (" + std::to_string(total) + " bytes) does not match " +
                      "its shape (" + std::to_string(segment_size(s)) + ") or the segment (" +
                      std::to_string(segment.size()) + ")";
            return std::nullopt;
        }
        return basic_table(segment.first(static_cast<std::size_t>(total)), s);
    }

    const shape& table_shape() const noexcept { return shape_; }
    std::uint32_t master_pid() const noexcept { return load32(offsets::master_pid); }
    std::uint64_t started_ns() const noexcept { return load64(offsets::started_ns); }
    /// Steps rolled back after a crash, and invalid journals dropped.
    std::uint64_t repairs() const noexcept { return load64(offsets::repairs); }
    std::uint64_t discarded() const noexcept { return load64(offsets::discarded); }
    /// Whether a step is in progress (or was interrupted and not yet repaired).
    bool dirty() const noexcept { return detail::load32_acquire(at(offsets::dirty)) != 0; }

    // ---- counters ----

    /// Every valid counter (a snapshot; lock-free readers see each one before or after a step).
    /// `corrupt` (optional) gets the number of entries that are not valid and were skipped.
    std::vector<counter> counters(std::size_t* corrupt = nullptr) const {
        std::vector<counter> out;
        std::size_t bad = 0;
        for (std::uint32_t i = 0; i < shape_.max_counters; ++i) {
            const std::size_t e = counter_entry(i);
            const std::uint32_t state = detail::load32_acquire(at(e + offsets::counter_state));
            if (state == empty_entry)
                continue;
            std::string name;
            if (state != used_entry || !read_name(e, name)) {
                ++bad;
                continue;
            }
            out.push_back({std::move(name), load64(e + offsets::counter_value)});
        }
        if (corrupt)
            *corrupt = bad;
        return out;
    }

    /// The value of counter `name`, if it exists.
    std::optional<std::uint64_t> value(std::string_view name) const noexcept {
        const auto found = find(name);
        if (!found.found)
            return std::nullopt;
        return load64(counter_entry(found.index) + offsets::counter_value);
    }

    // ---- workers (lock-free: each field has a single writer) ----

    worker_stats worker(std::uint32_t slot) const noexcept {
        worker_stats w;
        if (slot >= shape_.max_workers)
            return w;
        const std::size_t e = worker_entry(slot);
        w.pid = load32(e + offsets::worker_pid);
        w.restarts = load32(e + offsets::worker_restarts);
        w.requests = load64(e + offsets::worker_requests);
        w.rate_limited = load64(e + offsets::worker_limited);
        w.locks = load64(e + offsets::worker_locks);
        w.contended = load64(e + offsets::worker_contended);
        w.wait_ns = load64(e + offsets::worker_wait_ns);
        w.hold_ns = load64(e + offsets::worker_hold_ns);
        w.max_wait_ns = load64(e + offsets::worker_max_wait_ns);
        w.started_ns = load64(e + offsets::worker_started_ns);
        w.connections = load64(e + offsets::worker_connections);
        w.awaited = load64(e + offsets::worker_awaited);
        w.semop_ns = load64(e + offsets::worker_semop_ns);
        w.hits = load64(e + offsets::worker_hits);
        return w;
    }

    /// The worker itself, when it starts: its pid, fresh statistics.
    void start_worker(std::uint32_t slot, std::uint32_t pid, std::uint64_t now_ns) noexcept
        requires writable
    {
        if (slot >= shape_.max_workers)
            return;
        const std::size_t e = worker_entry(slot);
        for (std::size_t f = offsets::worker_requests; f < offsets::worker_bytes; f += 8)
            store64(e + f, 0);
        store64(e + offsets::worker_started_ns, now_ns);
        store32(e + offsets::worker_pid, pid);
    }
    /// The master: after reaping a worker (pid 0 = not running) and before starting one.
    void set_worker_pid(std::uint32_t slot, std::uint32_t pid) noexcept
        requires writable
    {
        if (slot < shape_.max_workers)
            store32(worker_entry(slot) + offsets::worker_pid, pid);
    }
    void set_restarts(std::uint32_t slot, std::uint32_t restarts) noexcept
        requires writable
    {
        if (slot < shape_.max_workers)
            store32(worker_entry(slot) + offsets::worker_restarts, restarts);
    }
    /// The worker: how many connections it has open.
    void set_connections(std::uint32_t slot, std::uint64_t n) noexcept
        requires writable
    {
        if (slot < shape_.max_workers)
            store64(worker_entry(slot) + offsets::worker_connections, n);
    }
    /// The worker: one request answered (`limited`: with 429).
    void count_request(std::uint32_t slot, bool limited) noexcept
        requires writable
    {
        if (slot >= shape_.max_workers)
            return;
        const std::size_t e = worker_entry(slot);
        add64(e + offsets::worker_requests, 1);
        if (limited)
            add64(e + offsets::worker_limited, 1);
    }
    /// The worker: one lock acquisition, whether it had to wait (and co_await), how long, the
    /// hold time, the time spent in the semops that took the lock and gave it back, and how
    /// many hits were applied under it.
    void count_lock(std::uint32_t slot, bool contended, bool awaited, std::uint64_t wait_ns,
                    std::uint64_t hold_ns, std::uint64_t semop_ns, std::uint64_t hits) noexcept
        requires writable
    {
        if (slot >= shape_.max_workers)
            return;
        const std::size_t e = worker_entry(slot);
        add64(e + offsets::worker_locks, 1);
        add64(e + offsets::worker_hold_ns, hold_ns);
        add64(e + offsets::worker_semop_ns, semop_ns);
        add64(e + offsets::worker_hits, hits);
        if (awaited)
            add64(e + offsets::worker_awaited, 1);
        if (contended) {
            add64(e + offsets::worker_contended, 1);
            add64(e + offsets::worker_wait_ns, wait_ns);
            if (wait_ns > load64(e + offsets::worker_max_wait_ns))
                store64(e + offsets::worker_max_wait_ns, wait_ns);
        }
    }

    // ---- under the lock ----

    /// Rolls back a step that a crashed holder left unfinished (see the protocol at the top).
    /// Call first after taking the lock. The hook sees step::repair with point::half_written
    /// halfway through the copy back.
    template <class Hook = no_hook>
    repair_result repair(Hook&& hook = {})
        requires writable
    {
        repair_result r;
        if (!dirty())
            return r;
        r.pid = load32(offsets::dirty_pid);
        const std::uint64_t offset = load64(offsets::undo_offset);
        const std::uint64_t length = load32(offsets::undo_length);
        if (!valid_region(offset, length)) {
            r.discarded = true;
            store64(offsets::discarded, load64(offsets::discarded) + 1);
            __atomic_thread_fence(__ATOMIC_RELEASE);
            detail::store32_release(at(offsets::dirty), 0);
            return r;
        }
        const auto off = static_cast<std::size_t>(offset), len = static_cast<std::size_t>(length);
        const std::size_t half = (len / 16) * 8;
        detail::copy_words(at(off), at(offsets::undo_bytes), half);
        hook(step::repair, point::half_written);
        detail::copy_words(at(off + half), at(offsets::undo_bytes + half), len - half);
        __atomic_thread_fence(__ATOMIC_RELEASE);
        detail::store32_release(at(offsets::dirty), 0);
        store64(offsets::repairs, load64(offsets::repairs) + 1);
        r.repaired = true;
        return r;
    }

    /// Adds one to counter `name` (creating it at 0 first if needed): one journaled step to
    /// insert, one to increment. Returns the new value, or stored == false when the table is
    /// full or the name is invalid. Call repair() first.
    template <class Hook = no_hook>
    hit_result hit(std::string_view name, std::uint32_t pid, Hook&& hook = {})
        requires writable
    {
        if (!valid_name(name))
            return {};
        const auto found = find(name);
        std::uint32_t index = found.index;
        if (!found.found) {
            if (!found.free)
                return {};
            insert(index, name, pid, hook);
        }
        const std::size_t value_at = counter_entry(index) + offsets::counter_value;
        const std::uint64_t value = load64(value_at) + 1;
        journaled(step::increment, value_at, 8, pid, hook, [&] {
            hook(step::increment, point::half_written); // one store: nothing is half-written
            store64(value_at, value);
        });
        return {true, value};
    }

    /// Token bucket of client `address` (16 bytes): refills at `rate_per_s` tokens per second up
    /// to `burst` tokens, then takes one token if there is one. One journaled step. `now_ns` is
    /// the steady clock (shared by every process of the machine). A client's bucket lives in
    /// one of bucket_window slots from its hash; when all are taken by others, the least
    /// recently seen is given to it (a new bucket starts full). Call repair() first.
    template <class Hook = no_hook>
    token_result take_token(std::span<const std::byte, address_size> address, std::uint64_t now_ns,
                            std::uint64_t rate_per_s, std::uint64_t burst, std::uint32_t pid,
                            Hook&& hook = {})
        requires writable
    {
        if (shape_.max_clients == 0 || rate_per_s == 0)
            return {true, 0};
        // Bounds that keep the arithmetic below in 64 bits whatever the options and segment say.
        rate_per_s = std::min<std::uint64_t>(rate_per_s, 1'000'000);
        burst = std::clamp<std::uint64_t>(burst, 1, 1'000'000);
        const std::uint64_t capacity = burst * micro;
        const std::uint64_t h = hash_bytes(address.data(), address.size());
        const std::size_t window = std::min<std::size_t>(bucket_window, shape_.max_clients);
        std::size_t chosen = 0;
        bool matched = false, have_empty = false;
        std::uint64_t oldest = UINT64_MAX;
        for (std::size_t i = 0; i < window && !matched; ++i) {
            const auto slot = static_cast<std::uint32_t>((h + i) % shape_.max_clients);
            const std::size_t e = bucket_entry(slot);
            const std::uint32_t state = load32(e + offsets::bucket_state);
            if (state == used_entry &&
                std::memcmp(at(e + offsets::bucket_address), address.data(), address_size) == 0) {
                chosen = slot;
                matched = true;
            } else if (state == empty_entry) {
                if (!have_empty) {
                    chosen = slot;
                    have_empty = true;
                }
            } else if (!have_empty) {
                // In use by another client (or an invalid state): evict the least recent.
                const std::uint64_t last =
                    state == used_entry ? load64(e + offsets::bucket_last_ns) : 0;
                if (last < oldest) {
                    oldest = last;
                    chosen = slot;
                }
            }
        }
        const std::size_t e = bucket_entry(static_cast<std::uint32_t>(chosen));
        std::uint64_t tokens = capacity, last = now_ns;
        if (matched) {
            tokens = std::min(load64(e + offsets::bucket_tokens), capacity);
            last = load64(e + offsets::bucket_last_ns);
            // A refill time in the future is corrupt: count from now.
            const std::uint64_t elapsed =
                now_ns > last ? std::min<std::uint64_t>(now_ns - last, 3'600'000'000'000ULL) : 0;
            // elapsed_ns * rate micro-tokens per 1e9 ns = elapsed_ns * rate / 1000.
            tokens = std::min(capacity, tokens + elapsed / 1000 * rate_per_s +
                                            (elapsed % 1000) * rate_per_s / 1000);
        }
        token_result result;
        if (tokens >= micro) {
            tokens -= micro;
            result.admitted = true;
        } else {
            const std::uint64_t missing = micro - tokens;
            const std::uint64_t per_second = rate_per_s * micro;
            result.retry_after_ms = (missing * 1000 + per_second - 1) / per_second;
        }
        journaled(step::bucket, e, offsets::bucket_bytes, pid, hook, [&] {
            if (!matched) {
                std::memcpy(at(e + offsets::bucket_address), address.data(), address_size);
                store32(e + offsets::bucket_state, used_entry);
            }
            store64(e + offsets::bucket_tokens, tokens);
            hook(step::bucket, point::half_written);
            store64(e + offsets::bucket_last_ns, now_ns);
        });
        return result;
    }

    /// The raw bytes (for tests comparing states).
    std::span<Byte> bytes() const noexcept { return segment_; }

private:
    basic_table(std::span<Byte> segment, const shape& s) noexcept : segment_(segment), shape_(s) {}

    Byte* at(std::size_t offset) const noexcept { return segment_.data() + offset; }
    std::uint64_t load64(std::size_t offset) const noexcept { return detail::load64(at(offset)); }
    std::uint32_t load32(std::size_t offset) const noexcept { return detail::load32(at(offset)); }
    void store64(std::size_t offset, std::uint64_t v) const noexcept
        requires writable
    {
        detail::store64(at(offset), v);
    }
    void store32(std::size_t offset, std::uint32_t v) const noexcept
        requires writable
    {
        detail::store32(at(offset), v);
    }
    void add64(std::size_t offset, std::uint64_t n) const noexcept
        requires writable
    {
        store64(offset, load64(offset) + n);
    }

    std::size_t workers_begin() const noexcept { return offsets::header_bytes; }
    std::size_t counters_begin() const noexcept {
        return workers_begin() + std::size_t(shape_.max_workers) * offsets::worker_bytes;
    }
    std::size_t buckets_begin() const noexcept {
        return counters_begin() + std::size_t(shape_.max_counters) * offsets::counter_bytes;
    }
    std::size_t worker_entry(std::uint32_t i) const noexcept {
        return workers_begin() + std::size_t(i) * offsets::worker_bytes;
    }
    std::size_t counter_entry(std::uint32_t i) const noexcept {
        return counters_begin() + std::size_t(i) * offsets::counter_bytes;
    }
    std::size_t bucket_entry(std::uint32_t i) const noexcept {
        return buckets_begin() + std::size_t(i) * offsets::bucket_bytes;
    }

    /// A journal region must lie inside the counter or bucket arrays (never the header or the
    /// workers), be word-aligned, non-empty and fit the journal.
    bool valid_region(std::uint64_t offset, std::uint64_t length) const noexcept {
        return length > 0 && length <= offsets::undo_capacity && length % 8 == 0 &&
               offset % 8 == 0 && offset >= counters_begin() && offset <= segment_.size() &&
               length <= segment_.size() - offset;
    }

    /// Reads and validates the name of counter entry `e`.
    bool read_name(std::size_t e, std::string& name) const {
        const std::uint32_t length = load32(e + offsets::counter_length);
        if (length == 0 || length > max_name)
            return false;
        std::array<char, max_name> buffer;
        for (std::size_t i = 0; i < max_name; i += 8) {
            const std::uint64_t word = load64(e + offsets::counter_name + i);
            std::memcpy(buffer.data() + i, &word, 8);
        }
        name.assign(buffer.data(), length);
        return valid_name(name);
    }

    struct lookup {
        bool found = false;
        bool free = false;
        std::uint32_t index = 0;
    };
    /// Linear probing from the name's hash, over at most max_counters entries. Entries are never
    /// removed, so the first empty entry ends the search (and is where the name would go).
    lookup find(std::string_view name) const noexcept {
        lookup r;
        const std::uint64_t h = hash_bytes(name.data(), name.size());
        for (std::uint32_t i = 0; i < shape_.max_counters; ++i) {
            const auto index = static_cast<std::uint32_t>((h + i) % shape_.max_counters);
            const std::size_t e = counter_entry(index);
            const std::uint32_t state = detail::load32_acquire(at(e + offsets::counter_state));
            if (state == empty_entry) {
                r.free = true;
                r.index = index;
                return r;
            }
            if (state == used_entry && load32(e + offsets::counter_length) == name.size() &&
                std::memcmp(at(e + offsets::counter_name), name.data(), name.size()) == 0) {
                r.found = true;
                r.index = index;
                return r;
            }
        }
        return r;
    }

    /// A new counter at 0: name and value first, the state last (what makes it visible).
    template <class Hook>
    void insert(std::uint32_t index, std::string_view name, std::uint32_t pid, Hook& hook)
        requires writable
    {
        const std::size_t e = counter_entry(index);
        journaled(step::insert, e, offsets::counter_bytes, pid, hook, [&] {
            std::array<char, max_name> padded{};
            std::memcpy(padded.data(), name.data(), name.size());
            for (std::size_t i = 0; i < max_name; i += 8) {
                std::uint64_t word;
                std::memcpy(&word, padded.data() + i, 8);
                store64(e + offsets::counter_name + i, word);
                if (i + 8 == max_name / 2)
                    hook(step::insert, point::half_written);
            }
            store32(e + offsets::counter_length, static_cast<std::uint32_t>(name.size()));
            store64(e + offsets::counter_value, 0);
            detail::store32_release(at(e + offsets::counter_state), used_entry);
        });
    }

    /// One step of the protocol at the top of this file.
    template <class Hook, class Change>
    void journaled(step s, std::size_t offset, std::size_t length, std::uint32_t pid, Hook& hook,
                   Change&& change)
        requires writable
    {
        detail::copy_words(at(offsets::undo_bytes), at(offset), length);
        store64(offsets::undo_offset, offset);
        store32(offsets::undo_length, static_cast<std::uint32_t>(length));
        store32(offsets::dirty_pid, pid);
        __atomic_thread_fence(__ATOMIC_RELEASE);
        detail::store32_release(at(offsets::dirty), 1);
        // The change must not become visible before the marker.
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        hook(s, point::journaled);
        change();
        hook(s, point::written);
        __atomic_thread_fence(__ATOMIC_RELEASE);
        detail::store32_release(at(offsets::dirty), 0);
    }

    std::span<Byte> segment_;
    shape shape_;
};

using table = basic_table<std::byte>;
using const_table = basic_table<const std::byte>;

} // namespace stats
