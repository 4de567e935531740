// The shared_stats_server example's table (examples/shared_stats_server/stats_table.hpp) without
// processes: header validation, counting, token buckets, and its crash-repair protocol, with a
// crash injected at every point of every step (a hook that throws leaves the memory exactly as a
// SIGKILL there would). Plain code: no Asio, no IPC.
#include <boost/test/unit_test.hpp>

#include "shared_stats_server/stats_table.hpp"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace {

/// An 8-byte aligned buffer holding a fresh table.
struct table_memory {
    explicit table_memory(stats::shape s = {8, 2, 16})
        : shape(s), words((stats::segment_size(s) + 7) / 8, 0) {
        stats::initialise(bytes(), s, 1000, 1);
    }
    std::span<std::byte> bytes() {
        return std::as_writable_bytes(std::span(words)).first(stats::segment_size(shape));
    }
    stats::table open() {
        std::string problem;
        auto t = stats::table::open(bytes(), problem);
        BOOST_REQUIRE_MESSAGE(t.has_value(), "open failed: " << problem);
        return *t;
    }
    stats::shape shape;
    std::vector<std::uint64_t> words;
};

/// Thrown by a hook: the memory is left exactly as a SIGKILL at that point would leave it.
struct crash {};
struct crash_at {
    stats::step s;
    stats::point p;
    void operator()(stats::step step, stats::point point) const {
        if (step == s && point == p)
            throw crash{};
    }
};

std::array<std::byte, stats::address_size> address(unsigned char last) {
    std::array<std::byte, stats::address_size> a{};
    a[10] = a[11] = std::byte{0xff};
    a[15] = std::byte{last};
    return a;
}

/// The data a crash may touch (counters and buckets), for before/after comparisons.
std::vector<std::byte> data_region(stats::table& t) {
    const auto all = t.bytes();
    const std::size_t begin =
        stats::offsets::header_bytes + t.table_shape().max_workers * stats::offsets::worker_bytes;
    return {all.begin() + static_cast<std::ptrdiff_t>(begin), all.end()};
}

void store32(std::span<std::byte> b, std::size_t offset, std::uint32_t v) {
    std::memcpy(b.data() + offset, &v, 4);
}
void store64(std::span<std::byte> b, std::size_t offset, std::uint64_t v) {
    std::memcpy(b.data() + offset, &v, 8);
}

} // namespace

BOOST_AUTO_TEST_SUITE(stats_table)

BOOST_AUTO_TEST_CASE(a_fresh_table_opens_and_every_header_field_is_checked) {
    table_memory m;
    auto t = m.open();
    BOOST_TEST(t.master_pid() == 1000u);
    BOOST_TEST(!t.dirty());
    BOOST_TEST(t.counters().empty());

    const auto expect_refused = [&](auto mutate, std::string_view reason) {
        table_memory bad;
        mutate(bad.bytes());
        std::string problem;
        BOOST_TEST(!stats::table::open(bad.bytes(), problem).has_value());
        BOOST_TEST(problem.find(reason) != std::string::npos, problem << " lacks " << reason);
    };
    expect_refused([](auto b) { store64(b, stats::offsets::magic, 0); }, "not initialised");
    expect_refused([](auto b) { store64(b, stats::offsets::magic, 42); }, "wrong magic");
    expect_refused([](auto b) { store32(b, stats::offsets::version, 2); }, "version 2");
    expect_refused([](auto b) { store32(b, stats::offsets::header_size, 128); }, "sizes differ");
    expect_refused([](auto b) { store32(b, stats::offsets::name_capacity, 1000); }, "sizes differ");
    expect_refused([](auto b) { store32(b, stats::offsets::max_counters, 0); }, "shape is invalid");
    expect_refused([](auto b) { store32(b, stats::offsets::max_workers, 5000); },
                   "shape is invalid");
    // A larger shape than the segment holds: every index derived from it would overflow.
    expect_refused([](auto b) { store32(b, stats::offsets::max_counters, 9); }, "does not match");
    expect_refused([](auto b) { store64(b, stats::offsets::total_size, 1u << 30); },
                   "does not match");
    // The real segment is smaller than the header says.
    table_memory whole;
    std::string problem;
    BOOST_TEST(
        !stats::table::open(whole.bytes().first(whole.bytes().size() - 8), problem).has_value());
    BOOST_TEST(problem.find("does not match") != std::string::npos);
    BOOST_TEST(!stats::table::open(whole.bytes().first(100), problem).has_value());
    BOOST_TEST(problem.find("smaller than a table header") != std::string::npos);
    BOOST_TEST(!stats::table::open(whole.bytes().subspan(4, 300), problem).has_value());
    BOOST_TEST(problem.find("aligned") != std::string::npos);
    // Read-only views validate the same way.
    BOOST_TEST(
        stats::const_table::open(std::span<const std::byte>(whole.bytes()), problem).has_value());
}

