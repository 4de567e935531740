// The asynchronous layer: waits on semaphores across processes, completion tokens,
// cancellation, removal while waiting, many waiters, threads, mutex. (The backoff schedule, plain
// value code, is tested in unit/backoff_schedule.cpp.)
#include "harness.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>

#include <atomic>
#include <cstdlib>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <random>
#include <thread>
#include <utility>
#include <vector>

import sysv.mutex;

#include "harness_ipc.hpp"

namespace asio = boost::asio;
using namespace std::chrono_literals;
using boost::system::error_code;

namespace {

/// A child that sleeps `delay` and then applies `ops` to set `id` (blocking API).
template <class... Ops>
sysv_test::child release_later(int id, std::chrono::milliseconds delay, Ops... ops) {
    return sysv_test::child([=] {
        std::this_thread::sleep_for(delay);
        auto set = sysv::semaphore_set::open_id(id);
        set.apply({ops...});
        return 0;
    });
}

/// Counts allocations made through it (to check the associated allocator is used).
template <class T>
struct counting_allocator {
    using value_type = T;
    std::shared_ptr<int> count;
    explicit counting_allocator(std::shared_ptr<int> c) : count(std::move(c)) {}
    template <class U>
    counting_allocator(const counting_allocator<U>& other) : count(other.count) {}
    T* allocate(std::size_t n) {
        ++*count;
        return std::allocator<T>().allocate(n);
    }
    void deallocate(T* p, std::size_t n) { std::allocator<T>().deallocate(p, n); }
    template <class U>
    bool operator==(const counting_allocator<U>& other) const {
        return count == other.count;
    }
};

} // namespace

BOOST_AUTO_TEST_SUITE(async_semaphores)

BOOST_AUTO_TEST_CASE(a_release_by_another_process_completes_the_wait) {
    sysv_test::ipc_guard guard;
    auto raw = sysv_test::private_set(guard, {0});
    const int id = raw.id();
    auto releaser = release_later(id, 50ms, sysv::op::release(0, 2));
    asio::io_context io;
    sysv::async_semaphore_set set(io, std::move(raw));
    bool done = false;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            co_await set.async_acquire(0, 2, asio::use_awaitable);
            done = true;
        },
        asio::detached);
    io.run(); // returns only once the wait completed: the pending wait is tracked work
    BOOST_TEST(done);
    BOOST_TEST(set.value(0) == 0);
    BOOST_TEST(releaser.wait().exited_with(0));
}

BOOST_AUTO_TEST_CASE(wait_zero_completes_when_the_value_reaches_zero) {
    sysv_test::ipc_guard guard;
    auto raw = sysv_test::private_set(guard, {2});
    auto taker = release_later(raw.id(), 30ms, sysv::op::acquire(0, 2));
    asio::io_context io;
    sysv::async_semaphore_set set(io, std::move(raw));
    error_code result = sysv::errc::not_open;
    set.async_wait_zero(0, [&](error_code ec) { result = ec; });
    io.run();
    BOOST_TEST(!result);
    BOOST_TEST(set.value(0) == 0);
    BOOST_TEST(taker.wait().exited_with(0));
}

BOOST_AUTO_TEST_CASE(a_group_is_applied_atomically_once_all_can_proceed) {
    sysv_test::ipc_guard guard;
    auto raw = sysv_test::private_set(guard, {1, 0, 0});
    const int id = raw.id();
    // Semaphore 1 arrives later; until then semaphore 0 must stay untouched.
    sysv_test::child peer([id] {
        auto s = sysv::semaphore_set::open_id(id);
        std::this_thread::sleep_for(30ms);
        SYSV_CHILD_CHECK(s.value(0) == 1);
        s.apply(sysv::op::release(1));
        return 0;
    });
    asio::io_context io;
    sysv::async_semaphore_set set(io, std::move(raw));
    error_code result = sysv::errc::not_open;
    set.async_apply({sysv::op::acquire(0), sysv::op::acquire(1), sysv::op::release(2, 5)},
                    [&](error_code ec) { result = ec; });
    io.run();
    BOOST_TEST(!result);
    BOOST_TEST((set.values() == std::vector<int>{0, 0, 5}));
    BOOST_TEST(peer.wait().exited_with(0));
}

