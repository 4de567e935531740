// shared_stats_server: one worker process, an io_context serving HTTP/1.1 with Boost.Beast
// coroutines; /hit and /stats co_await the table's sysv::mutex. Part of shared_stats_server.cpp's
// translation unit.
#pragma once

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <nlohmann/json.hpp>

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "server_support.hpp" // last: it imports sysv after its includes

namespace stats_server {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::ip::tcp;

// ---- HTTP ----

using request = http::request<http::empty_body>;
using response = http::response<http::string_body>;

inline response make_response(http::status status, std::string body, unsigned version,
                              std::string_view content_type = "text/plain; charset=utf-8") {
    response res{status, version};
    res.set(http::field::server, "shared_stats_server/" SHARED_STATS_SERVER_VERSION);
    res.set(http::field::content_type, content_type);
    res.body() = std::move(body);
    res.prepare_payload();
    return res;
}

/// The response to a request the parser rejected (always closes the connection).
/// `start_line_parsed`: the parser got the whole request line before the error (it then has
/// the method and target; the line is no longer in `buffer`).
inline response parse_error_response(const error_code& ec, const beast::flat_buffer& buffer,
                                     bool start_line_parsed) {
    if (ec == http::error::header_limit) {
        // Over the limit: 414 when the request line alone is that long, 431 otherwise (a long
        // header line included: the request line was complete before it).
        const auto data = buffer.data();
        const std::string_view head(static_cast<const char*>(data.data()),
                                    std::min<std::size_t>(data.size(), max_header));
        if (!start_line_parsed && head.find('\n') == std::string_view::npos)
            return make_response(
                http::status::uri_too_long,
                "request line longer than " + std::to_string(max_header) + " bytes\n", 11);
        return make_response(
            http::status::request_header_fields_too_large,
            "request header larger than " + std::to_string(max_header) + " bytes\n", 11);
    }
    if (ec == http::error::unexpected_body || ec == http::error::body_limit)
        return make_response(http::status::bad_request, "GET requests take no body\n", 11);
    return make_response(http::status::bad_request, "malformed request: " + ec.message() + "\n",
                         11);
}

/// Errors that mean the client went away, stalled or was cancelled: no response is possible.
/// Everything else the parser reports is the client's malformed request.
inline bool connection_gone(const error_code& ec) {
    return ec == http::error::end_of_stream || ec == http::error::partial_message ||
           ec.category() != make_error_code(http::error::end_of_stream).category();
}

// ---- the worker ----

class worker {
public:
    worker(const config& cfg, const std::optional<pause_spec>& pause, stats::table table,
           std::uint32_t slot, int listen_fd, const tcp::endpoint& endpoint, int set_id)
        : cfg_(cfg), pause_(pause), table_(table), slot_(slot), pid_(::getpid()),
          mutex_(io_, sysv::semaphore_set::open_id(set_id), 0, backoff_named(cfg.lock_backoff)),
          acceptor_(io_, endpoint.protocol(), listen_fd), signals_(io_, SIGINT, SIGTERM),
          drain_timer_(io_) {}

    int run() {
        table_.start_worker(slot_, static_cast<std::uint32_t>(pid_), steady_ns());
        signals_.async_wait([this](error_code ec, int sig) {
            if (!ec)
                stop(0, std::string("signal ") + ::sigabbrev_np(sig));
        });
        // The master blocked these before forking; the handlers are installed now.
        sigset_t unblock;
        ::sigemptyset(&unblock);
        ::sigaddset(&unblock, SIGINT);
        ::sigaddset(&unblock, SIGTERM);
        ::sigprocmask(SIG_UNBLOCK, &unblock, nullptr);
        asio::co_spawn(io_, accept_loop(), [this](std::exception_ptr e) {
            if (e)
                stop(1, "accept loop failed: " + describe_exception(e));
        });
        try {
            io_.run();
        } catch (const std::exception& e) {
            // Nothing is half-written (critical sections never suspend) and the kernel releases
            // the lock: leave without unwinding the coroutines.
            log(std::string("fatal: ") + e.what());
            std::fflush(nullptr);
            ::_exit(1);
        }
        return exit_code_;
    }

private:
    struct session_state {
        beast::tcp_stream* stream;
        bool idle = false;
        std::chrono::steady_clock::time_point idle_since{};
    };

