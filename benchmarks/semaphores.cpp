// Benchmarks of the semaphore layer: ping-pong round trips, wake latency after idle, idle cost
// of pending waits, and the mutex. Every section compares the library with a thread blocked in
// semop measured side by side in the same run (rows of one run are interleaved).
#include "bench.hpp"

#include <boost/asio.hpp>

#include <sched.h>
#include <sys/resource.h>
#include <sys/sem.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

import sysv;

#include "wake_report.hpp"

namespace asio = boost::asio;
using bench::now_ns;

namespace {

// ---------------------------------------------------------------------------------------------
// Wake modes: a row names the mode its waits use (SYSV_WAIT_MODE, read when a context makes
// its first wait, inherited by forked peers). "polling" keeps the rows of earlier runs
// comparable; "io_uring" and "thread" are the doorbell rows.
// ---------------------------------------------------------------------------------------------

class forced_mode {
public:
    explicit forced_mode(const std::string& mode) {
        if (const char* old = std::getenv("SYSV_WAIT_MODE"))
            previous_ = old;
        if (!mode.empty())
            ::setenv("SYSV_WAIT_MODE", mode.c_str(), 1);
    }
    forced_mode(const forced_mode&) = delete;
    forced_mode& operator=(const forced_mode&) = delete;
    ~forced_mode() {
        if (previous_)
            ::setenv("SYSV_WAIT_MODE", previous_->c_str(), 1);
        else
            ::unsetenv("SYSV_WAIT_MODE");
    }

private:
    std::optional<std::string> previous_;
};

/// Whether wake mode `mode` is what a context gets when it is asked for.
bool mode_available(const std::string& mode) {
    forced_mode force(mode);
    asio::io_context io;
    const auto got = sysv::wake_mode_of(io);
    return std::string(sysv::to_string(got)) == (mode == "thread" ? "helper_thread" : mode);
}

// ---------------------------------------------------------------------------------------------
// IPC objects owned by a measurement: IPC_PRIVATE, removed by a sysv::scoped_remover when the
// measurement ends (also on exceptions) and registered for removal on signals.
// ---------------------------------------------------------------------------------------------

class owned_set {
public:
    explicit owned_set(std::span<const int> initial)
        : set_(sysv::semaphore_set::create(sysv::key::private_key(), initial)),
          tracking_(set_.id()), remover_(set_) {}
    owned_set(std::initializer_list<int> initial)
        : owned_set(std::span<const int>(initial.begin(), initial.size())) {}
    owned_set(const owned_set&) = delete;
    owned_set& operator=(const owned_set&) = delete;

    int id() const noexcept { return set_.id(); }
    sysv::semaphore_set& get() noexcept { return set_; }
    /// Another handle to the set (an async_semaphore_set or mutex takes its handle over).
    sysv::semaphore_set handle() const { return sysv::semaphore_set::open_id(set_.id()); }

private:
    struct tracking {
        int id;
        explicit tracking(int i) noexcept : id(i) { bench::track_semaphore_set(i); }
        ~tracking() { bench::untrack_semaphore_set(id); }
    };
    sysv::semaphore_set set_;
    tracking tracking_;
    sysv::scoped_remover<sysv::semaphore_set> remover_;
};

/// What the processes of a measurement share (trivially copyable: it lives in a segment).
struct shared_block {
    std::int64_t stamp;    ///< wake: CLOCK_MONOTONIC ns written right before the release
    std::int64_t deadline; ///< contended mutex: when both processes stop
    std::int64_t ended[2]; ///< contended mutex: when each process stopped
    std::uint64_t counter; ///< contended mutex: incremented under the lock
    std::uint64_t ops[2];  ///< contended mutex: lock/unlock pairs of each process
    std::int32_t peer_cpu; ///< ping-pong: the CPU the peer answered from
};

template <class T>
void store(T& place, T value) noexcept {
    __atomic_store_n(&place, value, __ATOMIC_RELEASE);
}
template <class T>
T load(const T& place) noexcept {
    return __atomic_load_n(&place, __ATOMIC_ACQUIRE);
}

/// A segment holding a shared_block, attached here (and in children forked later).
class owned_segment {
public:
    owned_segment()
        : memory_(sysv::shared_memory::create(sysv::key::private_key(), 4096)),
          tracking_(memory_.id()), remover_(memory_), view_(memory_.attach()) {}
    owned_segment(const owned_segment&) = delete;
    owned_segment& operator=(const owned_segment&) = delete;

    shared_block& block() const { return view_.as<shared_block>(0); }

private:
    struct tracking {
        int id;
        explicit tracking(int i) noexcept : id(i) { bench::track_segment(i); }
        ~tracking() { bench::untrack_segment(id); }
    };
    sysv::shared_memory memory_;
    tracking tracking_;
    sysv::scoped_remover<sysv::shared_memory> remover_;
    sysv::attachment view_; // detached before the segment is removed
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Runs the coroutine made by `make` on `io` until `io` runs out of work; rethrows what it threw.
template <class F>
void run_coroutine(asio::io_context& io, F make) {
    std::exception_ptr failure;
    asio::co_spawn(io, std::move(make), [&](std::exception_ptr e) { failure = e; });
    io.run();
    if (failure)
        std::rethrow_exception(failure);
}

void sleep_until_ns(std::int64_t deadline) {
    timespec ts{};
    ts.tv_sec = deadline / 1'000'000'000;
    ts.tv_nsec = deadline % 1'000'000'000;
    while (::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
    }
}

double us_since(std::int64_t start_ns, std::int64_t end_ns) {
    return static_cast<double>(end_ns - start_ns) / 1e3;
}

std::string backoff_text(const sysv::backoff& b) {
    std::string text = std::to_string(b.immediate_yields) + " yields, " +
                       std::to_string(b.first_sleep.count()) + "-" +
                       std::to_string(b.max_sleep.count()) + " us x" + bench::fmt(b.growth, 1);
    if (b.jitter > 0)
        text += " jitter " + bench::fmt(b.jitter, 2);
    return text;
}

struct named_backoff {
    std::string id;    ///< suffix of row ids: default, latency, cpu, custom
    std::string label; ///< for tables
    sysv::backoff value;
};

/// default, latency_tuned(), cpu_tuned() and the --backoff one if given.
std::vector<named_backoff> backoffs(const bench::options& opt) {
    std::vector<named_backoff> list{
        {"default", "default backoff{}", sysv::backoff{}},
        {"latency", "backoff::latency_tuned()", sysv::backoff::latency_tuned()},
        {"cpu", "backoff::cpu_tuned()", sysv::backoff::cpu_tuned()},
    };
    if (opt.custom_backoff) {
        const auto& c = *opt.custom_backoff;
        sysv::backoff b;
        b.immediate_yields = c.immediate_yields;
        b.first_sleep = std::chrono::microseconds(c.first_sleep_us);
        b.growth = c.growth;
        b.max_sleep = std::chrono::microseconds(c.max_sleep_us);
        b.jitter = c.jitter;
        if (b.validate())
            throw std::invalid_argument("--backoff: invalid backoff " + c.text());
        list.push_back({"custom", "custom backoff", b});
    }
    for (auto& b : list)
        b.label += " (" + backoff_text(b.value) + ")";
    return list;
}

/// Ratio of two values, NaN when the baseline is missing.
double ratio(double value, double baseline) {
    return baseline > 0 ? value / baseline : std::nan("");
}

// =============================================================================================
// 1. Ping-pong round trips between two processes
// =============================================================================================

enum class pp_kind { blocking, busy_poll, awaitable, socket };

struct pp_row {
    std::string id;
    std::string label;
    pp_kind kind;
    sysv::backoff backoff;
    std::string mode = "polling"; ///< of the awaitable rows
};

/// Where the two processes of a ping-pong run.
enum class placement {
    any, ///< wherever the scheduler puts them
    two, ///< pinned to two different CPUs
    one, ///< both pinned to the same CPU
};

/// The CPUs this process may run on, as seen the first time (before any pinning; children
/// inherit the answer).
const std::vector<int>& available_cpus() {
    static const std::vector<int> cpus = [] {
        cpu_set_t set;
        CPU_ZERO(&set);
        std::vector<int> list;
        if (::sched_getaffinity(0, sizeof set, &set) == 0)
            for (int c = 0; c < CPU_SETSIZE; ++c)
                if (CPU_ISSET(c, &set))
                    list.push_back(c);
        return list;
    }();
    return cpus;
}

/// Pins the calling process to one CPU for its lifetime; restores the old mask afterwards.
class pinned {
public:
    /// `measuring`: the measuring process (first CPU) or the peer (second CPU, or the first
    /// for placement::one). No-op for placement::any.
    pinned(placement where, bool measuring) {
        if (where == placement::any)
            return;
        const auto& cpus = available_cpus();
        if (cpus.size() < 2)
            throw std::runtime_error("pinning needs 2 CPUs");
        ::sched_getaffinity(0, sizeof old_, &old_);
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpus[where == placement::two && !measuring ? 1 : 0], &set);
        if (::sched_setaffinity(0, sizeof set, &set) != 0)
            throw std::system_error(errno, std::generic_category(), "sched_setaffinity");
        active_ = true;
    }
    pinned(const pinned&) = delete;
    pinned& operator=(const pinned&) = delete;
    ~pinned() {
        if (active_)
            ::sched_setaffinity(0, sizeof old_, &old_);
    }

private:
    cpu_set_t old_{};
    bool active_ = false;
};

/// The round trips after the warm-up, and whether the peer answered from the CPU the measuring
/// process is on when the answer arrives (both processes sharing one CPU behave very
/// differently from two processes on two CPUs).
struct round_trips {
    std::vector<double> rtt; ///< us
    std::vector<char> same_cpu;
    std::optional<bench::wake_report> wake; ///< the measuring side's (awaitable rows)