BOOST_AUTO_TEST_CASE(the_handler_is_never_called_from_the_initiating_function) {
    sysv_test::ipc_guard guard;
    asio::io_context io;
    sysv::async_semaphore_set set(io, sysv_test::private_set(guard, {1}));
    bool called = false;
    set.async_acquire(0, [&](error_code ec) {
        BOOST_TEST(!ec);
        called = true;
    });
    BOOST_TEST(!called); // the fast path applied the semop, but completion waits for run()
    BOOST_TEST(set.value(0) == 0);
    io.run();
    BOOST_TEST(called);
}

BOOST_AUTO_TEST_CASE(errors_are_reported_through_the_handler) {
    sysv_test::ipc_guard guard;
    asio::io_context io;
    sysv::async_semaphore_set set(io, sysv_test::private_set(guard, {1}));
    std::vector<error_code> results;
    auto record = [&](error_code ec) { results.push_back(ec); };
    set.async_acquire(3, record);
    set.async_acquire(0, 0, record);
    set.async_apply(sysv::op::acquire(0), sysv::backoff{0, 0us, 2.0, 1us, 0.0}, record);
    sysv::async_semaphore_set closed(io);
    closed.async_acquire(0, record);
    io.run();
    BOOST_REQUIRE(results.size() == 4u);
    BOOST_TEST((results[0] == sysv::errc::index_out_of_range));
    BOOST_TEST((results[1] == sysv::errc::value_out_of_range));
    BOOST_TEST((results[2] == sysv::errc::invalid_argument));
    BOOST_TEST((results[3] == sysv::errc::not_open));
    BOOST_TEST(set.value(0) == 1);
}

BOOST_AUTO_TEST_CASE(every_completion_token_works) {
    sysv_test::ipc_guard guard;
    auto raw = sysv_test::private_set(guard, {0});
    auto releaser = release_later(raw.id(), 20ms, sysv::op::release(0, 4));
    asio::io_context io;
    sysv::async_semaphore_set set(io, std::move(raw));
    int completed = 0;

    // Plain callback.
    set.async_acquire(0, [&](error_code ec) { completed += !ec; });
    // deferred: nothing happens until the deferred operation is started.
    auto deferred = set.async_acquire(0, asio::deferred);
    deferred([&](error_code ec) { completed += !ec; });
    // as_tuple inside a coroutine.
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            auto [ec] = co_await set.async_acquire(0, asio::as_tuple(asio::use_awaitable));
            completed += !ec;
            // An object whose default token is use_awaitable (as_default_on).
            auto awaiting = asio::use_awaitable_t<>::as_default_on(
                sysv::async_semaphore_set(io, sysv::semaphore_set::open_id(set.id())));
            co_await awaiting.async_acquire(0);
            ++completed;
        },
        asio::detached);
    io.run();
    BOOST_TEST(completed == 4);

    // use_future, with the io_context running on another thread.
    auto again = release_later(set.id(), 20ms, sysv::op::release(0));
    auto work = asio::make_work_guard(io);
    io.restart();
    std::thread runner([&] { io.run(); });
    std::future<void> f = set.async_acquire(0, asio::use_future);
    f.wait();
    work.reset();
    runner.join(); // the promise is released on the runner thread: join before get()
    BOOST_CHECK_NO_THROW(f.get());
    BOOST_TEST(releaser.wait().exited_with(0));
    BOOST_TEST(again.wait().exited_with(0));
}

BOOST_AUTO_TEST_CASE(the_associated_allocator_is_used_for_waits) {
    sysv_test::ipc_guard guard;
    auto raw = sysv_test::private_set(guard, {0});
    auto releaser = release_later(raw.id(), 10ms, sysv::op::release(0));
    asio::io_context io;
    sysv::async_semaphore_set set(io, std::move(raw));
    auto count = std::make_shared<int>(0);
    bool done = false;
    set.async_acquire(0, asio::bind_allocator(counting_allocator<int>(count),
                                              [&](error_code ec) { done = !ec; }));
    io.run();
    BOOST_TEST(done);
    BOOST_TEST(*count >= 1);
    BOOST_TEST(releaser.wait().exited_with(0));
}

