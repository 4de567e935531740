// sysv::channel when its objects are removed or its segment is rewritten under it, with real
// processes and the real `ipcrm`: every member learns it (errc::removed, errc::corrupt_segment),
// a joiner never pairs objects of different generations, and no count read from the segment is
// believed unless the ring could have produced it.
#include "harness.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>

#include <cstdlib>
#include <cstring>
#include <string>

import sysv.channel;

#include "harness_ipc.hpp"

using sysv_test::barrier;
using sysv_test::run_coroutine;

#include "channel_lock.hpp"

namespace asio = boost::asio;
using namespace std::chrono_literals;
using boost::system::error_code;

namespace {

/// Exit codes of a member process: how its channel operation ended.
enum outcome : int {
    removed = 10,
    corrupt = 11,
    other_error = 12,
    absurd_count = 13,
    threw = 97,
    timed_out = 96
};

int outcome_of(const error_code& ec) {
    if (ec == sysv::errc::removed)
        return removed;
    if (ec == sysv::errc::corrupt_segment)
        return corrupt;
    std::fprintf(stderr, "pid %d: unexpected error %s\n", ::getpid(), ec.message().c_str());
    return other_error;
}

sysv::channel_options small_channel() {
    sysv::channel_options o;
    o.shape.max_readers = 8;
    o.shape.max_message_size = 256;
    o.shape.capacity = 16 * 1024;
    return o;
}

/// A member that joins, then receives until an operation fails; its exit code says how. A
/// messages_missed count larger than the ring could hold is reported as absurd_count.
int receiving_member(sysv::key k, barrier& ready, const char* name) {
    return run_coroutine([&](asio::io_context& io) -> asio::awaitable<int> {
        auto ch = sysv::channel::open_or_create(io.get_executor(), k, small_channel());
        co_await ch.async_join(name, asio::use_awaitable);
        ready.arrive_and_wait();
        for (;;) {
            auto [ec, m] = co_await ch.async_receive(asio::as_tuple(asio::use_awaitable));
            if (ec == sysv::errc::messages_missed) {
                if (m.missed > small_channel().shape.capacity / sysv::ring::record_header_size)
                    co_return absurd_count;
                continue;
            }
            if (ec)
                co_return outcome_of(ec);
        }
    });
}

/// A process that sends every few milliseconds (without joining as a reader) until a send
/// fails.
int sending_member(sysv::key k, barrier& ready) {
    return run_coroutine([&](asio::io_context& io) -> asio::awaitable<int> {
        auto ch = sysv::channel::open_or_create(io.get_executor(), k, small_channel());
        ready.arrive_and_wait();
        asio::steady_timer pause(io);
        for (int i = 0;; ++i) {
            const std::string text = "tick " + std::to_string(i);
            auto [ec] =
                co_await ch.async_send(asio::buffer(text), asio::as_tuple(asio::use_awaitable));
            if (ec)
                co_return outcome_of(ec);
            pause.expires_after(5ms);
            co_await pause.async_wait(asio::use_awaitable);
        }
    });
}

/// Creates the channel at `k`, records its objects in `guard`, and returns their ids; the
/// creating object is gone when this returns (the test process is not attached).
std::pair<int, int> create_channel(sysv_test::ipc_guard& guard, sysv::key k) {
    asio::io_context io;
    auto ch = sysv::channel::open_or_create(io.get_executor(), k, small_channel());
    guard.semaphore_id(ch.semaphores().id());
    guard.memory_id(ch.segment().id());
    return {ch.semaphores().id(), ch.segment().id()};
}

bool nothing_at(sysv::key k) {
    return ::semget(k.value(), 0, 0) == -1 && errno == ENOENT && ::shmget(k.value(), 0, 0) == -1 &&
           errno == ENOENT;
}

void ipcrm(const std::string& args) {
    BOOST_REQUIRE_EQUAL(std::system(("ipcrm " + args).c_str()), 0);
}

/// Writes `value` into the channel's segment at `offset`, as a hostile process would.
template <class T>
void poke(int segment_id, std::size_t offset, T value) {
    auto memory = sysv::shared_memory::open_id(segment_id).attach();
    std::memcpy(memory.bytes().data() + offset, &value, sizeof value);
}
template <class T>
T peek(int segment_id, std::size_t offset) {
    auto memory = sysv::shared_memory::open_id(segment_id).attach(sysv::access::read_only);
    T value;
    std::memcpy(&value, memory.bytes().data() + offset, sizeof value);
    return value;
}

} // namespace