    void reserve(long rounds) {
        rtt.reserve(static_cast<std::size_t>(rounds));
        same_cpu.reserve(static_cast<std::size_t>(rounds));
    }
    void add(long i, long warmup, std::int64_t start, std::int64_t end, const shared_block& b) {
        if (i < warmup)
            return;
        rtt.push_back(us_since(start, end));
        same_cpu.push_back(load(b.peer_cpu) == ::sched_getcpu() ? 1 : 0);
    }
};

/// The peer's side: says from which CPU it answers.
void answering_from_here(shared_block& b) noexcept {
    store(b.peer_cpu, ::sched_getcpu());
}

/// Semaphore 0 is the peer's turn, semaphore 1 the measuring process's turn.
round_trips semaphore_pingpong(const pp_row& row, long rounds, long warmup, placement where) {
    forced_mode force(row.kind == pp_kind::awaitable ? row.mode : std::string());
    owned_set turns{0, 0};
    owned_segment segment;
    shared_block& block = segment.block();
    const int id = turns.id();
    const long total = warmup + rounds;
    pinned measuring_side(where, true); // the peer sets its own pinning after fork
    bench::child peer([&]() -> int {
        pinned peer_side(where, false);
        auto set = sysv::semaphore_set::open_id(id);
        switch (row.kind) {
        case pp_kind::blocking:
            for (long i = 0; i < total; ++i) {
                set.apply(sysv::op::acquire(0));
                answering_from_here(block);
                set.apply(sysv::op::release(1));
            }
            break;
        case pp_kind::busy_poll:
            for (long i = 0; i < total; ++i) {
                while (!set.try_apply(sysv::op::acquire(0))) {
                }
                answering_from_here(block);
                set.try_apply(sysv::op::release(1));
            }
            break;
        case pp_kind::awaitable: {
            asio::io_context io;
            sysv::async_semaphore_set async_set(io, std::move(set), row.backoff);
            run_coroutine(io, [&]() -> asio::awaitable<void> {
                for (long i = 0; i < total; ++i) {
                    co_await async_set.async_acquire(0, asio::use_awaitable);
                    answering_from_here(block);
                    async_set.try_apply(sysv::op::release(1));
                }
            });
            break;
        }
        case pp_kind::socket:
            break;
        }
        return 0;
    });

    round_trips rtt;
    rtt.reserve(rounds);
    auto& set = turns.get();
    switch (row.kind) {
    case pp_kind::blocking:
        for (long i = 0; i < total; ++i) {
            const auto start = now_ns();
            set.apply(sysv::op::release(0));
            set.apply(sysv::op::acquire(1));
            rtt.add(i, warmup, start, now_ns(), block);
        }
        break;
    case pp_kind::busy_poll:
        for (long i = 0; i < total; ++i) {
            const auto start = now_ns();
            set.try_apply(sysv::op::release(0));
            while (!set.try_apply(sysv::op::acquire(1))) {
            }
            rtt.add(i, warmup, start, now_ns(), block);
        }
        break;
    case pp_kind::awaitable: {
        asio::io_context io;
        sysv::async_semaphore_set async_set(io, turns.handle(), row.backoff);
        run_coroutine(io, [&]() -> asio::awaitable<void> {
            for (long i = 0; i < total; ++i) {
                const auto start = now_ns();
                async_set.try_apply(sysv::op::release(0));
                co_await async_set.async_acquire(1, asio::use_awaitable);
                rtt.add(i, warmup, start, now_ns(), block);
            }
        });
        rtt.wake = bench::report_wake(io, row.mode);
        break;
    }
    case pp_kind::socket:
        break;
    }
    peer.join(row.label);
    return rtt;
}

/// The same ping-pong over a Unix stream socket pair, with Asio coroutines on both sides.
round_trips socket_pingpong(long rounds, long warmup, placement where) {
    owned_segment segment;
    shared_block& block = segment.block();
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == -1)
        throw std::system_error(errno, std::generic_category(), "socketpair");
    const long total = warmup + rounds;
    using stream = asio::local::stream_protocol;
    std::optional<bench::child> peer;
    try {
        peer.emplace([&]() -> int {
            pinned peer_side(where, false);
            ::close(fds[0]);
            asio::io_context io;
            stream::socket socket(io, stream(), fds[1]);
            run_coroutine(io, [&]() -> asio::awaitable<void> {
                char byte = 0;
                for (long i = 0; i < total; ++i) {
                    co_await asio::async_read(socket, asio::buffer(&byte, 1), asio::use_awaitable);
                    answering_from_here(block);
                    co_await asio::async_write(socket, asio::buffer(&byte, 1), asio::use_awaitable);
                }
            });
            return 0;
        });
    } catch (...) {
        ::close(fds[0]);
        ::close(fds[1]);
        throw;
    }
    ::close(fds[1]);
    pinned measuring_side(where, true);
    round_trips rtt;
    rtt.reserve(rounds);
    {
        asio::io_context io;
        stream::socket socket(io, stream(), fds[0]);
        run_coroutine(io, [&]() -> asio::awaitable<void> {
            char byte = 'x';
            for (long i = 0; i < total; ++i) {
                const auto start = now_ns();
                co_await asio::async_write(socket, asio::buffer(&byte, 1), asio::use_awaitable);
                co_await asio::async_read(socket, asio::buffer(&byte, 1), asio::use_awaitable);
                rtt.add(i, warmup, start, now_ns(), block);
            }
        });
    }
    peer->join("socket ping-pong");
    return rtt;
}