BOOST_AUTO_TEST_CASE(the_handler_runs_on_its_associated_executor) {
    sysv_test::ipc_guard guard;
    auto raw = sysv_test::private_set(guard, {0});
    auto releaser = release_later(raw.id(), 10ms, sysv::op::release(0));
    asio::io_context io;
    auto strand = asio::make_strand(io);
    sysv::async_semaphore_set set(io, std::move(raw));
    bool on_strand = false;
    set.async_acquire(0, asio::bind_executor(strand, [&](error_code) {
                          on_strand = strand.running_in_this_thread();
                      }));
    io.run();
    BOOST_TEST(on_strand);
    BOOST_TEST(releaser.wait().exited_with(0));
}

BOOST_AUTO_TEST_CASE(run_returns_once_waits_are_done_even_with_a_work_tracking_executor) {
    sysv_test::ipc_guard guard;
    auto raw = sysv_test::private_set(guard, {0});
    auto releaser = release_later(raw.id(), 20ms, sysv::op::release(0));
    asio::io_context io;
    // An executor that tracks work: the poll service must not keep it (and so run()) alive.
    auto set = std::make_unique<sysv::async_semaphore_set>(
        asio::prefer(io.get_executor(), asio::execution::outstanding_work.tracked), std::move(raw));
    std::atomic<bool> done = false; // written on the io thread, read here
    set->async_acquire(0, [&](error_code ec) {
        done = !ec;
        set.reset(); // the object (and its executor copy) go away with the last wait
    });
    std::thread watchdog_free_run([&] { io.run(); });
    BOOST_TEST(sysv_test::eventually([&] { return done.load(); }));
    BOOST_TEST(sysv_test::eventually([&] { return io.stopped(); }));
    if (!io.stopped())
        io.stop();
    watchdog_free_run.join();
    BOOST_TEST(done.load());
    BOOST_TEST(releaser.wait().exited_with(0));
}

BOOST_AUTO_TEST_CASE(apply_for_times_out_without_applying_anything) {
    sysv_test::ipc_guard guard;
    asio::io_context io;
    sysv::async_semaphore_set set(io, sysv_test::private_set(guard, {1, 0}));
    std::vector<error_code> results;
    const auto start = std::chrono::steady_clock::now();
    set.async_apply_for({sysv::op::acquire(0), sysv::op::acquire(1)}, 30ms,
                        [&](error_code ec) { results.push_back(ec); });
    set.async_apply_for(sysv::op::acquire(0), 10s, [&](error_code ec) { results.push_back(ec); });
    io.run();
    BOOST_REQUIRE(results.size() == 2u);
    BOOST_TEST(!results[0]); // the second wait completed at once (fast path)
    BOOST_TEST((results[1] == asio::error::timed_out));
    BOOST_TEST((std::chrono::steady_clock::now() - start >= 30ms)); // not early
    BOOST_TEST((set.values() == std::vector<int>{0, 0}));
}

BOOST_AUTO_TEST_CASE(every_change_through_the_async_set_wakes_local_waiters_at_once) {
    // In polling mode (no doorbells) with a 10 s backstop: only the object's own wake of its
    // context's waiters can explain a completion within the 5 s the context runs.
    using change = std::function<void(sysv::async_semaphore_set&)>;
    const std::vector<std::pair<const char*, change>> changes{
        {"try_apply", [](auto& set) { set.try_apply(sysv::op::release(0)); }},
        {"apply", [](auto& set) { set.apply(sysv::op::release(0)); }},
        {"try_apply_for", [](auto& set) { set.try_apply_for(sysv::op::release(0), 1s); }},
        {"set_value", [](auto& set) { set.set_value(0, 1); }},
        {"set_values", [](auto& set) { set.set_values({1}); }},
    };
    for (const auto& change : changes) {
        const auto& make_change = change.second;
        sysv_test::ipc_guard guard;
        auto semaphores = sysv_test::private_set(guard, {0});
        const auto status = sysv_test::run_in_child([&] {
            ::setenv("SYSV_WAIT_MODE", "polling", 1);
            asio::io_context io;
            sysv::backoff slow{0, std::chrono::microseconds(10s), 2.0,
                               std::chrono::microseconds(10s), 0.0};
            sysv::async_semaphore_set set(io, std::move(semaphores), slow);
            bool done = false;
            set.async_acquire(0, [&](error_code ec) { done = !ec; });
            asio::steady_timer t(io, 20ms);
            t.async_wait([&](error_code) { make_change(set); });
            io.run_for(5s);
            SYSV_CHILD_CHECK(sysv::wake_mode_of(io) == sysv::wake_mode::polling);
            SYSV_CHILD_CHECK(done);
            return 0;
        });
        BOOST_TEST(status.exited_with(0),
                   "the waiter was not woken at once after " << change.first);
    }
}

