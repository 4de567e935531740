// The backoff schedule of a wait: plain value code, no clock, no I/O.
#include <boost/test/unit_test.hpp>

#include <boost/asio.hpp>

#include <sys/sem.h>

#include <chrono>
#include <vector>

import sysv.async;

using namespace std::chrono_literals;

BOOST_AUTO_TEST_SUITE(backoff_schedule)

BOOST_AUTO_TEST_CASE(yields_then_sleeps_growing_to_the_cap) {
    sysv::backoff b;
    b.immediate_yields = 3;
    b.first_sleep = 10us;
    b.growth = 2.0;
    b.max_sleep = 50us;
    sysv::backoff_schedule s(b);
    for (int i = 0; i < 3; ++i) {
        BOOST_TEST(s.yielding());
        BOOST_TEST(s.next().count() == 0);
    }
    BOOST_TEST(!s.yielding());
    const std::chrono::nanoseconds expected[] = {10us, 20us, 40us, 50us, 50us, 50us};
    for (auto e : expected)
        BOOST_TEST(s.next().count() == e.count());
}

BOOST_AUTO_TEST_CASE(jitter_stays_within_its_fraction) {
    sysv::backoff b;
    b.immediate_yields = 0;
    b.first_sleep = 100us;
    b.max_sleep = 100us;
    b.jitter = 0.25;
    sysv::backoff_schedule s(b);
    BOOST_TEST(s.next(0.0).count() == std::chrono::nanoseconds(75us).count());
    BOOST_TEST(s.next(0.5).count() == std::chrono::nanoseconds(100us).count());
    BOOST_TEST(s.next(0.999).count() <= std::chrono::nanoseconds(125us).count());
    BOOST_TEST(s.next(0.999).count() > std::chrono::nanoseconds(124us).count());
}

BOOST_AUTO_TEST_CASE(validation_refuses_nonsense) {
    BOOST_TEST(!sysv::backoff{}.validate());
    BOOST_TEST(!sysv::backoff::latency_tuned().validate());
    BOOST_TEST(!sysv::backoff::cpu_tuned().validate());
    sysv::backoff b;
    b.growth = 0.5;
    BOOST_TEST((b.validate() == sysv::errc::invalid_argument));
    b = {};
    b.max_sleep = 1us;
    BOOST_TEST((b.validate() == sysv::errc::invalid_argument));
    b = {};
    b.jitter = 1.0;
    BOOST_TEST((b.validate() == sysv::errc::invalid_argument));
    b = {};
    b.first_sleep = 0us;
    BOOST_TEST((b.validate() == sysv::errc::invalid_argument));
}

BOOST_AUTO_TEST_CASE(snapshot_decides_what_can_proceed) {
    std::vector<int> values{1, 0, 32767};
    auto to_sembufs = [](std::initializer_list<sysv::operation> ops) {
        std::vector<sembuf> out;
        for (auto& o : ops)
            out.push_back(
                {static_cast<unsigned short>(o.index()), static_cast<short>(o.delta()), 0});
        return out;
    };
    // Taking two units from a semaphore holding one: no, and nothing changes.
    BOOST_TEST(!sysv::detail::apply_to_snapshot(values, to_sembufs({sysv::op::acquire(0, 2)})));
    BOOST_TEST((values == std::vector<int>{1, 0, 32767}));
    // A group fails as a whole and is rolled back.
    BOOST_TEST(!sysv::detail::apply_to_snapshot(
        values, to_sembufs({sysv::op::acquire(0), sysv::op::acquire(1)})));
    BOOST_TEST((values == std::vector<int>{1, 0, 32767}));
    BOOST_TEST(!sysv::detail::apply_to_snapshot(values, to_sembufs({sysv::op::release(2)})));
    BOOST_TEST(sysv::detail::apply_to_snapshot(
        values, to_sembufs({sysv::op::acquire(0), sysv::op::wait_zero(0), sysv::op::release(1)})));
    BOOST_TEST((values == std::vector<int>{0, 1, 32767}));
    BOOST_TEST(!sysv::detail::apply_to_snapshot(values, to_sembufs({sysv::op::wait_zero(1)})));
}

BOOST_AUTO_TEST_SUITE_END()
