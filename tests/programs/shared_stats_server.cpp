// The shared_stats_server example as users run it (suites stats_server_load and stats_server):
// real processes on loopback ports, an Asio HTTP client, SIGKILL inside the critical section,
// bad requests, shutdown, a second server. Its table alone is tested in stats_table.cpp.
#include "harness.hpp"

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

import sysv.core;

extern char** environ;

namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;
using namespace std::chrono_literals;

namespace {

std::string server_binary() {
    if (const char* dir = std::getenv("SYSV_TEST_BINARY_DIR"))
        return std::string(dir) + "/examples/shared_stats_server";
    return (std::filesystem::canonical("/proc/self/exe").parent_path().parent_path() / "examples" /
            "shared_stats_server")
        .string();
}

constexpr int project_id = 'S'; // the server's ftok project id

/// A key file of our own, at whose key no object exists yet (ftok keys can collide).
std::string fresh_key_file(sysv_test::ipc_guard& guard) {
    for (int attempt = 0; attempt < 64; ++attempt) {
        const auto file = guard.temp_file();
        const key_t k = ::ftok(file.c_str(), project_id);
        if (k != -1 && ::semget(k, 0, 0) == -1 && errno == ENOENT && ::shmget(k, 0, 0) == -1 &&
            errno == ENOENT)
            return file.string();
    }
    throw std::runtime_error("no free ftok key found");
}

/// The server's objects at the key of `key_file`: both gone?
bool objects_gone(const std::string& key_file) {
    const key_t k = ::ftok(key_file.c_str(), project_id);
    return ::semget(k, 0, 0) == -1 && errno == ENOENT && ::shmget(k, 0, 0) == -1 && errno == ENOENT;
}

/// A program run with stdout and stderr on one pipe, in its own process group (so everything it
/// forked can be killed by the group id). The destructor kills what still runs and removes the
/// objects at the key of `key_file` (the test's own), so a failing test leaves nothing behind.
class process {
public:
    /// Starts the server with `args`, through `launcher` when given (a program that execs the
    /// server, e.g. prlimit: the process is then the server's master all the same).
    process(std::vector<std::string> args, std::string key_file = {},
            const std::vector<std::string>& launcher = {})
        : key_file_(std::move(key_file)) {
        int out[2];
        if (::pipe2(out, O_CLOEXEC) == -1)
            throw std::runtime_error("pipe failed");
        posix_spawn_file_actions_t actions;
        ::posix_spawn_file_actions_init(&actions);
        ::posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
        ::posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
        ::posix_spawn_file_actions_adddup2(&actions, out[1], STDERR_FILENO);
        posix_spawnattr_t attributes;
        ::posix_spawnattr_init(&attributes);
        ::posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETPGROUP);
        ::posix_spawnattr_setpgroup(&attributes, 0);
        args.insert(args.begin(), server_binary());
        args.insert(args.begin(), launcher.begin(), launcher.end());
        std::vector<char*> argv;
        for (auto& a : args)
            argv.push_back(a.data());
        argv.push_back(nullptr);
        const int rc =
            ::posix_spawn(&pid_, args[0].c_str(), &actions, &attributes, argv.data(), environ);
        ::posix_spawn_file_actions_destroy(&actions);
        ::posix_spawnattr_destroy(&attributes);
        ::close(out[1]);
        if (rc != 0) {
            ::close(out[0]);
            throw std::runtime_error("cannot start " + args[0] + ": " + std::strerror(rc));
        }
        output_fd_ = out[0];
        reader_ = std::thread([this] { read_output(); });
    }
    process(const process&) = delete;
    process& operator=(const process&) = delete;
    ~process() {
        if (!reaped_) {
            ::kill(-pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        } else {
            ::kill(-pid_, SIGKILL); // workers of a master that was killed, if any remain
        }
        stop_reading_ = true;
        reader_.join();
        ::close(output_fd_);
        if (!key_file_.empty()) {
            const key_t k = ::ftok(key_file_.c_str(), project_id);
            if (const int id = ::semget(k, 0, 0); k != -1 && id != -1)
                ::semctl(id, 0, IPC_RMID);
            if (const int id = ::shmget(k, 0, 0); k != -1 && id != -1)
                ::shmctl(id, IPC_RMID, nullptr);
        }
    }

    pid_t pid() const { return pid_; }
    void signal(int sig) const { ::kill(pid_, sig); }

    std::string output() const {
        std::lock_guard lock(mutex_);
        return output_;
    }

    /// Waits until the output contains `text` (prints the output if it does not in time).
    bool wait_for(const std::string& text, std::chrono::milliseconds limit = 20s) const {
        const bool found =
            sysv_test::eventually([&] { return output().find(text) != std::string::npos; }, limit);
        if (!found)
            BOOST_TEST_MESSAGE("\"" << text << "\" did not appear; output:\n" << output());
        return found;
    }

    /// The number following `prefix` in the output (waits for it).
    long number_after(const std::string& prefix) const {
        if (!wait_for(prefix))
            throw std::runtime_error("no \"" + prefix + "\" in the output");
        const std::string out = output();
        return std::stol(out.substr(out.find(prefix) + prefix.size()));
    }
    int port() const { return static_cast<int>(number_after("listening on http://127.0.0.1:")); }
    int set_id() const { return static_cast<int>(number_after("semaphore set id ")); }

    /// Waits for the process to end: its exit status, 128 + signal, or -1 after `limit`.
    int wait_exit(std::chrono::milliseconds limit = 30s) {
        if (reaped_)
            return status_;
        int raw = 0;
        const bool ended =
            sysv_test::eventually([&] { return ::waitpid(pid_, &raw, WNOHANG) == pid_; }, limit);
        if (!ended)
            return -1;
        reaped_ = true;
        status_ = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
        // Its last words may still be in the pipe: read up to the end (bounded: processes it
        // forked may hold the pipe a little longer).
        sysv_test::eventually([&] { return eof_.load(); }, 5s);
        return status_;
    }

private:
    void read_output() {
        char buffer[4096];
        while (!stop_reading_) {
            pollfd p{output_fd_, POLLIN, 0};
            if (::poll(&p, 1, 50) <= 0)
                continue;
            const ssize_t n = ::read(output_fd_, buffer, sizeof buffer);
            if (n <= 0) {
                if (n == 0) { // every writer is gone
                    eof_ = true;
                    std::this_thread::sleep_for(10ms);
                }
                continue;
            }
            std::lock_guard lock(mutex_);
            output_.append(buffer, static_cast<std::size_t>(n));
        }
    }

    std::string key_file_;
    pid_t pid_ = -1;
    int output_fd_ = -1;
    bool reaped_ = false;
    int status_ = -1;
    std::atomic<bool> stop_reading_{false};
    std::atomic<bool> eof_{false};
    mutable std::mutex mutex_;
    std::string output_;
    std::thread reader_;
};

/// A server with `args` and its own key file.
struct server {
    server(sysv_test::ipc_guard& guard, std::vector<std::string> args,
           const std::vector<std::string>& launcher = {})
        : key_file(fresh_key_file(guard)),
          proc(with_key(std::move(args), key_file), key_file, launcher), port(proc.port()) {}
    static std::vector<std::string> with_key(std::vector<std::string> args,
                                             const std::string& file) {
        args.insert(args.end(), {"--key-file", file});
        return args;
    }
    std::string key_file;
    process proc;
    int port;
};

// ---- an HTTP client over Asio ----

struct reply {
    int status = 0;
    std::string head;
    std::string body;
    bool has_header(std::string_view line) const { return head.find(line) != std::string::npos; }
};

/// Reads one response from `socket` (bytes beyond it stay in `buffer`).
asio::awaitable<std::pair<error_code, reply>> read_reply(tcp::socket& socket, std::string& buffer) {
    auto [ec, n] = co_await asio::async_read_until(socket, asio::dynamic_buffer(buffer), "\r\n\r\n",
                                                   asio::as_tuple(asio::use_awaitable));
    if (ec)
        co_return std::pair{ec, reply{}};
    reply r;
    r.head = buffer.substr(0, n);
    buffer.erase(0, n);
    if (r.head.size() < 12 || r.head.compare(0, 5, "HTTP/") != 0)
        co_return std::pair{make_error_code(boost::system::errc::protocol_error), r};
    r.status = std::stoi(r.head.substr(9, 3));
    std::size_t length = 0;
    if (const auto at = r.head.find("\r\nContent-Length: "); at != std::string::npos)
        length = std::stoul(r.head.substr(at + 18));
    while (buffer.size() < length) {
        auto [read_error, m] = co_await asio::async_read(socket, asio::dynamic_buffer(buffer),
                                                         asio::transfer_at_least(1),
                                                         asio::as_tuple(asio::use_awaitable));
        if (read_error)
            co_return std::pair{read_error, r};
    }
    r.body = buffer.substr(0, length);
    buffer.erase(0, length);
    co_return std::pair{error_code{}, r};
}

tcp::endpoint loopback(int port) {
    return {asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)};
}

