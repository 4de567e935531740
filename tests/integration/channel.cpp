// sysv::channel between real processes: broadcast, order, backpressure, crashes (SIGKILL while
// sending and while holding the lock), a stopped reader, and cleanup by the last member.
#include "harness.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>

#include <cstring>
#include <map>
#include <set>
#include <span>
#include <string>
#include <vector>

import sysv.channel;

#include "harness_ipc.hpp"

using sysv_test::barrier;
using sysv_test::run_coroutine;

#include "channel_lock.hpp"

namespace asio = boost::asio;
using namespace std::chrono_literals;
using boost::system::error_code;

namespace {

std::string text_of(const sysv::channel_message& m) {
    return std::string(m.text());
}

sysv::channel_options options_with(std::uint32_t readers, std::uint64_t capacity,
                                   std::chrono::milliseconds grace) {
    sysv::channel_options o;
    o.shape.max_readers = readers;
    o.shape.capacity = capacity;
    o.slow_reader_grace = grace;
    return o;
}

/// Opens (or creates) the channel at `k` and records its segment and set in `guard`, so they
/// are removed whatever the test does.
sysv::channel open_guarded(sysv_test::ipc_guard& guard, asio::io_context& io, sysv::key k,
                           const sysv::channel_options& options = {}) {
    auto ch = sysv::channel::open_or_create(io.get_executor(), k, options);
    guard.memory_id(ch.segment().id());
    guard.semaphore_id(ch.semaphores().id());
    return ch;
}

/// open_guarded, then joined as "reader" (`io` ready to run again).
sysv::channel open_joined(sysv_test::ipc_guard& guard, asio::io_context& io, sysv::key k) {
    auto ch = open_guarded(guard, io, k);
    bool joined = false;
    ch.async_join("reader", [&](error_code ec) { joined = !ec; });
    io.run();
    io.restart();
    BOOST_REQUIRE(joined);
    return ch;
}

/// A reader joins a 4 KB ring with a 300 ms slow_reader_grace and stops itself (SIGSTOP); the
/// writer sends 200 messages of 100 bytes and then "last", far more than the ring holds, and
/// continues it. The writer must have waited for the reader (backpressure) and not forever (it
/// finished); `receive_until_last(channel&)` then runs in the reader, whose exit code it returns
/// (0 when it learnt what it missed).
template <class Receive>
void stopped_reader_scenario(Receive receive_until_last) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    auto options = options_with(4, 4096, 300ms);
    options.shape.max_message_size = 256;
    barrier joined(guard, 2);
    sysv_test::child reader([&] {
        return run_coroutine([&](asio::io_context& io) -> asio::awaitable<int> {
            auto ch = sysv::channel::open_or_create(io.get_executor(), k, options);
            co_await ch.async_join("sleepy", asio::use_awaitable);
            joined.arrive_and_wait();
            ::raise(SIGSTOP); // the parent sends while this process is stopped
            co_return co_await receive_until_last(ch);
        });
    });
    const int rc = run_coroutine([&](asio::io_context& io) -> asio::awaitable<int> {
        auto ch = open_guarded(guard, io, k, options);
        joined.arrive_and_wait();
        int status = 0;
        while (::waitpid(reader.pid(), &status, WUNTRACED) == -1 && errno == EINTR) {
        }
        BOOST_REQUIRE(WIFSTOPPED(status));
        // The writer waits for the stopped reader, gives up after the grace, drops the oldest,
        // and carries on.
        const std::string text(100, 'x');
        const auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < 200; ++i)
            co_await ch.async_send(asio::buffer(text), asio::use_awaitable);
        const std::string last = "last";
        co_await ch.async_send(asio::buffer(last), asio::use_awaitable);
        const auto took = std::chrono::steady_clock::now() - start;
        BOOST_TEST((took >= 300ms)); // it did wait for the reader (backpressure) ...
        ::kill(reader.pid(), SIGCONT);
        co_return 0;
    });
    BOOST_TEST(rc == 0); // ... and was not stalled forever (the coroutine finished)
    BOOST_TEST(reader.wait_for(60s).exited_with(0));
}

} // namespace

BOOST_AUTO_TEST_SUITE(channel)