BOOST_AUTO_TEST_CASE(hits_count_per_name_until_the_table_is_full) {
    table_memory m({4, 1, 0});
    auto t = m.open();
    BOOST_TEST(t.hit("a", 7).value == 1u);
    BOOST_TEST(t.hit("a", 7).value == 2u);
    for (const char* name : {"b", "c", "d"})
        BOOST_TEST(t.hit(name, 7).value == 1u);
    const auto full = t.hit("e", 7);
    BOOST_TEST(!full.stored);
    BOOST_TEST(t.hit("a", 7).value == 3u);
    BOOST_TEST(!t.hit("", 7).stored);
    BOOST_TEST(!t.hit("a b", 7).stored);
    BOOST_TEST(!t.hit(std::string(65, 'a'), 7).stored);
    BOOST_TEST(t.hit(std::string(64, 'z'), 7).stored == false); // full
    auto counters = t.counters();
    std::sort(counters.begin(), counters.end(),
              [](const auto& x, const auto& y) { return x.name < y.name; });
    BOOST_REQUIRE_EQUAL(counters.size(), 4u);
    BOOST_TEST(counters[0].name == "a");
    BOOST_TEST(counters[0].value == 3u);
    BOOST_TEST(*t.value("d") == 1u);
    BOOST_TEST(!t.value("e").has_value());
    BOOST_TEST(!t.dirty());

    table_memory big({1024, 1, 0});
    auto b = big.open();
    BOOST_TEST(b.hit(std::string(64, 'z'), 7).value == 1u);
    BOOST_TEST(b.hit("Name.with-all_kinds.0", 7).value == 1u);
}

