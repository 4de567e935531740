// Doorbells: waits woken by the release itself instead of by a poll, in each wake mode (forced
// with SYSV_WAIT_MODE in forked children), with real processes. A wait whose backoff polls
// "never" again (the backstop is an hour away) can only complete through a doorbell, so each test
// that such a wait completes asserts that the doorbell rang and was heard; releasers that do not
// ring (Python's sysv_ipc, `ipcrm`) are caught by the backstop polls instead.
#include "harness.hpp"

#include <boost/test/data/monomorphic.hpp>
#include <boost/test/data/test_case.hpp>

#include <boost/asio/experimental/awaitable_operators.hpp>

#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

import sysv.async;

namespace asio = boost::asio;
using namespace std::chrono_literals;
using boost::system::error_code;
namespace bdata = boost::unit_test::data;

namespace {

/// One poll 20 us after the start, then none for an hour: only a doorbell wakes the wait.
sysv::backoff doorbell_only() {
    sysv::backoff b;
    b.immediate_yields = 0;
    b.first_sleep = 20us;
    b.growth = 1e9; // 20 us, then an hour
    b.doorbell_max_sleep = std::chrono::hours(1);
    return b;
}

/// The mode a fresh process chooses when nothing is forced.
sysv::wake_mode best_mode() {
    static const sysv::wake_mode mode = [] {
        asio::io_context io;
        return sysv::wake_mode_of(io);
    }();
    return mode;
}

/// Runs `body` in a child whose waits use wake mode `mode` (SYSV_WAIT_MODE); fails the test
/// case if the child does not end with 0 within `limit` (a wait that was never woken).
void in_mode(const char* mode, const std::function<int()>& body, std::chrono::seconds limit = 60s) {
    sysv_test::child c([&] {
        ::setenv("SYSV_WAIT_MODE", mode, 1);
        return body();
    });
    BOOST_TEST(c.wait_for(limit).exited_with(0), "in mode " << mode);
}

/// The modes with doorbells: each case runs once per mode (BOOST_DATA_TEST_CASE).
const char* const doorbell_mode_names[] = {"io_uring", "thread"};

/// True, with a message, when this machine lacks `mode`: its case then ends (that doorbells work
/// on this machine kind is each_mode_is_used_when_forced_and_says_why's check, and the fallback
/// is tested by the cases of the other modes).
bool missing_mode(std::string_view mode) {
    const bool have = mode == "io_uring" ? best_mode() == sysv::wake_mode::io_uring
                                         : best_mode() != sysv::wake_mode::polling;
    if (!have)
        BOOST_TEST_MESSAGE("no " << mode << " on this machine");
    return !have;
}

/// A child that releases semaphore `sem` of set `id` through the library after `after`.
sysv_test::child release_later(int id, std::size_t sem, std::chrono::milliseconds after) {
    return sysv_test::child([=] {
        std::this_thread::sleep_for(after);
        sysv::semaphore_set::open_id(id).apply(sysv::op::release(sem));
        return 0;
    });
}

/// This process's descriptors that are `kind` ("anon_inode:[io_uring]", "anon_inode:[eventfd]").
std::vector<int> own_descriptors(const std::string& kind) {
    std::vector<int> fds;
    for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
        std::error_code ec;
        if (std::filesystem::read_symlink(entry.path(), ec) == kind && !ec)
            fds.push_back(std::stoi(entry.path().filename().string()));
    }
    return fds;
}

/// Leaves every io_uring of this process flagged as holding completions to run
/// (IORING_SQ_TASKRUN) while it holds none, and signals every eventfd of the process as a ring
/// does when it has completions: the state the kernel can leave a ring in when a futex wake is
/// queued while its issuer is already running the queued ones (the flag stays set, the run
/// takes the wake). Returns how many rings were flagged.
int flag_own_rings_with_nothing_to_run() {
    io_uring_params p{};
    const int probe = static_cast<int>(::syscall(__NR_io_uring_setup, 1, &p));
    if (probe < 0)
        return 0;
    ::close(probe); // only its layout was wanted: the flags' offset is the same for every ring
    int flagged = 0;
    for (const int fd : own_descriptors("anon_inode:[io_uring]")) {
        void* rings =
            ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, IORING_OFF_SQ_RING);
        if (rings == MAP_FAILED)
            continue;
        __atomic_or_fetch(reinterpret_cast<unsigned*>(static_cast<char*>(rings) + p.sq_off.flags),
                          IORING_SQ_TASKRUN, __ATOMIC_SEQ_CST);
        ::munmap(rings, 4096);
        ++flagged;
    }
    for (const int fd : own_descriptors("anon_inode:[eventfd]")) {
        const std::uint64_t one = 1; // the context's own eventfd only wakes its reactor
        (void)!::write(fd, &one, sizeof one);
    }
    return flagged;
}

