// Implementation of sysv.core: the thin layer that makes the syscalls.
module;

#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/types.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <unistd.h>

#include <boost/system/error_code.hpp>
#include <boost/system/system_error.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

module sysv.core;

namespace sysv {

namespace {

// semctl's fourth argument; glibc leaves its definition to the caller.
union semun {
    int val;
    semid_ds* buf;
    unsigned short* array;
    seminfo* info;
};

error_code last_error() noexcept {
    return error_code(errno, boost::system::system_category());
}

constexpr int semvmx = 32767;

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

// All bits, so that a mode refused for bits outside 0777 is shown with them ("01600").
std::string mode_string(mode_t mode) {
    char buffer[16];
    std::snprintf(buffer, sizeof buffer, "0%03o", static_cast<unsigned>(mode));
    return buffer;
}

std::string permissions_detail(const permissions& p) {
    return "owner uid " + std::to_string(p.owner_uid) + ", gid " + std::to_string(p.owner_gid) +
           ", mode " + mode_string(p.mode);
}

// now + timeout, saturated: a huge timeout (duration::max() for "as long as it takes") must not
// overflow into a deadline in the past. Compared in the timeout's own unit, which converting to
// nanoseconds would overflow.
template <class Rep, class Period>
std::chrono::steady_clock::time_point
deadline_after(std::chrono::duration<Rep, Period> timeout) noexcept {
    using clock = std::chrono::steady_clock;
    const auto now = clock::now();
    if (timeout <= timeout.zero())
        return now;
    const auto room = std::chrono::duration_cast<std::chrono::duration<Rep, Period>>(
        clock::time_point::max() - now);
    if (timeout >= room)
        return clock::time_point::max();
    return now + std::chrono::duration_cast<clock::duration>(timeout);
}

// Kernel wording for limit errors: which limit and where to raise it.
std::string limit_hint(const error_code& ec, std::string_view operation) {
    if (ec.category() != boost::system::system_category())
        return {};
    const auto& l = limits();
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
               ") or pages (SHMALL) is reached; raise it in /proc/sys/kernel/shmmni or "
               "/proc/sys/kernel/shmall";
    case E2BIG:
        return "more operations than SEMOPM = " + std::to_string(l.max_operations_per_call) +
               " in one call; raise it in /proc/sys/kernel/sem (third field)";
    case ERANGE:
        return "a semaphore value would exceed SEMVMX = " + std::to_string(l.max_semaphore_value);
    case ENOMEM:
        return "the kernel could not allocate memory for the object (SHMALL in "
               "/proc/sys/kernel/shmall limits shared memory pages)";
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
        }
        return "unknown sysv error " + std::to_string(value);
    }
};
} // namespace

const boost::system::error_category& error_category() noexcept {
    static const category instance;
    return instance;
}

const kernel_limits& limits() {
    static const kernel_limits cached = [] {
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
        } else {
            l.max_segment_size = ~std::size_t(0) >> 1;
            l.min_segment_size = 1;
            l.max_segments = 4096;
        }
        return l;
    }();
    return cached;
}

namespace detail {

attempt_result try_semop(int set_id, semop_buffer& ops, error_code& ec) noexcept {
    for (;;) {
        if (::semop(set_id, ops.data(), ops.size()) == 0)
            return attempt_result::applied;
        if (errno == EAGAIN)
            return attempt_result::would_block;
        if (errno != EINTR) {
            ec = id_error(errno);
            return attempt_result::failed;
        }
    }
}

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

open_step classify_existing_set(const semaphore_set_status& status, std::size_t expected_size,
                                mode_t expected_mode, uid_t expected_owner,
                                bool creator_alive) noexcept {
    if (status.owner.owner_uid != expected_owner || (status.owner.mode & 0777) != expected_mode ||
        status.size != expected_size)
        return open_step::foreign;
    if (status.last_operation)
        return open_step::ready;
    return creator_alive ? open_step::wait : open_step::creator_died;
}

} // namespace detail

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

key key::from_path(const std::filesystem::path& path, int project_id, error_code& ec) {
    ec.clear();
    if (project_id < 1 || project_id > 255) {
        ec = make_error_code(errc::invalid_argument);
        return private_key();
    }
    const key_t k = ::ftok(path.c_str(), project_id);
    if (k == -1) {
        ec = last_error();
        return private_key();
    }
    return key(k);
}