    /// Out of file descriptors: closes the connection that has been idle (waiting for its next
    /// request) the longest, so a new client, a health check for one, can be served. False when
    /// no connection is idle.
    bool close_longest_idle() {
        session_state* oldest = nullptr;
        for (session_state* s : sessions_)
            if (s->idle && (oldest == nullptr || s->idle_since < oldest->idle_since))
                oldest = s;
        if (oldest == nullptr)
            return false;
        oldest->idle = false; // its read completes with operation_aborted; it closes
        oldest->stream->cancel();
        return true;
    }

    /// Stops accepting; idle connections are closed now, busy ones after their response. The
    /// io_context then runs out of work (lock waits end within the lock timeout).
    void stop(int code, const std::string& why) {
        if (stopping_)
            return;
        stopping_ = true;
        exit_code_ = code;
        if (code != 0)
            log("stopping: " + why);
        error_code ignored;
        acceptor_.close(ignored);
        signals_.cancel();
        for (session_state* s : sessions_)
            if (s->idle)
                s->stream->cancel();
    }

    asio::awaitable<void> accept_loop() {
        while (!stopping_) {
            auto [ec, socket] =
                co_await acceptor_.async_accept(asio::as_tuple(asio::use_awaitable));
            if (stopping_)
                break;
            if (ec) {
                // accept's errors are errno values: strerror, not ec.message() (whose virtual
                // call UBSan's vptr check rejects for the system category under -fsanitize
                // with these modules, which would end the worker in the asan build).
                const std::string why = std::strerror(ec.value());
                if (ec == asio::error::no_descriptors || ec.value() == ENFILE) {
                    // Out of file descriptors (this process's limit, or the system's): the
                    // connection waits in the listen backlog. Make room by closing the
                    // connection idle the longest, and accept again once it is closed; with
                    // none idle, pause accepting for 100 ms instead of spinning.
                    if (close_longest_idle()) {
                        ++idle_closed_;
                        if ((idle_closed_ & (idle_closed_ - 1)) == 0) // 1, 2, 4, 8...: no flood
                            log("accept: " + why + "; closed the connection idle the " +
                                "longest (" + std::to_string(idle_closed_) + " so far)");
                        drain_timer_.expires_after(std::chrono::milliseconds(1));
                    } else {
                        log("accept: " + why + "; none idle, pausing accepts for 100 ms");
                        drain_timer_.expires_after(std::chrono::milliseconds(100));
                    }
                    co_await drain_timer_.async_wait(asio::as_tuple(asio::use_awaitable));
                } else if (ec == asio::error::no_buffer_space || ec == asio::error::no_memory) {
                    log("accept: " + why + "; pausing accepts for 100 ms");
                    drain_timer_.expires_after(std::chrono::milliseconds(100));
                    co_await drain_timer_.async_wait(asio::as_tuple(asio::use_awaitable));
                }
                continue;
            }
            error_code ignored;
            socket.set_option(tcp::no_delay(true), ignored);
            asio::co_spawn(io_, session(std::move(socket)), [](std::exception_ptr e) {
                if (e)
                    log("connection ended by an exception: " + describe_exception(e));
            });
            if (above_fair_share()) {
                drain_timer_.expires_after(std::chrono::milliseconds(1));
                co_await drain_timer_.async_wait(asio::as_tuple(asio::use_awaitable));
            }
        }
    }

    /// Accept balancing through the segment: every worker accepts from the one listening socket,
    /// and the first one awake would take a whole burst of connections (keep-alive clients then
    /// stay on it). A worker holding more than one connection above the running workers'
    /// average (read lock-free from their entries) waits 1 ms before its next accept, so another
    /// worker takes the next one; if none does, it accepts again: never a stall.
    bool above_fair_share() const {
        std::uint64_t total = 0, running = 0;
        for (std::uint32_t i = 0; i < table_.table_shape().max_workers; ++i) {
            const auto w = table_.worker(i);
            if (w.pid != 0) {
                ++running;
                total += std::min<std::uint64_t>(w.connections, 1u << 30);
            }
        }
        return running > 1 && open_connections_ * running > total + running;
    }