int run_until_done(asio::io_context& io, std::chrono::seconds limit = 30s) {
    io.run_for(limit);
    return io.stopped() ? 0 : 96; // 96: work was left (a wait never woken, or something armed)
}

} // namespace

BOOST_AUTO_TEST_SUITE(doorbells)

BOOST_AUTO_TEST_CASE(each_mode_is_used_when_forced_and_says_why) {
    BOOST_TEST_MESSAGE("best wake mode here: " << sysv::to_string(best_mode()));
    BOOST_TEST((best_mode() != sysv::wake_mode::polling)); // doorbells work on this machine kind
    for (auto [name, expected] : {std::pair{"io_uring", sysv::wake_mode::io_uring},
                                  std::pair{"thread", sysv::wake_mode::helper_thread},
                                  std::pair{"polling", sysv::wake_mode::polling}}) {
        if (expected == sysv::wake_mode::io_uring && best_mode() != expected)
            continue; // not on this machine: the fallback is tested by the others
        in_mode(name, [want = expected] {
            asio::io_context io;
            SYSV_CHILD_CHECK(sysv::wake_mode_of(io) == want);
            // Empty only for the fastest configuration (the deferring ring, where it delivers).
            const auto status = sysv::wake_status_of(io);
            SYSV_CHILD_CHECK(status.reason == sysv::wake_mode_reason(io));
            SYSV_CHILD_CHECK((status.configuration ==
                              sysv::detail::describe(sysv::detail::wake_config::uring_deferred)) ==
                             status.reason.empty());
            return 0;
        });
    }
}

BOOST_DATA_TEST_CASE(a_release_in_another_process_wakes_a_wait_that_no_longer_polls,
                     bdata::make(doorbell_mode_names), mode) {
    if (missing_mode(mode))
        return;
    sysv_test::ipc_guard guard;
    auto raw = sysv::semaphore_set::create(sysv::key::private_key(), {0, 0});
    guard.semaphores(raw);
    const int id = raw.id();
    in_mode(mode, [id] {
        asio::io_context io;
        sysv::async_semaphore_set set(io, sysv::semaphore_set::open_id(id), doorbell_only());
        // Released by the blocking API in one child, by the async API in another.
        sysv_test::child sync_releaser = release_later(id, 0, 200ms);
        sysv_test::child async_releaser([id] {
            std::this_thread::sleep_for(300ms);
            asio::io_context other;
            sysv::async_semaphore_set theirs(other, sysv::semaphore_set::open_id(id));
            theirs.try_apply(sysv::op::release(1));
            return 0;
        });
        int woken = 0;
        set.async_acquire(0, [&](error_code ec) { woken += !ec; });
        set.async_acquire(1, [&](error_code ec) { woken += !ec; });
        const int rc = run_until_done(io);
        SYSV_CHILD_CHECK(sync_releaser.wait().exited_with(0));
        SYSV_CHILD_CHECK(async_releaser.wait().exited_with(0));
        SYSV_CHILD_CHECK(woken == 2);
        return rc;
    });
}

BOOST_DATA_TEST_CASE(a_wait_for_zero_is_rung_by_an_acquire_and_setval_rings_everyone,
                     bdata::make(doorbell_mode_names), mode) {
    if (missing_mode(mode))
        return;
    sysv_test::ipc_guard guard;
    auto raw = sysv::semaphore_set::create(sysv::key::private_key(), {1, 0});
    guard.semaphores(raw);
    const int id = raw.id();
    in_mode(mode, [id] {
        asio::io_context io;
        sysv::async_semaphore_set set(io, sysv::semaphore_set::open_id(id), doorbell_only());
        sysv_test::child other([id] {
            std::this_thread::sleep_for(200ms);
            auto s = sysv::semaphore_set::open_id(id);
            s.apply(sysv::op::acquire(0)); // 1 -> 0: rings "zero"
            std::this_thread::sleep_for(100ms);
            s.set_value(1, 5); // SETVAL: rings both
            return 0;
        });
        int done = 0;
        set.async_wait_zero(0, [&](error_code ec) { done += !ec; });
        set.async_acquire(1, 5, [&](error_code ec) { done += !ec; });
        const int rc = run_until_done(io);
        SYSV_CHILD_CHECK(other.wait().exited_with(0));
        SYSV_CHILD_CHECK(done == 2);
        return rc;
    });
}

