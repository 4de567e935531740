// shared_stats_server: options, logging, keys and the test hook, shared by the master and the
// workers. Part of shared_stats_server.cpp's translation unit (one TU keeps the build lean).
#pragma once

#include <boost/asio/ip/address.hpp>

#include "common/private_dir.hpp"
#include "stats_table.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>

// Std, Boost and POSIX headers come first in every unit, then the import.
import sysv;

#ifndef SHARED_STATS_SERVER_VERSION
#define SHARED_STATS_SERVER_VERSION "0.0.0"
#endif

namespace stats_server {

using boost::system::error_code;

// A worker's exit status meaning the server cannot go on (its semaphore set was removed); the
// master restarts a worker that ends with any other status.
inline constexpr int exit_objects_removed = 3;
// ftok project id of the key file.
inline constexpr int project_id = 'S';
// Largest request target and request header accepted (414 / 431 above).
inline constexpr std::size_t max_target = 2048;
inline constexpr std::uint32_t max_header = 8192;

struct config {
    std::string address = "127.0.0.1";
    unsigned port = 0;
    unsigned workers = std::max(1u, std::thread::hardware_concurrency());
    std::string key_file;
    std::uint64_t rate = 0;
    std::uint32_t max_counters = 1024;
    std::uint32_t max_clients = 4096;
    bool per_process = false;
    std::string lock_backoff = "default";
    bool lock_per_request = false;
    unsigned lock_spin = 16;
    unsigned lock_timeout_ms = 5000;
    unsigned idle_timeout_s = 30;
    bool watch = false;
    std::string test_pause; // NAME:STEP:POINT, test builds only
};

// ---- small helpers ----

inline std::uint64_t steady_ns() {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                          std::chrono::steady_clock::now().time_since_epoch())
                                          .count());
}

inline std::string role = "shared_stats_server"; // becomes "worker N (pid P)" in workers

inline void log(const std::string& line) {
    std::fprintf(stderr, "%s: %s\n", role.c_str(), line.c_str());
    std::fflush(stderr);
}

inline std::string describe_exception(const std::exception_ptr& e) {
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& x) {
        return x.what();
    } catch (...) {
        return "unknown exception";
    }
}

inline std::string describe_status(int status) {
    if (WIFSIGNALED(status)) {
        const int sig = WTERMSIG(status);
        const char* name = ::sigabbrev_np(sig);
        return "killed by signal " + std::to_string(sig) + " (SIG" + (name ? name : "?") + ")";
    }
    const int code = WEXITSTATUS(status);
    std::string s = "exited with status " + std::to_string(code);
    if (code == exit_objects_removed)
        s += " (the shared objects were removed)";
    return s;
}

inline bool process_alive(pid_t pid) {
    return pid > 0 && (::kill(pid, 0) == 0 || errno == EPERM);
}

/// The default key file: $XDG_RUNTIME_DIR/asio-sysv-stats/server, or
/// /tmp/asio-sysv-stats-<uid>/server (see examples::private_directory).
inline std::filesystem::path default_key_file() {
    return examples::private_directory("asio-sysv-stats") / "server";
}

/// The key of the server's objects: ftok of the key file (created if missing).
inline sysv::key server_key(const std::string& key_file, bool create) {
    const std::filesystem::path file =
        key_file.empty() ? default_key_file() : std::filesystem::path(key_file);
    if (create) {
        const int fd = ::open(file.c_str(), O_CREAT | O_RDONLY | O_CLOEXEC, 0600);
        if (fd == -1)
            throw std::runtime_error("cannot create key file " + file.string() + ": " +
                                     std::strerror(errno));
        ::close(fd);
    }
    error_code ec;
    auto k = sysv::key::from_path(file, project_id, ec);
    if (ec)
        throw std::runtime_error("cannot make a key from " + file.string() + ": " + ec.message() +
                                 (create ? "" : " (is a server running with this --key-file?)"));
    return k;
}

inline sysv::backoff backoff_named(const std::string& name) {
    if (name == "latency")
        return sysv::backoff::latency_tuned();
    if (name == "cpu")
        return sysv::backoff::cpu_tuned();
    return sysv::backoff{};
}

// ---- test hook: pause inside the critical section (test builds only) ----

struct pause_spec {
    std::string name;
    stats::step step = stats::step::increment;
    stats::point point = stats::point::written;
};

inline std::optional<pause_spec> parse_pause_spec(const std::string& text) {
    const auto a = text.find(':');
    const auto b = a == std::string::npos ? a : text.find(':', a + 1);
    if (b == std::string::npos)
        return std::nullopt;
    pause_spec p;
    p.name = text.substr(0, a);
    const std::string s = text.substr(a + 1, b - a - 1), pt = text.substr(b + 1);
    bool step_ok = false, point_ok = false;
    for (auto candidate : {stats::step::insert, stats::step::increment, stats::step::bucket})
        if (s == stats::to_string(candidate)) {
            p.step = candidate;
            step_ok = true;
        }
    for (auto candidate :
         {stats::point::journaled, stats::point::half_written, stats::point::written})
        if (pt == stats::to_string(candidate)) {
            p.point = candidate;
            point_ok = true;
        }
    if (!stats::valid_name(p.name) || !step_ok || !point_ok)
        return std::nullopt;
    return p;
}

/// The hook the table calls inside each journaled step. In test builds, a request for the named
/// counter stops this worker at the given point, lock held, until it is killed.
struct table_hook {
    const std::optional<pause_spec>* spec;
    std::string_view name;
    void operator()(stats::step s, stats::point p) const {
#ifdef SHARED_STATS_SERVER_TEST_HOOKS
        if (*spec && (*spec)->step == s && (*spec)->point == p && (*spec)->name == name) {
            log(std::string("test hook: paused holding the lock at ") + stats::to_string(s) + ":" +
                stats::to_string(p) + " of counter " + std::string(name));
            for (;;)
                ::pause();
        }
#else
        (void)s;
        (void)p;
#endif
    }
};

} // namespace stats_server
