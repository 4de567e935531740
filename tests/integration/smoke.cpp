// The module is importable after Asio: a TU that includes Boost.Asio first and then imports sysv
// compiles, links and runs, and the two work together.
#include "harness.hpp"

import sysv;

BOOST_AUTO_TEST_SUITE(smoke)

BOOST_AUTO_TEST_CASE(asio_and_sysv_in_one_translation_unit) {
    boost::asio::io_context io;
    sysv_test::ipc_guard guard;
    auto set = sysv::semaphore_set::create(sysv::key::private_key(), {0});
    guard.semaphores(set);
    int observed = -1;
    boost::asio::post(io, [&] {
        set.apply(sysv::op::release(0, 3));
        observed = set.value(0);
    });
    BOOST_TEST(io.run() == 1u);
    BOOST_TEST(observed == 3);
}

BOOST_AUTO_TEST_CASE(error_codes_interoperate_with_boost_system) {
    boost::system::error_code ec = sysv::errc::removed;
    BOOST_TEST(ec.category().name() == std::string("sysv"));
    BOOST_TEST((ec == sysv::errc::removed));
    BOOST_TEST((ec != boost::asio::error::operation_aborted));
    BOOST_TEST(ec.message() == "the object was removed");
}

SYSV_CO_TEST_CASE(coroutine_test_cases_run_on_a_fresh_io_context) {
    auto executor = co_await boost::asio::this_coro::executor;
    boost::asio::steady_timer timer(executor, std::chrono::milliseconds(1));
    co_await timer.async_wait(boost::asio::use_awaitable);
    BOOST_TEST(true);
}

BOOST_AUTO_TEST_CASE(children_report_exit_codes_and_signals) {
    BOOST_TEST(sysv_test::run_in_child([] { return 7; }).exited_with(7));
    BOOST_TEST(sysv_test::run_in_child([] { ::raise(SIGKILL); }).killed_by(SIGKILL));
    BOOST_TEST(sysv_test::run_in_child([] { throw std::runtime_error("x"); }).exited_with(99));
    BOOST_TEST(sysv_test::run_in_child([] { SYSV_CHILD_CHECK(1 == 2); }).exited_with(98));
}

BOOST_AUTO_TEST_CASE(the_guard_removes_what_it_recorded_even_after_a_failure) {
    int id = -1;
    try {
        sysv_test::ipc_guard guard;
        auto set = sysv::semaphore_set::create(sysv::key(guard.temp_key()), {1});
        guard.semaphores(set);
        id = set.id();
        BOOST_TEST(sysv_test::semaphore_set_exists(id));
        throw std::runtime_error("test failure");
    } catch (const std::runtime_error&) {
    }
    BOOST_TEST(!sysv_test::semaphore_set_exists(id));
}

BOOST_AUTO_TEST_SUITE_END()
