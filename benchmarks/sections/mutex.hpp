// sysv_bench, section 4: the mutex, uncontended and contended
// Part of semaphores.cpp's translation unit (one TU with Asio keeps the build lean): included
// there after its headers, `import sysv;` and sections/support.hpp.
#pragma once

namespace {

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

} // namespace