BOOST_AUTO_TEST_CASE(two_processes_exchange_messages_and_the_last_one_removes_the_channel) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    barrier joined(guard, 2);
    sysv_test::child peer([&] {
        return run_coroutine([&](asio::io_context& io) -> asio::awaitable<int> {
            auto ch = sysv::channel::open_or_create(io.get_executor(), k);
            co_await ch.async_join("peer", asio::use_awaitable);
            joined.arrive_and_wait();
            for (int i = 0; i < 100; ++i) {
                const std::string text = "message " + std::to_string(i);
                co_await ch.async_send(asio::buffer(text), asio::use_awaitable);
            }
            auto reply = co_await ch.async_receive(asio::use_awaitable);
            while (text_of(reply).rfind("message", 0) == 0) // our own messages come back too
                reply = co_await ch.async_receive(asio::use_awaitable);
            SYSV_CHILD_CHECK(text_of(reply) == "thanks");
            auto [ec, removed] = co_await ch.async_leave(asio::as_tuple(asio::use_awaitable));
            SYSV_CHILD_CHECK(!ec && !removed);
            co_return 0;
        });
    });
    int segment_id = -1, set_id = -1;
    const int rc = run_coroutine([&](asio::io_context& io) -> asio::awaitable<int> {
        auto ch = open_guarded(guard, io, k);
        segment_id = ch.segment().id();
        set_id = ch.semaphores().id();
        co_await ch.async_join("parent", asio::use_awaitable);
        joined.arrive_and_wait();
        for (int i = 0; i < 100; ++i) {
            auto m = co_await ch.async_receive(asio::use_awaitable);
            BOOST_TEST(text_of(m) == "message " + std::to_string(i));
            BOOST_TEST(m.sender_pid == static_cast<std::uint32_t>(peer.pid()));
        }
        const std::string thanks = "thanks";
        co_await ch.async_send(asio::buffer(thanks), asio::use_awaitable);
        BOOST_TEST(peer.wait().exited_with(0));
        auto members = co_await ch.async_members(asio::use_awaitable);
        BOOST_TEST(members.size() == 1u);
        BOOST_TEST(members.at(0).label == "parent");
        const bool removed = co_await ch.async_leave(asio::use_awaitable);
        BOOST_TEST(removed);
        co_return 0;
    });
    BOOST_TEST(rc == 0);
    BOOST_TEST(!sysv_test::segment_exists(segment_id));
    BOOST_TEST(!sysv_test::semaphore_set_exists(set_id));
}

BOOST_AUTO_TEST_CASE(sixteen_participants_each_receive_every_message_once_in_order) {
    constexpr int participants = 16, messages = 1000;
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    barrier joined(guard, participants);
    // A long grace: with 16 processes on 2 cores, readers fall behind; writers must wait for
    // them (backpressure), not drop.
    const auto options = options_with(32, 64 * 1024, 60s);
    {
        // Not system_executor: its thread pool would make the forks below unsafe.
        asio::io_context setup;
        open_guarded(guard, setup, k, options);
    }
    std::vector<std::unique_ptr<sysv_test::child>> children;
    for (int p = 0; p < participants; ++p)
        children.push_back(std::make_unique<sysv_test::child>([&, p] {
            return run_coroutine([&](asio::io_context& io) -> asio::awaitable<int> {
                auto ch = sysv::channel::open_or_create(io.get_executor(), k, options);
                co_await ch.async_join("p" + std::to_string(p), asio::use_awaitable);
                joined.arrive_and_wait();
                asio::co_spawn(
                    io,
                    [&]() -> asio::awaitable<void> {
                        for (int i = 0; i < messages; ++i) {
                            const std::string text = std::to_string(p) + ":" + std::to_string(i);
                            co_await ch.async_send(asio::buffer(text), asio::use_awaitable);
                        }
                    },
                    asio::detached);
                std::map<int, int> next; // sender -> next expected index
                int received = 0;
                while (received < participants * messages) {
                    auto m = co_await ch.async_receive(asio::use_awaitable);
                    const auto text = text_of(m);
                    const auto colon = text.find(':');
                    SYSV_CHILD_CHECK(colon != std::string::npos);
                    const int sender = std::stoi(text.substr(0, colon));
                    const int index = std::stoi(text.substr(colon + 1));
                    SYSV_CHILD_CHECK(index == next[sender]); // in order, exactly once
                    ++next[sender];
                    ++received;
                }
                for (int s = 0; s < participants; ++s)
                    SYSV_CHILD_CHECK(next[s] == messages);
                co_await ch.async_leave(asio::use_awaitable);
                co_return 0;
            });
        }));
    for (auto& c : children)
        BOOST_TEST(c->wait_for(300s).exited_with(0));
}