/// One table of the ping-pong section: the rows measured `runs` times, interleaved.
void pingpong_table(bench::context& ctx, const std::vector<pp_row>& rows, placement where, int runs,
                    long rounds) {
    const long warmup = std::max(200L, rounds / 10);
    const bool have_baseline = rows.front().kind == pp_kind::blocking;
    const std::string suffix = where == placement::any   ? ""
                               : where == placement::two ? "@2cpus"
                                                         : "@1cpu";
    const std::string where_text = where == placement::any   ? "scheduler's choice"
                                   : where == placement::two ? "pinned to two CPUs"
                                                             : "pinned to one CPU";
    // Busy polling on one CPU spins until preempted (a full time slice per turn): few rounds.
    auto rounds_of = [&](const pp_row& row) {
        return where == placement::one && row.kind == pp_kind::busy_poll ? std::min(rounds, 100L)
                                                                         : rounds;
    };
    auto warmup_of = [&](const pp_row& row) {
        return where == placement::one && row.kind == pp_kind::busy_poll ? 10L : warmup;
    };

    std::vector<std::vector<double>> pooled(rows.size()), pooled_same(rows.size()),
        pooled_split(rows.size());
    std::vector<std::vector<bench::wake_report>> ran_with(rows.size()); // merged over runs
    std::vector<std::vector<bench::summary>> per_run(rows.size());
    for (int run = 0; run < runs; ++run) {
        ctx.progress(where_text + ": run " + std::to_string(run + 1) + "/" + std::to_string(runs) +
                     ", " + std::to_string(rounds) + " round trips per row");
        // Rotate the order of the rows from run to run (noise drifts over time).
        for (std::size_t k = 0; k < rows.size(); ++k) {
            const std::size_t i = (k + static_cast<std::size_t>(run)) % rows.size();
            const auto& row = rows[i];
            bench::watchdog(600, row.label.c_str());
            const auto trips = row.kind == pp_kind::socket
                                   ? socket_pingpong(rounds_of(row), warmup_of(row), where)
                                   : semaphore_pingpong(row, rounds_of(row), warmup_of(row), where);
            const auto& rtt = trips.rtt;
            const auto s = bench::summarize(rtt);
            const auto same = std::count(trips.same_cpu.begin(), trips.same_cpu.end(), 1);
            const auto run_name = std::to_string(run + 1);
            const auto id = row.id + suffix;
            ctx.record(id, "rtt_p50", s.p50, "us", run_name);
            ctx.record(id, "rtt_p99", s.p99, "us", run_name);
            ctx.record(id, "rtt_mean", s.mean, "us", run_name);
            ctx.record(id, "round_trips", static_cast<double>(s.count), "count", run_name);
            ctx.record(id, "same_cpu_rounds",
                       100.0 * static_cast<double>(same) / static_cast<double>(rtt.size()), "%",
                       run_name);
            per_run[i].push_back(s);
            if (trips.wake)
                bench::merge(ran_with[i], *trips.wake);
            pooled[i].insert(pooled[i].end(), rtt.begin(), rtt.end());
            for (std::size_t r = 0; r < rtt.size(); ++r)
                (trips.same_cpu[r] ? pooled_same : pooled_split)[i].push_back(rtt[r]);
        }
        bench::watchdog(0, nullptr);
    }

    std::vector<std::string> headers{"row",
                                     "median RTT (us)",
                                     "p99 RTT (us)",
                                     "mean RTT (us)",
                                     "median / baseline",
                                     "p99 / baseline",
                                     "run medians (us)"};
    if (where == placement::any) {
        headers.push_back("rounds on one CPU");
        headers.push_back("median on one CPU / on two (us)");
    }
    headers.push_back("ran with");
    bench::table t(headers);
    for (std::size_t i = 0; i < rows.size(); ++i) {
        const auto id = rows[i].id + suffix;
        const auto s = bench::summarize(pooled[i]);
        std::vector<double> r50, r99, medians;
        for (int run = 0; run < runs; ++run) {
            medians.push_back(per_run[i][static_cast<std::size_t>(run)].p50);
            if (have_baseline) {
                const auto& base = per_run[0][static_cast<std::size_t>(run)];
                r50.push_back(ratio(per_run[i][static_cast<std::size_t>(run)].p50, base.p50));
                r99.push_back(ratio(per_run[i][static_cast<std::size_t>(run)].p99, base.p99));
            }
        }
        const double ratio50 = have_baseline ? bench::median(r50) : std::nan("");
        const double ratio99 = have_baseline ? bench::median(r99) : std::nan("");
        const auto [lo, hi] = std::minmax_element(medians.begin(), medians.end());
        std::vector<std::string> cells{rows[i].label,
                                       bench::fmt(s.p50),
                                       bench::fmt(s.p99),
                                       bench::fmt(s.mean),
                                       bench::ratio_text(ratio50),
                                       bench::ratio_text(ratio99),
                                       bench::fmt(*lo) + "-" + bench::fmt(*hi)};
        if (where == placement::any) {
            cells.push_back(
                bench::fmt(100.0 * static_cast<double>(pooled_same[i].size()) /
                               static_cast<double>(std::max<std::size_t>(1, pooled[i].size())),
                           0) +
                "%");
            cells.push_back(bench::fmt(bench::median(pooled_same[i])) + " / " +
                            bench::fmt(bench::median(pooled_split[i])));
            ctx.record(id, "rtt_p50_same_cpu", bench::median(pooled_same[i]), "us");
            ctx.record(id, "rtt_p50_two_cpus", bench::median(pooled_split[i]), "us");
        }
        cells.push_back(bench::describe(ran_with[i]));
        t.add(cells);
        ctx.record(id, "rtt_p50", s.p50, "us");
        ctx.record(id, "rtt_p99", s.p99, "us");
        ctx.record(id, "rtt_mean", s.mean, "us");
        ctx.record(id, "rtt_p50_ratio_to_baseline", ratio50, "x");
        ctx.record(id, "rtt_p99_ratio_to_baseline", ratio99, "x");
        const auto runs_no_worse =
            std::count_if(r50.begin(), r50.end(), [](double x) { return x <= 1.0; });
        // The doorbell row against the polling row of the same runs: no regression of the hot
        // path (a ring is an atomic on a shared word while nobody sleeps).
        const auto polling = std::find_if(rows.begin(), rows.end(),
                                          [](const pp_row& r) { return r.id == "async_default"; });
        if (rows[i].id == "doorbell_io_uring" && polling != rows.end()) {
            const auto p = static_cast<std::size_t>(polling - rows.begin());
            std::vector<double> vs_polling;
            for (int run = 0; run < runs; ++run)
                vs_polling.push_back(ratio(per_run[i][static_cast<std::size_t>(run)].p50,
                                           per_run[p][static_cast<std::size_t>(run)].p50));
            const double r = bench::median(vs_polling);
            ctx.record(id, "rtt_p50_ratio_to_polling", r, "x");
            ctx.target("ping-pong (" + where_text +
                           "), doorbells via io_uring: median RTT <= 1.1x the polling-only row",
                       bench::fmt(s.p50) + " us vs " + bench::fmt(bench::summarize(pooled[p]).p50) +
                           " us (" + bench::ratio_text(r) + ", median of per-run ratios)",
                       r <= 1.1);
        }
        if (rows[i].id == "async_default" && have_baseline)
            ctx.target("ping-pong (" + where_text +
                           "), co_await on both sides, default backoff: median RTT <= blocking "
                           "semop",
                       bench::fmt(s.p50) + " us vs " + bench::fmt(bench::summarize(pooled[0]).p50) +
                           " us (" + bench::ratio_text(ratio50) +
                           ", median of per-run ratios; no worse in " +
                           std::to_string(runs_no_worse) + "/" + std::to_string(runs) + " runs)",
                       ratio50 <= 1.0);
    }
    std::string notes = std::to_string(runs) + " runs x " + std::to_string(rounds) +
                        " round trips per row (after " + std::to_string(warmup) +
                        " warm-up rounds); rows interleaved run by run. Median and p99 pool all "
                        "runs; the ratios are the median over runs of (row / blocking baseline of "
                        "the same run). Both processes use the same mechanism.";
    if (where == placement::any)
        notes += " \"On one CPU\": the peer answered from the CPU the measuring process was on "
                 "when the answer arrived (sched_getcpu). The scheduler decides; a pair that "
                 "shares a CPU tends to stay that way (together they use at most one CPU).";
    else if (where == placement::one)
        notes += " Busy polling: 100 round trips only (each side spins until preempted).";
    ctx.print("Ping-pong round trip between two processes, " + where_text, t, notes);
}