BOOST_AUTO_TEST_CASE(release_set_hands_the_set_back_and_aborts_the_waits) {
    sysv_test::ipc_guard guard;
    asio::io_context io;
    sysv::async_semaphore_set set(io, sysv_test::private_set(guard, {0}));
    const int id = set.id();
    error_code result;
    set.async_acquire(0, [&](error_code ec) { result = ec; });
    sysv::semaphore_set back = set.release_set();
    io.run_for(5s);
    BOOST_TEST((result == asio::error::operation_aborted));
    BOOST_TEST(!set.is_open());
    BOOST_TEST(back.id() == id);
    BOOST_TEST(back.value(0) == 0);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(async_cancellation)

BOOST_AUTO_TEST_CASE(each_cancellation_type_aborts_a_pending_wait_without_side_effects) {
    for (auto type : {asio::cancellation_type::terminal, asio::cancellation_type::partial,
                      asio::cancellation_type::total}) {
        sysv_test::ipc_guard guard;
        asio::io_context io;
        sysv::async_semaphore_set set(io, sysv_test::private_set(guard, {0, 3}));
        asio::cancellation_signal signal;
        error_code result;
        set.async_apply(
            {sysv::op::acquire(0), sysv::op::acquire(1)},
            asio::bind_cancellation_slot(signal.slot(), [&](error_code ec) { result = ec; }));
        asio::post(io, [&] { signal.emit(type); });
        io.run();
        BOOST_TEST((result == asio::error::operation_aborted));
        BOOST_TEST((set.values() == std::vector<int>{0, 3}));
        BOOST_TEST(set.pending_waits() == 0u);
    }
}

BOOST_AUTO_TEST_CASE(each_cancellation_type_aborts_a_pending_lock_of_either_mutex) {
    // The locks are composed operations: every type must reach the wait, which has taken
    // nothing when it is cancelled.
    for (auto type : {asio::cancellation_type::terminal, asio::cancellation_type::partial,
                      asio::cancellation_type::total}) {
        sysv_test::ipc_guard guard;
        asio::io_context io;
        sysv::mutex plain(io, sysv_test::private_set(guard, {0})); // held by someone
        auto robust_set = sysv_test::private_set(guard, {0, 1});   // held, count 1
        sysv::robust_mutex robust(io, std::move(robust_set), 0);
        asio::cancellation_signal a, b;
        error_code plain_result, robust_result;
        bool plain_owned = true, robust_owned = true;
        plain.async_lock(asio::bind_cancellation_slot(a.slot(), [&](error_code ec, auto lock) {
            plain_result = ec;
            plain_owned = lock.owns_lock();
        }));
        robust.async_lock(asio::bind_cancellation_slot(b.slot(), [&](error_code ec, auto lock) {
            robust_result = ec;
            robust_owned = lock.owns_lock();
        }));
        asio::steady_timer later(io, 50ms); // asleep by then
        later.async_wait([&](error_code) {
            a.emit(type);
            b.emit(type);
        });
        io.run_for(5s);
        BOOST_TEST((plain_result == asio::error::operation_aborted), static_cast<int>(type));
        BOOST_TEST((robust_result == asio::error::operation_aborted), static_cast<int>(type));
        BOOST_TEST(!plain_owned);
        BOOST_TEST(!robust_owned);
        BOOST_TEST(!plain.try_lock()); // still held by its holder: nothing was taken
    }
}

BOOST_AUTO_TEST_CASE(cancel_close_and_destruction_abort_every_wait_of_the_object) {
    sysv_test::ipc_guard guard;
    asio::io_context io;
    auto raw = sysv_test::private_set(guard, {0});
    const int id = raw.id();
    std::vector<error_code> results;
    auto record = [&](error_code ec) { results.push_back(ec); };
    sysv::async_semaphore_set a(io, std::move(raw));
    sysv::async_semaphore_set b(io, sysv::semaphore_set::open_id(id));
    a.async_acquire(0, record);
    a.async_wait_zero(0, record); // value is 0: completes by itself
    b.async_acquire(0, record);
    {
        sysv::async_semaphore_set c(io, sysv::semaphore_set::open_id(id));
        c.async_acquire(0, record);
    } // destroyed: its wait is aborted
    io.poll();
    a.cancel();
    io.poll();
    BOOST_TEST(b.pending_waits() == 1u); // only b's wait is left
    b.close();
    BOOST_TEST(!b.is_open());
    io.run();
    BOOST_REQUIRE(results.size() == 4u);
    int aborted = 0, ok = 0;
    for (auto& ec : results)
        (ec == asio::error::operation_aborted ? aborted : ok) += 1;
    BOOST_TEST(aborted == 3);
    BOOST_TEST(ok == 1);
    BOOST_TEST(a.value(0) == 0);
}

BOOST_AUTO_TEST_CASE(timeout_by_racing_a_timer) {
    using namespace asio::experimental::awaitable_operators;
    sysv_test::ipc_guard guard;
    asio::io_context io;
    sysv::async_semaphore_set set(io, sysv_test::private_set(guard, {0}));
    std::optional<std::size_t> winner;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            asio::steady_timer timer(io, 30ms);
            auto result = co_await (set.async_acquire(0, asio::use_awaitable) ||
                                    timer.async_wait(asio::use_awaitable));
            winner = result.index();
        },
        asio::detached);
    io.run();
    BOOST_REQUIRE(winner.has_value());
    BOOST_TEST(*winner == 1u); // the timer won
    BOOST_TEST(set.value(0) == 0);
    BOOST_TEST(set.pending_waits() == 0u);
}

