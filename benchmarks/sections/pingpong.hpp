// sysv_bench, section 1: ping-pong round trips between two processes
// Part of semaphores.cpp's translation unit (one TU with Asio keeps the build lean): included
// there after its headers, `import sysv;` and sections/support.hpp.
#pragma once

namespace {

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

} // namespace