void run_pingpong(bench::context& ctx) {
    const auto& opt = ctx.opt;
    std::vector<pp_row> rows{
        {"blocking", "(a) blocking semop: semaphore_set::apply [baseline]", pp_kind::blocking, {}},
        {"busy_poll", "(b) busy-polling semop IPC_NOWAIT: try_apply loop", pp_kind::busy_poll, {}},
    };
    const char* letters[] = {"(c)", "(d)", "(e)", "(g)"};
    std::size_t letter = 0;
    for (const auto& b : backoffs(opt))
        rows.push_back(
            {"async_" + b.id,
             std::string(letters[letter++]) + " co_await async_acquire, polling, " + b.label,
             pp_kind::awaitable, b.value});
    rows.push_back(
        {"socket", "(f) Asio local::stream_protocol socketpair, coroutines", pp_kind::socket, {}});
    if (mode_available("io_uring"))
        rows.push_back({"doorbell_io_uring",
                        "(h) co_await async_acquire, default backoff{}, doorbells via io_uring",
                        pp_kind::awaitable, sysv::backoff{}, "io_uring"});
    if (mode_available("thread"))
        rows.push_back({"doorbell_thread",
                        "(i) co_await async_acquire, default backoff{}, doorbells via the helper "
                        "thread",
                        pp_kind::awaitable, sysv::backoff{}, "thread"});
    std::erase_if(rows, [&](const pp_row& r) { return !opt.wants(r.id); });
    if (rows.empty())
        return;

    // As deployed (the scheduler places the processes), then each placement pinned.
    auto wanted = [&](const char* name) { return opt.placement.empty() || opt.placement == name; };
    if (wanted("any"))
        pingpong_table(ctx, rows, placement::any, opt.runs_or(7, 1), opt.rounds_or(10000, 2000));
    if (available_cpus().size() < 2) {
        ctx.progress("fewer than 2 CPUs available: no pinned tables");
        return;
    }
    if (wanted("two"))
        pingpong_table(ctx, rows, placement::two, opt.runs_or(3, 1), opt.rounds_or(10000, 2000));
    if (wanted("one"))
        pingpong_table(ctx, rows, placement::one, opt.runs_or(3, 1), opt.rounds_or(2000, 500));
}

// =============================================================================================
// 2. Wake latency after idle
// =============================================================================================

struct wake_row {
    std::string id;
    std::string label;
    bool blocking;
    sysv::backoff backoff;
    std::string mode = "polling";
    bool unchecked = false; ///< SYSV_WAKE_CHECK=off: the configuration is used without its check
};

void run_wake(bench::context& ctx) {
    const auto& opt = ctx.opt;
    struct idle_level {
        std::chrono::milliseconds idle;
        long samples;
    };
    std::vector<idle_level> levels{{std::chrono::milliseconds(1), opt.rounds_or(400, 40)},
                                   {std::chrono::milliseconds(10), opt.rounds_or(200, 20)},
                                   {std::chrono::milliseconds(100), opt.rounds_or(80, 6)}};
    std::vector<wake_row> modes{{"blocking", "thread blocked in semop [baseline]", true, {}}};
    for (const auto& b : backoffs(opt))
        modes.push_back(
            {"async_" + b.id, "co_await async_acquire, polling, " + b.label, false, b.value});
    if (mode_available("io_uring"))
        modes.push_back({"doorbell_io_uring",
                         "co_await async_acquire, doorbells via io_uring, default backoff{}", false,
                         sysv::backoff{}, "io_uring"});
    if (mode_available("thread"))
        modes.push_back({"doorbell_thread",
                         "co_await async_acquire, doorbells via the helper thread, default "
                         "backoff{}",
                         false, sysv::backoff{}, "thread"});
    if (mode_available("io_uring"))
        modes.push_back({"doorbell_io_uring_deferred_unchecked",
                         "co_await async_acquire, doorbells via io_uring, the deferring ring "
                         "forced without its start-up check, default backoff{}",
                         false, sysv::backoff{}, "io_uring_deferred", true});
    std::erase_if(modes, [&](const wake_row& m) { return !opt.wants(m.id); });
    if (modes.empty())
        return;
    const bool have_baseline = modes.front().blocking;

    owned_set sems{0, 0}; // 0: go (the waiter takes it), 1: armed (the waiter is about to wait)
    owned_segment segment;
    shared_block& block = segment.block();
    const int id = sems.id();
    const std::size_t mode_count = modes.size();

    long total_samples = 0;
    double expected_seconds = 0;
    for (const auto& level : levels) {
        total_samples += level.samples * static_cast<long>(mode_count);
        expected_seconds += static_cast<double>(level.samples * static_cast<long>(mode_count)) *
                            std::chrono::duration<double>(level.idle).count();
    }
    ctx.progress(std::to_string(total_samples) + " samples, about " +
                 bench::fmt(expected_seconds * 1.1, 0) + " s");
    bench::watchdog(static_cast<unsigned>(expected_seconds * 3 + 120), "wake latency");

    // The releaser: each time the waiter says it is about to wait, stay idle, then write the
    // time and release.
    bench::child releaser([&]() -> int {
        auto set = sysv::semaphore_set::open_id(id);
        std::mt19937_64 random(42);
        std::uniform_real_distribution<double> spread(0.9, 1.1);
        for (const auto& level : levels) {
            const auto idle_ns = static_cast<double>(std::chrono::nanoseconds(level.idle).count());
            for (long k = 0; k < level.samples * static_cast<long>(mode_count); ++k) {
                set.apply(sysv::op::acquire(1));
                const auto idle = static_cast<std::int64_t>(idle_ns * spread(random));
                sleep_until_ns(now_ns() + idle);
                store(block.stamp, now_ns());
                set.apply(sysv::op::release(0));
            }
        }
        return 0;
    });

    // samples[level][mode], in us
    std::vector<std::vector<std::vector<double>>> samples(
        levels.size(), std::vector<std::vector<double>>(mode_count));
    std::vector<std::string> ran_with(mode_count, "-");
    {
        // One context per row: a context's wake mode is chosen at its first wait.
        std::vector<std::unique_ptr<asio::io_context>> contexts;
        std::vector<std::unique_ptr<sysv::async_semaphore_set>> async_sets;
        for (const auto& mode : modes) {
            forced_mode force(mode.mode);
            if (mode.unchecked)
                ::setenv("SYSV_WAKE_CHECK", "off", 1);
            contexts.push_back(std::make_unique<asio::io_context>());
            sysv::wake_mode_of(*contexts.back()); // chosen now, while forced
            ::unsetenv("SYSV_WAKE_CHECK");
            async_sets.push_back(
                std::make_unique<sysv::async_semaphore_set>(*contexts.back(), sems.handle()));
        }
        auto& raw = sems.get();
        for (std::size_t l = 0; l < levels.size(); ++l)
            for (long k = 0; k < levels[l].samples; ++k)
                for (std::size_t j = 0; j < mode_count; ++j) {
                    const std::size_t m = (j + static_cast<std::size_t>(k)) % mode_count;
                    raw.apply(sysv::op::release(1));
                    std::int64_t resumed = 0;
                    if (modes[m].blocking) {
                        raw.apply(sysv::op::acquire(0));
                        resumed = now_ns();
                    } else {
                        // Resumption is when the handler runs (what a coroutine would see), not
                        // when run() has returned after winding down the poll service's timer
                        // and doorbell watch.
                        sysv::error_code result;
                        async_sets[m]->async_apply(sysv::op::acquire(0), modes[m].backoff,
                                                   [&](sysv::error_code ec) {
                                                       resumed = now_ns();
                                                       result = ec;
                                                   });
                        contexts[m]->restart();
                        contexts[m]->run();
                        if (result)
                            throw sysv::system_error(result, "wake latency wait");
                    }
                    samples[l][m].push_back(us_since(load(block.stamp), resumed));
                }
        for (std::size_t m = 0; m < mode_count; ++m)
            if (!modes[m].blocking)
                ran_with[m] = bench::describe(bench::report_wake(
                    *contexts[m],
                    modes[m].mode == "io_uring_deferred" ? "io_uring" : modes[m].mode));
    }
    releaser.join("wake latency releaser");
    bench::watchdog(0, nullptr);

    bench::table t({"idle", "waiter", "p50 (us)", "p99 (us)", "max (us)", "p50 / baseline",
                    "p99 / baseline", "samples", "ran with"});
    for (std::size_t l = 0; l < levels.size(); ++l) {
        const std::string idle = std::to_string(levels[l].idle.count()) + " ms";
        const auto base = bench::summarize(samples[l][0]);
        for (std::size_t m = 0; m < mode_count; ++m) {
            const auto s = bench::summarize(samples[l][m]);
            const double r50 = have_baseline ? ratio(s.p50, base.p50) : std::nan("");
            const double r99 = have_baseline ? ratio(s.p99, base.p99) : std::nan("");
            t.add({idle, modes[m].label, bench::fmt(s.p50), bench::fmt(s.p99), bench::fmt(s.max),
                   bench::ratio_text(r50), bench::ratio_text(r99), std::to_string(s.count),
                   ran_with[m]});
            const std::string row = modes[m].id + "_idle_" + idle.substr(0, idle.find(' ')) + "ms";
            ctx.record(row, "wake_p50", s.p50, "us");
            ctx.record(row, "wake_p99", s.p99, "us");
            ctx.record(row, "wake_max", s.max, "us");
            ctx.record(row, "wake_p50_ratio_to_baseline", r50, "x");
            ctx.record(row, "wake_p99_ratio_to_baseline", r99, "x");
            if (modes[m].id == "doorbell_io_uring" && have_baseline) {
                ctx.target("wake after " + idle +
                               " idle, doorbells via io_uring: p50 <= 2x and p99 <= 3x a thread "
                               "blocked in semop",
                           "p50 " + bench::fmt(s.p50) + " us (" + bench::ratio_text(r50) +
                               "), p99 " + bench::fmt(s.p99) + " us (" + bench::ratio_text(r99) +
                               ")",
                           r50 <= 2.0 && r99 <= 3.0);
            }
            if (modes[m].id == "doorbell_thread" && have_baseline) {
                ctx.target("wake after " + idle +
                               " idle, doorbells via the helper thread: p50 and p99 <= 3x a "
                               "thread blocked in semop",
                           "p50 " + bench::fmt(s.p50) + " us (" + bench::ratio_text(r50) +
                               "), p99 " + bench::fmt(s.p99) + " us (" + bench::ratio_text(r99) +
                               ")",
                           r50 <= 3.0 && r99 <= 3.0);
            }
            if (modes[m].id == "async_default") {
                const double limit =
                    static_cast<double>(modes[m].backoff.max_sleep.count()) + 200.0;
                ctx.target("wake after " + idle +
                               " idle: p99 <= max_sleep + 200 us = " + bench::fmt(limit, 0) + " us",
                           "p99 " + bench::fmt(s.p99) + " us (max " + bench::fmt(s.max) + " us)",
                           s.p99 <= limit);
            }
        }
    }
    ctx.print("Wake latency after idle (release in another process to resumption)", t,
              "The releaser writes CLOCK_MONOTONIC into a shared segment right before its semop; "
              "the waiter subtracts it from CLOCK_MONOTONIC when it resumes. The waiter starts "
              "waiting, the releaser stays idle for the given time +-10% (uniformly random, so "
              "the release falls at a random phase of the waiter's polling; clock_nanosleep), "
              "then releases. Waiter kinds are interleaved sample by sample.");
}

