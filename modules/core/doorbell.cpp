// sysv.core: the per-user doorbell table (see doorbell_table in sysv.core.cppm).
module;

#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/utsname.h>

#include <linux/futex.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <boost/system/error_code.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <span>
#include <string>

module sysv.core;

namespace sysv::detail {

unsigned doorbells_rung_by(std::span<const sembuf> ops) noexcept {
    unsigned kinds = 0;
    for (const sembuf& o : ops)
        kinds |= o.sem_op > 0 ? doorbell_up : o.sem_op < 0 ? doorbell_zero : 0u;
    return kinds;
}

unsigned doorbells_heard_by(std::span<const sembuf> ops) noexcept {
    unsigned kinds = 0;
    for (const sembuf& o : ops)
        kinds |= o.sem_op < 0 ? doorbell_up : o.sem_op == 0 ? doorbell_zero : 0u;
    return kinds;
}

struct doorbell_access {
    static doorbell_table make(std::byte* base, int id) noexcept { return {base, id}; }
};

namespace {

/// The stamp of a word: 8 bytes after the slot's `up` word for `up`, 16 for `zero` (a slot is 32
/// bytes, 32-byte aligned from the table's start: the words are at 0 and 4).
std::uint64_t* stamp_slot(const std::uint32_t* word) noexcept {
    const auto address = reinterpret_cast<std::uintptr_t>(word);
    const std::uintptr_t slot = address & ~std::uintptr_t(doorbell_table::slot_size - 1);
    const std::uintptr_t kind = (address - slot) / sizeof(std::uint32_t); // 0: up, 1: zero
    return reinterpret_cast<std::uint64_t*>(slot + 8 + 8 * kind);
}

/// The tables this process attached: the first, and one more each time the current one was
/// found removed (`ipcrm`). A table is never detached: waits and watchers hold addresses of its
/// words, and a table is 32 KiB.
struct table_state {
    std::once_flag once;
    std::mutex mutex;                  ///< tables, reason, refreshes
    std::deque<doorbell_table> tables; ///< stable addresses
    std::atomic<doorbell_table*> current{nullptr};
    std::atomic<std::int64_t> next_check_ns{0}; ///< when get() looks whether current was removed
    std::string reason;
    std::optional<key> table_key;
};

table_state*& state_pointer() {
    static table_state* s = new table_state; // never destroyed: rings may come from exit paths
    return s;
}

table_state& state() {
    return *state_pointer();
}

std::optional<key_t> configured_key(std::string& reason) {
    const char* env = std::getenv("SYSV_DOORBELL_KEY");
    if (env == nullptr || *env == '\0')
        return static_cast<key_t>(0x5d000000u | (static_cast<unsigned>(::geteuid()) & 0xffffffu));
    if (std::strcmp(env, "off") == 0) {
        reason = "doorbells are off (SYSV_DOORBELL_KEY=off)";
        return std::nullopt;
    }
    char* end = nullptr;
    const unsigned long value = std::strtoul(env, &end, 0);
    if (end == env || *end != '\0' || value == 0 || value > 0xffffffffUL) {
        reason = std::string("SYSV_DOORBELL_KEY='") + env + "' is not a key (a number, or off)";
        return std::nullopt;
    }
    return static_cast<key_t>(static_cast<std::uint32_t>(value));
}

/// How often get() looks whether the current table was removed (one IPC_STAT).
constexpr std::int64_t table_check_interval_ns = 1'000'000'000;

std::int64_t coarse_ns() noexcept {
    timespec now{};
    ::clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
    return static_cast<std::int64_t>(now.tv_sec) * 1'000'000'000 + now.tv_nsec;
}

/// Opens or creates the table at `k` and attaches it; nullptr with `reason` when it cannot be
/// used. A table that holds something else than a table (its magic) and that no process has
/// attached is ours to replace: it is removed and created again, empty. One that is attached
/// is left alone (its users see what they see) and not used.
doorbell_table* open_table(table_state& s, key_t k, std::string& reason) {
    const std::string where = "the doorbell table at key " + to_string(key(k));
    for (int attempt = 0;; ++attempt) {
        // Created zero-filled by whoever comes first: an all-zero table is a valid empty one,
        // so there is no initialisation to race on (only the magic is claimed, by CAS).
        const int id = ::shmget(k, doorbell_table::size, IPC_CREAT | 0600);
        if (id == -1) {
            reason = where + " cannot be opened or created: " + std::strerror(errno) +
                     (errno == EINVAL ? " (an object of another size is at the key)" : "");
            return nullptr;
        }
        shmid_ds ds{};
        if (::shmctl(id, IPC_STAT, &ds) == -1) {
            reason = where + ": IPC_STAT failed: " + std::strerror(errno);
            return nullptr;
        }
        // Created by this user too: a creator keeps the owner's rights after handing an object
        // over, so a table another user made could be read, cleared or rung by them at will.
        if (ds.shm_perm.uid != ::geteuid() || ds.shm_perm.cuid != ::geteuid() ||
            (ds.shm_perm.mode & 0777) != 0600 || ds.shm_segsz < doorbell_table::size) {
            reason = where + " belongs to uid " + std::to_string(ds.shm_perm.uid) +
                     ", created by uid " + std::to_string(ds.shm_perm.cuid) + ", with mode " +
                     mode_string(ds.shm_perm.mode & 0777) + " and " + std::to_string(ds.shm_segsz) +
                     " bytes: not this user's table";
            return nullptr;
        }
        void* address = ::shmat(id, nullptr, 0);
        if (address == reinterpret_cast<void*>(-1)) {
            reason = where + " cannot be attached: " + std::strerror(errno);
            return nullptr;
        }
        auto* magic = reinterpret_cast<std::uint64_t*>(address);
        std::uint64_t expected = 0;
        if (__atomic_compare_exchange_n(magic, &expected, doorbell_table::magic, false,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE) ||
            expected == doorbell_table::magic) {
            s.tables.push_back(doorbell_access::make(static_cast<std::byte*>(address), id));
            return &s.tables.back();
        }
        ::shmdt(address);
        // Corrupt. Attached by nobody else (we detached): replace it, once. A process racing
        // us finds the id gone (removed by us, or by it): both then open the new table.
        if (attempt == 0) {
            const auto removed = [] { return errno == EINVAL || errno == EIDRM; };
            if (::shmctl(id, IPC_STAT, &ds) == -1
                    ? removed()
                    : ds.shm_nattch == 0 && (::shmctl(id, IPC_RMID, nullptr) == 0 || removed()))
                continue;
        }
        reason = where + " (id " + std::to_string(id) + ") holds something else than a " +
                 "doorbell table and " +
                 (attempt == 0 ? std::to_string(ds.shm_nattch) +
                                     " process(es) have it attached, so it is not replaced: "
                                     "remove it with `ipcrm -m " +
                                     std::to_string(id) + "` once they exit"
                               : "was replaced once already");
        return nullptr;
    }
}

void attach(table_state& s) {
    std::string why;
    const auto k = configured_key(why);
    if (!k) {
        s.reason = why;
        return;
    }
    s.table_key = key(*k);
    std::lock_guard lock(s.mutex);
    if (doorbell_table* table = open_table(s, *k, s.reason))
        s.current.store(table, std::memory_order_release);
    s.next_check_ns.store(coarse_ns() + table_check_interval_ns, std::memory_order_relaxed);
}

/// Whether the segment of `table` is still the table at `k`: not removed (IPC_RMID turns its
/// key to IPC_PRIVATE and marks it for destruction), or gone.
bool still_at_key(const doorbell_table& table, key k) noexcept {
    shmid_ds ds{};
    if (::shmctl(table.segment_id(), IPC_STAT, &ds) == -1)
        return errno != EINVAL && errno != EIDRM; // another error: assume it is
    return (ds.shm_perm.mode & SHM_DEST) == 0 && ds.shm_perm.__key == k.value();
}

/// At most once per interval (one thread does it): if the current table was removed, attach
/// the one now at the key, so this process rings and sleeps where new processes do.
void refresh(table_state& s, doorbell_table* current) noexcept {
    const std::int64_t now = coarse_ns();
    std::int64_t due = s.next_check_ns.load(std::memory_order_relaxed);
    if (now < due || !s.next_check_ns.compare_exchange_strong(due, now + table_check_interval_ns,
                                                              std::memory_order_relaxed))
        return;
    if (!s.table_key || still_at_key(*current, *s.table_key))
        return;
    try {
        std::lock_guard lock(s.mutex);
        std::string why;
        if (doorbell_table* table = open_table(s, s.table_key->value(), why)) {
            s.current.store(table, std::memory_order_release);
            s.reason.clear();
        } else {
            // Keep ringing the removed one (processes that still share it hear each other),
            // and say why the new one is not used.
            s.reason = "the doorbell table in use was removed, and " + why;
        }
    } catch (...) {
        // Out of memory: keep the current table.
    }
}

} // namespace

doorbell_table* doorbell_table::get() noexcept {
    auto& s = state();
    try {
        std::call_once(s.once, [&] { attach(s); });
    } catch (...) {
        return nullptr;
    }
    doorbell_table* current = s.current.load(std::memory_order_acquire);
    if (current != nullptr) {
        refresh(s, current);
        current = s.current.load(std::memory_order_acquire);
    }
    return current;
}

#ifdef SYSV_CRASH_POINTS
void forget_doorbell_table() noexcept {
    // The old one stays (its tables may still be watched), reachable for leak checkers.
    static std::deque<table_state*> retired;
    retired.push_back(state_pointer());
    state_pointer() = new table_state;
}
#endif

std::string doorbell_table::unavailable_reason() {
    get();
    auto& s = state();
    std::lock_guard lock(s.mutex);
    return s.reason;
}

std::optional<key> doorbell_table::table_key() noexcept {
    std::string ignored;
    const auto k = configured_key(ignored);
    if (!k)
        return std::nullopt;
    return key(*k);
}

void ring_doorbells(int set_id, unsigned kinds) noexcept {
    doorbell_table* table = doorbell_table::get();
    if (table == nullptr || kinds == 0)
        return;
    for (const auto kind : {doorbell_up, doorbell_zero}) {
        if ((kinds & kind) == 0)
            continue;
        std::uint32_t* word = table->word(set_id, kind);
        std::uint32_t old = __atomic_load_n(word, __ATOMIC_RELAXED);
        // One read-modify-write: count the change, clear the sleeper bit.
        while (!__atomic_compare_exchange_n(word, &old, (old + 2) & ~1u, true, __ATOMIC_SEQ_CST,
                                            __ATOMIC_RELAXED)) {
        }
        if (old & 1u) { // someone sleeps on it: stamp, then wake (shared futex, never private)
            const std::uint64_t stamp =
                (static_cast<std::uint64_t>((old + 2) & ~1u) << 32) | doorbell_clock_us();
            __atomic_store_n(stamp_slot(word), stamp, __ATOMIC_RELEASE);
            ::syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
        }
    }
}

std::uint32_t doorbell_value(const std::uint32_t* word) noexcept {
    return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}

std::uint32_t doorbell_clock_us() noexcept {
    timespec now{};
    ::clock_gettime(CLOCK_MONOTONIC, &now);
    return static_cast<std::uint32_t>(static_cast<std::uint64_t>(now.tv_sec) * 1'000'000u +
                                      static_cast<std::uint64_t>(now.tv_nsec) / 1000u);
}

std::uint64_t doorbell_table::stamp_of(const std::uint32_t* word) noexcept {
    return __atomic_load_n(stamp_slot(word), __ATOMIC_ACQUIRE);
}

namespace {

/// 24 bits that change with every boot (and kernel): 0 when they cannot be read.
std::uint64_t boot_tag() noexcept {
    static const std::uint64_t tag = [] {
        char id[64] = {};
        const int fd = ::open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return std::uint64_t{0};
        const ssize_t n = ::read(fd, id, sizeof id - 1);
        ::close(fd);
        if (n <= 0)
            return std::uint64_t{0};
        utsname u{};
        ::uname(&u);
        std::uint64_t h = 14695981039346656037ull; // FNV-1a
        for (const char* p : {static_cast<const char*>(id), static_cast<const char*>(u.release)})
            for (; *p != '\0'; ++p)
                h = (h ^ static_cast<unsigned char>(*p)) * 1099511628211ull;
        return (h >> 40) | 1u; // never 0
    }();
    return tag;
}

} // namespace

std::optional<pid_t> doorbell_table::failed_check(unsigned config) const noexcept {
    const auto* word = reinterpret_cast<const std::uint64_t*>(base_ + 16);
    const std::uint64_t v = __atomic_load_n(word, __ATOMIC_ACQUIRE);
    const std::uint64_t tag = boot_tag();
    if (tag == 0 || config >= 8 || (v >> 40) != tag || ((v >> config) & 1u) == 0)
        return std::nullopt;
    return static_cast<pid_t>((v >> 8) & 0xffffffffu);
}

void doorbell_table::record_failed_check(unsigned config) noexcept {
    const std::uint64_t tag = boot_tag();
    if (tag == 0 || config >= 8)
        return;
    auto* word = reinterpret_cast<std::uint64_t*>(base_ + 16);
    std::uint64_t old = __atomic_load_n(word, __ATOMIC_ACQUIRE);
    for (;;) {
        const std::uint64_t bits = ((old >> 40) == tag ? old & 0xffu : 0u) | (1u << config);
        const std::uint64_t next =
            (tag << 40) |
            (static_cast<std::uint64_t>(static_cast<std::uint32_t>(::getpid())) << 8) | bits;
        if (__atomic_compare_exchange_n(word, &old, next, false, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            return;
    }
}

std::optional<std::uint32_t> doorbell_rung_ago(const std::uint32_t* word,
                                               std::uint32_t expected) noexcept {
    // Read the stamp before the word: a stamp is stored after its word changed, so a stamp
    // that describes a change up to the word's current value is complete.
    const std::uint64_t stamp = doorbell_table::stamp_of(word);
    const std::uint32_t now_us = doorbell_clock_us();
    const std::uint32_t current = doorbell_value(word) & ~1u;
    const std::uint32_t base = expected & ~1u;
    const auto stamped = static_cast<std::uint32_t>(stamp >> 32);
    // Counter arithmetic (the words wrap): the stamped change must come after `expected` and
    // no later than the word's current value.
    const auto since_base = static_cast<std::int32_t>(stamped - base);
    const auto until_now = static_cast<std::int32_t>(current - stamped);
    if (stamp == 0 || since_base <= 0 || until_now < 0)
        return std::nullopt;
    return static_cast<std::uint32_t>(now_us - static_cast<std::uint32_t>(stamp));
}

std::optional<std::uint32_t> mark_sleeper(std::uint32_t* word, std::uint32_t seen) noexcept {
    if (seen & 1u) // already marked by another sleeper: unchanged since it was read?
        return doorbell_value(word) == seen ? std::optional<std::uint32_t>(seen) : std::nullopt;
    std::uint32_t expected = seen;
    if (__atomic_compare_exchange_n(word, &expected, seen | 1u, false, __ATOMIC_SEQ_CST,
                                    __ATOMIC_RELAXED))
        return seen | 1u;
    if (expected == (seen | 1u)) // another sleeper marked it; no change was counted
        return expected;
    return std::nullopt;
}

void remove_doorbell_table(error_code& ec) {
    ec.clear();
    const auto k = doorbell_table::table_key();
    if (!k)
        return;
    const int id = ::shmget(k->value(), 0, 0);
    if (id == -1) {
        if (errno != ENOENT)
            ec = last_error();
        return;
    }
    if (::shmctl(id, IPC_RMID, nullptr) == -1)
        ec = id_error(errno);
}

} // namespace sysv::detail
