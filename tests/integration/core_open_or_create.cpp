// semaphore_set::open_or_create: processes racing to create one set, creators that never publish
// or die before publishing, foreign objects at the key; and the sans-I/O decision it is built on
// (detail::classify_existing_set).
#include "harness.hpp"

#include <poll.h>
#include <sys/sem.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

import sysv.core;

namespace {

using sysv_test::check_thrown;

std::vector<int> ints(std::initializer_list<int> values) {
    return std::vector<int>(values);
}

using sysv_test::read_exactly;

struct raw_pipe {
    int fds[2] = {-1, -1};
    raw_pipe() {
        if (::pipe(fds) == -1)
            throw std::system_error(errno, std::generic_category(), "pipe");
    }
    raw_pipe(const raw_pipe&) = delete;
    raw_pipe& operator=(const raw_pipe&) = delete;
    ~raw_pipe() {
        close_read();
        close_write();
    }
    void close_read() {
        if (fds[0] != -1)
            ::close(std::exchange(fds[0], -1));
    }
    void close_write() {
        if (fds[1] != -1)
            ::close(std::exchange(fds[1], -1));
    }
};

// A raw set at `k` made with semget only: no SETALL, no semop (sem_otime stays 0), as left by a
// creator that has not initialised it yet.
int unpublished_set(sysv_test::ipc_guard& guard, key_t k, int nsems, int mode = 0600) {
    const int id = ::semget(k, nsems, IPC_CREAT | IPC_EXCL | mode);
    BOOST_REQUIRE_MESSAGE(id != -1, "semget: " << std::strerror(errno));
    guard.semaphore_id(id);
    return id;
}

// Publishes a raw set: one semop, so sem_otime becomes non-zero.
void publish(int id) {
    sembuf ops[2] = {{0, 1, 0}, {0, -1, 0}};
    BOOST_REQUIRE(::semop(id, ops, 2) == 0);
}

sysv::open_options short_wait() {
    return sysv::open_options{std::chrono::milliseconds(100)};
}

} // namespace

BOOST_AUTO_TEST_SUITE(core_open_or_create)

BOOST_AUTO_TEST_CASE(creates_then_opens_without_reinitialising) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    auto first = sysv::semaphore_set::open_or_create(k, {3, 7});
    guard.semaphores(first);
    BOOST_TEST(first.values() == ints({3, 7}), boost::test_tools::per_element());
    BOOST_TEST(first.stat().last_operation.has_value()); // published
    BOOST_TEST(first.stat().owner.mode == 0600u);
    first.apply(sysv::op::acquire(0).undo());

    auto second = sysv::semaphore_set::open_or_create(k, {3, 7});
    BOOST_TEST(second.id() == first.id());
    BOOST_TEST(second.size() == 2u);
    BOOST_TEST(second.values() == ints({2, 7}), boost::test_tools::per_element());

    const auto status = sysv_test::run_in_child([&] {
        auto mine = sysv::semaphore_set::open_or_create(k, {3, 7});
        SYSV_CHILD_CHECK(mine.id() == first.id());
        SYSV_CHILD_CHECK(mine.values() == ints({2, 7}));
        return 0;
    });
    BOOST_TEST(status.exited_with(0), status);
    // The opener did not SETALL: our SEM_UNDO adjustment still counts (2 + 1 on our exit).
    BOOST_TEST(first.values() == ints({2, 7}), boost::test_tools::per_element());

    sysv::error_code ec = sysv::errc::removed;
    const std::array<int, 2> values{3, 7};
    auto third = sysv::semaphore_set::open_or_create(k, values, 0600, {}, ec);
    BOOST_TEST(!ec);
    BOOST_TEST(third.id() == first.id());
}

BOOST_AUTO_TEST_CASE(private_key_always_creates) {
    sysv_test::ipc_guard guard;
    auto a = sysv::semaphore_set::open_or_create(sysv::key::private_key(), {1});
    guard.semaphores(a);
    auto b = sysv::semaphore_set::open_or_create(sysv::key::private_key(), {1});
    guard.semaphores(b);
    BOOST_TEST(a.id() != b.id());
}