// =============================================================================================
// 3. Idle cost of pending waits
// =============================================================================================

struct idle_row {
    std::string id;
    std::string label;
    int waits;
    int sets;
    named_backoff backoff;
    std::string mode = "polling";
};

struct idle_result {
    double cpu_seconds;
    double wall_seconds;
    double voluntary_switches;
    double rss_delta;
    double heap_delta;
    double pending;
    bench::wake_report wake;
};

/// Measures one row in a fresh child process (so RSS and heap start clean); the sets are
/// created (and removed) here.
idle_result measure_idle(const idle_row& row, double settle, double seconds) {
    std::vector<std::unique_ptr<owned_set>> sets;
    std::vector<int> ids;
    for (int s = 0; s < row.sets; ++s) {
        sets.push_back(std::make_unique<owned_set>(std::initializer_list<int>{0}));
        ids.push_back(sets.back()->id());
    }
    int fds[2];
    if (::pipe(fds) == -1)
        throw std::system_error(errno, std::generic_category(), "pipe");
    bench::child worker([&]() -> int {
        ::close(fds[0]);
        ::setenv("SYSV_WAIT_MODE", row.mode.c_str(), 1);
        asio::io_context io;
        auto work = asio::make_work_guard(io);
        std::vector<sysv::async_semaphore_set> async_sets;
        async_sets.reserve(ids.size());
        for (int id : ids)
            async_sets.emplace_back(io, sysv::semaphore_set::open_id(id), row.backoff.value);
        idle_result r{};
        asio::post(io, [] {}); // fault in the scheduler's first allocations
        io.poll();
        const double rss0 = static_cast<double>(bench::resident_bytes());
        const double heap0 = static_cast<double>(bench::heap_in_use());
        for (int w = 0; w < row.waits; ++w)
            async_sets[static_cast<std::size_t>(w % row.sets)].async_acquire(
                0, [](sysv::error_code ec) {
                    if (ec != asio::error::operation_aborted)
                        std::fprintf(stderr, "idle wait completed: %s\n", ec.message().c_str());
                });
        io.run_for(std::chrono::duration_cast<std::chrono::nanoseconds>(
            std::chrono::duration<double>(settle)));
        r.rss_delta = static_cast<double>(bench::resident_bytes()) - rss0;
        r.heap_delta = static_cast<double>(bench::heap_in_use()) - heap0;
        r.pending = static_cast<double>(async_sets.front().pending_waits());
        rusage before{};
        ::getrusage(RUSAGE_SELF, &before);
        const double cpu0 = bench::process_cpu_seconds();
        const auto wall0 = now_ns();
        io.run_for(std::chrono::duration_cast<std::chrono::nanoseconds>(
            std::chrono::duration<double>(seconds)));
        const auto wall1 = now_ns();
        const double cpu1 = bench::process_cpu_seconds();
        rusage after{};
        ::getrusage(RUSAGE_SELF, &after);
        r.cpu_seconds = cpu1 - cpu0;
        r.wall_seconds = static_cast<double>(wall1 - wall0) / 1e9;
        r.voluntary_switches = static_cast<double>(after.ru_nvcsw - before.ru_nvcsw);
        r.wake = bench::report_wake(io, row.mode);
        if (::write(fds[1], &r, sizeof r) != static_cast<ssize_t>(sizeof r))
            return 1;
        return 0; // exits without destroying the waits
    });
    ::close(fds[1]);
    idle_result r{};
    std::size_t got = 0;
    while (got < sizeof r) {
        const ssize_t n = ::read(fds[0], reinterpret_cast<char*>(&r) + got, sizeof r - got);
        if (n <= 0 && !(n == -1 && errno == EINTR))
            break;
        if (n > 0)
            got += static_cast<std::size_t>(n);
    }
    ::close(fds[0]);
    worker.join(row.label);
    if (got != sizeof r)
        throw std::runtime_error(row.label + ": no result from the measuring process");
    if (static_cast<int>(r.pending) != row.waits)
        throw std::runtime_error(row.label + ": " + std::to_string(static_cast<int>(r.pending)) +
                                 " waits pending instead of " + std::to_string(row.waits));
    return r;
}