// Another process releases units at random moments while this one keeps starting waits that
// are cancelled by a short timeout. Every released unit must be either delivered to a wait that
// reported success or still in the semaphore: none lost, none counted twice.
BOOST_AUTO_TEST_CASE(cancellation_racing_success_never_loses_a_unit) {
    using namespace asio::experimental::awaitable_operators;
    sysv_test::ipc_guard guard;
    auto raw = sysv_test::private_set(guard, {0, 0});
    const int id = raw.id();
    constexpr int units = 3000;
    sysv_test::child producer([id] {
        auto s = sysv::semaphore_set::open_id(id);
        std::minstd_rand random(42);
        for (int i = 0; i < units; ++i) {
            // One unit at a time (only once the last was taken), so the consumer keeps
            // waiting and its timeouts keep racing the releases.
            s.apply({sysv::op::wait_zero(0), sysv::op::release(0)});
            if (random() % 4 == 0)
                std::this_thread::sleep_for(std::chrono::microseconds(random() % 200));
        }
        s.apply(sysv::op::release(1)); // done
        return 0;
    });
    asio::io_context io;
    sysv::async_semaphore_set set(io, std::move(raw), sysv::backoff::latency_tuned());
    int acquired = 0, timeouts = 0;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            std::minstd_rand random(7);
            asio::steady_timer timer(io);
            for (;;) {
                timer.expires_after(std::chrono::microseconds(random() % 100));
                auto r = co_await (set.async_acquire(0, asio::use_awaitable) ||
                                   timer.async_wait(asio::use_awaitable));
                if (r.index() == 0)
                    ++acquired;
                else
                    ++timeouts;
                if (set.value(1) == 1 && set.value(0) == 0)
                    break;
            }
        },
        asio::detached);
    io.run();
    BOOST_TEST(producer.wait().exited_with(0));
    BOOST_TEST(acquired + set.value(0) == units);
    BOOST_TEST(timeouts > 0);
    BOOST_TEST_MESSAGE("acquired " << acquired << ", timeouts " << timeouts);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(async_removal)

BOOST_AUTO_TEST_CASE(removal_by_another_process_completes_every_waiter) {
    for (bool use_ipcrm : {false, true}) {
        sysv_test::ipc_guard guard;
        auto raw = sysv_test::private_set(guard, {0});
        const int id = raw.id();
        sysv_test::child remover([id, use_ipcrm] {
            std::this_thread::sleep_for(50ms);
            if (use_ipcrm) {
                const std::string sid = std::to_string(id);
                ::execlp("ipcrm", "ipcrm", "-s", sid.c_str(), static_cast<char*>(nullptr));
                return 97;
            }
            sysv::semaphore_set::open_id(id).remove();
            return 0;
        });
        asio::io_context io;
        sysv::async_semaphore_set set(io, std::move(raw));
        int removed = 0;
        for (int i = 0; i < 100; ++i)
            asio::co_spawn(
                io,
                [&]() -> asio::awaitable<void> {
                    auto [ec] = co_await set.async_acquire(0, asio::as_tuple(asio::use_awaitable));
                    removed += ec == sysv::errc::removed;
                },
                asio::detached);
        const auto handlers = io.run(); // returns: nothing keeps polling a removed set
        BOOST_TEST(removed == 100);
        BOOST_TEST(set.pending_waits() == 0u);
        BOOST_TEST(handlers < 2000u); // no spinning after the removal
        BOOST_TEST(remover.wait().exited_with(0));
    }
}

