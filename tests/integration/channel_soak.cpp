// Soak: N processes join one channel, send and receive at random paces (some readers stall so
// writers drop for them), while the test kills one at random (SIGKILL, at any step) and starts
// a new one in its place. Every member checks continuously that each message it receives is
// intact and in its sender's order, and that every gap in a sender's sequence was announced as
// missed; at the end all leave, and nothing is left at the key.
//
// SYSV_SOAK_SECONDS sets the duration (default 5: the suite's short run; ctest's opt-in
// `channel_soak_long`, label `soak`, runs 60).
#include "harness.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>

#include <cstdlib>
#include <map>
#include <random>
#include <string>

import sysv.channel;

namespace asio = boost::asio;
using namespace std::chrono_literals;
using boost::system::error_code;

namespace {

sysv::channel_options soak_options() {
    sysv::channel_options o;
    o.shape.max_readers = 8;
    o.shape.max_message_size = 512;
    o.shape.capacity = 16 * 1024;
    o.slow_reader_grace = 50ms; // stalled readers make writers drop, often
    return o;
}

std::uint64_t fnv1a(std::string_view s) {
    std::uint64_t h = 1469598103934665603ULL;
    for (unsigned char c : s)
        h = (h ^ c) * 1099511628211ULL;
    return h;
}

/// "<stream>.<seq>.<hash>|<payload>", the payload's length and bytes derived from seq.
std::string make_message(const std::string& stream, std::uint64_t seq, std::mt19937& random) {
    std::string payload(random() % 400, '\0');
    for (std::size_t i = 0; i < payload.size(); ++i)
        payload[i] = static_cast<char>('a' + (seq + i) % 26);
    return stream + "." + std::to_string(seq) + "." + std::to_string(fnv1a(payload)) + "|" +
           payload;
}

[[noreturn]] void violation(const std::string& what) {
    std::fprintf(stderr, "pid %d: INVARIANT VIOLATED: %s\n", ::getpid(), what.c_str());
    std::fflush(stderr);
    ::_exit(3);
}

/// What one member has seen, checked as it goes.
struct observer {
    std::map<std::string, std::uint64_t> next; ///< stream -> next expected sequence
    std::uint64_t missed = 0;                  ///< announced by messages_missed
    std::uint64_t gaps = 0;                    ///< sequences skipped within streams
    std::uint64_t received = 0;

    void missed_notice(std::uint64_t n) { missed += n; }

    void message(std::string_view text) {
        const auto bar = text.find('|');
        if (bar == std::string_view::npos)
            violation("no header in a message of " + std::to_string(text.size()) + " bytes");
        const std::string header(text.substr(0, bar));
        const std::string_view payload = text.substr(bar + 1);
        const auto last_dot = header.rfind('.');
        const auto seq_dot = header.rfind('.', last_dot - 1);
        if (last_dot == std::string::npos || seq_dot == std::string::npos)
            violation("malformed header " + header);
        const std::string stream = header.substr(0, seq_dot);
        const std::uint64_t seq = std::stoull(header.substr(seq_dot + 1, last_dot - seq_dot - 1));
        const std::uint64_t hash = std::stoull(header.substr(last_dot + 1));
        if (fnv1a(payload) != hash)
            violation("damaged payload in " + header);
        for (std::size_t i = 0; i < payload.size(); ++i)
            if (payload[i] != static_cast<char>('a' + (seq + i) % 26))
                violation("wrong payload in " + header);
        auto [at, first] = next.try_emplace(stream, seq);
        if (!first) {
            if (seq < at->second)
                violation(stream + ": sequence " + std::to_string(seq) + " after " +
                          std::to_string(at->second - 1) + " (duplicate or out of order)");
            gaps += seq - at->second;
        }
        at->second = seq + 1;
        ++received;
        if (gaps > missed)
            violation("lost " + std::to_string(gaps) + " messages but only " +
                      std::to_string(missed) + " were announced as missed");
    }
};

/// One member: joins as stream "<index>.<generation>", sends and receives until SIGTERM, then
/// leaves; exits 0, or 3 on a violation (printed), or sysv_test::coroutine_threw on an
/// unexpected error.
int member(sysv::key k, int index, int generation, const sigset_t& unblocked) {
    using namespace asio::experimental::awaitable_operators;
    return sysv_test::run_coroutine(
        [&](asio::io_context& io) -> asio::awaitable<void> {
            // SIGTERM (blocked since the fork) reaches this signal_set, whenever it came.
            asio::signal_set stop(io, SIGTERM);
            ::sigprocmask(SIG_SETMASK, &unblocked, nullptr);
            const std::string stream = std::to_string(index) + "." + std::to_string(generation);
            std::mt19937 random(static_cast<unsigned>(::getpid()));
            auto ch = sysv::channel::open_or_create(io.get_executor(), k, soak_options());
            co_await ch.async_join("p" + stream, asio::use_awaitable);
            observer seen;
            auto sender = [&]() -> asio::awaitable<void> {
                asio::steady_timer pause(io);
                for (std::uint64_t seq = 0;; ++seq) {
                    const auto text = make_message(stream, seq, random);
                    co_await ch.async_send(asio::buffer(text), asio::use_awaitable);
                    pause.expires_after(std::chrono::microseconds(random() % 3000));
                    co_await pause.async_wait(asio::use_awaitable);
                }
            };
            auto receiver = [&]() -> asio::awaitable<void> {
                for (;;) {
                    auto [ec, m] = co_await ch.async_receive(asio::as_tuple(asio::use_awaitable));
                    if (ec == sysv::errc::messages_missed) {
                        seen.missed_notice(m.missed);
                        continue;
                    }
                    if (ec)
                        throw sysv::system_error(ec, "receive");
                    seen.message(m.text());
                    if (random() % 500 == 0) // a stall: the writers drop for this reader
                        std::this_thread::sleep_for(
                            std::chrono::milliseconds(100 + random() % 200));
                }
            };
            co_await (stop.async_wait(asio::use_awaitable) || (sender() && receiver()));
            co_await ch.async_leave(asio::use_awaitable);
            std::fprintf(stderr, "member %s: received %llu, %llu gaps, %llu announced missed\n",
                         stream.c_str(), static_cast<unsigned long long>(seen.received),
                         static_cast<unsigned long long>(seen.gaps),
                         static_cast<unsigned long long>(seen.missed));
        },
        std::chrono::seconds(600));
}

std::chrono::seconds soak_duration() {
    const char* s = std::getenv("SYSV_SOAK_SECONDS");
    return std::chrono::seconds(s ? std::max(1, std::atoi(s)) : 5);
}

} // namespace