void run_idle(bench::context& ctx) {
    const auto& opt = ctx.opt;
    const int runs = opt.runs_or(2, 1);
    const double settle = opt.quick ? 0.2 : 0.5;
    const double seconds = opt.seconds_or(2.0, 0.5);
    const auto all_backoffs = backoffs(opt);
    const auto& defaults = all_backoffs[0];

    std::vector<idle_row> rows{
        {"none", "0 (idle io_context, work guard) [baseline]", 0, 1, defaults}};
    for (int n : {1, 100, 1000, 10000})
        rows.push_back(
            {"waits_" + std::to_string(n), std::to_string(n) + " on 1 set", n, 1, defaults});
    rows.push_back({"sets_1000", "1000 on 1000 sets (1 each)", 1000, 1000, defaults});
    for (std::size_t b = 1; b < all_backoffs.size(); ++b) {
        rows.push_back({"waits_1_" + all_backoffs[b].id, "1 on 1 set", 1, 1, all_backoffs[b]});
        rows.push_back(
            {"waits_10000_" + all_backoffs[b].id, "10000 on 1 set", 10000, 1, all_backoffs[b]});
    }
    // Doorbells with the long backstop (every releaser uses the library): polls once a second.
    const named_backoff library{"library", "library_releasers()",
                                sysv::backoff::library_releasers()};
    for (const std::string mode : {"io_uring", "thread"}) {
        if (!mode_available(mode))
            continue;
        const std::string via = mode == "io_uring" ? "io_uring" : "helper thread";
        rows.push_back({"doorbell_" + mode + "_waits_1", "1 on 1 set, doorbells via " + via, 1, 1,
                        library, mode});
        rows.push_back({"doorbell_" + mode + "_waits_10000_sets_1000",
                        "10000 on 1000 sets (10 each), doorbells via " + via, 10000, 1000, library,
                        mode});
    }
    std::erase_if(rows, [&](const idle_row& r) { return !opt.wants(r.id); });
    if (rows.empty())
        return;

    std::vector<std::vector<idle_result>> results(rows.size());
    for (int run = 0; run < runs; ++run) {
        ctx.progress("run " + std::to_string(run + 1) + "/" + std::to_string(runs) + ", " +
                     std::to_string(rows.size()) + " rows of " + bench::fmt(settle + seconds, 1) +
                     " s");
        for (std::size_t i = 0; i < rows.size(); ++i) {
            bench::watchdog(static_cast<unsigned>(settle + seconds) * 4 + 60,
                            rows[i].label.c_str());
            const auto r = measure_idle(rows[i], settle, seconds);
            results[i].push_back(r);
            const auto run_name = std::to_string(run + 1);
            ctx.record(rows[i].id, "cpu_percent_of_core", 100.0 * r.cpu_seconds / r.wall_seconds,
                       "%", run_name);
            ctx.record(rows[i].id, "wakeups_per_second", r.voluntary_switches / r.wall_seconds,
                       "1/s", run_name);
        }
    }
    bench::watchdog(0, nullptr);

    bench::table t({"pending waits", "backoff", "CPU (% of one core)", "wakeups/s",
                    "CPU per wakeup (us)", "RSS delta (KiB)", "RSS bytes/wait", "heap bytes/wait",
                    "ran with"});
    for (std::size_t i = 0; i < rows.size(); ++i) {
        std::vector<double> cpu, wake, rss, heap;
        for (const auto& r : results[i]) {
            cpu.push_back(100.0 * r.cpu_seconds / r.wall_seconds);
            wake.push_back(r.voluntary_switches / r.wall_seconds);
            rss.push_back(r.rss_delta);
            heap.push_back(r.heap_delta);
        }
        const double c = bench::median(cpu), w = bench::median(wake), m = bench::median(rss),
                     h = bench::median(heap);
        const double per_wakeup = w > 0 ? c / 100.0 * 1e6 / w : std::nan("");
        const double waits = rows[i].waits;
        const auto& b = rows[i].backoff;
        std::vector<bench::wake_report> merged;
        for (const auto& r : results[i])
            bench::merge(merged, r.wake);
        const std::string ran = bench::describe(merged);
        t.add({rows[i].label, b.id, bench::fmt(c, 2), bench::fmt(w, 0), bench::fmt(per_wakeup, 1),
               bench::fmt(m / 1024.0, 0), waits > 0 ? bench::fmt(m / waits, 0) : "-",
               waits > 0 ? bench::fmt(h / waits, 0) : "-", ran});
        ctx.record(rows[i].id, "cpu_percent_of_core", c, "%");
        ctx.record(rows[i].id, "wakeups_per_second", w, "1/s");
        ctx.record(rows[i].id, "rss_delta", m, "bytes");
        if (waits > 0) {
            ctx.record(rows[i].id, "rss_bytes_per_wait", m / waits, "bytes");
            ctx.record(rows[i].id, "heap_bytes_per_wait", h / waits, "bytes");
        }
        if (rows[i].id == "waits_1")
            ctx.target("idle cost, 1 pending wait (default backoff) <= 1% of a core",
                       bench::fmt(c, 2) + "%", c <= 1.0);
        if (rows[i].id == "waits_10000")
            ctx.target("idle cost, 10000 pending waits on one thread <= 10% of a core",
                       bench::fmt(c, 2) + "%", c <= 10.0);
        if (rows[i].id == "doorbell_io_uring_waits_1")
            ctx.target("idle cost, 1 wait, doorbells via io_uring, library_releasers() <= 0.1% of "
                       "a core",
                       bench::fmt(c, 3) + "%", c <= 0.1);
        if (rows[i].id == "doorbell_io_uring_waits_10000_sets_1000")
            ctx.target("idle cost, 10000 waits on 1000 sets, doorbells via io_uring, "
                       "library_releasers() <= 1% of a core",
                       bench::fmt(c, 3) + "%", c <= 1.0);
    }
    ctx.print("Idle cost of pending waits (one io_context thread)", t,
              "Each row runs in a fresh process: the waits (plain callbacks, no coroutine frames) "
              "wait on semaphores nobody releases; " +
                  bench::fmt(settle, 1) + " s to settle, then CPU time (getrusage user+sys) over " +
                  bench::fmt(seconds, 1) +
                  " s of wall time. wakeups/s = voluntary context switches (each one a return "
                  "from epoll_wait). RSS = anonymous resident memory (/proc/self/statm resident - "
                  "shared; page granular: meaningless below ~100 waits); heap = mallinfo2 bytes "
                  "in use (includes the poll service's first allocations in the 1-wait rows); "
                  "median of " +
                  std::to_string(runs) + " runs.");
}

// =============================================================================================
// 4. Mutex
// =============================================================================================

enum class lock_kind { blocking, async_mutex, try_lock };

struct lock_row {
    std::string id;
    std::string label;
    lock_kind kind;
    sysv::backoff backoff;
};