BOOST_AUTO_TEST_CASE(a_participant_killed_mid_stream_or_holding_the_lock_does_not_stop_the_others) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    const auto options = options_with(8, 16 * 1024, 2000ms);
    barrier joined(guard, 2);
    // The victim joins, then sends as fast as it can until it is killed.
    sysv_test::child sender([&] {
        return run_coroutine([&](asio::io_context& io) -> asio::awaitable<int> {
            auto ch = sysv::channel::open_or_create(io.get_executor(), k, options);
            co_await ch.async_join("victim", asio::use_awaitable);
            joined.arrive_and_wait();
            for (int i = 0;; ++i) {
                const std::string text = "spam " + std::to_string(i);
                co_await ch.async_send(asio::buffer(text), asio::use_awaitable);
            }
        });
    });
    const int rc = run_coroutine([&](asio::io_context& io) -> asio::awaitable<int> {
        auto ch = open_guarded(guard, io, k, options);
        co_await ch.async_join("survivor", asio::use_awaitable);
        joined.arrive_and_wait();
        int last = -1;
        for (int i = 0; i < 500; ++i) {
            auto m = co_await ch.async_receive(asio::use_awaitable);
            const int index = std::stoi(text_of(m).substr(5));
            BOOST_REQUIRE(index == last + 1);
            last = index;
        }
        sender.kill(SIGKILL); // mid-stream: maybe inside the lock, maybe mid-write
        BOOST_TEST(sender.wait().killed_by(SIGKILL));
        // Whatever it left: the lock is free again (SEM_UNDO), the ring consistent.
        const std::string marker = "marker";
        co_await ch.async_send(asio::buffer(marker), asio::use_awaitable);
        for (;;) {
            auto [ec, m] = co_await ch.async_receive(asio::as_tuple(asio::use_awaitable));
            BOOST_REQUIRE(!ec);
            if (text_of(m) == marker)
                break;
            const int index = std::stoi(text_of(m).substr(5));
            BOOST_REQUIRE(index == last + 1);
            last = index;
        }
        auto lost = co_await ch.async_reap_lost(asio::use_awaitable);
        BOOST_REQUIRE(lost.size() == 1u);
        BOOST_TEST(lost[0].label == "victim");
        BOOST_TEST(lost[0].pid == static_cast<std::uint32_t>(sender.pid()));
        BOOST_TEST((co_await ch.async_reap_lost(asio::use_awaitable)).empty()); // reported once

        // Now a process dies holding the lock, in the middle of a write.
        sysv_test::child holder([&] {
            auto memory = sysv::shared_memory::open(k).attach();
            sysv_test::lock_channel(memory.bytes()); // the next waiter takes it over
            sysv::error_code ec;
            auto view = sysv::ring::view::open(memory.bytes(), ec);
            view.begin_write(static_cast<std::uint32_t>(::getpid()));
            const auto offset = sysv::ring::offsets::header_size +
                                8 * sysv::ring::offsets::entry_size +
                                view.head() % view.shape().capacity;
            std::memset(memory.bytes().data() + offset, 0x55, 24); // half a record
            ::raise(SIGKILL);
            return 1;
        });
        BOOST_TEST(holder.wait().killed_by(SIGKILL));
        const std::string after = "after the crashes";
        co_await ch.async_send(asio::buffer(after), asio::use_awaitable);
        auto m = co_await ch.async_receive(asio::use_awaitable);
        BOOST_TEST(text_of(m) == after); // the half-written record never became visible
        auto memory = sysv::shared_memory::open(k).attach(sysv::access::read_only);
        BOOST_TEST(memory.as<std::uint64_t>(sysv::ring::offsets::repairs) >= 1u);
        co_await ch.async_leave(asio::use_awaitable);
        co_return 0;
    });
    BOOST_TEST(rc == 0);
}

BOOST_AUTO_TEST_CASE(a_stopped_reader_stalls_writers_only_for_the_grace_and_learns_what_it_missed) {
    stopped_reader_scenario([](sysv::channel& ch) -> asio::awaitable<int> {
        std::uint64_t missed = 0;
        std::string last;
        while (last != "last") {
            auto [ec, m] = co_await ch.async_receive(asio::as_tuple(asio::use_awaitable));
            if (ec == sysv::errc::messages_missed)
                missed += m.missed;
            else if (ec)
                co_return 2;
            else
                last = text_of(m);
        }
        co_return missed > 0 ? 0 : 3;
    });
}