    asio::awaitable<void> session(tcp::socket socket) {
        error_code ec;
        const tcp::endpoint peer = socket.remote_endpoint(ec);
        if (ec)
            co_return;
        beast::tcp_stream stream(std::move(socket));
        session_state state{&stream};
        sessions_.insert(&state);
        table_.set_connections(slot_, ++open_connections_);
        struct unregister {
            worker& self;
            session_state* s;
            ~unregister() {
                self.sessions_.erase(s);
                self.table_.set_connections(self.slot_, --self.open_connections_);
            }
        } registration{*this, &state};

        beast::flat_buffer buffer;
        while (!stopping_) {
            http::request_parser<http::empty_body> parser;
            parser.header_limit(max_header);
            stream.expires_after(std::chrono::seconds(cfg_.idle_timeout_s));
            state.idle = true;
            state.idle_since = std::chrono::steady_clock::now();
            auto [read_error, read_bytes] = co_await http::async_read(
                stream, buffer, parser, asio::as_tuple(asio::use_awaitable));
            state.idle = false;
            if (read_error) {
                if (!connection_gone(read_error)) {
                    response res =
                        parse_error_response(read_error, buffer, !parser.get().target().empty());
                    res.keep_alive(false);
                    table_.count_request(slot_, false);
                    stream.expires_after(std::chrono::seconds(cfg_.idle_timeout_s));
                    auto [write_error, written] = co_await http::async_write(
                        stream, res, asio::as_tuple(asio::use_awaitable));
                    if (!write_error)
                        co_await linger(stream);
                }
                break;
            }
            const request& req = parser.get();
            response res = co_await handle(req, peer);
            table_.count_request(slot_, res.result() == http::status::too_many_requests);
            res.keep_alive(req.keep_alive() && !stopping_);
            stream.expires_after(std::chrono::seconds(cfg_.idle_timeout_s));
            auto [write_error, written] =
                co_await http::async_write(stream, res, asio::as_tuple(asio::use_awaitable));
            if (write_error || !res.keep_alive())
                break;
        }
        error_code ignored;
        stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    }

    /// After an error response, the client may still be sending: closing with unread data
    /// would reset the connection (RST) and could destroy the response before the client reads
    /// it. Stop sending, then read and drop what comes, for at most 1 s or 64 KiB.
    static asio::awaitable<void> linger(beast::tcp_stream& stream) {
        error_code ec;
        stream.socket().shutdown(tcp::socket::shutdown_send, ec);
        if (ec)
            co_return;
        std::array<char, 4096> scratch;
        std::size_t dropped = 0;
        stream.expires_after(std::chrono::seconds(1));
        while (dropped < 65536) {
            auto [read_error, n] = co_await stream.async_read_some(
                asio::buffer(scratch), asio::as_tuple(asio::use_awaitable));
            if (read_error)
                break;
            dropped += n;
        }
    }

    asio::awaitable<response> handle(const request& req, const tcp::endpoint& peer) {
        const unsigned version = req.version();
        if (req.method() != http::verb::get) {
            auto res =
                make_response(http::status::method_not_allowed, "only GET is supported\n", version);
            res.set(http::field::allow, "GET");
            co_return res;
        }
        if (version == 11 && req.find(http::field::host) == req.end())
            co_return make_response(http::status::bad_request, "HTTP/1.1 requires a Host header\n",
                                    version);
        const std::string_view target(req.target().data(), req.target().size());
        if (target.size() > max_target)
            co_return make_response(
                http::status::uri_too_long,
                "request target longer than " + std::to_string(max_target) + " bytes\n", version);
        if (target.empty() || target.front() != '/')
            co_return make_response(http::status::bad_request,
                                    "the request target must be a path starting with /\n", version);
        const std::string_view path = target.substr(0, target.find('?'));
        if (path == "/health")
            co_return make_response(http::status::ok, "ok\n", version);
        if (path == "/stats")
            co_return co_await stats(version);
        constexpr std::string_view hit_prefix = "/hit/";
        if (path.starts_with(hit_prefix)) {
            const std::string_view name = path.substr(hit_prefix.size());
            if (name.size() > stats::max_name)
                co_return make_response(http::status::uri_too_long,
                                        "counter name longer than " +
                                            std::to_string(stats::max_name) + " bytes\n",
                                        version);
            if (!stats::valid_name(name))
                co_return make_response(
                    http::status::bad_request,
                    "invalid counter name: use 1-64 characters from A-Z a-z 0-9 . _ -\n", version);
            co_return co_await hit(name, version, peer);
        }
        co_return make_response(http::status::not_found,
                                "unknown path; try /hit/<name>, /stats or /health\n", version);
    }

