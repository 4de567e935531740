// sysv_bench, section 3: idle cost of pending waits
// Part of semaphores.cpp's translation unit (one TU with Asio keeps the build lean): included
// there after its headers, `import sysv;` and sections/support.hpp.
#pragma once

namespace {

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

} // namespace