/// Sends `bytes` on a new connection and reads one response.
asio::awaitable<std::pair<error_code, reply>> exchange(int port, std::string bytes) {
    tcp::socket socket(co_await asio::this_coro::executor);
    auto [ec] = co_await socket.async_connect(loopback(port), asio::as_tuple(asio::use_awaitable));
    if (ec)
        co_return std::pair{ec, reply{}};
    auto [write_error, n] = co_await asio::async_write(socket, asio::buffer(bytes),
                                                       asio::as_tuple(asio::use_awaitable));
    if (write_error)
        co_return std::pair{write_error, reply{}};
    std::string buffer;
    co_return co_await read_reply(socket, buffer);
}

std::string get_request(const std::string& target) {
    return "GET " + target + " HTTP/1.1\r\nHost: test\r\n\r\n";
}

/// Runs a client coroutine on a fresh io_context; fails instead of hanging after `limit`.
template <class T>
T run_client(std::function<asio::awaitable<T>()> body, std::chrono::seconds limit = 60s) {
    asio::io_context io;
    std::optional<T> result;
    std::exception_ptr failure;
    bool finished = false;
    asio::co_spawn(io, std::move(body), [&](std::exception_ptr e, T value) {
        failure = e;
        if (!e)
            result = std::move(value);
        finished = true;
    });
    io.run_for(limit);
    BOOST_REQUIRE_MESSAGE(finished, "client did not finish within " << limit.count() << " s");
    if (failure)
        std::rethrow_exception(failure);
    return std::move(*result);
}

