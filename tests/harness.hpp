// Helpers every test uses. Include this (and any std/Boost/POSIX header) before `import sysv;`;
// harness_ipc.hpp (helpers that use the library) after it.
//
//  * sysv_test::child / run_in_child: run a lambda in a forked child; get its exit code or the
//    signal that killed it. A child that throws or fails a check exits non-zero.
//  * SYSV_CO_TEST_CASE(name): a test case whose body is a coroutine run on a fresh io_context;
//    sysv_test::run_coroutine: the same in a child (or this process), returning an exit code.
//  * sysv_test::ipc_guard: records every System V id a test creates and removes them when the
//    test ends, passed or failed; also makes ftok keys from private temporary files.
#pragma once

#include <boost/asio.hpp>
#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace sysv_test {

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SYSV_TEST_UNDER_TSAN 1
#endif
#endif
#ifdef SYSV_TEST_UNDER_TSAN
inline constexpr bool under_thread_sanitizer = true;
#else
inline constexpr bool under_thread_sanitizer = false;
#endif

/// How a child process ended.
struct exit_status {
    int code = -1;  ///< exit code, or -1 if killed by a signal
    int signal = 0; ///< the killing signal, or 0 if it exited
    bool exited_with(int c) const { return signal == 0 && code == c; }
    bool killed_by(int s) const { return signal == s; }
    friend std::ostream& operator<<(std::ostream& os, const exit_status& s) {
        if (s.signal != 0)
            return os << "killed by signal " << s.signal;
        return os << "exited with " << s.code;
    }
};

/// A forked child running a lambda. The lambda's return value (int) is the exit code; an
/// exception makes the child print it and exit with 99. The destructor kills (SIGKILL) and reaps
/// a child that is still running, so a failing test never leaves processes behind.
class child {
public:
    template <class F>
    explicit child(F&& body) {
        std::fflush(nullptr);
        pid_ = ::fork();
        if (pid_ == -1)
            throw std::system_error(errno, std::generic_category(), "fork");
        if (pid_ == 0) {
            int code = 99;
            try {
                if constexpr (std::is_void_v<decltype(body())>) {
                    body();
                    code = 0;
                } else {
                    code = body();
                }
            } catch (const std::exception& e) {
                std::fprintf(stderr, "child %d: exception: %s\n", ::getpid(), e.what());
            } catch (...) {
                std::fprintf(stderr, "child %d: unknown exception\n", ::getpid());
            }
            std::fflush(nullptr);
            ::_exit(code); // no atexit handlers, no test-framework teardown in the child
        }
    }
    child(const child&) = delete;
    child& operator=(const child&) = delete;
    ~child() {
        if (pid_ > 0 && !reaped_) {
            ::kill(pid_, SIGKILL);
            wait();
        }
    }

    pid_t pid() const { return pid_; }
    void kill(int signal = SIGKILL) const { ::kill(pid_, signal); }

    /// Waits for the child to end.
    exit_status wait() {
        if (!reaped_) {
            int raw = 0;
            while (::waitpid(pid_, &raw, 0) == -1 && errno == EINTR) {
            }
            reaped_ = true;
            status_ = WIFSIGNALED(raw) ? exit_status{-1, WTERMSIG(raw)}
                                       : exit_status{WEXITSTATUS(raw), 0};
        }
        return status_;
    }

    /// Waits at most `timeout`; kills the child (SIGKILL) if it is still running then.
    exit_status wait_for(std::chrono::milliseconds timeout) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (!reaped_ && std::chrono::steady_clock::now() < deadline) {
            int raw = 0;
            const pid_t r = ::waitpid(pid_, &raw, WNOHANG);
            if (r == pid_) {
                reaped_ = true;
                status_ = WIFSIGNALED(raw) ? exit_status{-1, WTERMSIG(raw)}
                                           : exit_status{WEXITSTATUS(raw), 0};
                return status_;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        if (!reaped_)
            ::kill(pid_, SIGKILL);
        return wait();
    }

private:
    pid_t pid_ = -1;
    bool reaped_ = false;
    exit_status status_;
};

/// Runs `body` in a forked child and waits for it.
template <class F>
exit_status run_in_child(F&& body) {
    child c(std::forward<F>(body));
    return c.wait();
}

/// Inside a child: fails the child (exit 98, with a message) unless `condition` holds.
/// Boost.Test's checks do not work across fork, so children report through their exit code.
inline void child_check(bool condition, const char* what) {
    if (!condition) {
        std::fprintf(stderr, "child %d: check failed: %s\n", ::getpid(), what);
        std::fflush(nullptr);
        ::_exit(98);
    }
}
#define SYSV_CHILD_CHECK(...) ::sysv_test::child_check(static_cast<bool>(__VA_ARGS__), #__VA_ARGS__)

/// Records System V ids (and temporary files for ftok) and removes them at scope exit.
class ipc_guard {
public:
    ipc_guard() = default;
    ipc_guard(const ipc_guard&) = delete;
    ipc_guard& operator=(const ipc_guard&) = delete;
    ~ipc_guard() { clear(); }

