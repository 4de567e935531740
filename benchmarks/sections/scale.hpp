// sysv_bench, section 7: wakes among many pending waits
// Part of semaphores.cpp's translation unit (one TU with Asio keeps the build lean): included
// there after its headers, `import sysv;` and sections/support.hpp.
#pragma once

namespace {

// =============================================================================================
// 7. Wakes among many pending waits
// =============================================================================================

struct scale_level {
    int waits;
    int sets;
};

struct scale_result {
    std::vector<double> latency_us;
    double cpu_us_per_wake = 0;
    std::string ran_with = "-";
};

/// One measurement: `level.waits` waits spread over `level.sets` one-semaphore sets, in one
/// io_context of wake mode `mode` (empty: a thread blocked in semop, one wait). Another process
/// releases one random set at a time after `idle`, each time the waiter says it is ready again.
scale_result run_scale_level(const bench::options& opt, const scale_level& level,
                             const std::string& mode, std::chrono::microseconds idle, long rounds) {
    const bool blocking = mode.empty();
    std::vector<std::unique_ptr<owned_set>> sets;
    std::vector<int> ids;
    for (int s = 0; s < level.sets; ++s) {
        sets.push_back(std::make_unique<owned_set>(std::initializer_list<int>{0}));
        ids.push_back(sets.back()->id());
    }
    owned_set ready{0}; // the waiter releases it when it waits again
    owned_segment segment;
    shared_block& block = segment.block();
    const int ready_id = ready.id();

    bench::child releaser([&]() -> int {
        auto ready_set = sysv::semaphore_set::open_id(ready_id);
        std::vector<sysv::semaphore_set> handles;
        for (const int id : ids)
            handles.push_back(sysv::semaphore_set::open_id(id));
        std::mt19937_64 random(7);
        std::uniform_real_distribution<double> spread(0.9, 1.1);
        std::uniform_int_distribution<std::size_t> pick(0, handles.size() - 1);
        const auto idle_ns = static_cast<double>(std::chrono::nanoseconds(idle).count());
        for (long k = 0; k < rounds; ++k) {
            ready_set.apply(sysv::op::acquire(0));
            sleep_until_ns(now_ns() + static_cast<std::int64_t>(idle_ns * spread(random)));
            auto& target = handles[pick(random)];
            store(block.stamp, now_ns());
            target.apply(sysv::op::release(0));
        }
        return 0;
    });

    scale_result result;
    result.latency_us.reserve(static_cast<std::size_t>(rounds));
    auto cpu_now = [] {
        timespec ts{};
        ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
        return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
    };
    if (blocking) {
        auto& set = sets.front()->get();
        const double cpu_start = cpu_now();
        for (long k = 0; k < rounds; ++k) {
            ready.get().apply(sysv::op::release(0));
            set.apply(sysv::op::acquire(0));
            result.latency_us.push_back(us_since(load(block.stamp), now_ns()));
        }
        result.cpu_us_per_wake = (cpu_now() - cpu_start) / static_cast<double>(rounds);
        releaser.join("scale releaser");
        return result;
    }

    forced_mode force(mode);
    asio::io_context io;
    sysv::wake_mode_of(io); // chosen now, while forced
    std::vector<std::unique_ptr<sysv::async_semaphore_set>> async_sets;
    for (auto& s : sets)
        async_sets.push_back(std::make_unique<sysv::async_semaphore_set>(io, s->handle()));
    sysv::async_semaphore_set ready_async(io, ready.handle());
    long woken = 0;
    bool stopping = false;
    double cpu_start = 0;
    std::function<void(std::size_t)> wait_on = [&](std::size_t s) {
        async_sets[s]->async_acquire(0, [&, s](sysv::error_code ec) {
            if (ec == asio::error::operation_aborted && stopping)
                return;
            if (ec)
                throw sysv::system_error(ec, "scale wait");
            result.latency_us.push_back(us_since(load(block.stamp), now_ns()));
            wait_on(s); // as many waits pending as before
            if (++woken == rounds) {
                result.cpu_us_per_wake = (cpu_now() - cpu_start) / static_cast<double>(rounds);
                stopping = true;
                for (auto& a : async_sets)
                    a->cancel();
                return;
            }
            ready_async.try_apply(sysv::op::release(0));
        });
    };
    const int per_set = level.waits / level.sets;
    for (std::size_t s = 0; s < async_sets.size(); ++s)
        for (int w = 0; w < per_set; ++w)
            wait_on(s);
    // Let every wait make its attempts and go to sleep before the first release.
    asio::steady_timer settle(io, std::chrono::milliseconds(opt.quick ? 50 : 300));
    settle.async_wait([&](sysv::error_code) {
        cpu_start = cpu_now();
        ready_async.try_apply(sysv::op::release(0));
    });
    io.run();
    result.ran_with = bench::describe(bench::report_wake(io, mode));
    releaser.join("scale releaser");
    return result;
}

void run_scale(bench::context& ctx) {
    const auto& opt = ctx.opt;
    const std::vector<scale_level> levels{{10, 10}, {1000, 1000}, {10000, 2000}};
    const auto idle = std::chrono::microseconds(2000);
    const long rounds = opt.rounds_or(300, 30);
    struct row {
        std::string id, label, mode;
    };
    std::vector<row> rows;
    if (mode_available("io_uring"))
        rows.push_back({"doorbell_io_uring", "doorbells via io_uring", "io_uring"});
    if (mode_available("thread"))
        rows.push_back({"doorbell_thread", "doorbells via the helper thread", "thread"});
    std::erase_if(rows, [&](const row& r) { return !opt.wants(r.id); });
    if (rows.empty())
        return;
    ctx.progress(std::to_string(rounds) + " wakes per row, " +
                 std::to_string(levels.size() * rows.size() + 1) + " rows");
    bench::watchdog(600, "wakes among many waits");

    const auto base = run_scale_level(opt, {1, 1}, "", idle, rounds);
    const auto base_s = bench::summarize(base.latency_us);
    bench::table t({"pending waits", "sets", "waiter", "p50 (us)", "p99 (us)", "p50 / baseline",
                    "CPU per wake (us)", "CPU / 10 waits", "ran with"});
    t.add({"1", "1", "thread blocked in semop [baseline]", bench::fmt(base_s.p50),
           bench::fmt(base_s.p99), "1.00x", bench::fmt(base.cpu_us_per_wake), "-", "-"});
    for (const auto& r : rows) {
        double cpu_at_10 = 0;
        for (const auto& level : levels) {
            const auto res = run_scale_level(opt, level, r.mode, idle, rounds);
            const auto s = bench::summarize(res.latency_us);
            if (level.waits == 10)
                cpu_at_10 = res.cpu_us_per_wake;
            const double r50 = ratio(s.p50, base_s.p50);
            const double cpu_ratio = ratio(res.cpu_us_per_wake, cpu_at_10);
            t.add({std::to_string(level.waits), std::to_string(level.sets), r.label,
                   bench::fmt(s.p50), bench::fmt(s.p99), bench::ratio_text(r50),
                   bench::fmt(res.cpu_us_per_wake), bench::ratio_text(cpu_ratio), res.ran_with});
            const std::string id = r.id + "_" + std::to_string(level.waits) + "_waits";
            ctx.record(id, "wake_p50", s.p50, "us");
            ctx.record(id, "wake_p99", s.p99, "us");
            ctx.record(id, "wake_p50_ratio_to_baseline", r50, "x");
            ctx.record(id, "cpu_per_wake", res.cpu_us_per_wake, "us");
            ctx.record(id, "cpu_ratio_to_10_waits", cpu_ratio, "x");
            if (level.waits == 10000)
                ctx.target("10,000 waits on 2,000 sets, " + r.label +
                               ": CPU per wake <= 2x that of 10 waits, p50 <= 3x a thread "
                               "blocked in semop",
                           "CPU " + bench::ratio_text(cpu_ratio) + ", p50 " +
                               bench::ratio_text(r50),
                           cpu_ratio <= 2.0 && r50 <= 3.0);
        }
    }
    bench::watchdog(0, nullptr);
    ctx.print("Wakes among many pending waits (one io_context)", t,
              "N waits spread evenly over S one-semaphore sets wait in one io_context; another "
              "process releases one random set 2 ms +-10% after the waiter re-armed the woken "
              "wait (so N stay pending). Latency: the releaser's CLOCK_MONOTONIC right before "
              "its semop to the handler. CPU per wake: the waiter process's CPU time (its "
              "helper thread included) over the measured wakes, divided by their number: the "
              "wake's own work and the backstop polls of all pending waits meanwhile.");
}

} // namespace
