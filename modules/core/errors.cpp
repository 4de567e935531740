// sysv.core: error category, kernel limits and the messages of thrown errors.
module;

#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/types.h>

#include <cerrno>
#include <csignal>
#include <cstdio>

#include <boost/system/error_code.hpp>
#include <boost/system/system_error.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

module sysv.core;

namespace sysv {

// Helpers shared by the implementation units (declared in the interface, not exported).

error_code last_error() noexcept {
    return error_code(errno, boost::system::system_category());
}

bool valid_mode(mode_t mode) noexcept {
    return (mode & ~mode_t(0777)) == 0;
}

time_point from_time_t(time_t t) noexcept {
    return std::chrono::system_clock::from_time_t(t);
}
std::optional<time_point> optional_time(time_t t) noexcept {
    if (t == 0)
        return std::nullopt;
    return from_time_t(t);
}

std::string detail::mode_string(mode_t mode) {
    char buffer[16];
    std::snprintf(buffer, sizeof buffer, "0%03o", static_cast<unsigned>(mode));
    return buffer;
}

std::string permissions_detail(const permissions& p) {
    return "owner uid " + std::to_string(p.owner_uid) + ", gid " + std::to_string(p.owner_gid) +
           ", mode " + mode_string(p.mode);
}

std::string describe(std::string_view what, key k, int id) {
    std::string s(what);
    s.append(" (key ").append(to_string(k));
    if (id >= 0)
        s.append(", id ").append(std::to_string(id));
    return s.append(")");
}

namespace {

// Kernel wording for limit errors: which limit and where to raise it.
std::string limit_hint(const error_code& ec, std::string_view operation) {
    if (ec.category() != boost::system::system_category())
        return {};
    const auto l = limits();
    const bool sem = operation.find("sem") != std::string_view::npos;
    switch (ec.value()) {
    case ENOSPC:
        if (sem)
            return "the system-wide limit on semaphore sets (SEMMNI = " +
                   std::to_string(l.max_semaphore_sets) +
                   ") or semaphores (SEMMNS = " + std::to_string(l.max_semaphores) +
                   ") is reached; raise it in /proc/sys/kernel/sem (SEMMSL SEMMNS SEMOPM SEMMNI)";
        return "the system-wide limit on shared memory segments (SHMMNI = " +
               std::to_string(l.max_segments) +
               ") or on their pages in all (SHMALL = " + std::to_string(l.max_total_pages) +
               " pages) is reached; raise it in /proc/sys/kernel/shmmni or "
               "/proc/sys/kernel/shmall";
    case E2BIG:
        return "more operations than SEMOPM = " + std::to_string(l.max_operations_per_call) +
               " in one call; raise it in /proc/sys/kernel/sem (third field)";
    case ERANGE:
        return "a semaphore value would exceed SEMVMX = " + std::to_string(l.max_semaphore_value);
    case ENOMEM:
        return "the kernel could not allocate memory for the object (SHMALL = " +
               std::to_string(l.max_total_pages) +
               " pages in /proc/sys/kernel/shmall limits shared memory in all)";
    default:
        return {};
    }
}

} // namespace

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

namespace {
class category final : public boost::system::error_category {
public:
    // A fixed id lets error codes compare equal across shared objects.
    constexpr category() noexcept : error_category(0x5f1c2a7d3e4b6091ULL) {}
    const char* name() const noexcept override { return "sysv"; }
    std::string message(int value) const override {
        switch (static_cast<errc>(value)) {
        case errc::removed:
            return "the object was removed";
        case errc::foreign_object:
            return "an object exists at this key but is not ours (owner, mode, size or format "
                   "differ)";
        case errc::not_initialised:
            return "the object's creator did not finish initialising it";
        case errc::limit_exceeded:
            return "a kernel limit would be exceeded";
        case errc::invalid_argument:
            return "invalid argument";
        case errc::index_out_of_range:
            return "semaphore index out of range";
        case errc::value_out_of_range:
            return "value outside 0..32767 (SEMVMX)";
        case errc::bad_layout:
            return "the requested view does not fit in the segment or is misaligned";
        case errc::corrupt_segment:
            return "shared data failed validation";
        case errc::not_open:
            return "the handle is not open";
        case errc::messages_missed:
            return "messages were dropped before this reader read them";
        case errc::no_free_slot:
            return "every reader slot of the channel is taken";
        case errc::owner_dead:
            return "the previous owner died holding the lock; the data it protects may be "
                   "inconsistent";
        }
        return "unknown sysv error " + std::to_string(value);
    }
};
} // namespace

const boost::system::error_category& error_category() noexcept {
    static const category instance;
    return instance;
}

kernel_limits limits() {
    kernel_limits l{};
    seminfo si{};
    semun arg{};
    arg.info = &si;
    if (::semctl(0, 0, IPC_INFO, arg) >= 0) {
        l.max_semaphores_per_set = si.semmsl;
        l.max_semaphores = si.semmns;
        l.max_operations_per_call = si.semopm;
        l.max_semaphore_sets = si.semmni;
        l.max_semaphore_value = si.semvmx;
    } else { // The documented Linux defaults.
        l.max_semaphores_per_set = 32000;
        l.max_semaphores = 1024000000;
        l.max_operations_per_call = 500;
        l.max_semaphore_sets = 32000;
        l.max_semaphore_value = semvmx;
    }
    shminfo mi{};
    if (::shmctl(0, IPC_INFO, reinterpret_cast<shmid_ds*>(&mi)) >= 0) {
        l.max_segment_size = mi.shmmax;
        l.min_segment_size = mi.shmmin;
        l.max_segments = mi.shmmni;
        l.max_total_pages = mi.shmall;
    } else {
        l.max_segment_size = ~std::size_t(0) >> 1;
        l.min_segment_size = 1;
        l.max_segments = 4096;
        l.max_total_pages = ~std::size_t(0) >> 1;
    }
    return l;
}

namespace detail {

error_code id_error(int err) noexcept {
    if (err == EIDRM || err == EINVAL)
        return make_error_code(errc::removed);
    return error_code(err, boost::system::system_category());
}

void throw_error(const error_code& ec, std::string_view operation, std::string_view object,
                 std::string_view detail) {
    std::string what;
    what.append(operation).append(" on ").append(object).append(": ").append(ec.message());
    if (!detail.empty())
        what.append(" (").append(detail).append(")");
    if (auto hint = limit_hint(ec, operation); !hint.empty())
        what.append("; ").append(hint);
    throw system_error(ec, what);
}

void throw_layout_error(const error_code& ec, std::size_t offset, std::size_t count,
                        std::size_t size, std::size_t align, std::size_t segment_size) {
    throw system_error(ec, "typed view of an attachment: " + std::to_string(count) +
                               " object(s) of " + std::to_string(size) + " bytes (alignment " +
                               std::to_string(align) + ") at offset " + std::to_string(offset) +
                               " in a segment of " + std::to_string(segment_size) + " bytes");
}

std::string_view crash_point_name(crash_point point) noexcept {
    switch (point) { // no default: a new point without a name does not compile (-Wswitch)
    case crash_point::set_created:
        return "set_created";
    case crash_point::set_initialised:
        return "set_initialised";
    case crash_point::channel_open_locked:
        return "channel_open_locked";
    case crash_point::channel_open_initialised:
        return "channel_open_initialised";
    case crash_point::channel_join_slot_taken:
        return "channel_join_slot_taken";
    case crash_point::channel_join_entry_written:
        return "channel_join_entry_written";
    case crash_point::channel_send_locked:
        return "channel_send_locked";
    case crash_point::channel_send_dirty:
        return "channel_send_dirty";
    case crash_point::ring_append_written:
        return "ring_append_written";
    case crash_point::channel_send_published:
        return "channel_send_published";
    case crash_point::channel_send_unlocking:
        return "channel_send_unlocking";
    case crash_point::channel_unlocked:
        return "channel_unlocked";
    case crash_point::channel_lock_sleeper_marked:
        return "channel_lock_sleeper_marked";
    case crash_point::channel_lock_stolen:
        return "channel_lock_stolen";
    case crash_point::channel_receive_locked:
        return "channel_receive_locked";
    case crash_point::channel_receive_read:
        return "channel_receive_read";
    case crash_point::ring_unlocked_copied:
        return "ring_unlocked_copied";
    case crash_point::ring_sleeper_counted:
        return "ring_sleeper_counted";
    case crash_point::channel_reap_locked:
        return "channel_reap_locked";
    case crash_point::channel_leave_locked:
        return "channel_leave_locked";
    case crash_point::channel_leave_entry_cleared:
        return "channel_leave_entry_cleared";
    case crash_point::channel_leave_removing:
        return "channel_leave_removing";
    }
    return "unknown";
}

#ifdef SYSV_CRASH_POINTS
namespace {
std::atomic<int> armed_crash_point{-1};
} // namespace

void arm_crash_point(crash_point point) noexcept {
    armed_crash_point.store(static_cast<int>(point), std::memory_order_relaxed);
}

void crash_here(crash_point point) noexcept {
    if (armed_crash_point.load(std::memory_order_relaxed) == static_cast<int>(point))
        ::raise(SIGKILL);
}
#endif

} // namespace detail

} // namespace sysv