BOOST_AUTO_TEST_CASE(removal_by_this_process_completes_waiters_at_once) {
    sysv_test::ipc_guard guard;
    asio::io_context io;
    sysv::backoff slow{0, std::chrono::microseconds(10s), 2.0, std::chrono::microseconds(10s), 0.0};
    sysv::async_semaphore_set set(io, sysv_test::private_set(guard, {0}), slow);
    error_code result;
    set.async_acquire(0, [&](error_code ec) { result = ec; });
    asio::post(io, [&] { set.remove(); });
    io.run_for(5s);
    BOOST_TEST((result == sysv::errc::removed));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(async_scale)

BOOST_AUTO_TEST_CASE(ten_thousand_waiters_on_one_thread_all_complete) {
    constexpr int waiters = 10000;
    sysv_test::ipc_guard guard;
    auto raw = sysv_test::private_set(guard, {0});
    const int id = raw.id();
    sysv_test::child releaser([id] {
        auto s = sysv::semaphore_set::open_id(id);
        std::this_thread::sleep_for(100ms);
        for (int i = 0; i < waiters; i += 1000)
            s.apply(sysv::op::release(0, 1000));
        return 0;
    });
    asio::io_context io;
    sysv::async_semaphore_set set(io, std::move(raw));
    int completed = 0;
    for (int i = 0; i < waiters; ++i)
        set.async_acquire(0, [&](error_code ec) { completed += !ec; });
    io.run();
    BOOST_TEST(completed == waiters);
    BOOST_TEST(set.value(0) == 0);
    BOOST_TEST(releaser.wait().exited_with(0));
}

BOOST_AUTO_TEST_CASE(two_threads_and_a_strand) {
    constexpr int rounds = 2000;
    sysv_test::ipc_guard guard;
    asio::io_context io(2);
    auto strand = asio::make_strand(io);
    // Two coroutines on one strand pass a token back and forth through two semaphores, while
    // a third on the plain executor keeps releasing and acquiring another one.
    sysv::async_semaphore_set set(strand, sysv_test::private_set(guard, {0, 0, 0}));
    sysv::async_semaphore_set other(io.get_executor(), sysv::semaphore_set::open_id(set.id()));
    int ping = 0, pong = 0, spins = 0;
    asio::co_spawn(
        strand,
        [&]() -> asio::awaitable<void> {
            for (int i = 0; i < rounds; ++i) {
                set.try_apply(sysv::op::release(1));
                co_await set.async_acquire(0, asio::use_awaitable);
                ++ping;
            }
        },
        asio::detached);
    asio::co_spawn(
        strand,
        [&]() -> asio::awaitable<void> {
            for (int i = 0; i < rounds; ++i) {
                co_await set.async_acquire(1, asio::use_awaitable);
                ++pong;
                set.try_apply(sysv::op::release(0));
            }
        },
        asio::detached);
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            for (int i = 0; i < rounds; ++i) {
                other.try_apply(sysv::op::release(2));
                co_await other.async_acquire(2, asio::use_awaitable);
                ++spins;
            }
        },
        asio::detached);
    std::thread second([&] { io.run(); });
    io.run();
    second.join();
    BOOST_TEST(ping == rounds);
    BOOST_TEST(pong == rounds);
    BOOST_TEST(spins == rounds);
    BOOST_TEST((set.values() == std::vector<int>{0, 0, 0}));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(async_mutex)