    /// The lock. First try_lock (a free lock costs one semop and no executor round trip).
    /// When another process holds it, retry try_lock up to --lock-spin times (each a ~1 us
    /// semop; critical sections last well under a microsecond, so the holder is usually done by
    /// then), and only then co_await it, with a timeout: a suspended wait resumes at the
    /// earliest after one pass of this io_context's ready handlers (with many busy connections,
    /// about a millisecond) and, once the poll service sleeps, up to one backoff period after the
    /// release. `contended`, `awaited` and `wait_ns` feed the lock statistics.
    struct locked {
        error_code ec;
        sysv::mutex::guard guard;
        bool contended = false;
        bool awaited = false;
        std::uint64_t wait_ns = 0;
        std::uint64_t acquired_ns = 0;
        std::uint64_t semop_ns = 0; // the successful semop (not the failed tries or the wait)
    };
    asio::awaitable<locked> lock() {
        locked l;
        const std::uint64_t start = steady_ns();
        for (unsigned attempt = 0; attempt <= cfg_.lock_spin; ++attempt) {
            const std::uint64_t before = attempt == 0 ? start : steady_ns();
            if (mutex_.try_lock(l.ec)) {
                l.guard = sysv::mutex::guard(&mutex_);
                l.acquired_ns = steady_ns();
                l.contended = attempt > 0;
                l.wait_ns = l.contended ? l.acquired_ns - start : 0;
                l.semop_ns = l.acquired_ns - before;
                co_return l;
            }
            if (l.ec)
                co_return l;
        }
        auto [ec] = co_await mutex_.semaphores().async_apply_for(
            sysv::op::acquire(mutex_.index()).undo(),
            std::chrono::milliseconds(cfg_.lock_timeout_ms), asio::as_tuple(asio::use_awaitable));
        l.ec = ec;
        if (!ec) {
            l.guard = sysv::mutex::guard(&mutex_);
            l.contended = l.awaited = true;
            l.acquired_ns = steady_ns();
            l.wait_ns = l.acquired_ns - start;
        }
        co_return l;
    }

    /// Releases the lock; `hits` were applied under it.
    void unlock(locked& l, std::size_t hits) {
        const std::uint64_t released = steady_ns();
        l.guard.unlock();
        const std::uint64_t hold = released - l.acquired_ns;
        table_.count_lock(slot_, l.contended, l.awaited, l.wait_ns, hold,
                          l.semop_ns + (steady_ns() - released), hits);
    }

    /// The response when the lock could not be taken. A removed set ends the worker.
    response lock_failure(const error_code& ec, unsigned version) {
        if (ec == asio::error::timed_out)
            return make_response(http::status::service_unavailable,
                                 "the shared table is busy: lock not acquired within " +
                                     std::to_string(cfg_.lock_timeout_ms) + " ms\n",
                                 version);
        if (ec == sysv::errc::removed)
            stop(exit_objects_removed, "the semaphore set was removed");
        return make_response(http::status::service_unavailable,
                             "the shared table is unavailable: " + ec.message() + "\n", version);
    }

    /// First thing under the lock: roll back a step a crashed holder left unfinished.
    void repair() {
        const auto r = table_.repair();
        if (r.repaired)
            log("repaired the shared table: rolled back a step interrupted in pid " +
                std::to_string(r.pid));
        else if (r.discarded)
            log("discarded an invalid journal record (written by pid " + std::to_string(r.pid) +
                ")");
    }

