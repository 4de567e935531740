// A process killed (SIGKILL) at every named step of the library's protocols: semaphore set
// creation, channel open, join, send, receive, reap and leave. For each step a forked child arms
// that crash point and runs a scenario that reaches it; the parent then checks what a survivor
// relies on: the lock is free, no partial message is visible, the dead reader's slot is
// reclaimed and reported at most once, the member count is right, the next joiner works, and the
// last one out leaves nothing behind. A victim killed holding the lock leaves it held: the
// survivor's next operation takes it over from the dead holder. The test walks
// every sysv::detail::crash_point (crash_point_count), and the scenario switch has no default: a
// new step without a crash test does not compile.
#include "harness.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>

#include <string>

import sysv.channel;

using sysv_test::run_coroutine;

namespace asio = boost::asio;
using namespace std::chrono_literals;
using boost::system::error_code;
using sysv::detail::crash_point;

#ifdef SYSV_CRASH_POINTS

namespace {

enum class scenario {
    creator,     ///< the child creates the room (set and channel open)
    member,      ///< the child joins a room the survivor is in, sends, receives, reaps, leaves
    last_member, ///< the child is alone in the room and leaves it (removing it)
    stealer,     ///< as member, but the lock is held by a dead process: the child takes it over
};

scenario scenario_of(crash_point point) {
    switch (point) {
    case crash_point::set_created:
    case crash_point::set_initialised:
    case crash_point::channel_open_locked:
    case crash_point::channel_open_initialised:
        return scenario::creator;
    case crash_point::channel_join_slot_taken:
    case crash_point::channel_join_entry_written:
    case crash_point::channel_send_locked:
    case crash_point::channel_send_dirty:
    case crash_point::ring_append_written:
    case crash_point::channel_send_published:
    case crash_point::channel_send_unlocking:
    case crash_point::channel_unlocked:
    case crash_point::channel_receive_locked:
    case crash_point::channel_receive_read:
    case crash_point::ring_unlocked_copied:
    case crash_point::ring_sleeper_counted:
    case crash_point::channel_reap_locked:
    case crash_point::channel_leave_locked:
    case crash_point::channel_leave_entry_cleared:
        return scenario::member;
    case crash_point::channel_leave_removing:
        return scenario::last_member;
    case crash_point::channel_lock_sleeper_marked:
    case crash_point::channel_lock_stolen:
        return scenario::stealer;
    }
    throw std::logic_error("unknown crash point");
}

sysv::channel_options options() {
    sysv::channel_options o;
    o.shape.max_readers = 4;
    o.shape.max_message_size = 128;
    o.shape.capacity = 4096;
    o.open.initialisation_timeout = 300ms; // a creator killed before publishing is replaced soon
    return o;
}

const std::string victim_text = "from the victim";

/// The child: arms `point`, then goes through its scenario; it should die on the way.
int victim(crash_point point, sysv::key k) {
    sysv::detail::arm_crash_point(point);
    return run_coroutine([&](asio::io_context& io) -> asio::awaitable<void> {
        using namespace asio::experimental::awaitable_operators;
        auto ch = sysv::channel::open_or_create(io.get_executor(), k, options());
        co_await ch.async_join("victim", asio::use_awaitable);
        co_await ch.async_send(asio::buffer(victim_text), asio::use_awaitable);
        co_await ch.async_receive(asio::use_awaitable);    // its own message, without the lock
        asio::steady_timer timeout(io, 50ms);              // nothing more: the locked path, then
        co_await (ch.async_receive(asio::use_awaitable) || // a sleep the timer ends
                  timeout.async_wait(asio::use_awaitable));
        co_await ch.async_reap_lost(asio::use_awaitable);
        co_await ch.async_leave(asio::use_awaitable);
    });
}

bool nothing_at(sysv::key k) {
    return ::semget(k.value(), 0, 0) == -1 && errno == ENOENT && ::shmget(k.value(), 0, 0) == -1 &&
           errno == ENOENT;
}

/// What a survivor relies on after the crash, checked through a channel it has joined.
asio::awaitable<void> check_survivor(sysv::channel& ch, const std::string& point_name) {
    BOOST_TEST_CONTEXT("crash point " << point_name) {
        // The lock is free (the send completes) and only whole messages are visible: the
        // victim's message whole, or not at all, then ours.
        const std::string after = "after the crash";
        co_await ch.async_send(asio::buffer(after), asio::use_awaitable);
        for (;;) {
            auto [ec, m] = co_await ch.async_receive(asio::as_tuple(asio::use_awaitable));
            BOOST_REQUIRE(!ec);
            const std::string text(m.text());
            if (text == after)
                break;
            BOOST_TEST(text == victim_text);
        }
        // The dead reader's slot is reclaimed, and reported at most once.
        auto lost = co_await ch.async_reap_lost(asio::use_awaitable);
        BOOST_TEST(lost.size() <= 1u);
        for (const auto& member : lost)
            BOOST_TEST(member.label == "victim");
        BOOST_TEST((co_await ch.async_reap_lost(asio::use_awaitable)).empty());
        auto members = co_await ch.async_members(asio::use_awaitable);
        BOOST_REQUIRE(members.size() == 1u);
        BOOST_TEST(members[0].label == "survivor");
        BOOST_TEST(ch.semaphores().value(2) == 1); // the member count: the survivor only
        // The last one out removes the room.
        BOOST_TEST(co_await ch.async_leave(asio::use_awaitable));
    }
}

} // namespace