key key::from_path(const std::filesystem::path& path, int project_id) {
    error_code ec;
    key k = from_path(path, project_id, ec);
    if (ec)
        detail::throw_error(ec, "ftok", "path " + path.string(),
                            "project id " + std::to_string(project_id) +
                                (project_id < 1 || project_id > 255 ? " is outside 1..255" : ""));
    return k;
}

std::string to_string(key k) {
    if (k.is_private())
        return "IPC_PRIVATE";
    char buffer[16];
    std::snprintf(buffer, sizeof buffer, "0x%08x", static_cast<unsigned>(k.value()));
    return buffer;
}

namespace {
std::string describe(std::string_view what, key k, int id) {
    std::string s(what);
    s.append(" (key ").append(to_string(k));
    if (id >= 0)
        s.append(", id ").append(std::to_string(id));
    return s.append(")");
}
} // namespace

// ---------------------------------------------------------------------------------------------
// Shared memory
// ---------------------------------------------------------------------------------------------

namespace {
shared_memory_status to_status(const shmid_ds& ds) {
    return shared_memory_status{
        .ipc_key = key(ds.shm_perm.__key),
        .owner = {ds.shm_perm.uid, ds.shm_perm.gid, static_cast<mode_t>(ds.shm_perm.mode & 0777)},
        .creator_uid = ds.shm_perm.cuid,
        .creator_gid = ds.shm_perm.cgid,
        .size = ds.shm_segsz,
        .attach_count = static_cast<std::size_t>(ds.shm_nattch),
        .creator_pid = ds.shm_cpid,
        .last_pid = ds.shm_lpid,
        .last_attach = optional_time(ds.shm_atime),
        .last_detach = optional_time(ds.shm_dtime),
        .last_change = from_time_t(ds.shm_ctime),
        .marked_for_removal = (ds.shm_perm.mode & SHM_DEST) != 0,
    };
}

error_code stat_segment(int id, shmid_ds& ds) noexcept {
    if (::shmctl(id, IPC_STAT, &ds) == -1)
        return detail::id_error(errno);
    return {};
}

error_code check_segment_size(std::size_t size) noexcept {
    const auto& l = limits();
    if (size == 0)
        return make_error_code(errc::invalid_argument);
    if (size < l.min_segment_size || size > l.max_segment_size)
        return make_error_code(errc::limit_exceeded);
    return {};
}

std::string segment_size_detail(std::size_t size) {
    const auto& l = limits();
    return "size " + std::to_string(size) + " bytes; the kernel allows " +
           std::to_string(l.min_segment_size) + ".." + std::to_string(l.max_segment_size) +
           " (SHMMIN..SHMMAX, see /proc/sys/kernel/shmmax)";
}
} // namespace

shared_memory shared_memory::create(key k, std::size_t size, mode_t mode, error_code& ec) {
    ec.clear();
    if (!valid_mode(mode)) {
        ec = make_error_code(errc::invalid_argument);
        return {};
    }
    if ((ec = check_segment_size(size)))
        return {};
    const int id = ::shmget(k.value(), size, IPC_CREAT | IPC_EXCL | static_cast<int>(mode));
    if (id == -1) {
        ec = last_error();
        return {};
    }
    return shared_memory(k, id, size);
}

shared_memory shared_memory::create(key k, std::size_t size, mode_t mode) {
    error_code ec;
    auto result = create(k, size, mode, ec);
    if (ec)
        detail::throw_error(ec, "shmget (create)", describe("shared memory", k, -1),
                            !valid_mode(mode)
                                ? "mode " + mode_string(mode) + " has bits outside 0777"
                                : segment_size_detail(size));
    return result;
}

shared_memory shared_memory::open_id(int id, error_code& ec) {
    ec.clear();
    shmid_ds ds{};
    if ((ec = stat_segment(id, ds)))
        return {};
    return shared_memory(key(ds.shm_perm.__key), id, ds.shm_segsz);
}

shared_memory shared_memory::open_id(int id) {
    error_code ec;
    auto result = open_id(id, ec);
    if (ec)
        detail::throw_error(ec, "shmctl (IPC_STAT)", "shared memory id " + std::to_string(id));
    return result;
}

shared_memory shared_memory::open(key k, error_code& ec) {
    ec.clear();
    // Size 0: an existing segment of any size matches; the real size comes from IPC_STAT.
    const int id = ::shmget(k.value(), 0, 0);
    if (id == -1) {
        ec = last_error();
        return {};
    }
    shared_memory result = open_id(id, ec);
    result.key_ = k;
    return result;
}