    /// One /hit: what it asks for, and what applying it under the lock gave.
    struct hit_entry {
        std::string_view name;
        std::array<unsigned char, 16> client{}; // IPv4 addresses IPv4-mapped
        error_code ec;                          // the lock could not be taken
        bool limited = false;                   // over the rate limit: 429
        std::uint64_t retry_after_ms = 0;
        bool applied = false;
        bool stored = false; // applied, not limited, not stored: the table is full
        std::uint64_t value = 0;
    };

    /// The hits that arrive during one pass over this io_context's ready handlers, applied
    /// under one acquisition of the lock (group commit): the two semops that take and release
    /// it, a few microseconds of syscalls on this kind of VM, are paid once per batch instead of
    /// once per request. The first hit of a batch starts apply_batch, which first yields (so the
    /// sessions that are ready now add theirs), then takes the lock; every session of the batch
    /// waits on `done`, which is cancelled once the batch is applied.
    struct batch {
        explicit batch(asio::io_context& io) : done(io, asio::steady_timer::time_point::max()) {}
        std::vector<hit_entry*> entries;
        asio::steady_timer done;
        bool applied = false;
    };

    asio::awaitable<response> hit(std::string_view name, unsigned version,
                                  const tcp::endpoint& peer) {
        if (cfg_.per_process && cfg_.rate == 0) // the benchmark's baseline: no shared state
            co_return make_response(http::status::ok,
                                    std::to_string(++local_counters_[std::string(name)]) + "\n",
                                    version);
        hit_entry e;
        e.name = name;
        const auto address = peer.address();
        e.client = address.is_v4()
                       ? asio::ip::make_address_v6(asio::ip::v4_mapped, address.to_v4()).to_bytes()
                       : address.to_v6().to_bytes();
        if (cfg_.lock_per_request) {
            locked l = co_await lock();
            e.ec = l.ec;
            if (!l.ec) {
                repair();
                apply(e);
                unlock(l, 1);
            }
        } else {
            std::shared_ptr<batch> b = open_batch_;
            if (!b) {
                b = open_batch_ = std::make_shared<batch>(io_);
                asio::co_spawn(io_, apply_batch(b), [](std::exception_ptr ex) {
                    if (ex)
                        log("applying a batch of hits failed: " + describe_exception(ex));
                });
            }
            b->entries.push_back(&e);
            while (!b->applied)
                co_await b->done.async_wait(asio::as_tuple(asio::use_awaitable));
        }
        if (e.ec)
            co_return lock_failure(e.ec, version);
        if (e.limited) {
            auto res = make_response(http::status::too_many_requests,
                                     "rate limit: " + std::to_string(cfg_.rate) +
                                         " requests per second per client\n",
                                     version);
            res.set(http::field::retry_after, std::to_string((e.retry_after_ms + 999) / 1000));
            co_return res;
        }
        if (!e.stored)
            co_return make_response(http::status::insufficient_storage,
                                    "the counter table is full (" +
                                        std::to_string(table_.table_shape().max_counters) +
                                        " names; see --max-counters)\n",
                                    version);
        co_return make_response(http::status::ok, std::to_string(e.value) + "\n", version);
    }

    asio::awaitable<void> apply_batch(std::shared_ptr<batch> b) {
        // Whatever happens (an exception included), the batch ends and its sessions resume:
        // an entry still without a result then answers 503.
        struct finish {
            batch& b;
            ~finish() {
                for (hit_entry* e : b.entries)
                    if (!e->applied && !e->ec)
                        e->ec = asio::error::operation_aborted;
                b.applied = true;
                try {
                    b.done.cancel(); // throws only on a timer service failure
                } catch (...) {
                }
            }
        } finisher{*b};
        co_await asio::post(io_, asio::use_awaitable);
        locked l = co_await lock();
        // Hits arriving from now on go to the next batch.
        if (open_batch_ == b)
            open_batch_.reset();
        if (l.ec) {
            for (hit_entry* e : b->entries)
                e->ec = l.ec;
            co_return;
        }
        repair();
        for (hit_entry* e : b->entries)
            apply(*e);
        unlock(l, b->entries.size());
    }