BOOST_AUTO_TEST_SUITE(crash_points)

BOOST_AUTO_TEST_CASE(a_process_killed_at_any_step_leaves_a_channel_the_others_can_use) {
    for (std::size_t i = 0; i < sysv::detail::crash_point_count; ++i) {
        const auto point = static_cast<crash_point>(i);
        const std::string name(sysv::detail::crash_point_name(point));
        BOOST_TEST_MESSAGE("crash point " << name);
        sysv_test::ipc_guard guard;
        const sysv::key k(guard.temp_key());
        const int rc = run_coroutine([&](asio::io_context& io) -> asio::awaitable<void> {
            std::optional<sysv::channel> ch;
            auto open = [&] {
                ch.emplace(sysv::channel::open_or_create(io.get_executor(), k, options()));
                guard.semaphore_id(ch->semaphores().id());
                guard.memory_id(ch->segment().id());
            };
            const auto kind = scenario_of(point);
            if (kind == scenario::member || kind == scenario::stealer) {
                open();
                co_await ch->async_join("survivor", asio::use_awaitable);
            }
            if (kind == scenario::stealer) {
                // A process that died holding the lock (its pid is free, nobody releases it).
                sysv_test::child dead([] { return 0; });
                BOOST_REQUIRE(dead.wait().exited_with(0));
                auto memory = ch->segment().attach();
                BOOST_REQUIRE(sysv::ring::lock_word(memory.bytes())
                                  .try_lock(sysv::ring::lock_identity(
                                      static_cast<std::uint32_t>(dead.pid()), 1)));
            }
            sysv_test::child child([&] { return victim(point, k); });
            const auto status = child.wait_for(20s);
            BOOST_TEST_CONTEXT("crash point " << name) {
                BOOST_TEST(status.killed_by(SIGKILL),
                           "the scenario did not reach the crash point (" << status << ")");
            }
            if (kind == scenario::creator ||
                kind == scenario::last_member) { // the next joiner of what the victim left
                open();
                co_await ch->async_join("survivor", asio::use_awaitable);
            }
            co_await check_survivor(*ch, name);
        });
        BOOST_TEST(rc == 0, "crash point " << name);
        BOOST_TEST(nothing_at(k), "crash point " << name << ": objects left at the key");
    }
}

BOOST_AUTO_TEST_SUITE_END()

#else

BOOST_AUTO_TEST_SUITE(crash_points)
BOOST_AUTO_TEST_CASE(built_without_crash_points, *boost::unit_test::disabled()) {}
BOOST_AUTO_TEST_SUITE_END()

#endif