/// Lock/increment/unlock `n` times in this process; returns operations per second.
double uncontended(const lock_row& row, long n) {
    owned_set lock{1};
    std::uint64_t counter = 0;
    const auto start = now_ns();
    switch (row.kind) {
    case lock_kind::blocking: {
        auto& set = lock.get();
        for (long i = 0; i < n; ++i) {
            set.apply(sysv::op::acquire(0).undo());
            store(counter, load(counter) + 1);
            set.apply(sysv::op::release(0).undo());
        }
        break;
    }
    case lock_kind::try_lock: {
        asio::io_context io;
        sysv::mutex m(io, lock.handle(), 0, row.backoff);
        for (long i = 0; i < n; ++i) {
            if (!m.try_lock())
                throw std::runtime_error("uncontended try_lock failed");
            store(counter, load(counter) + 1);
            m.unlock();
        }
        break;
    }
    case lock_kind::async_mutex: {
        asio::io_context io;
        sysv::mutex m(io, lock.handle(), 0, row.backoff);
        run_coroutine(io, [&]() -> asio::awaitable<void> {
            for (long i = 0; i < n; ++i) {
                auto guard = co_await m.async_lock(asio::use_awaitable);
                store(counter, load(counter) + 1);
            }
        });
        break;
    }
    }
    const auto end = now_ns();
    if (counter != static_cast<std::uint64_t>(n))
        throw std::runtime_error(row.label + ": counter is wrong");
    return static_cast<double>(n) / (static_cast<double>(end - start) / 1e9);
}

struct contended_result {
    double ops_per_second;
    double smaller_share; ///< ops of the less served process / all ops
};

/// Two processes lock/increment/unlock until a common deadline.
contended_result contended(const lock_row& row, double seconds) {
    owned_set sems{1, 0}; // 0: the lock, 1: start
    owned_segment segment;
    shared_block& block = segment.block();
    const int id = sems.id();

    auto work = [&](int who) {
        auto set = sysv::semaphore_set::open_id(id);
        set.apply(sysv::op::acquire(1)); // start together
        const auto deadline = load(block.deadline);
        std::uint64_t ops = 0;
        if (row.kind == lock_kind::blocking) {
            while (now_ns() < deadline) {
                set.apply(sysv::op::acquire(0).undo());
                store(block.counter, load(block.counter) + 1);
                set.apply(sysv::op::release(0).undo());
                ++ops;
            }
        } else {
            asio::io_context io;
            sysv::mutex m(io, std::move(set), 0, row.backoff);
            run_coroutine(io, [&]() -> asio::awaitable<void> {
                while (now_ns() < deadline) {
                    auto guard = co_await m.async_lock(asio::use_awaitable);
                    store(block.counter, load(block.counter) + 1);
                    guard.unlock();
                    ++ops;
                }
            });
        }
        store(block.ops[who], ops);
        store(block.ended[who], now_ns());
    };

    store(block.counter, std::uint64_t{0});
    bench::child peer([&]() -> int {
        work(1);
        return 0;
    });
    const auto start = now_ns();
    store(block.deadline, start + static_cast<std::int64_t>(seconds * 1e9));
    sems.get().apply(sysv::op::release(1, 2));
    work(0);
    peer.join(row.label);
    const auto ops0 = load(block.ops[0]), ops1 = load(block.ops[1]);
    const auto total = ops0 + ops1;
    if (load(block.counter) != total)
        throw std::runtime_error(row.label + ": counter " + std::to_string(load(block.counter)) +
                                 " != " + std::to_string(total) + " operations: lock broken");
    const auto end = std::max(load(block.ended[0]), load(block.ended[1]));
    return {static_cast<double>(total) / (static_cast<double>(end - start) / 1e9),
            total > 0 ? static_cast<double>(std::min(ops0, ops1)) / static_cast<double>(total)
                      : 0.0};
}

void run_mutex(bench::context& ctx) {
    const auto& opt = ctx.opt;
    const int runs = opt.runs_or(5, 1);
    const long n = opt.rounds_or(200000, 20000);
    const double seconds = opt.seconds_or(2.0, 0.3);
    const auto all_backoffs = backoffs(opt);

    // Uncontended
    std::vector<lock_row> rows{
        {"blocking",
         "blocking semop lock: apply(acquire(0).undo()) / apply(release(0).undo()) "
         "[baseline]",
         lock_kind::blocking,
         {}},
        {"async_lock",
         "sysv::mutex: co_await async_lock, guard unlocks",
         lock_kind::async_mutex,
         {}},
        {"try_lock",
         "sysv::mutex: try_lock() / unlock() (no Asio round trip)",
         lock_kind::try_lock,
         {}},
    };
    std::erase_if(rows, [&](const lock_row& r) { return !opt.wants("uncontended_" + r.id); });
    if (!rows.empty()) {
        std::vector<std::vector<double>> rates(rows.size());
        ctx.progress("uncontended: " + std::to_string(runs) + " runs x " + std::to_string(n) +
                     " lock/unlock per row");
        for (int run = 0; run < runs; ++run)
            for (std::size_t k = 0; k < rows.size(); ++k) {
                const std::size_t i = (k + static_cast<std::size_t>(run)) % rows.size();
                bench::watchdog(300, rows[i].label.c_str());
                rates[i].push_back(uncontended(rows[i], n));
                ctx.record("uncontended_" + rows[i].id, "ops_per_second", rates[i].back(), "1/s",
                           std::to_string(run + 1));
            }
        bench::watchdog(0, nullptr);
        const bool have_baseline = rows.front().kind == lock_kind::blocking;
        bench::table t({"one process, no contention", "lock+unlock per second",
                        "ns per lock+unlock", "ratio to baseline"});
        for (std::size_t i = 0; i < rows.size(); ++i) {
            std::vector<double> r;
            for (std::size_t run = 0; run < rates[i].size(); ++run)
                r.push_back(have_baseline ? ratio(rates[i][run], rates[0][run]) : std::nan(""));
            const double rate = bench::median(rates[i]), rr = bench::median(r);
            t.add({rows[i].label, bench::fmt(rate, 0), bench::fmt(1e9 / rate, 0),
                   bench::ratio_text(rr)});
            ctx.record("uncontended_" + rows[i].id, "ops_per_second", rate, "1/s");
            ctx.record("uncontended_" + rows[i].id, "ratio_to_baseline", rr, "x");
        }
        ctx.print("Mutex, uncontended", t,
                  "Median of " + std::to_string(runs) + " runs x " + std::to_string(n) +
                      " lock/increment/unlock; ratio = row / baseline of the same run (higher is "
                      "faster).");
    }

    // Contended
    std::vector<lock_row> contended_rows{
        {"blocking", "blocking semop lock [baseline]", lock_kind::blocking, {}}};
    for (const auto& b : all_backoffs)
        contended_rows.push_back({"async_" + b.id, "sysv::mutex async_lock, " + b.label,
                                  lock_kind::async_mutex, b.value});
    std::erase_if(contended_rows,
                  [&](const lock_row& r) { return !opt.wants("contended_" + r.id); });
    if (contended_rows.empty())
        return;
    const int contended_runs = opt.runs_or(3, 1);
    ctx.progress("contended: " + std::to_string(contended_runs) + " runs x " +
                 bench::fmt(seconds, 1) + " s per row");
    std::vector<std::vector<contended_result>> results(contended_rows.size());
    for (int run = 0; run < contended_runs; ++run)
        for (std::size_t k = 0; k < contended_rows.size(); ++k) {
            const std::size_t i = (k + static_cast<std::size_t>(run)) % contended_rows.size();
            bench::watchdog(static_cast<unsigned>(seconds) * 4 + 60,
                            contended_rows[i].label.c_str());
            results[i].push_back(contended(contended_rows[i], seconds));
            ctx.record("contended_" + contended_rows[i].id, "ops_per_second",
                       results[i].back().ops_per_second, "1/s", std::to_string(run + 1));
            ctx.record("contended_" + contended_rows[i].id, "smaller_share",
                       results[i].back().smaller_share, "fraction", std::to_string(run + 1));
        }
    bench::watchdog(0, nullptr);
    const bool have_baseline = contended_rows.front().kind == lock_kind::blocking;
    bench::table t({"two processes, both looping", "lock+unlock per second (both)",
                    "ratio to baseline", "less served process's share"});
    for (std::size_t i = 0; i < contended_rows.size(); ++i) {
        std::vector<double> rate, share, r;
        for (std::size_t run = 0; run < results[i].size(); ++run) {
            rate.push_back(results[i][run].ops_per_second);
            share.push_back(results[i][run].smaller_share);
            r.push_back(have_baseline
                            ? ratio(results[i][run].ops_per_second, results[0][run].ops_per_second)
                            : std::nan(""));
        }
        const double rr = bench::median(r);
        t.add({contended_rows[i].label, bench::fmt(bench::median(rate), 0), bench::ratio_text(rr),
               bench::fmt(100.0 * bench::median(share), 1) + "%"});
        ctx.record("contended_" + contended_rows[i].id, "ops_per_second", bench::median(rate),
                   "1/s");
        ctx.record("contended_" + contended_rows[i].id, "ratio_to_baseline", rr, "x");
        ctx.record("contended_" + contended_rows[i].id, "smaller_share", bench::median(share),
                   "fraction");
    }
    ctx.print("Mutex, contended by two processes", t,
              "Both processes lock, increment a counter in a shared segment, unlock, until a "
              "common deadline (" +
                  bench::fmt(seconds, 1) +
                  " s); the counter is checked against the operations "
                  "counted. Median of " +
                  std::to_string(contended_runs) +
                  " runs. A share of 50% is perfectly fair; 0% is starvation.");
}

