// sysv::robust_mutex between real processes: a holder killed with SIGKILL (holding the lock, or
// while repairing after another death) is reported to the next owner as errc::owner_dead with
// the lock held, until an owner marks the data consistent; clean hand-offs never are.
#include "harness.hpp"

#include <atomic>

import sysv.mutex;

#include "harness_ipc.hpp"

namespace asio = boost::asio;
using namespace std::chrono_literals;
using boost::system::error_code;

namespace {

/// A child that takes the lock, optionally marks where it is in `progress` (semaphore 2 of the
/// set +1), and is killed holding it. `expect_owner_dead`: it must be told of an earlier death.
sysv_test::child die_holding(int id, bool expect_owner_dead) {
    return sysv_test::child([id, expect_owner_dead] {
        asio::io_context io;
        sysv::robust_mutex m(io, sysv::semaphore_set::open_id(id));
        int result = 1;
        m.async_lock([&](error_code ec, sysv::robust_mutex::guard lock) {
            if ((ec == sysv::errc::owner_dead) != expect_owner_dead || !lock.owns_lock() ||
                lock.owner_died() != expect_owner_dead) {
                result = 2;
                return;
            }
            lock.release(); // "half-way through an update"
            ::raise(SIGKILL);
        });
        io.run();
        return result;
    });
}

} // namespace

BOOST_AUTO_TEST_SUITE(robust_mutex)

SYSV_CO_TEST_CASE(an_owner_killed_holding_it_is_reported_until_marked_consistent) {
    sysv_test::ipc_guard guard;
    auto raw = sysv_test::private_set(guard, {1, 0});
    const int id = raw.id();
    sysv::robust_mutex m(co_await asio::this_coro::executor, std::move(raw));
    {
        auto [ec, lock] = co_await m.async_lock(asio::as_tuple(asio::use_awaitable));
        BOOST_TEST(!ec); // nobody died yet
        BOOST_TEST(!lock.owner_died());
    }
    auto victim = die_holding(id, false);
    BOOST_TEST(victim.wait().killed_by(SIGKILL));
    BOOST_TEST(!m.is_locked()); // SEM_UNDO released the lock...
    {
        auto [ec, lock] = co_await m.async_lock(asio::as_tuple(asio::use_awaitable));
        BOOST_TEST((ec == sysv::errc::owner_dead)); // ...but the next owner is told
        BOOST_TEST(lock.owns_lock());
        BOOST_TEST(lock.owner_died());
        BOOST_TEST(m.is_locked());
        // Released without repairing: the next owner is told too.
    }
    {
        auto [ec, lock] = co_await m.async_lock(asio::as_tuple(asio::use_awaitable));
        BOOST_TEST((ec == sysv::errc::owner_dead));
        lock.mark_consistent();
        BOOST_TEST(!lock.owner_died());
    }
    auto [ec, lock] = co_await m.async_lock(asio::as_tuple(asio::use_awaitable));
    BOOST_TEST(!ec); // repaired: clean again
    BOOST_TEST(!lock.owner_died());
}

SYSV_CO_TEST_CASE(a_death_during_the_repair_is_reported_again) {
    sysv_test::ipc_guard guard;
    auto raw = sysv_test::private_set(guard, {1, 0});
    const int id = raw.id();
    sysv::robust_mutex m(co_await asio::this_coro::executor, std::move(raw));
    auto first = die_holding(id, false);
    BOOST_TEST(first.wait().killed_by(SIGKILL));
    auto repairer = die_holding(id, true); // told, then killed before mark_consistent
    BOOST_TEST(repairer.wait().killed_by(SIGKILL));
    auto [ec, lock] = co_await m.async_lock(asio::as_tuple(asio::use_awaitable));
    BOOST_TEST((ec == sysv::errc::owner_dead));
    BOOST_TEST(lock.owns_lock());
}

SYSV_CO_TEST_CASE(a_waiter_is_told_when_the_holder_it_waits_for_is_killed) {
    sysv_test::ipc_guard guard;
    auto raw = sysv_test::private_set(guard, {1, 0});
    const int id = raw.id();
    sysv::robust_mutex m(co_await asio::this_coro::executor, std::move(raw));
    sysv_test::child holder([id] {
        asio::io_context io;
        sysv::robust_mutex mine(io, sysv::semaphore_set::open_id(id));
        auto lock = mine.try_lock();
        if (!lock || lock->owner_died())
            return 2;
        lock->release();
        ::pause(); // holding, until killed
        return 1;
    });
    const bool held = sysv_test::eventually([&] { return m.is_locked(); }, 10s);
    BOOST_REQUIRE(held);
    asio::steady_timer kill_soon(co_await asio::this_coro::executor, 50ms);
    kill_soon.async_wait([&](error_code) { holder.kill(SIGKILL); });
    auto [ec, lock] = co_await m.async_lock(asio::as_tuple(asio::use_awaitable));
    BOOST_TEST((ec == sysv::errc::owner_dead));
    BOOST_TEST(lock.owns_lock());
    BOOST_TEST(holder.wait().killed_by(SIGKILL));
}