BOOST_AUTO_TEST_CASE(a_channel_left_by_crashed_members_is_recycled_and_then_removed) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    int segment_id = -1, set_id = -1;
    for (int i = 0; i < 2; ++i) {
        sysv_test::child crasher([&] {
            return run_coroutine([&](asio::io_context& io) -> asio::awaitable<int> {
                auto ch = sysv::channel::open_or_create(io.get_executor(), k);
                co_await ch.async_join("crasher", asio::use_awaitable);
                ::raise(SIGKILL);
                co_return 1;
            });
        });
        BOOST_TEST(crasher.wait().killed_by(SIGKILL));
    }
    const int rc = run_coroutine([&](asio::io_context& io) -> asio::awaitable<int> {
        auto ch = open_guarded(guard, io, k);
        segment_id = ch.segment().id();
        set_id = ch.semaphores().id();
        BOOST_TEST(ch.semaphores().value(2) == 0); // the crashed members were undone
        co_await ch.async_join("survivor", asio::use_awaitable);
        auto lost = co_await ch.async_reap_lost(asio::use_awaitable);
        BOOST_TEST(lost.size() == 2u);
        const std::string hello = "still works";
        co_await ch.async_send(asio::buffer(hello), asio::use_awaitable);
        BOOST_TEST(text_of(co_await ch.async_receive(asio::use_awaitable)) == hello);
        BOOST_TEST(co_await ch.async_leave(asio::use_awaitable));
        co_return 0;
    });
    BOOST_TEST(rc == 0);
    BOOST_TEST(!sysv_test::segment_exists(segment_id));
    BOOST_TEST(!sysv_test::semaphore_set_exists(set_id));
}

BOOST_AUTO_TEST_CASE(a_batch_larger_than_the_ring_arrives_whole_and_in_order) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    auto options = options_with(4, 4096, 60s);
    options.shape.max_message_size = 64;
    barrier joined(guard, 2);
    constexpr int messages = 500; // ~28 KB of records through a 4 KB ring
    sysv_test::child reader([&] {
        return run_coroutine([&](asio::io_context& io) -> asio::awaitable<int> {
            auto ch = sysv::channel::open_or_create(io.get_executor(), k, options);
            co_await ch.async_join("reader", asio::use_awaitable);
            joined.arrive_and_wait();
            for (int i = 0; i < messages;) { // whole batches at a time
                auto all = co_await ch.async_receive_batch(asio::use_awaitable);
                SYSV_CHILD_CHECK(!all.empty());
                for (const auto& m : all)
                    SYSV_CHILD_CHECK(text_of(m) == "batched message " + std::to_string(i++));
            }
            co_return 0;
        });
    });
    const int rc = run_coroutine([&](asio::io_context& io) -> asio::awaitable<int> {
        auto ch = open_guarded(guard, io, k, options);
        joined.arrive_and_wait();
        std::vector<std::string> texts;
        for (int i = 0; i < messages; ++i)
            texts.push_back("batched message " + std::to_string(i));
        std::vector<asio::const_buffer> batch;
        for (const auto& t : texts)
            batch.push_back(asio::buffer(t));
        co_await ch.async_send_batch(batch, asio::use_awaitable);
        // One message too big: nothing of the batch is sent.
        const std::string big(100, 'b');
        batch = {asio::buffer(texts[0]), asio::buffer(big)};
        auto [ec] = co_await ch.async_send_batch(batch, asio::as_tuple(asio::use_awaitable));
        BOOST_TEST((ec == sysv::errc::limit_exceeded));
        co_return 0;
    });
    BOOST_TEST(rc == 0);
    BOOST_TEST(reader.wait_for(60s).exited_with(0));
}