    /// Under the lock: the client's token bucket, then the counter (or this worker's own
    /// counter with --per-process-counters).
    void apply(hit_entry& e) {
        e.applied = true;
        const auto hook = table_hook{&pause_, e.name};
        const auto pid = static_cast<std::uint32_t>(pid_);
        if (cfg_.rate != 0) {
            const auto bytes = std::as_bytes(std::span(e.client));
            const auto t = table_.take_token(std::span<const std::byte, stats::address_size>(bytes),
                                             steady_ns(), cfg_.rate, cfg_.rate, pid, hook);
            if (!t.admitted) {
                e.limited = true;
                e.retry_after_ms = t.retry_after_ms;
                return;
            }
        }
        if (cfg_.per_process) {
            e.stored = true;
            e.value = ++local_counters_[std::string(e.name)];
            return;
        }
        const auto r = table_.hit(e.name, pid, hook);
        e.stored = r.stored;
        e.value = r.value;
    }

    asio::awaitable<response> stats(unsigned version) {
        std::vector<stats::counter> counters;
        std::size_t corrupt = 0;
        if (cfg_.per_process) {
            for (const auto& [name, value] : local_counters_)
                counters.push_back({name, value});
        } else {
            locked l = co_await lock();
            if (l.ec)
                co_return lock_failure(l.ec, version);
            repair();
            counters = table_.counters(&corrupt);
            unlock(l, 0);
        }
        std::sort(counters.begin(), counters.end(),
                  [](const auto& a, const auto& b) { return a.name < b.name; });

        nlohmann::ordered_json j;
        j["counters"] = nlohmann::ordered_json::object();
        for (const auto& c : counters)
            j["counters"][c.name] = c.value;
        j["workers"] = nlohmann::ordered_json::array();
        const std::uint64_t now = steady_ns();
        for (std::uint32_t i = 0; i < cfg_.workers; ++i) {
            const auto w = table_.worker(i);
            j["workers"].push_back({
                {"slot", i},
                {"pid", w.pid},
                {"requests", w.requests},
                {"rate_limited", w.rate_limited},
                {"restarts", w.restarts},
                {"connections", w.connections},
                {"lock",
                 {{"acquired", w.locks},
                  {"contended", w.contended},
                  {"awaited", w.awaited},
                  {"wait_ns_total", w.wait_ns},
                  {"wait_ns_max", w.max_wait_ns},
                  {"hold_ns_total", w.hold_ns},
                  {"semop_ns_total", w.semop_ns},
                  {"hits", w.hits}}},
            });
        }
        const std::uint64_t started = table_.started_ns();
        j["uptime_s"] =
            started != 0 && now > started ? static_cast<double>(now - started) / 1e9 : 0.0;
        j["mode"] = cfg_.per_process ? "per-process" : "shared";
        if (cfg_.per_process)
            j["counters_of_pid"] = pid_;
        j["rate_limit_per_s"] = cfg_.rate;
        j["repairs"] = table_.repairs();
        j["discarded_journals"] = table_.discarded();
        j["corrupt_entries"] = corrupt;
        co_return make_response(http::status::ok,
                                j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) +
                                    "\n",
                                version, "application/json");
    }

    const config& cfg_;
    const std::optional<pause_spec>& pause_;
    stats::table table_;
    std::uint32_t slot_;
    pid_t pid_;
    // The io_context outlives every object using it; no coroutine outlives run() (stop() lets
    // them finish instead of destroying them).
    asio::io_context io_{1};
    sysv::mutex mutex_;
    tcp::acceptor acceptor_;
    asio::signal_set signals_;
    asio::steady_timer drain_timer_;
    std::unordered_set<session_state*> sessions_;
    std::unordered_map<std::string, std::uint64_t> local_counters_;
    std::shared_ptr<batch> open_batch_;
    std::uint64_t open_connections_ = 0;
    std::uint64_t idle_closed_ = 0; // connections closed to make room (close_longest_idle)
    bool stopping_ = false;
    int exit_code_ = 0;
};

} // namespace stats_server