/// One request on a new connection (raw bytes), synchronously.
reply send_raw(int port, std::string bytes) {
    auto [ec, r] =
        run_client<std::pair<error_code, reply>>([&]() { return exchange(port, bytes); }, 30s);
    BOOST_REQUIRE_MESSAGE(!ec, "request failed: " << ec.message());
    return r;
}
reply get(int port, const std::string& target) {
    return send_raw(port, get_request(target));
}
nlohmann::json get_stats(int port) {
    const reply r = get(port, "/stats");
    BOOST_REQUIRE_EQUAL(r.status, 200);
    return nlohmann::json::parse(r.body);
}

/// The pids of the server's `count` workers, once all of them run (a worker may answer before
/// the master has started the next one, whose pid reads 0 meanwhile).
std::vector<pid_t> running_workers(int port, std::size_t count) {
    std::vector<pid_t> workers;
    nlohmann::json last;
    const bool all = sysv_test::eventually([&] {
        last = get_stats(port);
        workers.clear();
        for (const auto& w : last["workers"])
            if (w["pid"].get<pid_t>() > 0)
                workers.push_back(w["pid"].get<pid_t>());
        return workers.size() == count;
    });
    BOOST_REQUIRE_MESSAGE(
        all, "the " << count << " workers never ran together; the last /stats: " << last.dump());
    return workers;
}

/// What a load of keep-alive connections saw.
struct load_result {
    std::uint64_t ok = 0;          ///< 200 responses
    std::uint64_t failed = 0;      ///< the connection broke with the request in flight
    std::uint64_t unavailable = 0; ///< 503 (lock not acquired in time: not counted)
    std::uint64_t other = 0;       ///< any other status (a bug)
    std::vector<std::uint64_t> values;
};

/// One keep-alive connection sending `requests` GETs of `target`, one at a time. A request
/// whose connection breaks counts as failed (it may or may not have been counted by the
/// server); the connection is then re-opened and the next request sent.
asio::awaitable<void> load_connection(int port, std::string target, int requests,
                                      load_result& result) {
    const std::string request = get_request(target);
    auto ex = co_await asio::this_coro::executor;
    std::optional<tcp::socket> socket;
    std::string buffer;
    for (int i = 0; i < requests; ++i) {
        if (!socket) {
            socket.emplace(ex);
            auto [ec] =
                co_await socket->async_connect(loopback(port), asio::as_tuple(asio::use_awaitable));
            if (ec) {
                socket.reset();
                ++result.failed;
                continue;
            }
            buffer.clear();
        }
        auto [write_error, n] = co_await asio::async_write(*socket, asio::buffer(request),
                                                           asio::as_tuple(asio::use_awaitable));
        auto [ec, r] =
            write_error ? std::pair{write_error, reply{}} : co_await read_reply(*socket, buffer);
        if (ec) {
            ++result.failed;
            socket.reset();
            continue;
        }
        if (r.status == 200) {
            ++result.ok;
            result.values.push_back(std::stoull(r.body));
        } else if (r.status == 503) {
            ++result.unavailable;
        } else {
            ++result.other;
            BOOST_TEST_MESSAGE("unexpected response " << r.status << ": " << r.body);
        }
    }
}

asio::awaitable<void> sleep_for(std::chrono::milliseconds d) {
    asio::steady_timer timer(co_await asio::this_coro::executor, d);
    co_await timer.async_wait(asio::use_awaitable);
}

/// Fires `connections` x `requests` on `target`, with `during` running alongside (it gets the
/// result so far); returns when both are done.
load_result run_load(int port, const std::string& target, int connections, int requests,
                     std::function<asio::awaitable<void>(load_result&)> during = {}) {
    load_result result;
    run_client<int>(
        [&]() -> asio::awaitable<int> {
            auto ex = co_await asio::this_coro::executor;
            int running = connections + (during ? 1 : 0);
            std::exception_ptr failure;
            auto done = [&](std::exception_ptr e) {
                if (e && !failure)
                    failure = e;
                --running;
            };
            for (int c = 0; c < connections; ++c)
                asio::co_spawn(ex, load_connection(port, target, requests, result), done);
            if (during)
                asio::co_spawn(ex, during(result), done);
            while (running > 0)
                co_await sleep_for(5ms);
            if (failure)
                std::rethrow_exception(failure);
            co_return 0;
        },
        300s);
    return result;
}

/// The semaphore's value and the pid of its last operation.
std::pair<int, int> lock_state(int set_id) {
    return {::semctl(set_id, 0, GETVAL), ::semctl(set_id, 0, GETPID)};
}

/// Waits (without blocking the client's io_context) until a worker announces it paused in the
/// critical section; returns its pid, or -1 after 20 s.
asio::awaitable<pid_t> paused_worker(const process& p) {
    const std::string marker = ": test hook: paused holding the lock";
    for (int i = 0; i < 4000; ++i) {
        const std::string out = p.output();
        if (const auto end = out.find(marker); end != std::string::npos) {
            const auto start = out.rfind("(pid ", end);
            co_return static_cast<pid_t>(std::stol(out.substr(start + 5)));
        }
        co_await sleep_for(5ms);
    }
    BOOST_TEST_MESSAGE("no worker paused; output:\n" << p.output());
    co_return -1;
}

} // namespace

BOOST_AUTO_TEST_SUITE(stats_server_load)