shared_memory shared_memory::open(key k) {
    error_code ec;
    auto result = open(k, ec);
    if (ec)
        detail::throw_error(ec, "shmget (open)", describe("shared memory", k, -1));
    return result;
}

shared_memory shared_memory::open_or_create(key k, std::size_t size, mode_t mode, error_code& ec) {
    // Bounded: each round either creates, opens, or loses a race with a remover.
    for (int attempt = 0; attempt < 100; ++attempt) {
        shared_memory created = create(k, size, mode, ec);
        if (!ec || ec != boost::system::errc::file_exists)
            return created;
        shared_memory existing = open(k, ec);
        if (ec == boost::system::errc::no_such_file_or_directory || ec == errc::removed)
            continue; // removed between our create and open: try again
        if (ec)
            return {};
        shmid_ds ds{};
        if ((ec = stat_segment(existing.id_, ds))) {
            if (ec == errc::removed)
                continue;
            return {};
        }
        if (ds.shm_perm.uid != ::geteuid() || (ds.shm_perm.mode & 0777) != mode ||
            ds.shm_segsz < size) {
            ec = make_error_code(errc::foreign_object);
            return {};
        }
        return existing;
    }
    ec = make_error_code(errc::not_initialised);
    return {};
}

shared_memory shared_memory::open_or_create(key k, std::size_t size, mode_t mode) {
    error_code ec;
    auto result = open_or_create(k, size, mode, ec);
    if (ec) {
        std::string detail = "wanted " + std::to_string(size) + " bytes, mode " +
                             mode_string(mode) + ", owner uid " + std::to_string(::geteuid());
        if (ec == errc::foreign_object) {
            error_code ignored;
            if (auto existing = open(k, ignored); !ignored) {
                if (auto st = existing.stat(ignored); !ignored)
                    detail += "; found " + std::to_string(st.size) + " bytes, mode " +
                              mode_string(st.owner.mode) + ", owner uid " +
                              std::to_string(st.owner.owner_uid) + " (id " +
                              std::to_string(existing.id()) + ")";
            }
        } else if (ec == errc::invalid_argument && !valid_mode(mode)) {
            detail = "mode " + mode_string(mode) + " has bits outside 0777";
        } else if (ec == errc::limit_exceeded || ec == errc::invalid_argument) {
            detail = segment_size_detail(size);
        }
        detail::throw_error(ec, "shmget (open or create)", describe("shared memory", k, -1),
                            detail);
    }
    return result;
}

void* shared_memory::attach_raw(int flags, error_code& ec) const {
    ec.clear();
    if (id_ < 0) {
        ec = make_error_code(errc::not_open);
        return nullptr;
    }
    void* address = ::shmat(id_, nullptr, flags);
    if (address == reinterpret_cast<void*>(-1)) {
        ec = detail::id_error(errno);
        return nullptr;
    }
    return address;
}

attachment shared_memory::attach(access::read_write_t, error_code& ec) const {
    void* address = attach_raw(0, ec);
    if (ec)
        return {};
    return attachment(static_cast<std::byte*>(address), size_);
}

attachment shared_memory::attach(access::read_write_t tag) const {
    error_code ec;
    auto result = attach(tag, ec);
    if (ec)
        detail::throw_error(ec, "shmat (read-write)", description());
    return result;
}

read_only_attachment shared_memory::attach(access::read_only_t, error_code& ec) const {
    void* address = attach_raw(SHM_RDONLY, ec);
    if (ec)
        return {};
    return read_only_attachment(static_cast<const std::byte*>(address), size_);
}

read_only_attachment shared_memory::attach(access::read_only_t tag) const {
    error_code ec;
    auto result = attach(tag, ec);
    if (ec)
        detail::throw_error(ec, "shmat (read-only)", description());
    return result;
}

shared_memory_status shared_memory::stat(error_code& ec) const {
    ec.clear();
    if (id_ < 0) {
        ec = make_error_code(errc::not_open);
        return {};
    }
    shmid_ds ds{};
    if ((ec = stat_segment(id_, ds)))
        return {};
    return to_status(ds);
}