BOOST_AUTO_TEST_SUITE(channel_soak)

BOOST_AUTO_TEST_CASE(members_killed_at_random_never_corrupt_reorder_or_silently_lose_messages) {
    constexpr int members = 4;
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    // SIGTERM must reach the members' signal_set: blocked until they have installed it.
    struct blocked_sigterm {
        sigset_t set, old;
        blocked_sigterm() {
            sigemptyset(&set);
            sigaddset(&set, SIGTERM);
            ::sigprocmask(SIG_BLOCK, &set, &old);
        }
        ~blocked_sigterm() { ::sigprocmask(SIG_SETMASK, &old, nullptr); }
    } block;
    auto start = [&](int index, int generation) {
        return std::make_unique<sysv_test::child>(
            [&, index, generation] { return member(k, index, generation, block.old); });
    };
    std::vector<std::unique_ptr<sysv_test::child>> running;
    std::vector<int> generations(members, 0);
    for (int i = 0; i < members; ++i)
        running.push_back(start(i, 0));
    std::mt19937 random(12345);
    int kills = 0;
    const auto deadline = std::chrono::steady_clock::now() + soak_duration();
    while (std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20 + random() % 200));
        const int victim = static_cast<int>(random() % members);
        running[victim]->kill(SIGKILL);
        const auto status = running[victim]->wait();
        BOOST_TEST(status.killed_by(SIGKILL),
                   "member " << victim << " ended by itself: " << status);
        ++kills;
        running[victim] = start(victim, ++generations[victim]);
    }
    std::this_thread::sleep_for(300ms); // the last one started has joined
    for (auto& c : running)
        c->kill(SIGTERM);
    for (int i = 0; i < members; ++i)
        BOOST_TEST(running[i]->wait_for(60s).exited_with(0), "member " << i);
    BOOST_TEST_MESSAGE(kills << " members killed and replaced");
    BOOST_TEST(kills > 0);
    const bool nothing_left = ::semget(k.value(), 0, 0) == -1 && ::shmget(k.value(), 0, 0) == -1;
    BOOST_TEST(nothing_left); // the last one out removed the channel
    if (!nothing_left) {      // do not leak on failure
        if (const int id = ::semget(k.value(), 0, 0); id != -1)
            guard.semaphore_id(id);
        if (const int id = ::shmget(k.value(), 0, 0); id != -1)
            guard.memory_id(id);
    }
}

BOOST_AUTO_TEST_SUITE_END()