// =============================================================================================
// 5. Cost of ringing a doorbell
// =============================================================================================

/// ns per release+acquire pair (try_apply, never blocking) in a fresh process: with doorbells
/// off (SYSV_DOORBELL_KEY=off), on, or on while another process sleeps on the set's doorbell.
double ring_pair_ns(int id, bool doorbells, long n) {
    int fds[2];
    if (::pipe(fds) == -1)
        throw std::system_error(errno, std::generic_category(), "pipe");
    bench::child measuring([&]() -> int {
        ::close(fds[0]);
        if (!doorbells)
            ::setenv("SYSV_DOORBELL_KEY", "off", 1);
        auto set = sysv::semaphore_set::open_id(id);
        for (long i = 0; i < n / 10; ++i) { // warm up
            set.try_apply(sysv::op::release(0));
            set.try_apply(sysv::op::acquire(0));
        }
        const auto start = now_ns();
        for (long i = 0; i < n; ++i) {
            set.try_apply(sysv::op::release(0)); // rings "up"
            set.try_apply(sysv::op::acquire(0)); // rings "zero"
        }
        const double ns = static_cast<double>(now_ns() - start) / static_cast<double>(n);
        return ::write(fds[1], &ns, sizeof ns) == sizeof ns ? 0 : 1;
    });
    ::close(fds[1]);
    double ns = std::nan("");
    if (::read(fds[0], &ns, sizeof ns) != sizeof ns)
        ns = std::nan("");
    ::close(fds[0]);
    measuring.join("doorbell ring cost");
    return ns;
}

void run_doorbell_cost(bench::context& ctx) {
    const auto& opt = ctx.opt;
    const int runs = opt.runs_or(5, 1);
    const long n = opt.rounds_or(200000, 20000);
    if (!mode_available("io_uring") && !mode_available("thread")) {
        ctx.progress("no doorbell mode available here: section skipped");
        return;
    }
    owned_set set{0, 0};
    const int id = set.id();
    struct row {
        std::string id, label;
        bool doorbells, sleeper;
    };
    std::vector<row> rows{
        {"off", "doorbells off (SYSV_DOORBELL_KEY=off) [baseline]", false, false},
        {"on_no_sleeper", "doorbells on, nobody sleeps on the set", true, false},
        {"on_sleeper", "doorbells on, another process sleeps on the set's doorbell", true, true},
    };
    std::erase_if(rows, [&](const row& r) { return !opt.wants("ring_" + r.id); });
    if (rows.empty())
        return;
    ctx.progress(std::to_string(runs) + " runs x " + std::to_string(n) +
                 " release+acquire pairs per row");
    std::vector<std::vector<double>> pair_ns(rows.size());
    for (int run = 0; run < runs; ++run)
        for (std::size_t k = 0; k < rows.size(); ++k) {
            const std::size_t i = (k + static_cast<std::size_t>(run)) % rows.size();
            bench::watchdog(120, rows[i].label.c_str());
            std::optional<bench::child> sleeper;
            if (rows[i].sleeper) {
                // Waits on semaphore 1 (never released) of the same set: every release of
                // semaphore 0 rings the word it sleeps on, wakes it, and it sleeps again.
                sleeper.emplace([id]() -> int {
                    asio::io_context io;
                    sysv::async_semaphore_set s(io, sysv::semaphore_set::open_id(id),
                                                sysv::backoff::library_releasers());
                    s.async_acquire(1, [](sysv::error_code) {});
                    io.run_for(std::chrono::seconds(60));
                    return 0;
                });
                std::this_thread::sleep_for(std::chrono::milliseconds(100)); // asleep by now
            }
            const double ns = ring_pair_ns(id, rows[i].doorbells, n);
            if (sleeper) {
                ::kill(sleeper->pid(), SIGKILL);
                try {
                    sleeper->join("doorbell sleeper");
                } catch (const std::exception&) { // killed on purpose
                }
            }
            pair_ns[i].push_back(ns);
            ctx.record("ring_" + rows[i].id, "ns_per_release_acquire_pair", ns, "ns",
                       std::to_string(run + 1));
        }
    bench::watchdog(0, nullptr);
    bench::table t(
        {"releaser", "ns per release + acquire", "extra ns per operation", "ratio to baseline"});
    const double base = rows.front().id == "off" ? bench::median(pair_ns[0]) : std::nan("");
    for (std::size_t i = 0; i < rows.size(); ++i) {
        const double m = bench::median(pair_ns[i]);
        const double extra = (m - base) / 2.0;
        t.add({rows[i].label, bench::fmt(m, 0), i == 0 ? "-" : bench::fmt(extra, 0),
               bench::ratio_text(ratio(m, base))});
        ctx.record("ring_" + rows[i].id, "ns_per_release_acquire_pair", m, "ns");
        ctx.record("ring_" + rows[i].id, "extra_ns_per_operation", extra, "ns");
    }
    ctx.print("Cost of ringing a doorbell (one process applying, try_apply)", t,
              "Each row runs in a fresh process: " + std::to_string(n) +
                  " pairs of try_apply(release(0)) and try_apply(acquire(0)) on one set; the "
                  "release rings the set's \"up\" word, the acquire its \"zero\" word. Extra ns "
                  "per operation = (row - baseline) / 2. With a sleeper, each release whose word "
                  "was marked also makes a FUTEX_WAKE (the sleeper wakes, finds nothing, marks "
                  "the word again). Median of " +
                  std::to_string(runs) + " runs, rows interleaved.");
}

const bench::registrar pingpong_section{
    {"pingpong", 10, "1. Ping-pong round trip between two processes", &run_pingpong}};
const bench::registrar wake_section{{"wake", 20, "2. Wake latency after idle", &run_wake}};
const bench::registrar idle_section{{"idle", 30, "3. Idle cost of pending waits", &run_idle}};
const bench::registrar mutex_section{{"mutex", 40, "4. Mutex", &run_mutex}};
const bench::registrar doorbell_section{
    {"doorbell", 45, "5. Cost of ringing a doorbell", &run_doorbell_cost}};

} // namespace