SYSV_CO_TEST_CASE(the_guard_releases_on_scope_exit_and_exceptions) {
    sysv_test::ipc_guard guard;
    sysv::mutex m(co_await asio::this_coro::executor, sysv_test::private_set(guard, {1}));
    {
        auto lock = co_await m.async_lock(asio::use_awaitable);
        BOOST_TEST(lock.owns_lock());
        BOOST_TEST(m.is_locked());
        BOOST_TEST(!m.try_lock());
    }
    BOOST_TEST(!m.is_locked());
    try {
        auto lock = co_await m.async_lock(asio::use_awaitable);
        throw std::runtime_error("inside the critical section");
    } catch (const std::runtime_error&) {
    }
    BOOST_TEST(!m.is_locked());
    BOOST_TEST(m.try_lock());
    m.unlock();
    BOOST_TEST(!m.is_locked());
}

BOOST_AUTO_TEST_CASE(a_cancelled_coroutine_releases_its_lock) {
    using namespace asio::experimental::awaitable_operators;
    sysv_test::ipc_guard guard;
    asio::io_context io;
    sysv::mutex m(io, sysv_test::private_set(guard, {1}));
    // The holder keeps the lock until its coroutine is cancelled by a timer race.
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            asio::steady_timer forever(io, 1h), timeout(io, 20ms);
            auto holding = [&]() -> asio::awaitable<void> {
                auto lock = co_await m.async_lock(asio::use_awaitable);
                co_await forever.async_wait(asio::use_awaitable);
            };
            co_await (holding() || timeout.async_wait(asio::use_awaitable));
        },
        asio::detached);
    bool second = false;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            auto lock = co_await m.async_lock(asio::use_awaitable);
            second = true;
        },
        asio::detached);
    io.run();
    BOOST_TEST(second);
    BOOST_TEST(!m.is_locked());
}

BOOST_AUTO_TEST_CASE(a_holder_killed_with_sigkill_releases_the_lock) {
    sysv_test::ipc_guard guard;
    auto raw = sysv_test::private_set(guard, {1, 0});
    const int id = raw.id();
    sysv_test::child holder([id] {
        asio::io_context io;
        sysv::mutex m(io, sysv::semaphore_set::open_id(id));
        asio::co_spawn(
            io,
            [&]() -> asio::awaitable<void> {
                auto lock = co_await m.async_lock(asio::use_awaitable);
                m.semaphores().try_apply(sysv::op::release(1)); // "I hold it"
                asio::steady_timer forever(io, std::chrono::hours(1));
                co_await forever.async_wait(asio::use_awaitable);
            },
            asio::detached);
        io.run();
        return 1;
    });
    asio::io_context io;
    sysv::mutex m(io, std::move(raw));
    bool locked = false;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            co_await m.semaphores().async_acquire(1, asio::use_awaitable);
            BOOST_TEST(m.is_locked());
            BOOST_TEST(!m.try_lock());
            holder.kill(SIGKILL);
            auto lock = co_await m.async_lock(asio::use_awaitable);
            locked = lock.owns_lock();
        },
        asio::detached);
    io.run();
    BOOST_TEST(locked);
    BOOST_TEST(holder.wait().killed_by(SIGKILL));
    BOOST_TEST(!m.is_locked());
}

SYSV_CO_TEST_CASE(a_timed_lock_gives_up_at_its_deadline_having_taken_nothing) {
    sysv_test::ipc_guard guard;
    sysv::mutex m(co_await asio::this_coro::executor, sysv_test::private_set(guard, {1}));
    BOOST_TEST(m.try_lock()); // held (by this process: the wait below cannot take it)
    const auto start = std::chrono::steady_clock::now();
    auto [ec, lock] = co_await m.async_lock_for(50ms, asio::as_tuple(asio::use_awaitable));
    BOOST_TEST((ec == asio::error::timed_out), ec.message());
    BOOST_TEST(!lock.owns_lock());
    BOOST_TEST((std::chrono::steady_clock::now() - start >= 50ms)); // not before its deadline
    BOOST_TEST(m.semaphores().value(0) == 0); // still held once, by the try_lock
    m.unlock();
    BOOST_TEST(!m.is_locked());
    // Free: taken at once, and released by its guard.
    {
        auto [free_ec, free_lock] =
            co_await m.async_lock_for(1h, asio::as_tuple(asio::use_awaitable));
        BOOST_TEST(!free_ec);
        BOOST_TEST(free_lock.owns_lock());
        BOOST_TEST(m.is_locked());
    }
    BOOST_TEST(!m.is_locked());
}

