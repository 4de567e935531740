// shared_stats_server: pre-forked HTTP/1.1 workers sharing named counters through one System V
// segment, guarded by a sysv::mutex that request handlers co_await.
//
//   shared_stats_server [--port N] [--workers N] [--rate N] [--key-file PATH] ...
//   shared_stats_server --watch [--key-file PATH]
//
// The master binds the listening socket, creates the segment and the lock's semaphore set at the
// ftok key of --key-file, forks the workers and restarts any that dies. Each worker runs one
// io_context serving HTTP/1.1 with Boost.Beast coroutines (keep-alive):
//   GET /hit/<name>  increments counter <name> in the shared table, answers the new value;
//   GET /stats       JSON: counters, per-worker pid/requests/lock statistics, uptime;
//   GET /health      200 "ok".
// With --rate N, each client address gets a token bucket in the same segment (N hits per
// second, bursts of N, shared by all workers); over it, /hit answers 429. SIGINT/SIGTERM: the
// master stops the workers, waits for them, removes the segment and the set, exits 0. --watch
// attaches to a running server's segment read-only and prints live totals once a second.
//
// One translation unit: this file (options, the master, --watch), http_worker.hpp (a worker),
// server_support.hpp (what both use) and stats_table.hpp (the segment's layout and the
// crash-repair protocol, plain code). README "The shared stats server" has the diagram.
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <nlohmann/json.hpp>

#include "common/cli.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "http_worker.hpp" // last: it brings server_support.hpp, which imports sysv

using namespace stats_server;