/// 64 keep-alive connections x `per_connection` hits on /hit/x against 2 workers: /stats must count
/// exactly the successful responses, and the values answered must be exactly 1..N.
void check_exact_count(std::vector<std::string> options, int per_connection) {
    sysv_test::ipc_guard guard;
    options.insert(options.end(), {"--workers", "2"});
    server s(guard, options);
    const auto load = run_load(s.port, "/hit/x", 64, per_connection);
    BOOST_TEST(load.failed == 0u);
    BOOST_TEST(load.unavailable == 0u);
    BOOST_TEST(load.other == 0u);
    BOOST_TEST(load.ok == 64u * static_cast<unsigned>(per_connection));
    const auto stats = get_stats(s.port);
    BOOST_TEST(stats["counters"]["x"].get<std::uint64_t>() == load.ok);
    // Every increment answered a value no other request got: exactly 1..N.
    auto values = load.values;
    std::sort(values.begin(), values.end());
    bool one_to_n = true;
    for (std::size_t i = 0; i < values.size(); ++i)
        one_to_n = one_to_n && values[i] == i + 1;
    BOOST_TEST(one_to_n);
    // Both workers served and used the lock; the table never needed a repair.
    std::uint64_t requests = 0;
    BOOST_REQUIRE_EQUAL(stats["workers"].size(), 2u);
    for (const auto& w : stats["workers"]) {
        BOOST_TEST(w["pid"].get<int>() > 0);
        requests += w["requests"].get<std::uint64_t>();
        BOOST_TEST_MESSAGE("worker pid " << w["pid"] << ": " << w["requests"] << " requests, lock "
                                         << w["lock"]);
    }
    BOOST_TEST(requests >= load.ok);
    std::uint64_t applied = 0;
    for (const auto& w : stats["workers"])
        applied += w["lock"]["hits"].get<std::uint64_t>();
    BOOST_TEST(applied == load.ok);
    BOOST_TEST(stats["repairs"].get<int>() == 0);
    BOOST_TEST(s.proc.output().find("restarting") == std::string::npos);
    s.proc.signal(SIGTERM);
    BOOST_TEST(s.proc.wait_exit() == 0);
    BOOST_TEST(objects_gone(s.key_file));
}

BOOST_AUTO_TEST_CASE(stats_equal_the_successful_hits_of_64_connections_exactly) {
    check_exact_count({}, 500); // hits applied in batches, one lock per batch
}

BOOST_AUTO_TEST_CASE(stats_are_exact_with_one_lock_per_request_too) {
    check_exact_count({"--lock-per-request"}, 200);
}

BOOST_AUTO_TEST_CASE(a_worker_killed_holding_the_lock_is_restarted_and_the_count_stays_exact) {
    sysv_test::ipc_guard guard;
    server s(guard, {"--workers", "2", "--test-pause-in-lock", "victim:increment:written"});
    const int set_id = s.proc.set_id();
    pid_t killed = -1;
    std::uint64_t ok_at_kill = 0;
    error_code victim_error;
    bool health_answered_while_locked = false;
    const auto load =
        run_load(s.port, "/hit/x", 64, 500, [&](load_result& progress) -> asio::awaitable<void> {
            while (progress.ok < 3000)
                co_await sleep_for(2ms);
            // /hit/victim pauses its worker inside the increment, after the change and before
            // the commit: the worst moment.
            auto ex = co_await asio::this_coro::executor;
            asio::co_spawn(ex, exchange(s.port, get_request("/hit/victim")),
                           [&](std::exception_ptr, std::pair<error_code, reply> r) {
                               victim_error = r.first;
                           });
            killed = co_await paused_worker(s.proc);
            BOOST_REQUIRE(killed > 0);
            const auto [value, holder] = lock_state(set_id);
            BOOST_TEST(value == 0);
            BOOST_TEST(holder == killed);
            // The other worker's event loop is not blocked by the wait for the lock.
            auto [ec, health] = co_await exchange(s.port, get_request("/health"));
            health_answered_while_locked = !ec && health.status == 200;
            ok_at_kill = progress.ok;
            ::kill(killed, SIGKILL);
        });
    BOOST_TEST(health_answered_while_locked);
    BOOST_TEST(victim_error.failed()); // its worker died before answering
    const std::string pid = std::to_string(killed);
    BOOST_TEST(s.proc.wait_for("(pid " + pid + ") killed by signal 9 (SIGKILL); restarting it"));
    BOOST_TEST(s.proc.wait_for(" restarted (pid "));
    BOOST_TEST(s.proc.wait_for("rolled back a step interrupted in pid " + pid));

    // Every request was answered, failed with its connection, or got 503; the others kept
    // serving after the kill.
    BOOST_TEST(load.ok + load.failed + load.unavailable == 64u * 500u);
    BOOST_TEST(load.other == 0u);
    BOOST_TEST(load.ok > ok_at_kill);
    BOOST_TEST(load.failed <= 64u); // at most one in flight per connection of the dead worker
    const auto stats = get_stats(s.port);
    const auto x = stats["counters"]["x"].get<std::uint64_t>();
    BOOST_TEST_MESSAGE("ok " << load.ok << ", failed " << load.failed << ", 503 "
                             << load.unavailable << ", counted " << x);
    BOOST_TEST(x >= load.ok);
    BOOST_TEST(x <= load.ok + load.failed);
    std::set<std::uint64_t> distinct(load.values.begin(), load.values.end());
    BOOST_TEST(distinct.size() == load.values.size());
    BOOST_TEST(*distinct.rbegin() <= x);
    // The interrupted increment was rolled back (the insert before it stands, at 0).
    BOOST_TEST(stats["counters"]["victim"].get<std::uint64_t>() == 0u);
    BOOST_TEST(stats["repairs"].get<int>() == 1);
    int restarts = 0;
    for (const auto& w : stats["workers"]) {
        BOOST_TEST(w["pid"].get<int>() != killed);
        BOOST_TEST(w["pid"].get<int>() > 0);
        restarts += w["restarts"].get<int>();
    }
    BOOST_TEST(restarts == 1);
    // Nothing stays locked.
    BOOST_TEST(lock_state(set_id).first == 1);
    BOOST_TEST(get(s.port, "/hit/x").status == 200);
    s.proc.signal(SIGTERM);
    BOOST_TEST(s.proc.wait_exit() == 0);
    BOOST_TEST(objects_gone(s.key_file));
}