shared_memory_status shared_memory::stat() const {
    error_code ec;
    auto result = stat(ec);
    if (ec)
        detail::throw_error(ec, "shmctl (IPC_STAT)", description());
    return result;
}

void shared_memory::set_permissions(const permissions& p, error_code& ec) {
    ec.clear();
    if (id_ < 0) {
        ec = make_error_code(errc::not_open);
        return;
    }
    if (!valid_mode(p.mode)) {
        ec = make_error_code(errc::invalid_argument);
        return;
    }
    shmid_ds ds{};
    ds.shm_perm.uid = p.owner_uid;
    ds.shm_perm.gid = p.owner_gid;
    ds.shm_perm.mode = static_cast<unsigned short>(p.mode);
    if (::shmctl(id_, IPC_SET, &ds) == -1) {
        // EINVAL also means an invalid uid/gid: "removed" only if the segment is gone.
        const int err = errno;
        shmid_ds probe{};
        ec = err == EINVAL && stat_segment(id_, probe) != errc::removed
                 ? make_error_code(errc::invalid_argument)
                 : detail::id_error(err);
    }
}

void shared_memory::set_permissions(const permissions& p) {
    error_code ec;
    set_permissions(p, ec);
    if (ec)
        detail::throw_error(ec, "shmctl (IPC_SET)", description(), permissions_detail(p));
}

void shared_memory::remove(error_code& ec) {
    ec.clear();
    if (id_ < 0) {
        ec = make_error_code(errc::not_open);
        return;
    }
    if (::shmctl(id_, IPC_RMID, nullptr) == -1) {
        ec = detail::id_error(errno);
        return;
    }
    id_ = -1;
}

void shared_memory::remove() {
    error_code ec;
    remove(ec);
    if (ec)
        detail::throw_error(ec, "shmctl (IPC_RMID)", description());
}

std::string shared_memory::description() const {
    return describe("shared memory", key_, id_);
}

// ---------------------------------------------------------------------------------------------
// Semaphore sets
// ---------------------------------------------------------------------------------------------

namespace {

semaphore_set_status to_status(const semid_ds& ds) {
    return semaphore_set_status{
        .ipc_key = key(ds.sem_perm.__key),
        .owner = {ds.sem_perm.uid, ds.sem_perm.gid, static_cast<mode_t>(ds.sem_perm.mode & 0777)},
        .creator_uid = ds.sem_perm.cuid,
        .creator_gid = ds.sem_perm.cgid,
        .size = static_cast<std::size_t>(ds.sem_nsems),
        .last_operation = optional_time(ds.sem_otime),
        .last_change = from_time_t(ds.sem_ctime),
    };
}

error_code stat_set(int id, semid_ds& ds) noexcept {
    semun arg{};
    arg.buf = &ds;
    if (::semctl(id, 0, IPC_STAT, arg) == -1)
        return detail::id_error(errno);
    return {};
}

error_code check_values(std::span<const int> values) noexcept {
    if (values.empty())
        return make_error_code(errc::invalid_argument);
    if (values.size() > static_cast<std::size_t>(limits().max_semaphores_per_set))
        return make_error_code(errc::limit_exceeded);
    for (int v : values)
        if (v < 0 || v > semvmx)
            return make_error_code(errc::value_out_of_range);
    return {};
}

std::string values_detail(std::span<const int> values) {
    std::string s = std::to_string(values.size()) + " semaphore(s)";
    if (values.size() > static_cast<std::size_t>(limits().max_semaphores_per_set))
        s += ", more than SEMMSL = " + std::to_string(limits().max_semaphores_per_set) +
             " per set; raise it in /proc/sys/kernel/sem (first field)";
    for (std::size_t i = 0; i < values.size(); ++i)
        if (values[i] < 0 || values[i] > semvmx) {
            s += ", value " + std::to_string(values[i]) + " at index " + std::to_string(i) +
                 " is outside 0..32767";
            break;
        }
    return s;
}

// SETALL, then one semop that leaves the values as they are but sets sem_otime: the signal
// open_or_create waits for. Order +1/-1 or -1/+1 so neither step leaves 0..SEMVMX.
error_code initialise_and_publish(int id, std::span<const int> values) noexcept {
    std::vector<unsigned short> raw(values.begin(), values.end());
    semun arg{};
    arg.array = raw.data();
    if (::semctl(id, 0, SETALL, arg) == -1)
        return detail::id_error(errno);
    std::array<sembuf, 2> publish{};
    const short first = values[0] > 0 ? -1 : 1;
    publish[0] = {0, first, IPC_NOWAIT};
    publish[1] = {0, static_cast<short>(-first), IPC_NOWAIT};
    // IPC_NOWAIT: cannot block (the values were just set); EINTR cannot happen without a wait.
    if (::semop(id, publish.data(), publish.size()) == -1)
        return detail::id_error(errno);
    return {};
}

int create_set(key k, std::span<const int> values, mode_t mode, error_code& ec) {
    ec.clear();
    if (!valid_mode(mode)) {
        ec = make_error_code(errc::invalid_argument);
        return -1;
    }
    if ((ec = check_values(values)))
        return -1;
    const int id = ::semget(k.value(), static_cast<int>(values.size()),
                            IPC_CREAT | IPC_EXCL | static_cast<int>(mode));
    if (id == -1) {
        ec = last_error();
        return -1;
    }
    if ((ec = initialise_and_publish(id, values))) {
        ::semctl(id, 0, IPC_RMID); // do not leak what we created
        return -1;
    }
    return id;
}

bool process_alive(pid_t pid) noexcept {
    return pid <= 0 || ::kill(pid, 0) == 0 || errno == EPERM;
}

} // namespace