SYSV_CO_TEST_CASE(a_timed_lock_released_by_another_process_in_time_is_taken) {
    sysv_test::ipc_guard guard;
    auto set =
        sysv_test::private_set(guard, {0}); // held by "another process" until the child releases it
    const int id = set.id();
    sysv::mutex m(co_await asio::this_coro::executor, std::move(set));
    auto releaser = release_later(id, 30ms, sysv::op::release(0));
    auto [ec, lock] = co_await m.async_lock_for(1h, asio::as_tuple(asio::use_awaitable));
    BOOST_TEST(!ec);
    BOOST_TEST(lock.owns_lock());
    BOOST_TEST(releaser.wait().exited_with(0));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(async_open)

BOOST_AUTO_TEST_CASE(creates_or_opens_without_blocking) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    asio::io_context io;
    std::vector<int> ids;
    bool called_inline = true;
    for (int i = 0; i < 2; ++i) {
        sysv::async_open_or_create(io.get_executor(), k, std::vector<int>{2, 5},
                                   [&](error_code ec, sysv::semaphore_set set) {
                                       BOOST_TEST(!ec);
                                       guard.semaphores(set);
                                       ids.push_back(set.id());
                                       BOOST_TEST((set.values() == std::vector<int>{2, 5}));
                                   });
        called_inline = ids.size() > static_cast<std::size_t>(i);
    }
    BOOST_TEST(!called_inline);
    io.run();
    BOOST_REQUIRE(ids.size() == 2u);
    BOOST_TEST(ids[0] == ids[1]);
}

BOOST_AUTO_TEST_CASE(waits_asynchronously_for_the_creator_to_publish) {
    sysv_test::ipc_guard guard;
    const key_t k = guard.temp_key();
    // A "creator" that made the set but publishes only later (as a slow creator would).
    const int id = ::semget(k, 1, IPC_CREAT | IPC_EXCL | 0600);
    BOOST_REQUIRE(id != -1);
    guard.semaphore_id(id);
    asio::io_context io;
    std::optional<error_code> result;
    int timer_ticks = 0;
    sysv::async_open_or_create(io.get_executor(), sysv::key(k), std::vector<int>{1}, 0600,
                               sysv::open_options{2000ms, 1000us},
                               [&](error_code ec, sysv::semaphore_set set) {
                                   result = ec;
                                   BOOST_TEST(set.id() == id);
                               });
    // The thread is not blocked: a timer on the same io_context keeps ticking, and publishes.
    asio::steady_timer t(io);
    std::function<void()> tick = [&] {
        t.expires_after(5ms);
        t.async_wait([&](error_code) {
            if (++timer_ticks == 5) {
                sembuf publish[2] = {{0, 1, 0}, {0, -1, 0}};
                ::semop(id, publish, 2);
            }
            if (!result)
                tick();
        });
    };
    tick();
    io.run();
    BOOST_REQUIRE(result.has_value());
    BOOST_TEST(!*result);
    BOOST_TEST(timer_ticks >= 5);
}

BOOST_AUTO_TEST_CASE(an_unpublished_set_times_out_and_cancellation_aborts) {
    sysv_test::ipc_guard guard;
    const key_t k = guard.temp_key();
    const int id = ::semget(k, 1, IPC_CREAT | IPC_EXCL | 0600);
    BOOST_REQUIRE(id != -1);
    guard.semaphore_id(id);
    asio::io_context io;
    std::vector<error_code> results;
    sysv::async_open_or_create(io.get_executor(), sysv::key(k), std::vector<int>{1}, 0600,
                               sysv::open_options{50ms, 1000us},
                               [&](error_code ec, sysv::semaphore_set) { results.push_back(ec); });
    asio::cancellation_signal signal;
    sysv::async_open_or_create(
        io.get_executor(), sysv::key(k), std::vector<int>{1}, 0600, sysv::open_options{10s, 1ms},
        asio::bind_cancellation_slot(
            signal.slot(), [&](error_code ec, sysv::semaphore_set) { results.push_back(ec); }));
    asio::steady_timer t(io, 10ms);
    t.async_wait([&](error_code) { signal.emit(asio::cancellation_type::partial); });
    io.run();
    BOOST_REQUIRE(results.size() == 2u);
    BOOST_TEST((results[0] == asio::error::operation_aborted));
    BOOST_TEST((results[1] == sysv::errc::not_initialised));
}

BOOST_AUTO_TEST_SUITE_END()