BOOST_AUTO_TEST_CASE(a_worker_killed_halfway_through_an_insert_leaves_no_trace) {
    sysv_test::ipc_guard guard;
    server s(guard, {"--workers", "1", "--test-pause-in-lock", "victim:insert:half_written"});
    const int set_id = s.proc.set_id();
    BOOST_TEST(get(s.port, "/hit/a").body == "1\n");
    error_code victim_error;
    run_client<int>([&]() -> asio::awaitable<int> {
        auto ex = co_await asio::this_coro::executor;
        bool done = false;
        asio::co_spawn(ex, exchange(s.port, get_request("/hit/victim")),
                       [&](std::exception_ptr, std::pair<error_code, reply> r) {
                           victim_error = r.first;
                           done = true;
                       });
        const pid_t paused = co_await paused_worker(s.proc);
        BOOST_REQUIRE(paused > 0);
        BOOST_TEST(lock_state(set_id).first == 0);
        ::kill(paused, SIGKILL);
        while (!done)
            co_await sleep_for(5ms);
        co_return 0;
    });
    BOOST_TEST(victim_error.failed());
    BOOST_TEST(s.proc.wait_for("restarting it"));
    // The restarted worker takes the lock the kernel released, and rolls the insert back.
    BOOST_TEST(get(s.port, "/hit/a").body == "2\n");
    const auto stats = get_stats(s.port);
    BOOST_TEST(!stats["counters"].contains("victim"));
    BOOST_TEST(stats["counters"].size() == 1u);
    BOOST_TEST(stats["repairs"].get<int>() == 1);
    BOOST_TEST(stats["corrupt_entries"].get<int>() == 0);
    BOOST_TEST(lock_state(set_id).first == 1);
    s.proc.signal(SIGTERM);
    BOOST_TEST(s.proc.wait_exit() == 0);
    BOOST_TEST(objects_gone(s.key_file));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(stats_server)

BOOST_AUTO_TEST_CASE(bad_requests_get_http_errors_and_the_server_keeps_serving) {
    sysv_test::ipc_guard guard;
    server s(guard, {"--workers", "2"});
    struct bad {
        std::string bytes;
        int status;
        std::string_view says;
    };
    const std::string long_line = "GET /hit/" + std::string(10000, 'a') + " HTTP/1.1\r\n\r\n";
    std::string big_header = "GET /health HTTP/1.1\r\nHost: t\r\n";
    for (int i = 0; i < 200; ++i)
        big_header += "X-Filler-" + std::to_string(i) + ": " + std::string(50, 'f') + "\r\n";
    big_header += "\r\n";
    const std::string long_header_line =
        "GET /health HTTP/1.1\r\nHost: t\r\nX-Long: " + std::string(9000, 'h') + "\r\n\r\n";
    const std::vector<bad> cases{
        {get_request("/hit/"), 400, "invalid counter name"},
        {get_request("/hit/a%20b"), 400, "invalid counter name"},
        {get_request("/hit/a/b"), 400, "invalid counter name"},
        {get_request("/hit/" + std::string(65, 'n')), 414, "longer than 64"},
        {get_request("/stats?" + std::string(3000, 'q')), 414, "longer than 2048"},
        {long_line, 414, "request line longer"},
        {big_header, 431, "header larger"},
        {long_header_line, 431, "header larger"}, // one header line over the limit
        {get_request("/nope"), 404, "unknown path"},
        {get_request("/"), 404, "unknown path"},
        {"POST /hit/x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", 405, "only GET"},
        {"DELETE /stats HTTP/1.1\r\nHost: t\r\n\r\n", 405, "only GET"},
        {"GET /hit/x HTTP/1.1\r\n\r\n", 400, "Host"},
        {"GET /hit/x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello", 400, "no body"},
        {"GET /hit/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: "
         "chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
         400, "no body"},
        {"GET /hit/x HTTP/9.9\r\nHost: t\r\n\r\n", 400, "malformed"},
        {"GET hit/x HTTP/1.1\r\nHost: t\r\n\r\n", 400, "must be a path"},
        {"garbage\r\n\r\n", 400, "malformed"},
        {std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 15), 400, "malformed"},
        {std::string(64, '\0') + "\r\n\r\n", 400, "malformed"},
        {"GET /hit/x HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400, "malformed"},
        {"GET /hit/x HTTP/1.1\r\nBad Header Name: 1\r\nHost: t\r\n\r\n", 400, "malformed"},
    };
    for (const auto& c : cases) {
        BOOST_TEST_CONTEXT(c.bytes.substr(0, 60)) {
            const reply r = send_raw(s.port, c.bytes);
            BOOST_TEST(r.status == c.status);
            BOOST_TEST(r.body.find(c.says) != std::string::npos, r.body);
        }
    }
    // A client that sends half a request and goes away, and one that sends nothing.
    run_client<int>([&]() -> asio::awaitable<int> {
        for (const std::string partial : {"GET /hit/x HTTP/1.1\r\nHo", ""}) {
            tcp::socket socket(co_await asio::this_coro::executor);
            co_await socket.async_connect(loopback(s.port), asio::use_awaitable);
            if (!partial.empty())
                co_await asio::async_write(socket, asio::buffer(partial), asio::use_awaitable);
            socket.close();
        }
        co_return 0;
    });
    // Two pipelined requests on one connection get two responses, in order; HTTP/1.0 works.
    const auto pipelined =
        run_client<std::pair<reply, reply>>([&]() -> asio::awaitable<std::pair<reply, reply>> {
            tcp::socket socket(co_await asio::this_coro::executor);
            co_await socket.async_connect(loopback(s.port), asio::use_awaitable);
            const std::string two = get_request("/hit/p") + get_request("/hit/p");
            co_await asio::async_write(socket, asio::buffer(two), asio::use_awaitable);
            std::string buffer;
            auto [e1, r1] = co_await read_reply(socket, buffer);
            auto [e2, r2] = co_await read_reply(socket, buffer);
            BOOST_TEST(!e1);
            BOOST_TEST(!e2);
            co_return std::pair{r1, r2};
        });
    BOOST_TEST(pipelined.first.body == "1\n");
    BOOST_TEST(pipelined.second.body == "2\n");
    const reply old = send_raw(s.port, "GET /hit/p HTTP/1.0\r\n\r\n");
    BOOST_TEST(old.status == 200);
    BOOST_TEST(old.body == "3\n");
    BOOST_TEST(old.head.starts_with("HTTP/1.0 200"));
    // No request reached the table except the valid ones; no worker died.
    const auto stats = get_stats(s.port);
    BOOST_TEST(stats["counters"].size() == 1u);
    BOOST_TEST(stats["counters"]["p"].get<int>() == 3);
    BOOST_TEST(get(s.port, "/health").status == 200);
    BOOST_TEST(s.proc.output().find("restarting") == std::string::npos, s.proc.output());
    s.proc.signal(SIGTERM);
    BOOST_TEST(s.proc.wait_exit() == 0);
}

namespace {

/// `count` connections to `port` that send nothing (idle keep-alive clients).
std::vector<tcp::socket> idle_connections(asio::io_context& io, int port, int count) {
    std::vector<tcp::socket> sockets;
    for (int i = 0; i < count; ++i) {
        tcp::socket socket(io);
        socket.connect({asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)});
        sockets.push_back(std::move(socket));
    }
    return sockets;
}

/// Whether the server closed `socket` within `limit` (end of file or reset on read).
bool closed_by_server(tcp::socket& socket, std::chrono::milliseconds limit) {
    pollfd p{socket.native_handle(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(limit.count())) != 1)
        return false;
    char c;
    return ::recv(socket.native_handle(), &c, 1, MSG_DONTWAIT) <= 0;
}

/// The soft limit on open files of process `pid` (/proc/PID/limits).
long open_file_limit(pid_t pid) {
    std::ifstream limits("/proc/" + std::to_string(pid) + "/limits");
    for (std::string line; std::getline(limits, line);)
        if (line.starts_with("Max open files"))
            return std::stol(line.substr(26));
    return -1;
}

} // namespace