semaphore_set semaphore_set::create(key k, std::span<const int> initial_values, mode_t mode,
                                    error_code& ec) {
    const int id = create_set(k, initial_values, mode, ec);
    if (ec)
        return {};
    return semaphore_set(k, id, initial_values.size());
}

semaphore_set semaphore_set::create(key k, std::span<const int> initial_values, mode_t mode) {
    error_code ec;
    auto result = create(k, initial_values, mode, ec);
    if (ec)
        detail::throw_error(ec, "semget (create)", describe("semaphore set", k, -1),
                            !valid_mode(mode)
                                ? "mode " + mode_string(mode) + " has bits outside 0777"
                                : values_detail(initial_values));
    return result;
}

semaphore_set semaphore_set::open_id(int id, error_code& ec) {
    ec.clear();
    semid_ds ds{};
    if ((ec = stat_set(id, ds)))
        return {};
    return semaphore_set(key(ds.sem_perm.__key), id, ds.sem_nsems);
}

semaphore_set semaphore_set::open_id(int id) {
    error_code ec;
    auto result = open_id(id, ec);
    if (ec)
        detail::throw_error(ec, "semctl (IPC_STAT)", "semaphore set id " + std::to_string(id));
    return result;
}

semaphore_set semaphore_set::open(key k, error_code& ec) {
    ec.clear();
    const int id = ::semget(k.value(), 0, 0);
    if (id == -1) {
        ec = last_error();
        return {};
    }
    semaphore_set result = open_id(id, ec);
    result.key_ = k;
    return result;
}

semaphore_set semaphore_set::open(key k) {
    error_code ec;
    auto result = open(k, ec);
    if (ec)
        detail::throw_error(ec, "semget (open)", describe("semaphore set", k, -1));
    return result;
}

namespace detail {

set_opener::set_opener(key k, std::span<const int> initial_values, mode_t mode,
                       const open_options& options)
    : key_(k), values_(initial_values.begin(), initial_values.end()), mode_(mode),
      options_(options), deadline_(deadline_after(options.initialisation_timeout)) {}

bool set_opener::step(semaphore_set& result, error_code& ec) {
    ec.clear();
    for (;;) {
        if (!existing_.is_open()) {
            // Bounded: each round creates, opens, or loses a race with a remover.
            if (++attempts_ > 100) {
                ec = make_error_code(errc::not_initialised);
                return true;
            }
            const int created = create_set(key_, values_, mode_, ec);
            if (!ec) {
                result = semaphore_set(key_, created, values_.size());
                return true;
            }
            if (ec != boost::system::errc::file_exists)
                return true;
            existing_ = semaphore_set::open(key_, ec);
            if (ec == boost::system::errc::no_such_file_or_directory || ec == errc::removed) {
                ec.clear(); // removed between our create and open: race again
                continue;
            }
            if (ec)
                return true;
        }
        semid_ds ds{};
        if ((ec = stat_set(existing_.id_, ds))) {
            if (ec != errc::removed)
                return true;
            existing_ = semaphore_set();
            ec.clear();
            continue;
        }
        const auto status = to_status(ds);
        bool creator_alive = true;
        if (!status.last_operation) {
            // GETPID is set by the creator's SETALL; 0 before it.
            error_code ignored;
            creator_alive = process_alive(existing_.last_pid(0, ignored));
        }
        switch (classify_existing_set(status, values_.size(), mode_, ::geteuid(), creator_alive)) {
        case open_step::ready:
            result = std::move(existing_);
            return true;
        case open_step::foreign:
            ec = make_error_code(errc::foreign_object);
            return true;
        case open_step::creator_died:
            ec = make_error_code(errc::not_initialised);
            return true;
        case open_step::wait:
            if (std::chrono::steady_clock::now() >= deadline_) {
                ec = make_error_code(errc::not_initialised);
                return true;
            }
            return false;
        }
    }
}

} // namespace detail