// Two processes start together (released by closing a pipe) and call open_or_create on a fresh
// key. Exactly one creates: both get the same set, neither ever sees it uninitialised, and it is
// initialised once (each adds 1 to semaphore 0 after opening: a second SETALL would lose one).
// Semaphore 1 is only touched by the creator's SETALL, so GETPID on it names the creator.
BOOST_AUTO_TEST_CASE(two_processes_racing_create_exactly_one_set) {
    struct report {
        pid_t pid = 0;
        int id = -1;
        int error = 0;   // ec.value() of open_or_create, values() or apply()
        int value0 = -1; // observed right after open_or_create returned
        int value1 = -1;
        int published = 0; // stat().last_operation was set
        int size = 0;
    };
    constexpr int iterations = 200;
    int creators_seen[2] = {0, 0}; // which child created (first or second forked)
    for (int iteration = 0; iteration < iterations; ++iteration) {
        sysv_test::ipc_guard guard;
        const sysv::key k(guard.temp_key());
        raw_pipe start, results;
        auto body = [&] {
            start.close_write();
            results.close_read();
            char c = 0;
            while (::read(start.fds[0], &c, 1) == -1 && errno == EINTR) {
            } // end of file: go
            report r;
            r.pid = ::getpid();
            sysv::error_code ec;
            const std::array<int, 2> wanted{3, 7};
            auto set = sysv::semaphore_set::open_or_create(k, wanted, 0600, {}, ec);
            if (!ec) {
                r.id = set.id();
                r.size = static_cast<int>(set.size());
                const auto v = set.values(ec);
                if (v.size() == 2) {
                    r.value0 = v[0];
                    r.value1 = v[1];
                }
            }
            if (!ec) {
                const auto st = set.stat(ec);
                r.published = st.last_operation.has_value() ? 1 : 0;
            }
            if (!ec)
                set.apply(sysv::op::release(0), ec);
            r.error = ec.value();
            return ::write(results.fds[1], &r, sizeof r) == sizeof r ? 0 : 1;
        };
        sysv_test::child a(body);
        sysv_test::child b(body);
        results.close_write();
        start.close_write(); // both children see end of file at once

        report ra, rb;
        const bool got_a = read_exactly(results.fds[0], &ra, sizeof ra);
        const bool got_b = got_a && read_exactly(results.fds[0], &rb, sizeof rb);
        const auto sa = a.wait();
        const auto sb = b.wait();
        // Whatever happened, remove what exists at the key.
        const int id = ::semget(k.value(), 0, 0);
        if (id != -1)
            guard.semaphore_id(id);

        std::string problem;
        std::vector<int> final_values;
        pid_t creator = 0;
        if (!got_a || !got_b || !sa.exited_with(0) || !sb.exited_with(0))
            problem = "a child failed to report";
        else if (ra.error != 0 || rb.error != 0)
            problem = "open_or_create failed: errors " + std::to_string(ra.error) + ", " +
                      std::to_string(rb.error);
        else if (ra.id != rb.id || ra.id != id)
            problem = "different sets: " + std::to_string(ra.id) + ", " + std::to_string(rb.id) +
                      ", at the key " + std::to_string(id);
        else if (ra.size != 2 || rb.size != 2)
            problem = "wrong size";
        else if (!ra.published || !rb.published)
            problem = "a process got an unpublished set";
        else if (ra.value1 != 7 || rb.value1 != 7 || ra.value0 < 3 || ra.value0 > 4 ||
                 rb.value0 < 3 || rb.value0 > 4)
            problem = "uninitialised values seen: {" + std::to_string(ra.value0) + "," +
                      std::to_string(ra.value1) + "} and {" + std::to_string(rb.value0) + "," +
                      std::to_string(rb.value1) + "}";
        else {
            auto set = sysv::semaphore_set::open_id(id);
            final_values = set.values();
            creator = set.last_pid(1);
            if (final_values != ints({5, 7}))
                problem = "initialised twice: final values {" + std::to_string(final_values[0]) +
                          "," + std::to_string(final_values[1]) + "}";
            else if (creator != ra.pid && creator != rb.pid)
                problem = "the creator " + std::to_string(creator) + " is neither child";
            else
                ++creators_seen[a.pid() == creator ? 0 : 1];
        }
        BOOST_TEST(problem.empty(), "iteration " << iteration << ": " << problem);
        if (!problem.empty())
            break;
    }
    BOOST_TEST(creators_seen[0] + creators_seen[1] == iterations);
    BOOST_TEST_MESSAGE("the first child created " << creators_seen[0] << " times, the second "
                                                  << creators_seen[1] << " times");
}