BOOST_AUTO_TEST_CASE(try_lock_reports_a_dead_owner_with_the_lock_held) {
    sysv_test::ipc_guard guard;
    auto raw = sysv_test::private_set(guard, {1, 0});
    const int id = raw.id();
    asio::io_context io;
    sysv::robust_mutex m(io, std::move(raw));
    auto victim = die_holding(id, false);
    BOOST_TEST(victim.wait().killed_by(SIGKILL));
    error_code ec;
    auto lock = m.try_lock(ec);
    BOOST_REQUIRE(lock.has_value());
    BOOST_TEST((ec == sysv::errc::owner_dead));
    BOOST_TEST(lock->owner_died());
    BOOST_TEST(!m.try_lock(ec).has_value()); // held now
    BOOST_TEST(!ec);
    lock->mark_consistent();
    lock->unlock();
    auto clean = m.try_lock(); // the throwing overload
    BOOST_REQUIRE(clean.has_value());
    BOOST_TEST(!clean->owner_died());
}

BOOST_AUTO_TEST_CASE(clean_hand_offs_between_processes_are_never_reported) {
    sysv_test::ipc_guard guard;
    auto raw = sysv_test::private_set(guard, {1, 0});
    const int id = raw.id();
    auto memory = sysv::shared_memory::create(sysv::key::private_key(), 4096);
    guard.memory(memory);
    constexpr int rounds = 2000;
    auto contender = [id, &memory] {
        asio::io_context io;
        sysv::robust_mutex m(io, sysv::semaphore_set::open_id(id));
        auto view = memory.attach();
        auto& counter = view.as<std::uint64_t>(0);
        int told = 0;
        asio::co_spawn(
            io,
            [&]() -> asio::awaitable<void> {
                for (int i = 0; i < rounds; ++i) {
                    auto [ec, lock] = co_await m.async_lock(asio::as_tuple(asio::use_awaitable));
                    if (ec)
                        ++told;
                    ++counter;
                }
            },
            [](std::exception_ptr e) {
                if (e)
                    std::rethrow_exception(e);
            });
        io.run();
        return told == 0 ? 0 : 3;
    };
    sysv_test::child a(contender), b(contender);
    BOOST_TEST(a.wait_for(120s).exited_with(0));
    BOOST_TEST(b.wait_for(120s).exited_with(0));
    auto view = memory.attach(sysv::access::read_only);
    BOOST_TEST(view.as<std::uint64_t>(0) == 2u * rounds); // mutual exclusion held
}

BOOST_AUTO_TEST_CASE(an_uncontended_lock_never_completes_inline) {
    sysv_test::ipc_guard guard;
    asio::io_context io;
    sysv::robust_mutex m(io, sysv_test::private_set(guard, {1, 0}));
    bool done = false;
    m.async_lock(
        [&](error_code ec, sysv::robust_mutex::guard lock) { done = !ec && lock.owns_lock(); });
    BOOST_TEST(!done);
    io.run();
    BOOST_TEST(done);
    BOOST_TEST(!m.is_locked()); // the guard released it
}

SYSV_CO_TEST_CASE(a_timed_lock_reports_a_dead_owner_and_gives_up_on_a_live_one) {
    sysv_test::ipc_guard guard;
    auto raw = sysv_test::private_set(guard, {1, 0});
    const int id = raw.id();
    sysv::robust_mutex m(co_await asio::this_coro::executor, std::move(raw));
    auto victim = die_holding(id, false);
    BOOST_TEST(victim.wait().killed_by(SIGKILL));
    {
        auto [ec, lock] = co_await m.async_lock_for(1h, asio::as_tuple(asio::use_awaitable));
        BOOST_TEST((ec == sysv::errc::owner_dead));
        BOOST_TEST(lock.owns_lock());
        // Held by this owner: another timed lock gives up, takes nothing, changes nothing.
        auto [busy_ec, busy] = co_await m.async_lock_for(30ms, asio::as_tuple(asio::use_awaitable));
        BOOST_TEST((busy_ec == asio::error::timed_out), busy_ec.message());
        BOOST_TEST(!busy.owns_lock());
        BOOST_TEST(lock.owner_died());
        lock.mark_consistent();
    }
    auto [ec, lock] = co_await m.async_lock_for(1h, asio::as_tuple(asio::use_awaitable));
    BOOST_TEST(!ec);
    BOOST_TEST(!lock.owner_died());
}

BOOST_AUTO_TEST_SUITE_END()