    /// Remember a semaphore set / segment by id (anything with id(), or a raw id).
    template <class Object>
    Object& semaphores(Object& object) {
        semaphore_ids_.push_back(object.id());
        return object;
    }
    template <class Object>
    Object& memory(Object& object) {
        memory_ids_.push_back(object.id());
        return object;
    }
    void semaphore_id(int id) { semaphore_ids_.push_back(id); }
    void memory_id(int id) { memory_ids_.push_back(id); }
    /// Whatever set and segment are at `k` when the guard clears: for objects that another
    /// process (a forked child) creates, which this one cannot record by id.
    void objects_at(key_t k) { keys_.push_back(k); }

    /// A fresh file in a private temporary directory; removed with the guard. Its ftok key is
    /// unique among live files (ftok uses the inode and device).
    std::filesystem::path temp_file() {
        if (dir_.empty()) {
            std::string pattern =
                (std::filesystem::temp_directory_path() / "sysv-test-XXXXXX").string();
            if (::mkdtemp(pattern.data()) == nullptr)
                throw std::system_error(errno, std::generic_category(), "mkdtemp");
            dir_ = pattern;
        }
        auto path = dir_ / ("key-" + std::to_string(files_++));
        const int fd = ::open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0600);
        if (fd == -1)
            throw std::system_error(errno, std::generic_category(), "create " + path.string());
        ::close(fd);
        return path;
    }

    /// An ftok key (project id 1) of a fresh temporary file, at which no semaphore set and no
    /// segment exist yet (ftok keys can collide: skip those that are taken).
    key_t temp_key() {
        for (int attempt = 0; attempt < 64; ++attempt) {
            const key_t k = ::ftok(temp_file().c_str(), 1);
            if (k != -1 && ::semget(k, 0, 0) == -1 && errno == ENOENT && ::shmget(k, 0, 0) == -1 &&
                errno == ENOENT)
                return k;
        }
        throw std::runtime_error("no free ftok key found");
    }

    /// Removes everything recorded (ignoring objects already removed).
    void clear() {
        for (key_t k : keys_) {
            if (const int id = ::semget(k, 0, 0); id != -1)
                semaphore_ids_.push_back(id);
            if (const int id = ::shmget(k, 0, 0); id != -1)
                memory_ids_.push_back(id);
        }
        keys_.clear();
        for (int id : semaphore_ids_)
            ::semctl(id, 0, IPC_RMID);
        for (int id : memory_ids_)
            ::shmctl(id, IPC_RMID, nullptr);
        semaphore_ids_.clear();
        memory_ids_.clear();
        if (!dir_.empty()) {
            std::error_code ignored;
            std::filesystem::remove_all(dir_, ignored);
            dir_.clear();
        }
    }

private:
    std::vector<int> semaphore_ids_;
    std::vector<int> memory_ids_;
    std::vector<key_t> keys_;
    std::filesystem::path dir_;
    int files_ = 0;
};

/// True if a semaphore set with this id still exists.
inline bool semaphore_set_exists(int id) {
    return ::semctl(id, 0, GETVAL) != -1 || (errno != EINVAL && errno != EIDRM);
}
/// True if a segment with this id still exists.
inline bool segment_exists(int id) {
    shmid_ds ds{};
    return ::shmctl(id, IPC_STAT, &ds) != -1 || (errno != EINVAL && errno != EIDRM);
}