BOOST_AUTO_TEST_CASE(a_worker_out_of_file_descriptors_closes_the_longest_idle_connection) {
    // Soft = hard = 48 open files: nothing to raise, and about 35 connections fill the worker.
    sysv_test::ipc_guard guard;
    server s(guard, {"--workers", "1"}, {"/usr/bin/prlimit", "--nofile=48:48", "--"});
    BOOST_TEST(open_file_limit(s.proc.pid()) == 48);
    asio::io_context io;
    auto idle = idle_connections(io, s.port, 60);
    // A health check behind 60 idle clients is answered: the worker closed the connections
    // idle the longest to accept the rest.
    const reply health = get(s.port, "/health");
    BOOST_TEST(health.status == 200);
    BOOST_TEST(closed_by_server(idle.front(), 10s), "the longest idle connection is still open");
    BOOST_TEST(!closed_by_server(idle.back(), 0ms), "the newest idle connection was closed");
    BOOST_TEST(s.proc.wait_for("closed the connection idle the longest"));
    BOOST_TEST(get(s.port, "/health").status == 200);
}

BOOST_AUTO_TEST_CASE(the_server_raises_its_open_file_limit_to_the_hard_one) {
    sysv_test::ipc_guard guard;
    server s(guard, {"--workers", "1"}, {"/usr/bin/prlimit", "--nofile=48:4096", "--"});
    BOOST_TEST(open_file_limit(s.proc.pid()) == 4096);
    asio::io_context io;
    auto idle = idle_connections(io, s.port, 60);
    BOOST_TEST(get(s.port, "/health").status == 200);
    BOOST_TEST(!closed_by_server(idle.front(), 200ms), "an idle connection was closed");
}

