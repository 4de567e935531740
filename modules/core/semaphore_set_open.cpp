// sysv.core: creating and opening semaphore sets, race-free open_or_create.
module;

#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>

#include <boost/system/error_code.hpp>
#include <boost/system/system_error.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

module sysv.core;

namespace sysv {

namespace {

// SETALL, then one semop that leaves the values as they are but sets sem_otime: the signal
// open_or_create waits for. Order +1/-1 or -1/+1 so neither step leaves 0..SEMVMX.
error_code initialise_and_publish(int id, std::span<const int> values) noexcept {
    detail::crash_here(detail::crash_point::set_created);
    std::vector<unsigned short> raw(values.begin(), values.end());
    semun arg{};
    arg.array = raw.data();
    if (::semctl(id, 0, SETALL, arg) == -1)
        return detail::id_error(errno);
    detail::crash_here(detail::crash_point::set_initialised);
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

process_state state_of(pid_t pid) noexcept {
    if (pid <= 0)
        return process_state::unknown;
    char path[32];
    std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
    const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1)
        return errno == ENOENT || errno == ESRCH ? process_state::dead : process_state::unknown;
    char buffer[512];
    const ssize_t n = ::read(fd, buffer, sizeof buffer - 1);
    ::close(fd);
    if (n <= 0)
        return process_state::dead; // the entry vanished between open and read
    buffer[n] = '\0';
    // "pid (comm) S ...": comm may hold anything, ')' included; the state follows the last ')'.
    const char* close_paren = std::strrchr(buffer, ')');
    if (close_paren == nullptr || close_paren[1] != ' ' || close_paren[2] == '\0')
        return process_state::unknown;
    switch (close_paren[2]) {
    case 'T': // stopped by a signal
    case 't': // stopped by a tracer
        return process_state::stopped;
    case 'Z':
    case 'X':
        return process_state::dead;
    default:
        return process_state::running;
    }
}

std::optional<std::uint64_t> start_time_of(pid_t pid) noexcept {
    if (pid <= 0)
        return std::nullopt;
    char path[32];
    std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
    const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1)
        return std::nullopt;
    char buffer[1024];
    const ssize_t n = ::read(fd, buffer, sizeof buffer - 1);
    ::close(fd);
    if (n <= 0)
        return std::nullopt;
    buffer[n] = '\0';
    // Field 22 (starttime); fields 3.. follow the last ')' of "pid (comm) ".
    const char* p = std::strrchr(buffer, ')');
    if (p == nullptr)
        return std::nullopt;
    ++p;
    for (int field = 3; field < 22; ++field) { // p: the space before `field`
        p = std::strchr(p + 1, ' ');
        if (p == nullptr)
            return std::nullopt;
    }
    char* end = nullptr;
    const unsigned long long value = std::strtoull(p + 1, &end, 10);
    if (end == p + 1)
        return std::nullopt;
    return static_cast<std::uint64_t>(value);
}

std::uint64_t pid_namespace_id() noexcept {
    struct stat st {};
    if (::stat("/proc/self/ns/pid", &st) == -1)
        return 0;
    return static_cast<std::uint64_t>(st.st_ino);
}

std::string_view to_string(process_state state) noexcept {
    switch (state) {
    case process_state::running:
        return "running";
    case process_state::stopped:
        return "stopped";
    case process_state::dead:
        return "dead";
    case process_state::unknown:
        break;
    }
    return "unknown";
}

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

open_step classify_existing_set(const semaphore_set_status& status, std::size_t expected_size,
                                mode_t expected_mode, uid_t expected_owner,
                                bool creator_alive) noexcept {
    // The creator too: the kernel gives an object's creator the owner's rights for as long as
    // the object lives, so a set another user created and handed over (IPC_SET) stays theirs.
    if (status.owner.owner_uid != expected_owner || status.creator_uid != expected_owner ||
        (status.owner.mode & 0777) != expected_mode || status.size != expected_size)
        return open_step::foreign;
    if (status.last_operation)
        return open_step::ready;
    return creator_alive ? open_step::wait : open_step::creator_died;
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
                          std::to_string(st.owner.owner_uid) + ", created by uid " +
                          std::to_string(st.creator_uid) +
                          (st.last_operation ? "" : ", never published by its creator");
        }
        detail::throw_error(ec, "semget (open or create)", describe("semaphore set", k, -1),
                            detail);
    }
    return result;
}

} // namespace sysv