BOOST_AUTO_TEST_CASE(every_interrupted_step_is_rolled_back_by_the_next_holder) {
    const auto a = address(1), b = address(2);
    const auto prepare = [&](table_memory& m) {
        auto t = m.open();
        for (int i = 0; i < 5; ++i)
            t.hit("existing", 7);
        t.take_token(a, 1'000'000'000, 10, 10, 7);
        t.take_token(a, 1'000'000'000, 10, 10, 7);
        return t;
    };
    struct scenario {
        stats::step s;
        stats::point p;
        std::string name; // the hit that crashes ("" for a bucket step)
        std::array<std::byte, 16> client;
    };
    std::vector<scenario> scenarios;
    for (auto p : {stats::point::journaled, stats::point::half_written, stats::point::written}) {
        scenarios.push_back({stats::step::insert, p, "fresh", {}});
        scenarios.push_back({stats::step::increment, p, "existing", {}});
        scenarios.push_back({stats::step::bucket, p, "", a}); // the client's own bucket
        scenarios.push_back({stats::step::bucket, p, "", b}); // a new client's bucket
    }
    for (const auto& sc : scenarios) {
        BOOST_TEST_CONTEXT(stats::to_string(sc.s)
                           << ":" << stats::to_string(sc.p) << " " << sc.name) {
            table_memory m;
            auto t = prepare(m);
            const auto before = data_region(t);
            bool crashed = false;
            try {
                if (sc.s == stats::step::bucket)
                    t.take_token(sc.client, 1'500'000'000, 10, 10, 4242, crash_at{sc.s, sc.p});
                else
                    t.hit(sc.name, 4242, crash_at{sc.s, sc.p});
            } catch (const crash&) {
                crashed = true;
            }
            BOOST_REQUIRE(crashed);
            BOOST_TEST(t.dirty());
            // Readers without the lock never see half a step.
            std::size_t corrupt = 99;
            const auto seen = t.counters(&corrupt);
            BOOST_TEST(corrupt == 0u);
            for (const auto& c : seen)
                BOOST_TEST((c.name == "existing" || c.name == "fresh"), c.name);
            // The next holder rolls the step back: the data is exactly as before.
            const auto r = t.repair();
            BOOST_TEST(r.repaired);
            BOOST_TEST(r.pid == 4242u);
            BOOST_TEST(!t.dirty());
            BOOST_TEST(t.repairs() == 1u);
            BOOST_TEST((data_region(t) == before));
            BOOST_TEST(!t.repair().repaired); // nothing left to do
            // And the table works on.
            BOOST_TEST(t.hit("existing", 7).value == 6u);
            BOOST_TEST(t.hit("fresh", 7).value == 1u);
        }
    }
    // A crash in the increment that follows an insert: the insert stands, at 0.
    table_memory m;
    auto t = prepare(m);
    BOOST_CHECK_THROW(t.hit("fresh", 4242, crash_at{stats::step::increment, stats::point::written}),
                      crash);
    t.repair();
    BOOST_TEST(*t.value("fresh") == 0u);
    BOOST_TEST(t.hit("fresh", 7).value == 1u);
}

BOOST_AUTO_TEST_CASE(a_holder_that_dies_while_repairing_leaves_the_same_repair_to_the_next) {
    table_memory m;
    auto t = m.open();
    for (int i = 0; i < 3; ++i)
        t.hit("n", 7);
    const auto before = data_region(t);
    BOOST_CHECK_THROW(t.hit("n", 4242, crash_at{stats::step::increment, stats::point::written}),
                      crash);
    BOOST_CHECK_THROW(t.repair(crash_at{stats::step::repair, stats::point::half_written}), crash);
    BOOST_TEST(t.dirty());
    const auto r = t.repair();
    BOOST_TEST(r.repaired);
    BOOST_TEST((data_region(t) == before));
    BOOST_TEST(*t.value("n") == 3u);

    // The same with a whole-entry step (an insert), whose copy back is split in two.
    table_memory m2;
    auto t2 = m2.open();
    const auto before2 = data_region(t2);
    BOOST_CHECK_THROW(t2.hit("long-name-of-a-counter-that-spans-words", 4242,
                             crash_at{stats::step::insert, stats::point::written}),
                      crash);
    BOOST_CHECK_THROW(t2.repair(crash_at{stats::step::repair, stats::point::half_written}), crash);
    BOOST_TEST(t2.repair().repaired);
    BOOST_TEST((data_region(t2) == before2));
    BOOST_TEST(t2.counters().empty());
}

BOOST_AUTO_TEST_CASE(an_invalid_journal_is_discarded_never_applied) {
    table_memory probe;
    const std::size_t counters_begin =
        stats::offsets::header_bytes + probe.shape.max_workers * stats::offsets::worker_bytes;
    struct bad {
        std::uint64_t offset;
        std::uint32_t length;
    };
    for (const bad& j : {bad{0, 8}, bad{stats::offsets::header_bytes, 8},
                         bad{counters_begin - 8, 16}, bad{counters_begin + 4, 8},
                         bad{counters_begin, 0}, bad{counters_begin, 12}, bad{counters_begin, 104},
                         bad{stats::segment_size(probe.shape) - 8, 16}, bad{~0ull - 7, 16}}) {
        BOOST_TEST_CONTEXT("offset " << j.offset << " length " << j.length) {
            table_memory m;
            auto t = m.open();
            t.hit("x", 7);
            const std::vector<std::byte> before(m.bytes().begin(), m.bytes().end());
            store64(m.bytes(), stats::offsets::undo_offset, j.offset);
            store32(m.bytes(), stats::offsets::undo_length, j.length);
            store32(m.bytes(), stats::offsets::dirty_pid, 99);
            store32(m.bytes(), stats::offsets::dirty, 1);
            const auto r = t.repair();
            BOOST_TEST(r.discarded);
            BOOST_TEST(!r.repaired);
            BOOST_TEST(!t.dirty());
            BOOST_TEST(t.discarded() == 1u);
            // Nothing outside the journal changed: header, workers and data are intact.
            BOOST_TEST(std::equal(before.begin() + stats::offsets::header_bytes, before.end(),
                                  m.bytes().begin() + stats::offsets::header_bytes));
            BOOST_TEST(stats::read_magic(m.bytes()) == stats::magic);
            BOOST_TEST(*t.value("x") == 1u);
        }
    }
}

BOOST_AUTO_TEST_CASE(token_buckets_refill_at_the_rate_and_evict_the_least_recent_client) {
    table_memory m({8, 1, 16});
    auto t = m.open();
    const auto a = address(1);
    const std::uint64_t t0 = 5'000'000'000;
    for (int i = 0; i < 10; ++i)
        BOOST_TEST(t.take_token(a, t0, 10, 10, 7).admitted);
    const auto refused = t.take_token(a, t0, 10, 10, 7);
    BOOST_TEST(!refused.admitted);
    BOOST_TEST(refused.retry_after_ms == 100u); // one token per 100 ms
    BOOST_TEST(!t.take_token(a, t0 + 50'000'000, 10, 10, 7).admitted);
    BOOST_TEST(t.take_token(a, t0 + 100'000'000, 10, 10, 7).admitted);
    BOOST_TEST(!t.take_token(a, t0 + 100'000'000, 10, 10, 7).admitted);
    // Other clients have their own buckets.
    BOOST_TEST(t.take_token(address(2), t0, 10, 10, 7).admitted);
    // A long pause refills to the burst, not beyond.
    int admitted = 0;
    for (int i = 0; i < 30; ++i)
        admitted += t.take_token(a, t0 + 3600'000'000'000ull, 10, 10, 7).admitted ? 1 : 0;
    BOOST_TEST(admitted == 10);
    // A refill time in the future (corrupt or another clock) neither underflows nor refills.
    table_memory m2({8, 1, 16});
    auto t2 = m2.open();
    for (int i = 0; i < 10; ++i)
        t2.take_token(a, t0, 10, 10, 7);
    BOOST_TEST(!t2.take_token(a, t0 - 1'000'000'000, 10, 10, 7).admitted);
    // More clients than buckets: the least recently seen one is replaced (its next request
    // finds a full bucket again), and the work per request stays bounded.
    table_memory m3({8, 1, 16});
    auto t3 = m3.open();
    for (unsigned char c = 1; c <= 16; ++c)
        for (int i = 0; i < 10; ++i)
            t3.take_token(address(c), t0 + c, 10, 10, 7);
    BOOST_TEST(!t3.take_token(address(16), t0 + 20, 10, 10, 7).admitted);
    BOOST_TEST(t3.take_token(address(17), t0 + 21, 10, 10, 7).admitted); // evicts client 1
    BOOST_TEST(t3.take_token(address(1), t0 + 22, 10, 10, 7).admitted);  // fresh bucket
    // No buckets (rate limit off at creation): everything is admitted.
    table_memory m4({8, 1, 0});
    BOOST_TEST(m4.open().take_token(a, t0, 10, 10, 7).admitted);
}

BOOST_AUTO_TEST_CASE(hostile_segment_contents_never_crash_readers_or_writers) {
    std::mt19937_64 random(20261127);
    const stats::shape shape{16, 2, 16};
    for (int round = 0; round < 3000; ++round) {
        table_memory m(shape);
        auto bytes = m.bytes();
        auto t = m.open();
        t.hit("seed", 7);
        // Scribble over the journal, the workers and the data (or, sometimes, the header).
        const std::size_t from = round % 10 == 0 ? 0 : stats::offsets::dirty;
        const int writes = 1 + static_cast<int>(random() % 40);
        for (int w = 0; w < writes; ++w) {
            const std::size_t at = from + random() % (bytes.size() - from);
            const auto kind = random() % 4;
            if (kind == 0)
                bytes[at] = static_cast<std::byte>(random());
            else if (kind == 1 && at + 4 <= bytes.size())
                store32(bytes, at,
                        static_cast<std::uint32_t>(random() % 3 == 0 ? random() : random() % 200));
            else if (at + 8 <= bytes.size())
                store64(bytes, at, random() % 2 ? random() : random() % 4096);
        }
        std::string problem;
        auto opened = stats::table::open(bytes, problem);
        if (!opened)
            continue;
        auto& s = *opened;
        s.repair();
        for (const auto& c : s.counters())
            BOOST_REQUIRE(stats::valid_name(c.name));
        s.hit("seed", 7);
        s.hit("other", 7);
        s.value("seed");
        s.take_token(address(static_cast<unsigned char>(round)), random(), 1 + random() % 1000,
                     1 + random() % 1000, 7);
        for (std::uint32_t w = 0; w < 4; ++w)
            s.worker(w);
        stats::const_table::open(std::span<const std::byte>(bytes), problem);
    }
}

BOOST_AUTO_TEST_CASE(worker_entries_hold_their_own_statistics) {
    table_memory m({8, 2, 0});
    auto t = m.open();
    t.start_worker(1, 321, 55);
    t.count_request(1, false);
    t.count_request(1, true);
    t.count_lock(1, false, false, 0, 100, 10, 1);
    t.count_lock(1, true, true, 5000, 200, 20, 7);
    t.count_lock(1, true, false, 3000, 300, 30, 0);
    t.set_connections(1, 4);
    t.set_restarts(1, 2);
    const auto w = t.worker(1);
    BOOST_TEST(w.pid == 321u);
    BOOST_TEST(w.requests == 2u);
    BOOST_TEST(w.rate_limited == 1u);
    BOOST_TEST(w.locks == 3u);
    BOOST_TEST(w.contended == 2u);
    BOOST_TEST(w.awaited == 1u);
    BOOST_TEST(w.connections == 4u);
    BOOST_TEST(w.wait_ns == 8000u);
    BOOST_TEST(w.max_wait_ns == 5000u);
    BOOST_TEST(w.hold_ns == 600u);
    BOOST_TEST(w.semop_ns == 60u);
    BOOST_TEST(w.hits == 8u);
    BOOST_TEST(w.restarts == 2u);
    BOOST_TEST(w.started_ns == 55u);
    BOOST_TEST(t.worker(0).pid == 0u);
    BOOST_TEST(t.worker(7).pid == 0u); // out of range: nothing read
    t.start_worker(1, 322, 56);        // a restarted worker starts from zero
    BOOST_TEST(t.worker(1).requests == 0u);
    BOOST_TEST(t.worker(1).restarts == 2u);
}

BOOST_AUTO_TEST_SUITE_END()