BOOST_AUTO_TEST_CASE(sigterm_stops_the_workers_and_removes_the_ipc_objects) {
    sysv_test::ipc_guard guard;
    server s(guard, {"--workers", "2"});
    BOOST_TEST(get(s.port, "/hit/a").status == 200);
    const auto workers = running_workers(s.port, 2);
    const key_t k = ::ftok(s.key_file.c_str(), project_id);
    const int segment = ::shmget(k, 0, 0), set = ::semget(k, 0, 0);
    BOOST_TEST(segment != -1);
    BOOST_TEST(set == s.proc.set_id());
    s.proc.signal(SIGTERM);
    BOOST_TEST(s.proc.wait_exit() == 0);
    BOOST_TEST(s.proc.output().find("removed shared memory id " + std::to_string(segment) +
                                    " and semaphore set id " + std::to_string(set)) !=
               std::string::npos);
    BOOST_TEST(!sysv_test::segment_exists(segment));
    BOOST_TEST(!sysv_test::semaphore_set_exists(set));
    BOOST_TEST(objects_gone(s.key_file));
    for (pid_t w : workers) // the master reaped them
        BOOST_TEST(::kill(w, 0) == -1, "worker " << w << " still runs");

    // SIGINT (Ctrl-C) does the same.
    server s2(guard, {"--workers", "1"});
    s2.proc.signal(SIGINT);
    BOOST_TEST(s2.proc.wait_exit() == 0);
    BOOST_TEST(objects_gone(s2.key_file));
}

BOOST_AUTO_TEST_CASE(a_second_server_on_the_same_key_is_refused) {
    sysv_test::ipc_guard guard;
    server first(guard, {"--workers", "1"});
    BOOST_TEST(get(first.port, "/hit/a").status == 200);
    const key_t k = ::ftok(first.key_file.c_str(), project_id);
    const int segment = ::shmget(k, 0, 0);
    process second({"--workers", "1", "--key-file", first.key_file});
    BOOST_TEST(second.wait_exit() == 1);
    BOOST_TEST(second.output().find("another shared_stats_server (pid " +
                                    std::to_string(first.proc.pid()) + ") is already running") !=
                   std::string::npos,
               second.output());
    // The first one is untouched.
    BOOST_TEST(::shmget(k, 0, 0) == segment);
    BOOST_TEST(get(first.port, "/hit/a").body == "2\n");
    first.proc.signal(SIGTERM);
    BOOST_TEST(first.proc.wait_exit() == 0);
    BOOST_TEST(objects_gone(first.key_file));
}

BOOST_AUTO_TEST_CASE(objects_left_by_a_killed_server_are_replaced_by_the_next_one) {
    sysv_test::ipc_guard guard;
    const std::string key_file = fresh_key_file(guard);
    std::vector<pid_t> workers;
    {
        process crashed({"--workers", "2", "--key-file", key_file}, key_file);
        const int port = crashed.port();
        BOOST_TEST(get(port, "/hit/a").status == 200);
        workers = running_workers(port, 2);
        crashed.signal(SIGKILL);
        BOOST_TEST(crashed.wait_exit() == 128 + SIGKILL);
        // The workers follow their master (parent-death signal).
        BOOST_TEST(sysv_test::eventually([&] {
            return std::all_of(workers.begin(), workers.end(), [](pid_t w) {
                // gone, or a zombie nobody reaped yet (its new parent may reap it late)
                return sysv::state_of(w) == sysv::process_state::dead;
            });
        }));
        BOOST_TEST(!objects_gone(key_file)); // the master could not remove them
        process next({"--workers", "1", "--key-file", key_file}, key_file);
        const int next_port = next.port();
        BOOST_TEST(next.wait_for("left at key"));
        BOOST_TEST(next.output().find("by a server that died (pid " +
                                      std::to_string(crashed.pid()) + ",") != std::string::npos,
                   next.output());
        BOOST_TEST(get(next_port, "/hit/a").body == "1\n"); // a fresh table
        next.signal(SIGTERM);
        BOOST_TEST(next.wait_exit() == 0);
    }
    BOOST_TEST(objects_gone(key_file));
}

BOOST_AUTO_TEST_CASE(a_full_table_answers_507_and_keeps_counting_known_names) {
    sysv_test::ipc_guard guard;
    server s(guard, {"--workers", "1", "--max-counters", "2"});
    BOOST_TEST(get(s.port, "/hit/a").body == "1\n");
    BOOST_TEST(get(s.port, "/hit/b").body == "1\n");
    const reply full = get(s.port, "/hit/c");
    BOOST_TEST(full.status == 507);
    BOOST_TEST(full.body.find("the counter table is full (2 names") != std::string::npos);
    BOOST_TEST(get(s.port, "/hit/a").body == "2\n");
    BOOST_TEST(get_stats(s.port)["counters"].size() == 2u);
    s.proc.signal(SIGTERM);
    BOOST_TEST(s.proc.wait_exit() == 0);
}

BOOST_AUTO_TEST_CASE(removing_the_objects_under_a_running_server_stops_it_with_an_error) {
    sysv_test::ipc_guard guard;
    server s(guard, {"--workers", "2"});
    BOOST_TEST(get(s.port, "/hit/a").status == 200);
    // As `ipcrm -s` would (the objects are this test's: its server made them at its key).
    BOOST_REQUIRE(::semctl(s.proc.set_id(), 0, IPC_RMID) == 0);
    BOOST_TEST(s.proc.wait_exit() == 1);
    BOOST_TEST(s.proc.output().find("was removed") != std::string::npos, s.proc.output());
    BOOST_TEST(objects_gone(s.key_file)); // the segment went with it
}