BOOST_AUTO_TEST_SUITE(channel_faults)

BOOST_AUTO_TEST_CASE(ipcrm_of_the_set_ends_every_member_and_takes_the_segment_with_it) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    const auto [set_id, segment_id] = create_channel(guard, k);
    barrier ready(guard, 3);
    sysv_test::child reader([&] { return receiving_member(k, ready, "reader"); });
    sysv_test::child sender([&] { return sending_member(k, ready); });
    ready.arrive_and_wait();
    std::this_thread::sleep_for(50ms);
    ipcrm("-s " + std::to_string(set_id));
    BOOST_TEST(reader.wait_for(10s).exited_with(removed));
    BOOST_TEST(sender.wait_for(10s).exited_with(removed));
    // A member that learnt of the removal removed the segment too: the room is gone whole.
    BOOST_TEST(!sysv_test::segment_exists(segment_id));
    BOOST_TEST(nothing_at(k));
}

BOOST_AUTO_TEST_CASE(a_member_that_only_waits_notices_that_the_segment_was_removed) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    const auto [set_id, segment_id] = create_channel(guard, k);
    barrier ready(guard, 2);
    sysv_test::child reader([&] { return receiving_member(k, ready, "reader"); });
    ready.arrive_and_wait();
    std::this_thread::sleep_for(50ms);
    ipcrm("-m " + std::to_string(segment_id));
    BOOST_TEST(reader.wait_for(10s).exited_with(removed));
    BOOST_TEST(!sysv_test::semaphore_set_exists(set_id)); // the set went with it
    BOOST_TEST(!sysv_test::segment_exists(segment_id));
    BOOST_TEST(nothing_at(k));
}

BOOST_AUTO_TEST_CASE(a_send_whose_check_finds_the_segment_removed_fails_and_says_so) {
    // With nobody else to tell it, a sender learns of an `ipcrm -m` from the check it makes
    // every 100 ms. That send must fail with errc::removed: it once went on into the removed
    // segment, reported success, and the next send said "not open".
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    int set_id = -1;
    const int rc = run_coroutine([&](asio::io_context& io) -> asio::awaitable<int> {
        auto ch = sysv::channel::open_or_create(io.get_executor(), k, small_channel());
        set_id = ch.semaphores().id();
        guard.semaphore_id(set_id);
        guard.memory_id(ch.segment().id());
        const std::string before = "before";
        co_await ch.async_send(asio::buffer(before), asio::use_awaitable);
        ipcrm("-m " + std::to_string(ch.segment().id()));
        asio::steady_timer pause(io);
        pause.expires_after(150ms); // the next send's check is due
        co_await pause.async_wait(asio::use_awaitable);
        const std::string text = "into a removed room";
        auto [ec] = co_await ch.async_send(asio::buffer(text), asio::as_tuple(asio::use_awaitable));
        BOOST_TEST((ec == sysv::errc::removed), "the send completed with: " << ec.message());
        co_return 0;
    });
    BOOST_TEST(rc == 0);
    BOOST_TEST(!sysv_test::semaphore_set_exists(set_id)); // the set went with it
    BOOST_TEST(nothing_at(k));
}

BOOST_AUTO_TEST_CASE(a_joiner_after_ipcrm_of_the_segment_never_pairs_it_with_the_old_set) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    const auto [set_id, segment_id] = create_channel(guard, k);
    barrier ready(guard, 3);
    sysv_test::child reader([&] { return receiving_member(k, ready, "reader"); });
    sysv_test::child sender([&] { return sending_member(k, ready); });
    ready.arrive_and_wait();
    std::this_thread::sleep_for(50ms);
    ipcrm("-m " + std::to_string(segment_id));
    // At once, before the members noticed: a newcomer must get a whole new room.
    const int rc = run_coroutine([&](asio::io_context& io) -> asio::awaitable<int> {
        auto ch = sysv::channel::open_or_create(io.get_executor(), k, small_channel());
        guard.semaphore_id(ch.semaphores().id());
        guard.memory_id(ch.segment().id());
        BOOST_TEST(ch.semaphores().id() != set_id);
        BOOST_TEST(ch.segment().id() != segment_id);
        co_await ch.async_join("newcomer", asio::use_awaitable);
        auto members = co_await ch.async_members(asio::use_awaitable);
        BOOST_TEST(members.size() == 1u); // nobody of the old room
        const std::string hello = "a fresh room";
        co_await ch.async_send(asio::buffer(hello), asio::use_awaitable);
        auto m = co_await ch.async_receive(asio::use_awaitable);
        BOOST_TEST(std::string(m.text()) == hello);
        BOOST_TEST(co_await ch.async_leave(asio::use_awaitable)); // the last one removes it
        co_return 0;
    });
    BOOST_TEST(rc == 0);
    BOOST_TEST(reader.wait_for(10s).exited_with(removed));
    BOOST_TEST(sender.wait_for(10s).exited_with(removed));
    BOOST_TEST(!sysv_test::semaphore_set_exists(set_id));
    BOOST_TEST(nothing_at(k));
}