BOOST_AUTO_TEST_CASE(a_batch_received_into_a_channel_batch_arrives_whole_in_order_in_one_buffer) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    auto options = options_with(4, 4096, 60s);
    options.shape.max_message_size = 64;
    barrier joined(guard, 2);
    constexpr int messages = 2000; // ~130 KB of records through a 4 KB ring
    const auto text = [](int i) {
        return std::string(static_cast<std::size_t>(i % 65), static_cast<char>('a' + i % 26));
    };
    sysv_test::child reader([&] {
        return run_coroutine([&](asio::io_context& io) -> asio::awaitable<int> {
            auto ch = sysv::channel::open_or_create(io.get_executor(), k, options);
            co_await ch.async_join("reader", asio::use_awaitable);
            joined.arrive_and_wait();
            sysv::channel_batch into;
            std::set<const std::byte*> buffers;
            for (int i = 0; i < messages;) {
                const std::size_t n = co_await ch.async_receive_batch(into, asio::use_awaitable);
                SYSV_CHILD_CHECK(n > 0 && n == into.size());
                for (const auto m : into) {
                    SYSV_CHILD_CHECK(m.text() == text(i));
                    SYSV_CHILD_CHECK(m.sequence == static_cast<std::uint64_t>(i));
                    SYSV_CHILD_CHECK(m.sender_pid == static_cast<std::uint32_t>(::getppid()));
                    SYSV_CHILD_CHECK(reinterpret_cast<std::uintptr_t>(m.bytes.data()) % 16 == 0);
                    ++i;
                }
                if (!into[0].bytes.empty())
                    buffers.insert(into[0].bytes.data());
            }
            // A drain brings at most the ring's 4 KB: the buffer it starts with, reused.
            SYSV_CHILD_CHECK(buffers.size() == 1u);
            co_return 0;
        });
    });
    const int rc = run_coroutine([&](asio::io_context& io) -> asio::awaitable<int> {
        auto ch = open_guarded(guard, io, k, options);
        joined.arrive_and_wait();
        std::vector<std::string> texts;
        for (int i = 0; i < messages; ++i)
            texts.push_back(text(i));
        for (int i = 0; i < messages; i += 100) {
            std::vector<asio::const_buffer> batch;
            for (int j = i; j < i + 100; ++j)
                batch.push_back(asio::buffer(texts[static_cast<std::size_t>(j)]));
            co_await ch.async_send_batch(batch, asio::use_awaitable);
        }
        co_return 0;
    });
    BOOST_TEST(rc == 0);
    BOOST_TEST(reader.wait_for(60s).exited_with(0));
}

BOOST_AUTO_TEST_CASE(a_receive_into_a_batch_takes_what_a_receive_left_buffered_first) {
    sysv_test::ipc_guard guard;
    asio::io_context io;
    auto ch = open_joined(guard, io, sysv::key(guard.temp_key()));
    const auto send = [&](int from, int to) {
        for (int i = from; i < to; ++i) {
            const std::string t = "m" + std::to_string(i);
            ch.async_send(asio::buffer(t), [](error_code ec) { BOOST_TEST(!ec); });
            io.run();
            io.restart();
        }
    };
    std::vector<std::string> got;
    sysv::channel_batch into;
    into.push_back(std::as_bytes(std::span("stale", 5)), 1, 1); // cleared by the receive
    const auto receive_batch = [&] {
        std::size_t count = 0;
        error_code result = sysv::errc::not_open;
        ch.async_receive_batch(into, [&](error_code ec, std::size_t n) {
            result = ec;
            count = n;
        });
        io.run();
        io.restart();
        BOOST_REQUIRE(!result);
        BOOST_REQUIRE(count == into.size());
        for (const auto m : into)
            got.push_back(std::string(m.text()));
    };
    send(0, 5);
    ch.async_receive([&](error_code ec, sysv::channel_message m) {
        BOOST_TEST(!ec);
        got.push_back(text_of(m)); // the drain buffered m1..m4
    });
    io.run();
    io.restart();
    receive_batch(); // m1..m4, from the buffer
    send(5, 8);
    receive_batch(); // m5..m7, from the ring into the batch
    BOOST_TEST(got == (std::vector<std::string>{"m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"}),
               boost::test_tools::per_element());
    // Nothing there: it waits, and a send completes it.
    bool done = false;
    ch.async_receive_batch(into, [&](error_code ec, std::size_t n) { done = !ec && n == 1; });
    io.poll();
    BOOST_TEST(!done);
    send(8, 9);
    io.run();
    io.restart();
    BOOST_TEST(done);
    BOOST_TEST(into[0].text() == "m8");
    ch.async_leave([](error_code, bool) {});
    io.run();
}

