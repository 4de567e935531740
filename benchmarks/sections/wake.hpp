// sysv_bench, section 2: wake latency after idle
// Part of semaphores.cpp's translation unit (one TU with Asio keeps the build lean): included
// there after its headers, `import sysv;` and sections/support.hpp.
#pragma once

namespace {

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

} // namespace