BOOST_DATA_TEST_CASE(releasers_that_do_not_ring_are_seen_by_the_backstop,
                     bdata::make(doorbell_mode_names), mode) {
    if (missing_mode(mode))
        return;
    sysv_test::ipc_guard guard;
    const key_t k = guard.temp_key();
    auto raw = sysv::semaphore_set::create(sysv::key(k), {0});
    guard.semaphores(raw);
    const int id = raw.id();
    in_mode(mode, [k, id] {
        asio::io_context io;
        // The backstop of library_releasers(): a release by another program within 1 s.
        sysv::async_semaphore_set set(io, sysv::semaphore_set::open_id(id),
                                      sysv::backoff::library_releasers());
        sysv_test::child python([k] {
            const std::string command =
                "/usr/bin/python3 -c 'import sysv_ipc, time\ntime.sleep(0.2)\n"
                "sysv_ipc.Semaphore(" +
                std::to_string(k) + ").release()'";
            return std::system(command.c_str()) == 0 ? 0 : 1;
        });
        bool acquired = false;
        set.async_acquire(0, [&](error_code ec) { acquired = !ec; });
        const int rc = run_until_done(io);
        SYSV_CHILD_CHECK(python.wait().exited_with(0));
        SYSV_CHILD_CHECK(acquired);
        // ipcrm does not ring either: the waits learn of the removal from the backstop.
        sysv_test::child remover([id] {
            std::this_thread::sleep_for(200ms);
            return std::system(("ipcrm -s " + std::to_string(id)).c_str()) == 0 ? 0 : 1;
        });
        error_code result;
        set.async_acquire(0, [&](error_code ec) { result = ec; });
        io.restart();
        const int rc2 = run_until_done(io);
        SYSV_CHILD_CHECK(remover.wait().exited_with(0));
        SYSV_CHILD_CHECK(result == sysv::errc::removed);
        return rc + rc2;
    });
}

BOOST_DATA_TEST_CASE(a_removal_through_the_library_wakes_waiters_at_once,
                     bdata::make(doorbell_mode_names), mode) {
    if (missing_mode(mode))
        return;
    sysv_test::ipc_guard guard;
    auto raw = sysv::semaphore_set::create(sysv::key::private_key(), {0});
    guard.semaphores(raw);
    const int id = raw.id();
    in_mode(mode, [id] {
        asio::io_context io;
        sysv::async_semaphore_set set(io, sysv::semaphore_set::open_id(id), doorbell_only());
        sysv_test::child remover([id] {
            std::this_thread::sleep_for(200ms);
            sysv::semaphore_set::open_id(id).remove();
            return 0;
        });
        error_code result;
        set.async_acquire(0, [&](error_code ec) { result = ec; });
        const int rc = run_until_done(io);
        SYSV_CHILD_CHECK(remover.wait().exited_with(0));
        SYSV_CHILD_CHECK(result == sysv::errc::removed);
        return rc;
    });
}

BOOST_DATA_TEST_CASE(no_wake_is_lost_when_releases_race_the_sleepers,
                     bdata::make(doorbell_mode_names), mode) {
    // Two processes hand a turn back and forth; each waits with no yield phase and no polls, so
    // a release that lands between a waiter's read of the word and its sleep would hang it.
    constexpr int rounds = 2000;
    if (missing_mode(mode))
        return;
    sysv_test::ipc_guard guard;
    auto raw = sysv::semaphore_set::create(sysv::key::private_key(), {0, 0});
    guard.semaphores(raw);
    const int id = raw.id();
    auto player = [id](std::size_t mine, std::size_t theirs, bool first) {
        return [=] {
            asio::io_context io;
            sysv::async_semaphore_set set(io, sysv::semaphore_set::open_id(id), doorbell_only());
            int played = 0;
            asio::co_spawn(
                io,
                [&]() -> asio::awaitable<void> {
                    for (int i = 0; i < rounds; ++i) {
                        if (!first || i > 0)
                            co_await set.async_acquire(mine, asio::use_awaitable);
                        set.try_apply(sysv::op::release(theirs));
                        ++played;
                    }
                },
                [](std::exception_ptr e) {
                    if (e)
                        std::rethrow_exception(e);
                });
            const int rc = run_until_done(io, 120s);
            SYSV_CHILD_CHECK(played == rounds);
            return rc;
        };
    };
    sysv_test::child pong([&] {
        ::setenv("SYSV_WAIT_MODE", mode, 1);
        return player(1, 0, false)();
    });
    in_mode(mode, player(0, 1, true), 180s);
    BOOST_TEST(pong.wait_for(60s).exited_with(0), "mode " << mode);
}