/// Reads exactly `size` bytes or fails after `timeout` (or at end of file).
inline bool read_exactly(int fd, void* data, std::size_t size,
                         std::chrono::milliseconds timeout = std::chrono::milliseconds(10000)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    auto* out = static_cast<char*>(data);
    std::size_t got = 0;
    while (got < size) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0)
            return false;
        pollfd p{fd, POLLIN, 0};
        const int r = ::poll(&p, 1, static_cast<int>(left.count()));
        if (r == -1 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        const ssize_t n = ::read(fd, out + got, size - got);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        got += static_cast<std::size_t>(n);
    }
    return true;
}

/// Runs `statement`, which must throw boost::system::system_error with `expected` as code and
/// every one of `needles` in what(). Returns what() ("" if nothing was thrown).
template <class Expected>
std::string check_thrown(const std::function<void()>& statement, const Expected& expected,
                         std::initializer_list<std::string_view> needles) {
    try {
        statement();
    } catch (const boost::system::system_error& e) {
        const std::string what = e.what();
        BOOST_TEST((e.code() == expected), "code " << e.code() << " in: " << what);
        for (std::string_view needle : needles)
            BOOST_TEST(what.find(needle) != std::string::npos,
                       "\"" << needle << "\" missing in: " << what);
        return what;
    }
    BOOST_ERROR("no boost::system::system_error was thrown");
    return {};
}

/// Polls `condition` every millisecond until it holds (true) or `limit` passes (false): for
/// waiting on another process's state; a limit detects hangs, nothing is timed.
template <class Condition>
bool eventually(Condition condition,
                std::chrono::milliseconds limit = std::chrono::milliseconds(10000)) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!condition()) {
        if (std::chrono::steady_clock::now() > deadline)
            return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
}

/// Runs a coroutine test body on a fresh io_context until it and everything it spawned ends;
/// rethrows what the body threw. Fails (instead of hanging) if it is still running at `limit`.
inline void run_coroutine_test(std::function<boost::asio::awaitable<void>()> body,
                               std::chrono::seconds limit = std::chrono::seconds(60)) {
    boost::asio::io_context io;
    std::exception_ptr failure;
    bool finished = false;
    boost::asio::co_spawn(io, std::move(body), [&](std::exception_ptr e) {
        failure = e;
        finished = true;
    });
    io.run_for(limit);
    BOOST_REQUIRE_MESSAGE(finished,
                          "coroutine test did not finish within " << limit.count() << " s");
    if (failure)
        std::rethrow_exception(failure);
}

/// What run_coroutine() returns when the coroutine threw (the exception is printed) or did not
/// finish within its limit.
inline constexpr int coroutine_threw = 97, coroutine_timed_out = 96;

/// Runs `body` as a coroutine on a fresh io_context in this process (a test's process or a
/// forked child) and returns its result: the coroutine's int, 0 for a void coroutine that
/// returned, coroutine_threw, or coroutine_timed_out after `limit`.
inline int run_coroutine(std::function<boost::asio::awaitable<int>(boost::asio::io_context&)> body,
                         std::chrono::seconds limit = std::chrono::seconds(120)) {
    boost::asio::io_context io;
    int result = coroutine_timed_out;
    boost::asio::co_spawn(io, body(io), [&](std::exception_ptr e, int r) {
        if (e) {
            try {
                std::rethrow_exception(e);
            } catch (const std::exception& ex) {
                std::fprintf(stderr, "pid %d: %s\n", ::getpid(), ex.what());
            }
            result = coroutine_threw;
        } else {
            result = r;
        }
    });
    io.run_for(limit);
    return result;
}
inline int run_coroutine(std::function<boost::asio::awaitable<void>(boost::asio::io_context&)> body,
                         std::chrono::seconds limit = std::chrono::seconds(120)) {
    return run_coroutine(
        [&](boost::asio::io_context& io) -> boost::asio::awaitable<int> {
            co_await body(io);
            co_return 0;
        },
        limit);
}

} // namespace sysv_test

/// A Boost.Test case whose body is a coroutine (`co_await` works inside), run on a fresh
/// io_context by sysv_test::run_coroutine_test.
#define SYSV_CO_TEST_CASE(name)                                                                    \
    static boost::asio::awaitable<void> name##_coroutine();                                        \
    BOOST_AUTO_TEST_CASE(name) {                                                                   \
        ::sysv_test::run_coroutine_test(&name##_coroutine);                                        \
    }                                                                                              \
    static boost::asio::awaitable<void> name##_coroutine()