BOOST_AUTO_TEST_CASE(the_rate_limit_is_shared_by_all_workers) {
    sysv_test::ipc_guard guard;
    server s(guard, {"--workers", "2", "--rate", "20"});
    const auto start = std::chrono::steady_clock::now();
    int ok = 0, limited = 0;
    std::string retry_after;
    // New connections, so both workers answer.
    for (int i = 0; i < 80; ++i) {
        const reply r = get(s.port, "/hit/r");
        if (r.status == 200)
            ++ok;
        else if (r.status == 429) {
            ++limited;
            retry_after = r.head;
        } else
            BOOST_ERROR("unexpected status " << r.status);
    }
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    // A burst of 20, then 20 per second, whichever worker answers: with a bucket per worker
    // the two workers would admit up to twice that.
    BOOST_TEST(ok >= 20);
    BOOST_TEST(ok <= 20 + static_cast<int>(elapsed * 20) + 1,
               "ok " << ok << " in " << elapsed << " s");
    BOOST_TEST(limited == 80 - ok);
    BOOST_TEST(retry_after.find("Retry-After: 1") != std::string::npos, retry_after);
    BOOST_TEST(get(s.port, "/health").status == 200); // not rate-limited
    const auto stats = get_stats(s.port);
    int counted_limited = 0;
    for (const auto& w : stats["workers"]) {
        counted_limited += w["rate_limited"].get<int>();
        BOOST_TEST_MESSAGE("worker " << w["pid"] << ": " << w["requests"] << " requests, "
                                     << w["rate_limited"] << " limited");
    }
    BOOST_TEST(counted_limited == limited);
    BOOST_TEST(stats["counters"]["r"].get<int>() == ok);
    s.proc.signal(SIGTERM);
    BOOST_TEST(s.proc.wait_exit() == 0);
}

BOOST_AUTO_TEST_CASE(watch_prints_live_totals_read_only_and_ends_with_the_server) {
    sysv_test::ipc_guard guard;
    server s(guard, {"--workers", "2"});
    for (int i = 0; i < 5; ++i)
        get(s.port, "/hit/w");
    process watcher({"--watch", "--key-file", s.key_file});
    BOOST_TEST(
        watcher.wait_for("watching shared_stats_server pid " + std::to_string(s.proc.pid())));
    BOOST_TEST(watcher.wait_for("1 counters, 5 hits"));
    BOOST_TEST(watcher.wait_for("(top: w=5)"));
    get(s.port, "/hit/w");
    BOOST_TEST(watcher.wait_for("6 hits (+1/s)"));
    s.proc.signal(SIGTERM);
    BOOST_TEST(s.proc.wait_exit() == 0);
    BOOST_TEST(watcher.wait_for("the server stopped"));
    BOOST_TEST(watcher.wait_exit() == 0);
    BOOST_TEST(objects_gone(s.key_file));
    // Nothing to watch: a clear error.
    process nobody({"--watch", "--key-file", s.key_file});
    BOOST_TEST(nobody.wait_exit() == 1);
    BOOST_TEST(nobody.output().find("no shared_stats_server is running at key") !=
               std::string::npos);
}

BOOST_AUTO_TEST_CASE(options_help_version_and_usage_errors) {
    const auto run = [](std::vector<std::string> args) {
        process p(std::move(args));
        const int code = p.wait_exit();
        return std::pair{code, p.output()};
    };
    auto [help, help_text] = run({"--help"});
    BOOST_TEST(help == 0);
    BOOST_TEST(help_text.find("--workers") != std::string::npos);
    BOOST_TEST(help_text.find("--test-pause-in-lock") == std::string::npos); // hidden
    auto [version, version_text] = run({"--version"});
    BOOST_TEST(version == 0);
    BOOST_TEST(version_text.find("shared_stats_server (asio-sysv) 0.") != std::string::npos);
    for (const auto& bad : std::vector<std::vector<std::string>>{{"--bogus"},
                                                                 {"--workers", "abc"},
                                                                 {"--workers", "0"},
                                                                 {"--port", "70000"},
                                                                 {"--address", "not-an-ip"},
                                                                 {"--lock-backoff", "fast"},
                                                                 {"--rate", "-1"},
                                                                 {"extra"},
                                                                 {"--test-pause-in-lock", "x"}}) {
        auto [code, text] = run(bad);
        BOOST_TEST(code == 2, bad[0] << ": " << text);
        BOOST_TEST(!text.empty());
    }
    // A port in use: a clear error, status 1, nothing created.
    sysv_test::ipc_guard guard;
    server s(guard, {"--workers", "1"});
    const std::string key_file = fresh_key_file(guard);
    process clash({"--workers", "1", "--port", std::to_string(s.port), "--key-file", key_file},
                  key_file);
    BOOST_TEST(clash.wait_exit() == 1);
    BOOST_TEST(clash.output().find("cannot listen on 127.0.0.1:" + std::to_string(s.port)) !=
               std::string::npos);
    BOOST_TEST(objects_gone(key_file));
    s.proc.signal(SIGTERM);
    BOOST_TEST(s.proc.wait_exit() == 0);
}

BOOST_AUTO_TEST_SUITE_END()