semaphore_set semaphore_set::open_or_create(key k, std::span<const int> initial_values, mode_t mode,
                                            const open_options& options, error_code& ec) {
    detail::set_opener opener(k, initial_values, mode, options);
    semaphore_set result;
    while (!opener.step(result, ec))
        std::this_thread::sleep_for(options.poll_interval);
    return result;
}

semaphore_set semaphore_set::open_or_create(key k, std::span<const int> initial_values, mode_t mode,
                                            const open_options& options) {
    error_code ec;
    auto result = open_or_create(k, initial_values, mode, options, ec);
    if (ec) {
        std::string detail = "wanted " + values_detail(initial_values) + ", mode " +
                             mode_string(mode) + ", owner uid " + std::to_string(::geteuid());
        error_code ignored;
        if (auto existing = open(k, ignored); !ignored) {
            if (auto st = existing.stat(ignored); !ignored)
                detail += "; found id " + std::to_string(existing.id()) + " with " +
                          std::to_string(st.size) + " semaphore(s), mode " +
                          mode_string(st.owner.mode) + ", owner uid " +
                          std::to_string(st.owner.owner_uid) +
                          (st.last_operation ? "" : ", never published by its creator");
        }
        detail::throw_error(ec, "semget (open or create)", describe("semaphore set", k, -1),
                            detail);
    }
    return result;
}

error_code semaphore_set::validate(operation_list ops) const noexcept {
    if (id_ < 0)
        return make_error_code(errc::not_open);
    if (ops.size() == 0)
        return make_error_code(errc::invalid_argument);
    if (ops.size() > static_cast<std::size_t>(limits().max_operations_per_call))
        return make_error_code(errc::limit_exceeded);
    for (const operation& o : ops) {
        if (o.index() >= size_)
            return make_error_code(errc::index_out_of_range);
        if (o.type() != operation::kind::wait_zero && (o.units() < 1 || o.units() > semvmx))
            return make_error_code(errc::value_out_of_range);
    }
    return {};
}

namespace {

std::string index_detail(const semaphore_set& set, std::size_t index) {
    if (index < set.size())
        return {};
    return "semaphore index " + std::to_string(index) + ", the set has " +
           std::to_string(set.size()) + " semaphore(s)";
}

std::string ops_detail(const semaphore_set& set, operation_list ops) {
    std::string s;
    if (ops.size() == 0)
        return "empty operation group";
    if (ops.size() > static_cast<std::size_t>(limits().max_operations_per_call))
        return std::to_string(ops.size()) + " operations, more than SEMOPM = " +
               std::to_string(limits().max_operations_per_call) +
               "; raise it in /proc/sys/kernel/sem (third field)";
    for (const operation& o : ops) {
        if (o.index() >= set.size())
            return index_detail(set, o.index());
        if (o.type() != operation::kind::wait_zero && (o.units() < 1 || o.units() > semvmx))
            return std::to_string(o.units()) + " units on semaphore " + std::to_string(o.index()) +
                   ", must be 1..32767";
    }
    return s;
}

} // namespace

bool semaphore_set::try_apply(operation_list ops, error_code& ec) {
    if ((ec = validate(ops)))
        return false;
    detail::semop_buffer raw(ops, IPC_NOWAIT);
    return detail::try_semop(id_, raw, ec) == detail::attempt_result::applied;
}

bool semaphore_set::try_apply(operation_list ops) {
    error_code ec;
    const bool applied = try_apply(ops, ec);
    if (ec)
        detail::throw_error(ec, "semop (IPC_NOWAIT)", description(), ops_detail(*this, ops));
    return applied;
}