BOOST_AUTO_TEST_CASE(a_stopped_reader_receiving_into_a_batch_learns_what_it_missed_then_goes_on) {
    stopped_reader_scenario([](sysv::channel& ch) -> asio::awaitable<int> {
        sysv::channel_batch into;
        std::uint64_t missed = 0, notices = 0, after_notice = 0;
        std::string last;
        while (last != "last") {
            auto [ec, n] =
                co_await ch.async_receive_batch(into, asio::as_tuple(asio::use_awaitable));
            if (ec == sysv::errc::messages_missed) {
                // Alone: no message with it, the count in the batch.
                if (n != 0 || !into.empty() || into.missed() == 0)
                    co_return 4;
                missed += into.missed();
                ++notices;
            } else if (ec) {
                co_return 2;
            } else {
                if (n == 0 || into.missed() != 0)
                    co_return 5;
                after_notice += notices > 0 ? n : 0;
                last = std::string(into[n - 1].text());
            }
        }
        co_return missed > 0 && after_notice > 0 ? 0 : 3;
    });
}

BOOST_AUTO_TEST_CASE(a_receive_raced_by_a_timer_is_cancelled_and_the_channel_goes_on) {
    using namespace asio::experimental::awaitable_operators;
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    const int rc = run_coroutine([&](asio::io_context& io) -> asio::awaitable<int> {
        auto ch = open_guarded(guard, io, k);
        co_await ch.async_join("alone", asio::use_awaitable);
        for (int i = 0; i < 20; ++i) { // the timeout lands at every phase of the receive
            asio::steady_timer timeout(io, std::chrono::microseconds(100 + 500 * i));
            auto r = co_await (ch.async_receive(asio::use_awaitable) ||
                               timeout.async_wait(asio::use_awaitable));
            BOOST_TEST(r.index() == 1u); // nothing was sent: the timer wins every time
        }
        const std::string hello = "after the timeouts";
        co_await ch.async_send(asio::buffer(hello), asio::use_awaitable);
        BOOST_TEST(text_of(co_await ch.async_receive(asio::use_awaitable)) == hello);
        co_await ch.async_leave(asio::use_awaitable);
        co_return 0;
    });
    BOOST_TEST(rc == 0);
}

BOOST_AUTO_TEST_CASE(each_cancellation_type_aborts_a_receive_whether_it_spins_or_sleeps) {
    // Asio's three types: a receive that got nothing has no side effect, so each of them aborts
    // it, emitted while it still looks on posted passes (at once) or once it sleeps on its
    // doorbell (after 100 ms); the channel goes on.
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    const int rc = run_coroutine([&](asio::io_context& io) -> asio::awaitable<int> {
        auto ch = open_guarded(guard, io, k);
        co_await ch.async_join("alone", asio::use_awaitable);
        for (auto type : {asio::cancellation_type::terminal, asio::cancellation_type::partial,
                          asio::cancellation_type::total})
            for (auto after : {0ms, 100ms}) {
                asio::cancellation_signal signal;
                asio::steady_timer later(io, after);
                later.async_wait([&](error_code) { signal.emit(type); });
                auto [ec, m] = co_await ch.async_receive(asio::bind_cancellation_slot(
                    signal.slot(), asio::as_tuple(asio::use_awaitable)));
                BOOST_TEST((ec == asio::error::operation_aborted),
                           "type " << static_cast<int>(type) << " after " << after.count()
                                   << " ms: " << ec.message());
            }
        const std::string hello = "after the cancellations";
        co_await ch.async_send(asio::buffer(hello), asio::use_awaitable);
        BOOST_TEST(text_of(co_await ch.async_receive(asio::use_awaitable)) == hello);
        co_await ch.async_leave(asio::use_awaitable);
        co_return 0;
    });
    BOOST_TEST(rc == 0);
}

BOOST_AUTO_TEST_CASE(misuse_and_foreign_channels_give_clear_errors) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    asio::io_context io;
    auto ch = open_guarded(guard, io, k);
    // Another shape at the same key.
    auto other = options_with(8, 64 * 1024, 1000ms);
    try {
        sysv::channel::open_or_create(io.get_executor(), k, other);
        BOOST_FAIL("a channel of another shape was adopted");
    } catch (const sysv::system_error& e) {
        BOOST_TEST((e.code() == sysv::errc::foreign_object));
        BOOST_TEST(std::string(e.what()).find(sysv::to_string(k)) != std::string::npos);
    }
    std::vector<error_code> results;
    const std::string big(ch.shape().max_message_size + 1, 'b');
    ch.async_send(asio::buffer(big), [&](error_code ec) { results.push_back(ec); });
    ch.async_receive([&](error_code ec, sysv::channel_message) { results.push_back(ec); });
    ch.async_leave([&](error_code ec, bool) { results.push_back(ec); });
    BOOST_TEST(results.empty()); // never completed from the initiating function
    io.run();
    BOOST_REQUIRE(results.size() == 3u);
    BOOST_TEST((results[0] == sysv::errc::limit_exceeded));
    BOOST_TEST((results[1] == sysv::errc::invalid_argument)); // receive before join
    BOOST_TEST((results[2] == sysv::errc::invalid_argument)); // leave before join
}