BOOST_AUTO_TEST_CASE(an_unpublished_set_times_out_as_not_initialised) {
    sysv_test::ipc_guard guard;
    const key_t raw_key = guard.temp_key();
    const sysv::key k(raw_key);
    const int raw = unpublished_set(guard, raw_key, 2);

    sysv::error_code ec;
    const std::array<int, 2> wanted{3, 7};
    auto set = sysv::semaphore_set::open_or_create(k, wanted, 0600, short_wait(), ec);
    BOOST_TEST((ec == sysv::errc::not_initialised), ec.message());
    BOOST_TEST(!set.is_open());

    check_thrown(
        [&] {
            sysv::semaphore_set::open_or_create(k, {3, 7}, 0600, short_wait());
        },
        sysv::errc::not_initialised,
        {"semget (open or create)", sysv::to_string(k), "did not finish initialising",
         "never published", "id " + std::to_string(raw), "wanted 2 semaphore(s)"});

    // The set was left alone: not initialised, not published, not removed.
    auto existing = sysv::semaphore_set::open_id(raw);
    BOOST_TEST(existing.values() == ints({0, 0}), boost::test_tools::per_element());
    BOOST_TEST(!existing.stat().last_operation.has_value());
}

BOOST_AUTO_TEST_CASE(an_unpublished_set_whose_creator_died_is_not_initialised) {
    sysv_test::ipc_guard guard;
    const key_t raw_key = guard.temp_key();
    const sysv::key k(raw_key);
    const int raw = unpublished_set(guard, raw_key, 2);

    // The "creator" sets a value (GETPID now names it) and dies before publishing.
    sysv_test::child creator([&] {
        SYSV_CHILD_CHECK(::semctl(raw, 0, SETVAL, 3) == 0);
        return 0;
    });
    BOOST_REQUIRE(creator.wait().exited_with(0));
    BOOST_TEST(::semctl(raw, 0, GETPID) == creator.pid());
    BOOST_REQUIRE(::kill(creator.pid(), 0) == -1); // gone (reaped)

    // open_or_create notices the dead creator instead of waiting for the (here: hour-long)
    // timeout. The bound on the child is a hang detector, not a timing assertion.
    sysv_test::child opener([&] {
        sysv::error_code ec;
        const std::array<int, 2> wanted{3, 7};
        sysv::semaphore_set::open_or_create(k, wanted, 0600,
                                            sysv::open_options{std::chrono::hours(1)}, ec);
        SYSV_CHILD_CHECK(ec == sysv::errc::not_initialised);
        return 0;
    });
    const auto status = opener.wait_for(std::chrono::seconds(60));
    BOOST_TEST(status.exited_with(0), status);
    BOOST_TEST(::semctl(raw, 0, GETVAL) == 3); // not re-initialised
}

BOOST_AUTO_TEST_CASE(an_opener_waits_for_a_slow_creator_to_publish) {
    sysv_test::ipc_guard guard;
    const key_t raw_key = guard.temp_key();
    const sysv::key k(raw_key);
    const int raw = unpublished_set(guard, raw_key, 2);

    sysv_test::child opener([&] {
        const std::array<int, 2> wanted{3, 7};
        sysv::error_code ec;
        // milliseconds::max(): wait as long as it takes (must not overflow into "expired").
        auto set = sysv::semaphore_set::open_or_create(
            k, wanted, 0600, sysv::open_options{std::chrono::milliseconds::max()}, ec);
        SYSV_CHILD_CHECK(!ec);
        SYSV_CHILD_CHECK(set.id() == raw);
        SYSV_CHILD_CHECK(set.values() == ints({3, 7}));
        return 0;
    });
    // Give the opener a moment to start waiting (the test is correct either way).
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    // Now play the creator: SETALL, then publish with a semop.
    unsigned short values[2] = {3, 7};
    BOOST_REQUIRE(::semctl(raw, 0, SETALL, values) == 0);
    publish(raw);
    const auto status = opener.wait_for(std::chrono::seconds(60));
    BOOST_TEST(status.exited_with(0), status);
}

BOOST_AUTO_TEST_CASE(a_set_with_another_mode_is_foreign) {
    sysv_test::ipc_guard guard;
    const key_t raw_key = guard.temp_key();
    const sysv::key k(raw_key);
    const int raw = unpublished_set(guard, raw_key, 2, 0644);
    publish(raw);

    sysv::error_code ec;
    const std::array<int, 2> wanted{3, 7};
    sysv::semaphore_set::open_or_create(k, wanted, 0600, short_wait(), ec);
    BOOST_TEST((ec == sysv::errc::foreign_object), ec.message());
    check_thrown(
        [&] {
            sysv::semaphore_set::open_or_create(k, {3, 7});
        },
        sysv::errc::foreign_object,
        {sysv::to_string(k), "not ours", "mode 0600", "mode 0644",
         "found id " + std::to_string(raw)});
    // Asking for the mode it has opens it.
    auto set = sysv::semaphore_set::open_or_create(k, {3, 7}, 0644);
    BOOST_TEST(set.id() == raw);
    BOOST_TEST(set.values() == ints({0, 0}), boost::test_tools::per_element()); // not SETALL'd
}