BOOST_AUTO_TEST_CASE(a_joiner_after_ipcrm_of_the_set_never_pairs_the_old_segment_with_a_new_set) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    const auto [set_id, segment_id] = create_channel(guard, k);
    barrier ready(guard, 2);
    // A member that stays attached without touching the channel: the old segment lives on.
    sysv_test::child idle([&] {
        asio::io_context io;
        auto ch = sysv::channel::open_or_create(io.get_executor(), k, small_channel());
        ready.arrive_and_wait();
        ::pause();
        return 0;
    });
    ready.arrive_and_wait();
    ipcrm("-s " + std::to_string(set_id));
    const int rc = run_coroutine([&](asio::io_context& io) -> asio::awaitable<int> {
        auto ch = sysv::channel::open_or_create(io.get_executor(), k, small_channel());
        guard.semaphore_id(ch.semaphores().id());
        guard.memory_id(ch.segment().id());
        BOOST_TEST(ch.semaphores().id() != set_id);
        BOOST_TEST(ch.segment().id() != segment_id);
        co_await ch.async_join("newcomer", asio::use_awaitable);
        BOOST_TEST(co_await ch.async_leave(asio::use_awaitable));
        co_return 0;
    });
    BOOST_TEST(rc == 0);
    // The stale segment was marked for removal: it goes when its last user detaches.
    BOOST_TEST(sysv::shared_memory::open_id(segment_id).stat().marked_for_removal);
    idle.kill();
    idle.wait();
    BOOST_TEST(!sysv_test::segment_exists(segment_id));
    BOOST_TEST(nothing_at(k));
}

BOOST_AUTO_TEST_CASE(a_header_rewritten_with_plausible_values_is_corruption_not_a_new_shape) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    const auto [set_id, segment_id] = create_channel(guard, k);
    barrier ready(guard, 2);
    sysv_test::child reader([&] { return receiving_member(k, ready, "reader"); });
    ready.arrive_and_wait();
    // Fewer readers, a ring larger by their table entries: the segment size still checks.
    namespace off = sysv::ring::offsets;
    const auto shape = small_channel().shape;
    poke<std::uint32_t>(segment_id, off::max_readers, 4);
    poke<std::uint64_t>(segment_id, off::capacity, shape.capacity + 4 * off::entry_size);
    const int rc = run_coroutine([&](asio::io_context& io) -> asio::awaitable<int> {
        auto ch = sysv::channel::open_or_create(io.get_executor(), k, small_channel());
        BOOST_FAIL("a channel whose header changed shape was opened");
        co_return 1;
    });
    BOOST_TEST(rc == threw); // open_or_create: errc::foreign_object (another shape)
    BOOST_TEST(reader.wait_for(10s).exited_with(corrupt)); // the member is told, not misled
    (void)set_id;
}

BOOST_AUTO_TEST_CASE(forged_sequences_are_corruption_never_an_impossible_missed_count) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    const auto [set_id, segment_id] = create_channel(guard, k);
    barrier ready(guard, 2);
    sysv_test::child reader([&] { return receiving_member(k, ready, "reader"); });
    ready.arrive_and_wait();
    // Head and tail sequences pushed far ahead together: consistent with each other, but the
    // reader would have "missed" 2^63 messages that the ring's bytes could never have held.
    namespace off = sysv::ring::offsets;
    const std::uint64_t shift = std::uint64_t(1) << 63;
    {
        auto memory = sysv::shared_memory::open_id(segment_id).attach();
        sysv_test::lock_channel(memory.bytes()); // as a writer would: under the channel's lock
        poke<std::uint64_t>(segment_id, off::head_seq,
                            peek<std::uint64_t>(segment_id, off::head_seq) + shift);
        poke<std::uint64_t>(segment_id, off::tail_seq,
                            peek<std::uint64_t>(segment_id, off::tail_seq) + shift);
        sysv_test::unlock_channel(memory.bytes());
    }
    const int rc = run_coroutine([&](asio::io_context& io) -> asio::awaitable<int> {
        auto ch = sysv::channel::open_or_create(io.get_executor(), k, small_channel());
        const std::string text = "wake up";
        co_await ch.async_send(asio::buffer(text), asio::use_awaitable);
        co_return 0;
    });
    BOOST_TEST(rc == 0);
    BOOST_TEST(reader.wait_for(10s).exited_with(corrupt));
}