BOOST_AUTO_TEST_CASE(ready_sends_and_receives_complete_later_on_the_handlers_executor) {
    // The ready path (lock free, room in the ring; messages already there) decides the result in
    // the initiating function: it must still complete later, on the handler's associated
    // executor (here another io_context's), with the result of the operation.
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    asio::io_context io, elsewhere;
    auto ch = open_joined(guard, io, k);
    const std::string first = "first", second = "second", big(ch.shape().max_message_size + 1, 'x');
    const asio::const_buffer batch[] = {asio::buffer(first), asio::buffer(second)};
    std::vector<std::string> events;
    ch.async_send(asio::buffer(first), asio::bind_executor(elsewhere, [&](error_code ec) {
                      events.push_back("sent " + ec.message());
                  }));
    ch.async_send_batch(batch, [&](error_code ec) { events.push_back("batch " + ec.message()); });
    ch.async_send(asio::buffer(big), [&](error_code ec) {
        events.push_back(ec == sysv::errc::limit_exceeded ? "too big" : "big " + ec.message());
    });
    BOOST_TEST(events.empty()); // sent, but not completed from the initiating functions
    io.run();
    io.restart();
    BOOST_TEST(events == (std::vector<std::string>{"batch Success", "too big"}),
               boost::test_tools::per_element());
    elsewhere.run(); // the first handler's executor
    elsewhere.restart();
    BOOST_REQUIRE(events.size() == 3u);
    BOOST_TEST(events[2] == "sent Success");
    events.clear();
    std::vector<std::string> received;
    const auto on_message = [&](error_code ec, sysv::channel_message m) {
        BOOST_TEST(!ec);
        received.push_back(text_of(m));
    };
    ch.async_receive(asio::bind_executor(elsewhere, on_message)); // in the ring: ready
    BOOST_TEST(received.empty());
    io.run();
    io.restart();
    BOOST_TEST(received.empty()); // its executor is `elsewhere`
    elsewhere.run();
    elsewhere.restart();
    ch.async_receive(on_message); // buffered by the first receive: ready
    BOOST_TEST(received.size() == 1u);
    ch.async_receive_batch([&](error_code ec, std::vector<sysv::channel_message> all) {
        BOOST_TEST(!ec);
        for (const auto& m : all)
            received.push_back("batch: " + text_of(m));
    });
    BOOST_TEST(received.size() == 1u);
    io.run();
    io.restart();
    BOOST_TEST(received == (std::vector<std::string>{"first", "first", "batch: second"}),
               boost::test_tools::per_element());
    bool left = false;
    ch.async_leave([&](error_code ec, bool removed) { left = !ec && removed; });
    io.run();
    BOOST_TEST(left);
}