BOOST_AUTO_TEST_CASE(a_set_with_another_size_is_foreign) {
    sysv_test::ipc_guard guard;
    const key_t raw_key = guard.temp_key();
    const sysv::key k(raw_key);
    const int raw = unpublished_set(guard, raw_key, 3);
    publish(raw);

    check_thrown(
        [&] {
            sysv::semaphore_set::open_or_create(k, {3, 7}, 0600, short_wait());
        },
        sysv::errc::foreign_object,
        {"wanted 2 semaphore(s)", "with 3 semaphore(s)", sysv::to_string(k)});
    // An unpublished foreign set is refused as foreign, without waiting for it.
    const key_t other_key = guard.temp_key();
    unpublished_set(guard, other_key, 1);
    sysv::error_code ec;
    const std::array<int, 2> wanted{3, 7};
    sysv::semaphore_set::open_or_create(sysv::key(other_key), wanted, 0600,
                                        sysv::open_options{std::chrono::hours(1)}, ec);
    BOOST_TEST((ec == sysv::errc::foreign_object), ec.message());
}

BOOST_AUTO_TEST_CASE(a_set_owned_by_another_user_is_foreign) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    auto theirs = sysv::semaphore_set::create(k, {3, 7});
    guard.semaphores(theirs);
    theirs.set_permissions({65534, 65534, 0600}); // given to nobody

    check_thrown(
        [&] {
            sysv::semaphore_set::open_or_create(k, {3, 7});
        },
        sysv::errc::foreign_object,
        {"owner uid " + std::to_string(::geteuid()), "owner uid 65534"});
    BOOST_TEST(theirs.values() == ints({3, 7}), boost::test_tools::per_element());

    // And a set made by an unprivileged process, seen by root: also foreign.
    const sysv::key k2(guard.temp_key());
    const auto status = sysv_test::run_in_child([&] {
        SYSV_CHILD_CHECK(::setgid(65534) == 0);
        SYSV_CHILD_CHECK(::setuid(65534) == 0);
        // The child cannot register it in the guard: it reports the id through its exit.
        sysv::semaphore_set::create(k2, {3, 7}, 0600);
        return 0;
    });
    BOOST_REQUIRE(status.exited_with(0));
    const int made = ::semget(k2.value(), 0, 0);
    BOOST_REQUIRE(made != -1);
    guard.semaphore_id(made);
    sysv::error_code ec;
    const std::array<int, 2> wanted{3, 7};
    sysv::semaphore_set::open_or_create(k2, wanted, 0600, {}, ec);
    BOOST_TEST((ec == sysv::errc::foreign_object), ec.message());
}