BOOST_AUTO_TEST_CASE(a_reader_whose_position_is_overwritten_is_told_and_goes_on) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    create_channel(guard, k);
    const int rc = run_coroutine([&](asio::io_context& io) -> asio::awaitable<int> {
        auto ch = sysv::channel::open_or_create(io.get_executor(), k, small_channel());
        co_await ch.async_join("reader", asio::use_awaitable);
        const std::string first = "first";
        co_await ch.async_send(asio::buffer(first), asio::use_awaitable);
        // Another process moves this reader's cursor back to where it joined, as if to replay.
        namespace off = sysv::ring::offsets;
        const std::size_t entry = off::header_size + ch.slot() * off::entry_size;
        poke<std::uint64_t>(ch.segment().id(), entry + off::cursor_seq, 0);
        poke<std::uint64_t>(ch.segment().id(), entry + off::cursor, 8);
        auto [ec, m] = co_await ch.async_receive(asio::as_tuple(asio::use_awaitable));
        BOOST_TEST((ec == sysv::errc::corrupt_segment));
        const std::string second = "second";
        co_await ch.async_send(asio::buffer(second), asio::use_awaitable);
        auto next = co_await ch.async_receive(asio::use_awaitable);
        BOOST_TEST(std::string(next.text()) == second); // it goes on from head
        co_await ch.async_leave(asio::use_awaitable);
        co_return 0;
    });
    BOOST_TEST(rc == 0);
}

BOOST_AUTO_TEST_CASE(a_stopped_lock_holder_is_named_and_the_room_resumes_with_it) {
    using namespace asio::experimental::awaitable_operators;
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    const auto [set_id, segment_id] = create_channel(guard, k);
    barrier ready(guard, 2);
    sysv_test::child holder([&] {
        asio::io_context io;
        auto ch = sysv::channel::open_or_create(io.get_executor(), k, small_channel());
        ch.async_join("bob", [](error_code) {});
        io.run();
        auto memory = sysv::shared_memory::open_id(segment_id).attach();
        sysv_test::lock_channel(memory.bytes()); // the channel's lock, as a writer takes it
        ready.arrive_and_wait();
        ::raise(SIGSTOP); // a debugger, Ctrl-Z: stopped while holding the lock
        sysv_test::unlock_channel(memory.bytes());
        return 0;
    });
    ready.arrive_and_wait();
    int status = 0;
    while (::waitpid(holder.pid(), &status, WUNTRACED) == -1 && errno == EINTR) {
    }
    BOOST_REQUIRE(WIFSTOPPED(status));
    const int rc = run_coroutine([&](asio::io_context& io) -> asio::awaitable<int> {
        auto ch = sysv::channel::open_or_create(io.get_executor(), k, small_channel());
        const std::string text = "anyone there?";
        asio::steady_timer patience(io, 300ms);
        auto first = co_await (ch.async_send(asio::buffer(text), asio::use_awaitable) ||
                               patience.async_wait(asio::use_awaitable));
        BOOST_TEST(first.index() == 1u); // the room waits for the stopped holder
        auto who = ch.lock_holder();
        BOOST_REQUIRE(who.has_value());
        BOOST_TEST(who->pid == static_cast<std::uint32_t>(holder.pid()));
        BOOST_TEST(who->label == "bob");
        BOOST_TEST((who->state == sysv::process_state::stopped));
        ::kill(holder.pid(), SIGCONT);
        co_await ch.async_send(asio::buffer(text), asio::use_awaitable); // resumes with it
        BOOST_TEST(!ch.lock_holder().has_value());
        co_return 0;
    });
    BOOST_TEST(rc == 0);
    BOOST_TEST(holder.wait_for(10s).exited_with(0));
}

BOOST_AUTO_TEST_SUITE_END()