BOOST_AUTO_TEST_CASE(an_immediate_executor_completes_ready_operations_inline_with_bounded_nesting) {
    // sysv::bind_immediate_executor waives "never from the initiating function" for a result
    // known at once: dispatched through the bound executor (inline on a thread that runs it,
    // posted elsewhere), never nested deeper than immediate_depth_limit, with every other
    // association (here the allocator's and executor's defaults) left to the handler.
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    asio::io_context io;
    auto ch = open_joined(guard, io, k);
    const auto inline_ex = io.get_executor();
    const std::string text = "ready";

    // Not on a thread running `io`: dispatch posts it.
    bool sent = false;
    ch.async_send(asio::buffer(text),
                  sysv::bind_immediate_executor(inline_ex, [&](error_code ec) { sent = !ec; }));
    BOOST_TEST(!sent);
    io.run();
    io.restart();
    BOOST_TEST(sent);

    // From a handler of `io`: inline, for sends and receives (from the ring, then buffered).
    std::vector<std::string> events;
    asio::post(io, [&] {
        ch.async_send(asio::buffer(text),
                      sysv::bind_immediate_executor(inline_ex, [&](error_code ec) {
                          events.push_back("sent " + ec.message());
                      }));
        events.push_back("after send");
        ch.async_receive(
            sysv::bind_immediate_executor(inline_ex, [&](error_code ec, sysv::channel_message m) {
                events.push_back("received " + text_of(m) + " " + ec.message());
            }));
        events.push_back("after receive");
        ch.async_receive_batch(sysv::bind_immediate_executor(
            inline_ex, [&](error_code ec, std::vector<sysv::channel_message> all) {
                events.push_back("batch of " + std::to_string(all.size()) + " " + ec.message());
            }));
        events.push_back("after batch");
        ch.async_send(asio::buffer(text),
                      sysv::bind_immediate_executor(
                          inline_ex, asio::as_tuple([&](std::tuple<error_code> r) {
                              events.push_back("tuple sent " + std::get<0>(r).message());
                          })));
        events.push_back("after tuple send");
    });
    io.run();
    io.restart();
    BOOST_TEST(events ==
                   (std::vector<std::string>{"sent Success", "after send", "received ready Success",
                                             "after receive", "batch of 1 Success", "after batch",
                                             "tuple sent Success", "after tuple send"}),
               boost::test_tools::per_element());

    // The hop to the handler's own executor is kept: a handler bound to a strand runs in it.
    // An immediate executor that must not block (blocking.never) never runs it inline.
    events.clear();
    auto strand = asio::make_strand(io);
    asio::post(io, [&] {
        ch.async_send(asio::buffer(text),
                      sysv::bind_immediate_executor(
                          inline_ex, asio::bind_executor(strand, [&](error_code ec) {
                              events.push_back(std::string("sent in strand ") +
                                               (strand.running_in_this_thread() ? "yes " : "no ") +
                                               ec.message());
                          })));
        events.push_back("after strand send");
        ch.async_send(
            asio::buffer(text),
            sysv::bind_immediate_executor(
                asio::require(inline_ex, asio::execution::blocking.never),
                [&](error_code ec) { events.push_back("never-blocking " + ec.message()); }));
        events.push_back("after never-blocking send");
    });
    io.run();
    io.restart();
    BOOST_TEST(
        events == (std::vector<std::string>{"sent in strand yes Success", "after strand send",
                                            "after never-blocking send", "never-blocking Success"}),
        boost::test_tools::per_element());
    bool emptied = false;
    ch.async_receive_batch([&](error_code ec, std::vector<sysv::channel_message> all) {
        emptied = !ec && all.size() == 3; // these two and the tuple send's
    });
    io.run();
    io.restart();
    BOOST_TEST(emptied);

    // A chain of sends, each started by the previous one's handler: nesting stops at the limit
    // (the next completion is posted, and the chain goes on from there).
    constexpr int chain = 200;
    int completed = 0, depth = 0, deepest = 0;
    std::function<void()> next = [&] {
        if (completed == chain)
            return;
        ch.async_send(asio::buffer(text),
                      sysv::bind_immediate_executor(inline_ex, [&](error_code ec) {
                          BOOST_TEST(!ec);
                          ++completed;
                          ++depth;
                          deepest = std::max(deepest, depth);
                          next();
                          --depth;
                      }));
    };
    asio::post(io, next);
    io.run();
    io.restart();
    BOOST_TEST(completed == chain);
    BOOST_TEST(deepest == sysv::immediate_depth_limit + 1); // a posted one, and the limit on it
    BOOST_TEST(sysv::detail::immediate_depth() == 0);

    // Coroutines: a long loop of immediate completions (the ring drained as it goes) keeps its
    // stack bounded and its order.
    int in_order = 0;
    bool drained = false;
    ch.async_receive_batch(
        [&](error_code ec, std::vector<sysv::channel_message>) { drained = !ec; });
    io.run();
    io.restart();
    BOOST_REQUIRE(drained);
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            const auto token = sysv::bind_immediate_executor(inline_ex, asio::use_awaitable);
            // Bound outermost, the binder also carries other adapters' tokens (as_tuple here).
            const auto tuple_token =
                sysv::bind_immediate_executor(inline_ex, asio::as_tuple(asio::use_awaitable));
            for (int i = 0; i < 20000; ++i) {
                const std::string n = std::to_string(i);
                co_await ch.async_send(asio::buffer(n), token);
                if (i % 2 == 0) {
                    auto m = co_await ch.async_receive(token);
                    in_order += text_of(m) == n;
                } else {
                    auto [ec, m] = co_await ch.async_receive(tuple_token);
                    in_order += !ec && text_of(m) == n;
                }
            }
        },
        asio::detached);
    io.run();
    BOOST_TEST(in_order == 20000);
}

BOOST_AUTO_TEST_SUITE_END()