BOOST_AUTO_TEST_CASE(shared_memory_races_create_one_segment) {
    constexpr int iterations = 50;
    for (int iteration = 0; iteration < iterations; ++iteration) {
        sysv_test::ipc_guard guard;
        const sysv::key k(guard.temp_key());
        raw_pipe start, results;
        auto body = [&] {
            start.close_write();
            results.close_read();
            char c = 0;
            while (::read(start.fds[0], &c, 1) == -1 && errno == EINTR) {
            }
            auto segment = sysv::shared_memory::open_or_create(k, 4096);
            const int id = segment.id();
            return ::write(results.fds[1], &id, sizeof id) == sizeof id ? 0 : 1;
        };
        sysv_test::child a(body);
        sysv_test::child b(body);
        results.close_write();
        start.close_write();
        int ida = -1, idb = -1;
        const bool got = read_exactly(results.fds[0], &ida, sizeof ida) &&
                         read_exactly(results.fds[0], &idb, sizeof idb);
        const bool exited = a.wait().exited_with(0) && b.wait().exited_with(0);
        const int id = ::shmget(k.value(), 0, 0);
        if (id != -1)
            guard.memory_id(id);
        const bool ok = got && exited && ida == idb && ida == id;
        BOOST_TEST(ok,
                   "iteration " << iteration << ": ids " << ida << ", " << idb << ", key " << id);
        if (!ok)
            break;
    }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// The decision of one look at an existing set (sans-I/O)
// ---------------------------------------------------------------------------------------------

namespace {

sysv::semaphore_set_status published_status(std::size_t size = 2, mode_t mode = 0600,
                                            uid_t owner = 1000) {
    sysv::semaphore_set_status s{};
    s.ipc_key = sysv::key(0x1234);
    s.owner = {owner, 1000, mode};
    s.creator_uid = owner;
    s.creator_gid = 1000;
    s.size = size;
    s.last_operation = std::chrono::system_clock::now();
    s.last_change = std::chrono::system_clock::now();
    return s;
}

sysv::semaphore_set_status unpublished_status(std::size_t size = 2, mode_t mode = 0600,
                                              uid_t owner = 1000) {
    auto s = published_status(size, mode, owner);
    s.last_operation.reset();
    return s;
}

using sysv::detail::classify_existing_set;
using sysv::detail::open_step;

} // namespace

BOOST_AUTO_TEST_SUITE(core_classify_existing_set)

BOOST_AUTO_TEST_CASE(ours_and_published_is_ready) {
    BOOST_TEST(
        (classify_existing_set(published_status(), 2, 0600, 1000, true) == open_step::ready));
    // Once published, whether the creator still lives does not matter.
    BOOST_TEST(
        (classify_existing_set(published_status(), 2, 0600, 1000, false) == open_step::ready));
}

BOOST_AUTO_TEST_CASE(ours_unpublished_with_a_live_creator_waits) {
    BOOST_TEST(
        (classify_existing_set(unpublished_status(), 2, 0600, 1000, true) == open_step::wait));
}

BOOST_AUTO_TEST_CASE(ours_unpublished_with_a_dead_creator_is_creator_died) {
    BOOST_TEST((classify_existing_set(unpublished_status(), 2, 0600, 1000, false) ==
                open_step::creator_died));
}

BOOST_AUTO_TEST_CASE(another_owner_is_foreign) {
    BOOST_TEST((classify_existing_set(published_status(2, 0600, 1001), 2, 0600, 1000, true) ==
                open_step::foreign));
    BOOST_TEST((classify_existing_set(published_status(2, 0600, 0), 2, 0600, 1000, true) ==
                open_step::foreign));
}

BOOST_AUTO_TEST_CASE(another_creator_is_foreign_even_when_the_set_was_handed_over) {
    // Created by uid 1001, owner changed to 1000 with IPC_SET: 1001 keeps the owner's rights.
    auto handed_over = published_status(2, 0600, 1000);
    handed_over.creator_uid = 1001;
    BOOST_TEST((classify_existing_set(handed_over, 2, 0600, 1000, true) == open_step::foreign));
    handed_over.last_operation.reset();
    BOOST_TEST((classify_existing_set(handed_over, 2, 0600, 1000, true) == open_step::foreign));
}

BOOST_AUTO_TEST_CASE(another_mode_is_foreign) {
    BOOST_TEST((classify_existing_set(published_status(2, 0644), 2, 0600, 1000, true) ==
                open_step::foreign));
    BOOST_TEST((classify_existing_set(published_status(2, 0600), 2, 0660, 1000, true) ==
                open_step::foreign));
    // Only the permission bits count (the kernel keeps other flags in the same field).
    BOOST_TEST((classify_existing_set(published_status(2, 01600), 2, 0600, 1000, true) ==
                open_step::ready));
}

BOOST_AUTO_TEST_CASE(another_size_is_foreign) {
    BOOST_TEST(
        (classify_existing_set(published_status(3), 2, 0600, 1000, true) == open_step::foreign));
    BOOST_TEST(
        (classify_existing_set(published_status(1), 2, 0600, 1000, true) == open_step::foreign));
}

BOOST_AUTO_TEST_CASE(foreign_is_decided_before_waiting) {
    // A foreign set is refused at once, published or not, creator alive or dead.
    for (const bool alive : {true, false}) {
        BOOST_TEST((classify_existing_set(unpublished_status(3), 2, 0600, 1000, alive) ==
                    open_step::foreign));
        BOOST_TEST((classify_existing_set(unpublished_status(2, 0644), 2, 0600, 1000, alive) ==
                    open_step::foreign));
        BOOST_TEST((classify_existing_set(unpublished_status(2, 0600, 7), 2, 0600, 1000, alive) ==
                    open_step::foreign));
    }
}

BOOST_AUTO_TEST_SUITE_END()