namespace {

// ---- the master ----

/// A listening socket, bound by the master and inherited by the workers.
struct listener {
    int fd = -1;
    tcp::endpoint endpoint;
    listener() = default;
    listener(const listener&) = delete;
    listener& operator=(const listener&) = delete;
    ~listener() {
        if (fd != -1)
            ::close(fd);
    }
};

void bind_listener(listener& l, const std::string& address, unsigned port) {
    const tcp::endpoint wanted(asio::ip::make_address(address), static_cast<unsigned short>(port));
    l.fd = ::socket(wanted.protocol().family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (l.fd == -1)
        throw std::runtime_error(std::string("cannot create a socket: ") + std::strerror(errno));
    const int one = 1;
    ::setsockopt(l.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    const std::string where = address + ":" + std::to_string(port);
    if (::bind(l.fd, wanted.data(), static_cast<socklen_t>(wanted.size())) == -1)
        throw std::runtime_error("cannot listen on " + where + ": " + std::strerror(errno));
    if (::listen(l.fd, SOMAXCONN) == -1)
        throw std::runtime_error("cannot listen on " + where + ": " + std::strerror(errno));
    tcp::endpoint bound = wanted;
    socklen_t size = static_cast<socklen_t>(bound.capacity());
    if (::getsockname(l.fd, bound.data(), &size) == -1)
        throw std::runtime_error(std::string("getsockname: ") + std::strerror(errno));
    bound.resize(size);
    l.endpoint = bound;
}

/// The server's System V objects: the segment (the claim on the key: created first) and the
/// lock's semaphore set. Removed by the master when it stops, also on errors.
struct shared_objects {
    sysv::shared_memory segment;
    sysv::semaphore_set set;
    sysv::attachment view;
};

/// An existing segment at the key: refuse if its creator (the master of another server) is
/// alive or it is not ours; otherwise it was left by a server that died: remove it and its set.
void handle_existing(const sysv::key& k, const std::string& key_text) {
    error_code ec;
    auto existing = sysv::shared_memory::open(k, ec);
    if (ec == std::errc::no_such_file_or_directory)
        return; // gone meanwhile: try creating again
    if (ec)
        throw std::runtime_error("a shared memory segment exists at key " + key_text +
                                 " but cannot be opened: " + ec.message());
    const auto st = existing.stat();
    const std::string where =
        "key " + key_text + " (shared memory id " + std::to_string(existing.id()) + ")";
    if (process_alive(st.creator_pid))
        throw std::runtime_error("another shared_stats_server (pid " +
                                 std::to_string(st.creator_pid) + ") is already running with " +
                                 where + "; stop it first or choose another --key-file (if pid " +
                                 std::to_string(st.creator_pid) +
                                 " is not a server, remove the segment with ipcrm -m " +
                                 std::to_string(existing.id()) + ")");
    if (st.owner.owner_uid != ::geteuid() || st.creator_uid != ::geteuid())
        throw std::runtime_error("a shared memory segment of another user exists at " + where +
                                 "; choose another --key-file");
    {
        auto view = existing.attach(sysv::access::read_only);
        const auto m = stats::read_magic(view.bytes());
        if (m != stats::magic && m != 0)
            throw std::runtime_error("a shared memory segment that is not a shared_stats_server "
                                     "table exists at " +
                                     where + "; choose another --key-file");
    }
    // Left by a server whose master died: its set (one semaphore of ours) goes with it.
    std::string removed = "shared memory id " + std::to_string(existing.id());
    auto set = sysv::semaphore_set::open(k, ec);
    if (!ec) {
        const auto sst = set.stat();
        if (sst.size == 1 && sst.owner.owner_uid == ::geteuid()) {
            removed += " and semaphore set id " + std::to_string(set.id());
            set.remove(ec);
        }
    }
    existing.remove(ec);
    if (ec && ec != sysv::errc::removed)
        throw std::runtime_error("cannot remove the stale segment at " + where + ": " +
                                 ec.message());
    log("removed " + removed + " left at key " + key_text + " by a server that died (pid " +
        std::to_string(st.creator_pid) + ", " + std::to_string(st.attach_count) +
        " processes still attached)");
}

shared_objects create_objects(const sysv::key& k, std::size_t size) {
    const std::string key_text = sysv::to_string(k);
    for (int attempt = 0;; ++attempt) {
        error_code ec;
        auto segment = sysv::shared_memory::create(k, size, 0600, ec);
        if (ec == std::errc::file_exists && attempt < 3) {
            handle_existing(k, key_text);
            continue;
        }
        if (ec)
            throw std::runtime_error("cannot create the shared memory segment (" +
                                     std::to_string(size) + " bytes) at key " + key_text + ": " +
                                     ec.message());
        sysv::scoped_remover remove_segment(segment);
        auto set = sysv::semaphore_set::create(k, {1}, 0600, ec);
        if (ec == std::errc::file_exists)
            throw std::runtime_error(
                "a semaphore set exists at key " + key_text +
                " without a segment: another program's, or left by a server that died while "
                "stopping; remove it with ipcrm -S " +
                key_text + " if nothing uses it, or choose another --key-file");
        if (ec)
            throw std::runtime_error("cannot create the semaphore set at key " + key_text + ": " +
                                     ec.message());
        sysv::scoped_remover remove_set(set);
        auto view = segment.attach();
        remove_set.release();
        remove_segment.release();
        return {std::move(segment), std::move(set), std::move(view)};
    }
}

/// Each connection is a file descriptor: the soft limit on them (often 1,024) is raised to the
/// hard one before the workers are forked, so they inherit it. What a worker does when it still
/// runs out: see worker::accept_loop.
void raise_open_file_limit() {
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
        const rlim_t was = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if (::setrlimit(RLIMIT_NOFILE, &limit) != 0)
            log("cannot raise the open-file limit from " + std::to_string(was) + ": " +
                std::strerror(errno));
    }
}

class master {
public:
    master(const config& cfg, const std::optional<pause_spec>& pause) : cfg_(cfg), pause_(pause) {}

    int run() {
        ::signal(SIGPIPE, SIG_IGN);
        raise_open_file_limit();
        // Signals are taken synchronously with sigtimedwait; blocked before any fork, so workers
        // start with them blocked and unblock them once their handlers are installed.
        ::sigemptyset(&signals_);
        ::sigaddset(&signals_, SIGINT);
        ::sigaddset(&signals_, SIGTERM);
        ::sigaddset(&signals_, SIGCHLD);
        ::sigprocmask(SIG_BLOCK, &signals_, nullptr);

        const sysv::key k = server_key(cfg_.key_file, true);
        bind_listener(listener_, cfg_.address, cfg_.port);
        const stats::shape shape{cfg_.max_counters, cfg_.workers,
                                 cfg_.rate > 0 ? cfg_.max_clients : 0};
        if (auto bad = stats::check(shape); !bad.empty())
            throw std::runtime_error(bad);
        objects_.emplace(create_objects(k, static_cast<std::size_t>(stats::segment_size(shape))));
        sysv::scoped_remover remove_set(objects_->set);
        sysv::scoped_remover remove_segment(objects_->segment);
        stats::initialise(objects_->view.bytes(), shape, static_cast<std::uint32_t>(::getpid()),
                          steady_ns());
        std::string problem;
        auto table = stats::table::open(objects_->view.bytes(), problem);
        if (!table)
            throw std::runtime_error("the new table does not validate: " + problem);
        table_.emplace(*table);

        const auto& ep = listener_.endpoint;
        const std::string host =
            ep.address().is_v6() ? "[" + ep.address().to_string() + "]" : ep.address().to_string();
        std::printf("shared_stats_server: listening on http://%s:%u/ (%u workers, %s counters%s, "
                    "key %s, shared memory id %d, semaphore set id %d)\n",
                    host.c_str(), static_cast<unsigned>(ep.port()), cfg_.workers,
                    cfg_.per_process ? "per-process" : "shared",
                    cfg_.rate > 0 ? (", rate limit " + std::to_string(cfg_.rate) + "/s").c_str()
                                  : "",
                    sysv::to_string(k).c_str(), objects_->segment.id(), objects_->set.id());
        std::fflush(stdout);

        slots_.resize(cfg_.workers);
        for (std::uint32_t i = 0; i < cfg_.workers; ++i)
            start_worker(i);
        const int code = supervise();
        // Workers are gone: remove the objects (set first: a segment without a set is what a
        // restarting server recognises as stale).
        std::uint64_t served = 0;
        for (std::uint32_t i = 0; i < cfg_.workers; ++i)
            served += table_->worker(i).requests;
        const int segment_id = objects_->segment.id(), set_id = objects_->set.id();
        error_code set_error, segment_error;
        objects_->set.remove(set_error);
        objects_->segment.remove(segment_error);
        if (set_error && set_error != sysv::errc::removed)
            log("could not remove semaphore set id " + std::to_string(set_id) + ": " +
                set_error.message());
        if (segment_error && segment_error != sysv::errc::removed)
            log("could not remove shared memory id " + std::to_string(segment_id) + ": " +
                segment_error.message());
        log("stopped after " + std::to_string(served) + " requests; removed shared memory id " +
            std::to_string(segment_id) + " and semaphore set id " + std::to_string(set_id));
        return code;
    }

private:
    struct slot {
        pid_t pid = 0;
        std::chrono::steady_clock::time_point started;
        std::optional<std::chrono::steady_clock::time_point> restart_at;
        unsigned quick_deaths = 0;
        std::uint32_t restarts = 0;
    };

    void start_worker(std::uint32_t index) {
        slot& s = slots_[index];
        table_->set_restarts(index, s.restarts);
        std::fflush(nullptr);
        const pid_t master_pid = ::getpid();
        const pid_t pid = ::fork();
        if (pid == -1) {
            log("cannot start worker " + std::to_string(index) + ": fork: " + std::strerror(errno) +
                "; retrying in 1 s");
            s.restart_at = std::chrono::steady_clock::now() + std::chrono::seconds(1);
            return;
        }
        if (pid == 0) {
            // The worker. It never returns into the master's frames (whose destructors would
            // remove the objects): it ends with _exit.
            ::prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (::getppid() != master_pid)
                ::_exit(0);
            role = "worker " + std::to_string(index) + " (pid " + std::to_string(::getpid()) + ")";
            int code = 1;
            try {
                worker w(cfg_, pause_, *table_, index, listener_.fd, listener_.endpoint,
                         objects_->set.id());
                code = w.run();
            } catch (const std::exception& e) {
                log(std::string("fatal: ") + e.what());
                code = 1;
            }
            std::fflush(nullptr);
            ::_exit(code);
        }
        s.pid = pid;
        s.started = std::chrono::steady_clock::now();
        s.restart_at.reset();
        table_->set_worker_pid(index, static_cast<std::uint32_t>(pid));
        if (s.restarts > 0)
            log("worker " + std::to_string(index) + " restarted (pid " + std::to_string(pid) + ")");
    }

    /// Waits for signals: restarts dead workers until SIGINT/SIGTERM or a fatal condition, then
    /// stops the workers. Returns the exit status.
    int supervise() {
        for (;;) {
            auto now = std::chrono::steady_clock::now();
            auto wake = now + std::chrono::seconds(1);
            for (const slot& s : slots_)
                if (s.restart_at)
                    wake = std::min(wake, *s.restart_at);
            const auto wait = std::max(std::chrono::nanoseconds(0), wake - now);
            timespec ts{static_cast<time_t>(wait.count() / 1'000'000'000),
                        static_cast<long>(wait.count() % 1'000'000'000)};
            siginfo_t info{};
            const int sig = ::sigtimedwait(&signals_, &info, &ts);
            if (sig == SIGINT || sig == SIGTERM)
                return stop_workers(std::string("received SIG") + ::sigabbrev_np(sig), 0);
            if (auto fatal = reap(true))
                return stop_workers(*fatal, 1);
            if (auto gone = objects_gone())
                return stop_workers(*gone, 1);
            now = std::chrono::steady_clock::now();
            for (std::uint32_t i = 0; i < slots_.size(); ++i)
                if (slots_[i].restart_at && *slots_[i].restart_at <= now)
                    start_worker(i);
        }
    }

    /// Reaps every worker that ended; schedules restarts. Returns why the server must stop, if
    /// it must.
    std::optional<std::string> reap(bool restart) {
        std::optional<std::string> fatal;
        int status = 0;
        pid_t pid;
        while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0) {
            const auto it = std::find_if(slots_.begin(), slots_.end(),
                                         [&](const slot& s) { return s.pid == pid; });
            if (it == slots_.end())
                continue;
            const auto index = static_cast<std::uint32_t>(it - slots_.begin());
            slot& s = *it;
            s.pid = 0;
            table_->set_worker_pid(index, 0);
            const std::string what = "worker " + std::to_string(index) + " (pid " +
                                     std::to_string(pid) + ") " + describe_status(status);
            if (!restart) {
                if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
                    log(what);
                continue;
            }
            if (WIFEXITED(status) && WEXITSTATUS(status) == exit_objects_removed) {
                fatal = what;
                continue;
            }
            const auto lived = std::chrono::steady_clock::now() - s.started;
            s.quick_deaths = lived < std::chrono::seconds(1) ? s.quick_deaths + 1 : 0;
            if (s.quick_deaths >= 5) {
                fatal = what + "; it died within 1 s of starting 5 times in a row";
                continue;
            }
            ++s.restarts;
            // A worker that dies right after starting is restarted after a growing delay.
            const auto delay = s.quick_deaths == 0
                                   ? std::chrono::milliseconds(0)
                                   : std::chrono::milliseconds(100 << (s.quick_deaths - 1));
            log(what + "; restarting it" +
                (delay.count() > 0 ? " in " + std::to_string(delay.count()) + " ms" : ""));
            s.restart_at = std::chrono::steady_clock::now() + delay;
        }
        return fatal;
    }

    /// The objects must stay ours while we run: someone removing them (ipcrm) ends the server.
    std::optional<std::string> objects_gone() {
        error_code ec;
        const auto st = objects_->segment.stat(ec);
        if (ec || st.marked_for_removal)
            return "the shared memory segment (id " + std::to_string(objects_->segment.id()) +
                   ") was removed by another process";
        objects_->set.stat(ec);
        if (ec)
            return "the semaphore set (id " + std::to_string(objects_->set.id()) +
                   ") was removed by another process";
        return std::nullopt;
    }

    /// SIGTERM to every worker, then waits (a second SIGINT/SIGTERM, or 10 s, escalates to
    /// SIGKILL: safe, the lock is released by the kernel and the table repairs itself).
    int stop_workers(const std::string& why, int code) {
        std::size_t running = 0;
        for (const slot& s : slots_)
            if (s.pid > 0) {
                ::kill(s.pid, SIGTERM);
                ++running;
            }
        log("stopping (" + why + "): waiting for " + std::to_string(running) + " workers");
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        bool killed = false;
        for (;;) {
            reap(false);
            if (std::none_of(slots_.begin(), slots_.end(), [](const slot& s) { return s.pid > 0; }))
                break;
            const auto left = deadline - std::chrono::steady_clock::now();
            if (left <= std::chrono::nanoseconds(0) && !killed) {
                log("workers still running after 10 s: sending SIGKILL");
                kill_all();
                killed = true;
            }
            timespec ts{0, 100'000'000};
            siginfo_t info{};
            const int sig = ::sigtimedwait(&signals_, &info, &ts);
            if ((sig == SIGINT || sig == SIGTERM) && !killed) {
                log("second signal: sending SIGKILL to the workers");
                kill_all();
                killed = true;
            }
        }
        return code;
    }

    void kill_all() {
        for (const slot& s : slots_)
            if (s.pid > 0)
                ::kill(s.pid, SIGKILL);
    }

    const config& cfg_;
    const std::optional<pause_spec>& pause_;
    sigset_t signals_{};
    listener listener_;
    std::optional<shared_objects> objects_;
    std::optional<stats::table> table_;
    std::vector<slot> slots_;
};

// ---- --watch ----

int watch(const config& cfg) {
    const sysv::key k = server_key(cfg.key_file, false);
    const std::string key_text = sysv::to_string(k);
    error_code ec;
    auto segment = sysv::shared_memory::open(k, ec);
    if (ec == std::errc::no_such_file_or_directory) {
        log("no shared_stats_server is running at key " + key_text);
        return 1;
    }
    if (ec)
        throw std::runtime_error("cannot open the segment at key " + key_text + ": " +
                                 ec.message());
    auto view = segment.attach(sysv::access::read_only);
    std::string problem;
    const auto table = stats::const_table::open(view.bytes(), problem);
    if (!table) {
        log("the segment at key " + key_text + " (id " + std::to_string(segment.id()) +
            ") is not a usable shared_stats_server table: " + problem);
        return 1;
    }
    sigset_t signals;
    ::sigemptyset(&signals);
    ::sigaddset(&signals, SIGINT);
    ::sigaddset(&signals, SIGTERM);
    ::sigprocmask(SIG_BLOCK, &signals, nullptr);
    std::printf("watching shared_stats_server pid %u at key %s (read-only); Ctrl-C to stop\n",
                table->master_pid(), key_text.c_str());
    std::fflush(stdout);
    std::uint64_t last_hits = 0, last_requests = 0;
    bool first = true;
    for (;;) {
        const auto st = segment.stat(ec);
        if (ec || st.marked_for_removal) {
            std::printf("the server stopped (its segment was removed)\n");
            std::fflush(stdout);
            return 0;
        }
        std::size_t corrupt = 0;
        auto counters = table->counters(&corrupt);
        std::uint64_t hits = 0, requests = 0, limited = 0;
        for (const auto& c : counters)
            hits += c.value;
        unsigned running = 0;
        for (std::uint32_t i = 0; i < table->table_shape().max_workers; ++i) {
            const auto w = table->worker(i);
            requests += w.requests;
            limited += w.rate_limited;
            running += w.pid != 0 ? 1 : 0;
        }
        std::sort(counters.begin(), counters.end(),
                  [](const auto& a, const auto& b) { return a.value > b.value; });
        std::string top;
        for (std::size_t i = 0; i < std::min<std::size_t>(counters.size(), 3); ++i)
            top +=
                (i ? ", " : " (top: ") + counters[i].name + "=" + std::to_string(counters[i].value);
        if (!top.empty())
            top += ")";
        const std::uint64_t now = steady_ns(), started = table->started_ns();
        const std::uint64_t up =
            started != 0 && now > started ? (now - started) / 1'000'000'000 : 0;
        std::printf(
            "up %llus | %zu counters, %llu hits%s%s | %u workers, %llu requests%s | %llu "
            "rate-limited | %llu repairs%s\n",
            static_cast<unsigned long long>(up), counters.size(),
            static_cast<unsigned long long>(hits),
            first ? "" : (" (+" + std::to_string(hits - std::min(hits, last_hits)) + "/s)").c_str(),
            top.c_str(), running, static_cast<unsigned long long>(requests),
            first ? ""
                  : (" (+" + std::to_string(requests - std::min(requests, last_requests)) + "/s)")
                        .c_str(),
            static_cast<unsigned long long>(limited),
            static_cast<unsigned long long>(table->repairs()),
            corrupt ? (", " + std::to_string(corrupt) + " corrupt entries").c_str() : "");
        std::fflush(stdout);
        last_hits = hits;
        last_requests = requests;
        first = false;
        timespec ts{1, 0};
        siginfo_t info{};
        if (::sigtimedwait(&signals, &info, &ts) > 0)
            return 0;
    }
}

} // namespace

int main(int argc, char** argv) {
    config cfg;
    CLI::App app{"HTTP/1.1 server whose pre-forked workers share named counters through System V "
                 "shared memory guarded by a sysv::mutex (asio-sysv example)",
                 "shared_stats_server"};
    cli::describe(app);
    app.add_option("--address", cfg.address, "IP address to listen on")
        ->capture_default_str()
        ->check([](const std::string& s) {
            error_code ec;
            asio::ip::make_address(s, ec);
            return ec ? "not an IP address: " + s : std::string();
        });
    app.add_option("--port", cfg.port, "TCP port (0: an ephemeral one, printed on start)")
        ->capture_default_str()
        ->check(CLI::Range(0, 65535));
    app.add_option("--workers", cfg.workers, "worker processes (default: the number of CPUs)")
        ->capture_default_str()
        ->check(CLI::Range(1, 1024));
    app.add_option("--key-file", cfg.key_file,
                   "file whose ftok key names the shared objects (created if missing; default: "
                   "$XDG_RUNTIME_DIR/asio-sysv-stats/server or /tmp/asio-sysv-stats-<uid>/server)");
    app.add_option("--rate", cfg.rate,
                   "per-client rate limit of /hit, requests per second (bursts of as many), "
                   "shared by all workers; 0: off")
        ->capture_default_str()
        ->check(CLI::Range(std::uint64_t(0), std::uint64_t(1'000'000)));
    app.add_option("--max-counters", cfg.max_counters, "size of the shared counter table")
        ->capture_default_str()
        ->check(CLI::Range(1u, 1u << 20));
    app.add_option("--max-clients", cfg.max_clients, "client buckets of the rate limit")
        ->capture_default_str()
        ->check(CLI::Range(1u, 1u << 20));
    app.add_flag("--per-process-counters", cfg.per_process,
                 "count in each worker's memory instead of the shared table (the benchmark's "
                 "baseline; /stats then shows the answering worker's counters)");
    app.add_option("--lock-backoff", cfg.lock_backoff,
                   "polling schedule of a contended lock: default, latency (sysv::backoff::"
                   "latency_tuned) or cpu")
        ->capture_default_str()
        ->check(CLI::IsMember({"default", "latency", "cpu"}));
    app.add_flag("--lock-per-request", cfg.lock_per_request,
                 "take the lock for each /hit instead of once per batch of the hits that arrive "
                 "together");
    app.add_option("--lock-spin", cfg.lock_spin,
                   "try_lock retries before co_await-ing a lock another process holds")
        ->capture_default_str()
        ->check(CLI::Range(0u, 1000u));
    app.add_option("--lock-timeout-ms", cfg.lock_timeout_ms,
                   "answer 503 when the lock is not acquired within this time")
        ->capture_default_str()
        ->check(CLI::Range(1u, 600'000u));
    app.add_option("--idle-timeout-s", cfg.idle_timeout_s,
                   "close connections idle (or stalled) for this long")
        ->capture_default_str()
        ->check(CLI::Range(1u, 3600u));
    app.add_flag("--watch", cfg.watch,
                 "attach read-only to the server running at --key-file and print live totals "
                 "once a second");
#ifdef SHARED_STATS_SERVER_TEST_HOOKS
    app.add_option("--test-pause-in-lock", cfg.test_pause,
                   "test builds: a /hit/NAME request pauses the worker at STEP:POINT of the "
                   "table update, lock held (NAME:insert|increment:journaled|half_written|written)")
        ->group(""); // hidden
#endif
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? 0 : 2;
    }
    std::optional<pause_spec> pause;
    if (!cfg.test_pause.empty()) {
        pause = parse_pause_spec(cfg.test_pause);
        if (!pause) {
            std::fprintf(stderr, "--test-pause-in-lock: expected NAME:STEP:POINT, got %s\n",
                         cfg.test_pause.c_str());
            return 2;
        }
    }
    try {
        if (cfg.watch)
            return watch(cfg);
        master m(cfg, pause);
        return m.run();
    } catch (const std::exception& e) {
        log(std::string("error: ") + e.what());
        return 1;
    }
}