void semaphore_set::apply(operation_list ops, error_code& ec) {
    if ((ec = validate(ops)))
        return;
    detail::semop_buffer raw(ops, 0);
    while (::semop(id_, raw.data(), raw.size()) == -1) {
        if (errno != EINTR) {
            ec = detail::id_error(errno);
            return;
        }
    }
}

void semaphore_set::apply(operation_list ops) {
    error_code ec;
    apply(ops, ec);
    if (ec)
        detail::throw_error(ec, "semop", description(), ops_detail(*this, ops));
}

bool semaphore_set::try_apply_for(operation_list ops, std::chrono::nanoseconds timeout,
                                  error_code& ec) {
    if ((ec = validate(ops)))
        return false;
    detail::semop_buffer raw(ops, 0);
    const auto deadline = deadline_after(timeout);
    for (;;) {
        const auto remaining =
            std::max(std::chrono::nanoseconds(0), deadline - std::chrono::steady_clock::now());
        timespec ts{};
        ts.tv_sec = static_cast<time_t>(remaining.count() / 1'000'000'000);
        ts.tv_nsec = static_cast<long>(remaining.count() % 1'000'000'000);
        if (::semtimedop(id_, raw.data(), raw.size(), &ts) == 0)
            return true;
        if (errno == EAGAIN)
            return false;
        if (errno != EINTR) {
            ec = detail::id_error(errno);
            return false;
        }
    }
}

bool semaphore_set::try_apply_for(operation_list ops, std::chrono::nanoseconds timeout) {
    error_code ec;
    const bool applied = try_apply_for(ops, timeout, ec);
    if (ec)
        detail::throw_error(ec, "semtimedop", description(), ops_detail(*this, ops));
    return applied;
}

int semaphore_set::get(int command, std::size_t index, error_code& ec) const {
    ec.clear();
    if (id_ < 0) {
        ec = make_error_code(errc::not_open);
        return -1;
    }
    if (index >= size_) {
        ec = make_error_code(errc::index_out_of_range);
        return -1;
    }
    const int result = ::semctl(id_, static_cast<int>(index), command);
    if (result == -1)
        ec = detail::id_error(errno);
    return result;
}

int semaphore_set::value(std::size_t index, error_code& ec) const {
    return get(GETVAL, index, ec);
}
int semaphore_set::value(std::size_t index) const {
    error_code ec;
    const int v = value(index, ec);
    if (ec)
        detail::throw_error(ec, "semctl (GETVAL " + std::to_string(index) + ")", description(),
                            index_detail(*this, index));
    return v;
}

pid_t semaphore_set::last_pid(std::size_t index, error_code& ec) const {
    return get(GETPID, index, ec);
}
pid_t semaphore_set::last_pid(std::size_t index) const {
    error_code ec;
    const pid_t v = last_pid(index, ec);
    if (ec)
        detail::throw_error(ec, "semctl (GETPID " + std::to_string(index) + ")", description(),
                            index_detail(*this, index));
    return v;
}

int semaphore_set::waiting_for_increase(std::size_t index, error_code& ec) const {
    return get(GETNCNT, index, ec);
}
int semaphore_set::waiting_for_increase(std::size_t index) const {
    error_code ec;
    const int v = waiting_for_increase(index, ec);
    if (ec)
        detail::throw_error(ec, "semctl (GETNCNT " + std::to_string(index) + ")", description(),
                            index_detail(*this, index));
    return v;
}

int semaphore_set::waiting_for_zero(std::size_t index, error_code& ec) const {
    return get(GETZCNT, index, ec);
}
int semaphore_set::waiting_for_zero(std::size_t index) const {
    error_code ec;
    const int v = waiting_for_zero(index, ec);
    if (ec)
        detail::throw_error(ec, "semctl (GETZCNT " + std::to_string(index) + ")", description(),
                            index_detail(*this, index));
    return v;
}

std::vector<int> semaphore_set::values(error_code& ec) const {
    ec.clear();
    if (id_ < 0) {
        ec = make_error_code(errc::not_open);
        return {};
    }
    std::vector<unsigned short> raw(size_);
    semun arg{};
    arg.array = raw.data();
    if (::semctl(id_, 0, GETALL, arg) == -1) {
        ec = detail::id_error(errno);
        return {};
    }
    return std::vector<int>(raw.begin(), raw.end());
}

std::vector<int> semaphore_set::values() const {
    error_code ec;
    auto v = values(ec);
    if (ec)
        detail::throw_error(ec, "semctl (GETALL)", description());
    return v;
}

void semaphore_set::set_value(std::size_t index, int value, error_code& ec) {
    ec.clear();
    if (id_ < 0) {
        ec = make_error_code(errc::not_open);
        return;
    }
    if (index >= size_) {
        ec = make_error_code(errc::index_out_of_range);
        return;
    }
    if (value < 0 || value > semvmx) {
        ec = make_error_code(errc::value_out_of_range);
        return;
    }
    semun arg{};
    arg.val = value;
    if (::semctl(id_, static_cast<int>(index), SETVAL, arg) == -1)
        ec = detail::id_error(errno);
}

void semaphore_set::set_value(std::size_t index, int value) {
    error_code ec;
    set_value(index, value, ec);
    if (ec)
        detail::throw_error(ec, "semctl (SETVAL " + std::to_string(index) + ")", description(),
                            index < size_ ? "value " + std::to_string(value) +
                                                " (semaphore values are 0..32767, SEMVMX)"
                                          : index_detail(*this, index));
}

void semaphore_set::set_values(std::span<const int> values, error_code& ec) {
    ec.clear();
    if (id_ < 0) {
        ec = make_error_code(errc::not_open);
        return;
    }
    if (values.size() != size_) {
        ec = make_error_code(errc::invalid_argument);
        return;
    }
    if ((ec = check_values(values)))
        return;
    std::vector<unsigned short> raw(values.begin(), values.end());
    semun arg{};
    arg.array = raw.data();
    if (::semctl(id_, 0, SETALL, arg) == -1)
        ec = detail::id_error(errno);
}

void semaphore_set::set_values(std::span<const int> values) {
    error_code ec;
    set_values(values, ec);
    if (ec)
        detail::throw_error(ec, "semctl (SETALL)", description(),
                            values.size() != size_
                                ? std::to_string(values.size()) + " values for a set of " +
                                      std::to_string(size_) + " semaphore(s)"
                                : values_detail(values));
}

semaphore_set_status semaphore_set::stat(error_code& ec) const {
    ec.clear();
    if (id_ < 0) {
        ec = make_error_code(errc::not_open);
        return {};
    }
    semid_ds ds{};
    if ((ec = stat_set(id_, ds)))
        return {};
    return to_status(ds);
}

semaphore_set_status semaphore_set::stat() const {
    error_code ec;
    auto result = stat(ec);
    if (ec)
        detail::throw_error(ec, "semctl (IPC_STAT)", description());
    return result;
}

void semaphore_set::set_permissions(const permissions& p, error_code& ec) {
    ec.clear();
    if (id_ < 0) {
        ec = make_error_code(errc::not_open);
        return;
    }
    if (!valid_mode(p.mode)) {
        ec = make_error_code(errc::invalid_argument);
        return;
    }
    semid_ds ds{};
    ds.sem_perm.uid = p.owner_uid;
    ds.sem_perm.gid = p.owner_gid;
    ds.sem_perm.mode = static_cast<unsigned short>(p.mode);
    semun arg{};
    arg.buf = &ds;
    if (::semctl(id_, 0, IPC_SET, arg) == -1) {
        // EINVAL also means an invalid uid/gid: "removed" only if the set is gone.
        const int err = errno;
        semid_ds probe{};
        ec = err == EINVAL && stat_set(id_, probe) != errc::removed
                 ? make_error_code(errc::invalid_argument)
                 : detail::id_error(err);
    }
}

void semaphore_set::set_permissions(const permissions& p) {
    error_code ec;
    set_permissions(p, ec);
    if (ec)
        detail::throw_error(ec, "semctl (IPC_SET)", description(), permissions_detail(p));
}

void semaphore_set::remove(error_code& ec) {
    ec.clear();
    if (id_ < 0) {
        ec = make_error_code(errc::not_open);
        return;
    }
    if (::semctl(id_, 0, IPC_RMID) == -1) {
        ec = detail::id_error(errno);
        return;
    }
    id_ = -1;
}

void semaphore_set::remove() {
    error_code ec;
    remove(ec);
    if (ec)
        detail::throw_error(ec, "semctl (IPC_RMID)", description());
}

std::string semaphore_set::description() const {
    return describe("semaphore set", key_, id_);
}

} // namespace sysv