BOOST_AUTO_TEST_CASE(a_ring_flagged_as_having_work_with_none_left_does_not_stall_the_context) {
    // The kernel may leave IORING_SQ_TASKRUN set on the ring with nothing to run (a futex wake
    // queued while this thread already runs the queued ones). The watcher once ran the ring
    // until the flag cleared: a run with nothing to do never clears it, so the handler spun
    // forever and the context with it (seen as a hung contended mutex, about one run in ten).
    if (best_mode() != sysv::wake_mode::io_uring) {
        BOOST_TEST_MESSAGE("no io_uring doorbells on this machine: nothing to check");
        return;
    }
    sysv_test::ipc_guard guard;
    auto raw = sysv::semaphore_set::create(sysv::key::private_key(), {0});
    guard.semaphores(raw);
    const int id = raw.id();
    in_mode(
        "io_uring",
        [id] {
            asio::io_context io;
            sysv::async_semaphore_set set(io, sysv::semaphore_set::open_id(id), doorbell_only());
            int woken = 0;
            for (int round = 1; round <= 3; ++round) {
                set.async_acquire(0, [&](error_code ec) { woken += !ec; });
                io.run_for(50ms); // the wait polls once, then sleeps on its doorbell
                SYSV_CHILD_CHECK(woken == round - 1);
                SYSV_CHILD_CHECK(flag_own_rings_with_nothing_to_run() >= 1);
                io.run_for(50ms); // the watcher reaps the ring, which has nothing to run
                sysv_test::child releaser = release_later(id, 0, 20ms);
                const auto deadline = std::chrono::steady_clock::now() + 20s;
                while (woken < round && std::chrono::steady_clock::now() < deadline)
                    io.run_one_for(100ms);
                SYSV_CHILD_CHECK(releaser.wait().exited_with(0));
                SYSV_CHILD_CHECK(woken == round);
            }
            return 0;
        },
        40s);
}

BOOST_DATA_TEST_CASE(cancellation_and_deadlines_of_sleeping_waits_leave_nothing_armed,
                     bdata::make(doorbell_mode_names), mode) {
    if (missing_mode(mode))
        return;
    sysv_test::ipc_guard guard;
    auto raw = sysv::semaphore_set::create(sysv::key::private_key(), {0});
    guard.semaphores(raw);
    const int id = raw.id();
    in_mode(mode, [id] {
        asio::io_context io;
        sysv::async_semaphore_set set(io, sysv::semaphore_set::open_id(id), doorbell_only());
        for (auto type : {asio::cancellation_type::terminal, asio::cancellation_type::partial,
                          asio::cancellation_type::total}) {
            asio::cancellation_signal signal;
            error_code result;
            set.async_acquire(0, asio::bind_cancellation_slot(signal.slot(),
                                                              [&](error_code ec) { result = ec; }));
            asio::steady_timer later(io, 100ms); // asleep on its doorbell by then
            later.async_wait([&](error_code) { signal.emit(type); });
            io.restart();
            // run() returns: the wait ended, and nothing (no futex wait, no eventfd wait)
            // is left to keep it running.
            SYSV_CHILD_CHECK(run_until_done(io) == 0);
            SYSV_CHILD_CHECK(result == asio::error::operation_aborted);
        }
        error_code result;
        set.async_apply_for(sysv::op::acquire(0), 100ms, [&](error_code ec) { result = ec; });
        io.restart();
        SYSV_CHILD_CHECK(run_until_done(io) == 0);
        SYSV_CHILD_CHECK(result == asio::error::timed_out);
        // And the doorbell still works for the next wait.
        sysv_test::child releaser = release_later(id, 0, 100ms);
        set.async_acquire(0, [&](error_code ec) { result = ec; });
        io.restart();
        SYSV_CHILD_CHECK(run_until_done(io) == 0);
        SYSV_CHILD_CHECK(!result);
        SYSV_CHILD_CHECK(releaser.wait().exited_with(0));
        return 0;
    });
}

