// sysv_bench, section 5: the cost of ringing a doorbell
// Part of semaphores.cpp's translation unit (one TU with Asio keeps the build lean): included
// there after its headers, `import sysv;` and sections/support.hpp.
#pragma once

namespace {

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

} // namespace