BOOST_DATA_TEST_CASE(ten_thousand_waits_on_a_thousand_sets_are_all_woken,
                     bdata::make(doorbell_mode_names), mode) {
    constexpr int sets = 1000, per_set = 10;
    if (missing_mode(mode))
        return;
    sysv_test::ipc_guard guard;
    std::vector<int> ids;
    for (int i = 0; i < sets; ++i) {
        auto s = sysv::semaphore_set::create(sysv::key::private_key(), {0});
        guard.semaphores(s);
        ids.push_back(s.id());
    }
    in_mode(mode, [&] {
        asio::io_context io;
        // The helper thread watches at most 127 words; the others rely on the default
        // backstop (3 ms). io_uring watches them all.
        std::vector<std::unique_ptr<sysv::async_semaphore_set>> objects;
        int woken = 0;
        for (int id : ids) {
            objects.push_back(
                std::make_unique<sysv::async_semaphore_set>(io, sysv::semaphore_set::open_id(id)));
            for (int j = 0; j < per_set; ++j)
                objects.back()->async_acquire(0, [&](error_code ec) { woken += !ec; });
        }
        sysv_test::child releaser([&] {
            std::this_thread::sleep_for(200ms);
            for (int id : ids)
                sysv::semaphore_set::open_id(id).apply(sysv::op::release(0, per_set));
            return 0;
        });
        const int rc = run_until_done(io, 120s);
        SYSV_CHILD_CHECK(releaser.wait().exited_with(0));
        SYSV_CHILD_CHECK(woken == sets * per_set);
        return rc;
    });
}

BOOST_DATA_TEST_CASE(a_forked_child_gets_its_own_ring_or_thread_and_the_parent_keeps_its_own,
                     bdata::make(doorbell_mode_names), mode) {
    if (missing_mode(mode))
        return;
    if (sysv_test::under_thread_sanitizer && std::string_view(mode) == "thread") {
        // ThreadSanitizer refuses to start threads in the child of a multi-threaded fork.
        BOOST_TEST_MESSAGE("helper thread after fork: not checked under ThreadSanitizer");
        return;
    }
    sysv_test::ipc_guard guard;
    auto raw = sysv::semaphore_set::create(sysv::key::private_key(), {0, 0});
    guard.semaphores(raw);
    const int id = raw.id();
    in_mode(mode, [id] {
        asio::io_context io;
        sysv::async_semaphore_set set(io, sysv::semaphore_set::open_id(id), doorbell_only());
        bool parent_woken = false;
        set.async_acquire(0, [&](error_code ec) { parent_woken = !ec; });
        io.run_for(100ms); // asleep on its doorbell: a ring (or the helper thread) is armed
        const auto mode_before = sysv::wake_mode_of(io);
        sysv_test::child forked([&] {
            // The inherited context, told of the fork, and a fresh one: both wait through
            // a ring (or helper thread) of this process, not the parent's.
            io.notify_fork(asio::execution_context::fork_child);
            asio::io_context fresh;
            sysv::async_semaphore_set mine(fresh, sysv::semaphore_set::open_id(id),
                                           doorbell_only());
            bool woken = false;
            mine.async_acquire(1, [&](error_code ec) { woken = !ec; });
            SYSV_CHILD_CHECK(sysv::wake_mode_of(fresh) == mode_before);
            sysv_test::child releaser = release_later(id, 1, 100ms);
            const int rc = run_until_done(fresh);
            SYSV_CHILD_CHECK(releaser.wait().exited_with(0));
            SYSV_CHILD_CHECK(woken);
            // Then wake the parent, whose ring (or thread) the child never touched.
            sysv::semaphore_set::open_id(id).apply(sysv::op::release(0));
            return rc;
        });
        SYSV_CHILD_CHECK(forked.wait_for(60s).exited_with(0));
        SYSV_CHILD_CHECK(run_until_done(io) == 0);
        SYSV_CHILD_CHECK(parent_woken);
        return 0;
    });
}

BOOST_DATA_TEST_CASE(a_context_run_by_one_thread_then_another_or_by_two_keeps_hearing_doorbells,
                     bdata::make(doorbell_mode_names), mode) {
    // A ring that defers its completions accepts one issuer thread: the first that watches.
    // A pass on another thread must not leave the waits deaf (only a doorbell wakes them).
    if (missing_mode(mode))
        return;
    sysv_test::ipc_guard guard;
    auto raw = sysv::semaphore_set::create(sysv::key::private_key(), {0});
    guard.semaphores(raw);
    const int id = raw.id();
    in_mode(mode, [id] {
        asio::io_context io;
        sysv::async_semaphore_set set(io, sysv::semaphore_set::open_id(id), doorbell_only());
        const auto mode_before = sysv::wake_mode_of(io);
        {
            // Armed by a thread that then ends (its requests end with it), heard by the next.
            bool woken = false;
            set.async_acquire(0, [&](error_code ec) { woken = !ec; });
            std::thread([&] { io.run_for(100ms); }).join();
            SYSV_CHILD_CHECK(!woken);
            sysv_test::child releaser = release_later(id, 0, 100ms);
            int rc = -1;
            std::thread([&] { rc = run_until_done(io); }).join();
            io.restart();
            SYSV_CHILD_CHECK(releaser.wait().exited_with(0));
            SYSV_CHILD_CHECK(rc == 0);
            SYSV_CHILD_CHECK(woken);
        }
        for (int round = 0; round < 3; ++round) { // a new thread runs the context each round
            bool woken = false;
            set.async_acquire(0, [&](error_code ec) { woken = !ec; });
            sysv_test::child releaser = release_later(id, 0, 100ms);
            int rc = -1;
            std::thread([&] { rc = run_until_done(io); }).join();
            io.restart();
            SYSV_CHILD_CHECK(releaser.wait().exited_with(0));
            SYSV_CHILD_CHECK(rc == 0);
            SYSV_CHILD_CHECK(woken);
        }
        // Two threads at once, 40 waits released one by one.
        constexpr int waits = 40;
        std::atomic<int> woken = 0;
        for (int i = 0; i < waits; ++i)
            set.async_acquire(0, [&](error_code ec) { woken += !ec; });
        sysv_test::child releaser([id] {
            auto s = sysv::semaphore_set::open_id(id);
            for (int i = 0; i < waits; ++i) {
                std::this_thread::sleep_for(5ms);
                s.apply(sysv::op::release(0));
            }
            return 0;
        });
        std::atomic<int> rc = 0;
        std::thread other([&] { rc += run_until_done(io); });
        rc += run_until_done(io);
        other.join();
        SYSV_CHILD_CHECK(releaser.wait().exited_with(0));
        SYSV_CHILD_CHECK(rc == 0);
        SYSV_CHILD_CHECK(woken == waits);
        SYSV_CHILD_CHECK(sysv::wake_mode_of(io) == mode_before);
        return 0;
    });
}

BOOST_DATA_TEST_CASE(a_handler_that_throws_loses_no_other_completion_or_doorbell,
                     bdata::make(doorbell_mode_names), mode) {
    if (missing_mode(mode))
        return;
    sysv_test::ipc_guard guard;
    auto raw = sysv::semaphore_set::create(sysv::key::private_key(), {0, 0});
    guard.semaphores(raw);
    const int id = raw.id();
    in_mode(mode, [id] {
        asio::io_context io;
        sysv::async_semaphore_set set(io, sysv::semaphore_set::open_id(id), doorbell_only());
        int woken = 0;
        // Two waits completed by one release (one pass), the first handler throws; a third
        // wait, on another semaphore, sleeps on its doorbell meanwhile.
        set.async_acquire(0, [](error_code) { throw std::runtime_error("from a handler"); });
        set.async_acquire(0, [&](error_code ec) { woken += !ec; });
        set.async_acquire(1, [&](error_code ec) { woken += !ec; });
        io.run_for(100ms); // all three asleep on their doorbells
        sysv_test::child releaser([id] {
            auto s = sysv::semaphore_set::open_id(id);
            s.apply(sysv::op::release(0, 2));
            std::this_thread::sleep_for(200ms);
            s.apply(sysv::op::release(1));
            return 0;
        });
        bool threw = false;
        try {
            io.run_for(30s);
        } catch (const std::runtime_error&) {
            threw = true;
        }
        SYSV_CHILD_CHECK(threw);
        io.restart();
        const int rc = run_until_done(io);
        SYSV_CHILD_CHECK(releaser.wait().exited_with(0));
        SYSV_CHILD_CHECK(woken == 2);
        return rc;
    });
}

BOOST_AUTO_TEST_SUITE_END()
