// The channel's ring as plain code over a byte buffer: layout, wrap-around, backpressure,
// dropping for slow readers, and malformed contents (the segment is untrusted input).
#include "harness.hpp"

#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <vector>

import sysv.ring;

namespace ring = sysv::ring;

namespace {

struct test_ring {
    ring::layout shape;
    std::vector<std::byte> memory;
    ring::view view;

    static ring::view make(std::vector<std::byte>& memory, const ring::layout& shape) {
        memory.assign(ring::segment_size(shape), std::byte{0});
        ring::initialise(memory, shape);
        sysv::error_code ec;
        auto v = ring::view::open(memory, ec);
        BOOST_REQUIRE(!ec);
        return v;
    }
    explicit test_ring(ring::layout l) : shape(l), view(make(memory, l)) {}

    void send(const std::string& text, std::uint32_t pid = 1) {
        if (!view.fits(text.size())) { // as a writer does: free what the readers consumed
            const std::vector<std::uint8_t> live(shape.max_readers, 1);
            view.collect(live);
        }
        BOOST_REQUIRE(view.fits(text.size()));
        sysv::error_code ec;
        view.append(std::as_bytes(std::span(text)), pid, ec);
        BOOST_REQUIRE(!ec);
    }
    std::vector<std::string> receive(std::size_t slot, std::uint64_t* missed = nullptr,
                                     sysv::error_code* error = nullptr) {
        std::vector<ring::message> out;
        std::uint64_t m = 0;
        sysv::error_code ec;
        view.read(slot, out, m, 100000, ec);
        if (missed)
            *missed = m;
        if (error)
            *error = ec;
        else
            BOOST_REQUIRE(!ec);
        std::vector<std::string> texts;
        for (auto& msg : out)
            texts.emplace_back(reinterpret_cast<const char*>(msg.bytes.data()), msg.bytes.size());
        return texts;
    }
};

ring::layout small_layout() {
    return ring::layout{4, 64, 512};
}

} // namespace

BOOST_AUTO_TEST_SUITE(ring_logic)

BOOST_AUTO_TEST_CASE(layouts_are_validated) {
    BOOST_TEST(!ring::validate(ring::layout{}));
    BOOST_TEST((ring::validate(ring::layout{0, 64, 512}) == sysv::errc::invalid_argument));
    BOOST_TEST((ring::validate(ring::layout{4, 64, 100}) == sysv::errc::invalid_argument));
    BOOST_TEST((ring::validate(ring::layout{4, 256, 512}) == sysv::errc::invalid_argument));
    BOOST_TEST((ring::validate(ring::layout{5000, 64, 512}) == sysv::errc::limit_exceeded));
    BOOST_TEST(ring::segment_size(ring::layout{2, 64, 512}) == 192u + 2 * 96u + 512u);
}

BOOST_AUTO_TEST_CASE(every_reader_gets_every_message_in_order) {
    test_ring r(small_layout());
    r.view.join(0, 10, "alice");
    r.send("before bob joined");
    r.view.join(1, 11, "bob");
    r.send("one");
    r.send("two", 2);
    BOOST_TEST((r.receive(0) == std::vector<std::string>{"before bob joined", "one", "two"}));
    BOOST_TEST((r.receive(1) == std::vector<std::string>{"one", "two"}));
    BOOST_TEST(r.receive(0).empty());
    BOOST_TEST(r.view.label(0) == "alice");
    BOOST_TEST(r.view.pid(1) == 11u);
    BOOST_TEST(r.view.head_sequence() == 3u);
}

BOOST_AUTO_TEST_CASE(records_wrap_around_the_ring_many_times) {
    test_ring r(small_layout());
    r.view.join(0, 1, "reader");
    const std::uint8_t live[] = {1, 0, 0, 0};
    std::mt19937 random(3);
    for (int i = 0; i < 2000; ++i) {
        std::string text(random() % 65, static_cast<char>('a' + i % 26));
        r.view.collect(live);
        BOOST_REQUIRE(r.view.fits(text.size()));
        r.send(text);
        auto got = r.receive(0);
        BOOST_REQUIRE(got.size() == 1u);
        BOOST_REQUIRE(got[0] == text);
    }
    BOOST_TEST(r.view.head() > 10 * r.shape.capacity);
}

BOOST_AUTO_TEST_CASE(large_messages_arrive_intact_at_every_distance_between_the_buffers) {
    // A large copy whose destination sits 1-63 bytes above its source modulo a page goes through
    // the ring's own loop, not memcpy (slow there on some AMD processors): each way must deliver
    // the same bytes, into the ring (the writer's source chosen at each distance from the
    // record) and out of it (through the locked and the unlocked read).
    test_ring r(ring::layout{1, 8192, 64 * 1024});
    r.view.join(0, 1, "reader");
    const std::uint8_t live[] = {1};
    const std::size_t ring_start = ring::offsets::header_size + ring::offsets::entry_size;
    std::vector<std::byte> source(8192 + 2 * 4096);
    int sent = 0;
    for (const std::size_t size : {1024u, 1031u, 4096u, 8192u})
        for (const std::size_t distance : {0u, 1u, 8u, 16u, 40u, 63u, 64u, 200u, 4095u}) {
            r.view.collect(live);
            BOOST_REQUIRE(r.view.fits(size));
            // Where append() puts the payload: at head, or at the start after a wrap marker.
            std::uint64_t offset = r.view.head() % r.shape.capacity;
            if (offset + ring::record_size(size) > r.shape.capacity)
                offset = 0;
            const auto dst = reinterpret_cast<std::uintptr_t>(r.memory.data() + ring_start +
                                                              offset + ring::record_header_size);
            const auto first = reinterpret_cast<std::uintptr_t>(source.data());
            std::byte* src = source.data() + ((dst - distance - first) & 4095);
            BOOST_REQUIRE(((dst - reinterpret_cast<std::uintptr_t>(src)) & 4095) == distance);
            for (std::size_t i = 0; i < size; ++i)
                src[i] = static_cast<std::byte>((i * 31 + static_cast<std::size_t>(sent)) & 0xff);
            sysv::error_code ec;
            r.view.append(std::span<const std::byte>(src, size), 1, ec);
            BOOST_REQUIRE(!ec);
            std::vector<ring::message> got;
            if (sent % 2 == 0) {
                std::uint64_t missed = 0;
                r.view.read(0, got, missed, 10, ec);
                BOOST_REQUIRE(!ec);
            } else {
                BOOST_REQUIRE(r.view.read_unlocked(0, got, 10) == ring::view::unlocked_read::taken);
            }
            BOOST_REQUIRE(got.size() == 1u);
            BOOST_TEST((got[0].bytes == std::vector<std::byte>(src, src + size)),
                       size << " bytes, source " << distance << " below the record");
            ++sent;
        }
}

BOOST_AUTO_TEST_CASE(a_live_reader_holds_space_until_it_reads) {
    test_ring r(small_layout());
    r.view.join(0, 1, "slow");
    const std::uint8_t live[] = {1, 0, 0, 0};
    int sent = 0;
    for (; r.view.fits(40); ++sent)
        r.send(std::string(40, 'x'));
    BOOST_TEST(sent > 0);
    r.view.collect(live);
    BOOST_TEST(!r.view.fits(40)); // nothing was read: nothing to free
    BOOST_TEST(r.receive(0).size() == static_cast<std::size_t>(sent));
    r.view.collect(live);
    BOOST_TEST(r.view.fits(40));
    // A dead reader (not live) does not hold space.
    r.view.join(1, 2, "dead");
    for (; r.view.fits(40);)
        r.send(std::string(40, 'y'));
    const std::uint8_t only_reader_zero[] = {1, 0, 0, 0};
    r.receive(0);
    r.view.collect(only_reader_zero);
    BOOST_TEST(r.view.fits(40));
}

BOOST_AUTO_TEST_CASE(dropping_for_a_slow_reader_reports_the_missed_count) {
    test_ring r(small_layout());
    r.view.join(0, 1, "slow");
    r.view.join(1, 2, "fast");
    for (int i = 0; r.view.fits(40); ++i)
        r.send("m" + std::to_string(i) + std::string(38, '.'));
    const auto all = r.receive(1);
    sysv::error_code ec;
    const auto dropped = r.view.drop_oldest(40, ec);
    BOOST_TEST(!ec);
    BOOST_TEST(dropped >= 1u);
    r.send("newest" + std::string(34, '.'));
    std::uint64_t missed = 0;
    const auto got = r.receive(0, &missed);
    BOOST_TEST(missed == dropped);
    BOOST_REQUIRE(!got.empty());
    BOOST_TEST(got.front() == all[dropped]); // continues with the oldest still available
    BOOST_TEST(got.back().substr(0, 6) == "newest");
    BOOST_TEST(got.size() + missed == all.size() + 1);
    BOOST_TEST(r.receive(1).size() == 1u); // the fast reader lost nothing
}

BOOST_AUTO_TEST_CASE(readers_copy_without_the_lock_unless_they_were_lapped) {
    test_ring r(small_layout());
    r.view.join(0, 1, "fast");
    r.view.join(1, 2, "slow");
    using result = ring::view::unlocked_read;
    std::vector<ring::message> out;
    BOOST_TEST((r.view.read_unlocked(0, out, 100) == result::empty));
    r.send("one");
    r.send("two");
    BOOST_TEST((r.view.read_unlocked(0, out, 100) == result::taken));
    BOOST_REQUIRE(out.size() == 2u);
    BOOST_TEST(out[1].sequence == 1u);
    BOOST_TEST((r.view.read_unlocked(0, out, 100) == result::empty));
    // The cursor it moved frees space for writers like one moved under the lock.
    const std::uint8_t only_fast[] = {1, 0, 0, 0};
    r.view.collect(only_fast);
    BOOST_TEST(r.view.tail() == r.view.head());
    BOOST_TEST(r.view.tail_sequence() == 2u);
    // A reader whose messages were dropped must go through the lock, which reports them.
    const std::uint8_t both[] = {1, 1, 0, 0};
    r.view.collect(both);
    while (r.view.fits(40))
        r.send(std::string(40, 'f'));
    sysv::error_code ec;
    const auto dropped = r.view.drop_oldest(40, ec);
    BOOST_REQUIRE(dropped > 0u);
    out.clear();
    BOOST_TEST((r.view.read_unlocked(1, out, 100) == result::need_lock));
    BOOST_TEST(out.empty());
    std::uint64_t missed = 0;
    r.receive(1, &missed);
    // "one" and "two", freed while "slow" was not counted live, and the dropped ones.
    BOOST_TEST(missed == 2 + dropped);
}

BOOST_AUTO_TEST_CASE(a_batch_holds_its_messages_in_one_reused_buffer) {
    test_ring r(small_layout());
    r.view.join(0, 1, "reader");
    ring::message_batch batch;
    std::mt19937 random(5);
    const std::byte* first_buffer = nullptr;
    int sent = 0, received = 0;
    for (int round = 0; round < 200; ++round) {
        // A few messages of 0..64 bytes, read without the lock or with it, into the same batch.
        const int n = 1 + static_cast<int>(random() % 6);
        for (int i = 0; i < n; ++i, ++sent)
            r.send(std::string(random() % 65, static_cast<char>('a' + sent % 26)),
                   static_cast<std::uint32_t>(100 + sent));
        batch.clear();
        BOOST_REQUIRE(batch.empty());
        if (round % 2 == 0) {
            BOOST_REQUIRE(
                (r.view.read_unlocked(0, batch, 100) == ring::view::unlocked_read::taken));
        } else {
            std::uint64_t missed = 0;
            sysv::error_code ec;
            r.view.read(0, batch, missed, 100, ec);
            BOOST_REQUIRE(!ec);
            BOOST_REQUIRE(missed == 0u);
        }
        BOOST_REQUIRE(batch.size() == static_cast<std::size_t>(n));
        std::size_t i = 0;
        for (const auto m : batch) { // iteration and indexing agree
            BOOST_REQUIRE(m.bytes.data() == batch[i++].bytes.data());
            BOOST_REQUIRE(reinterpret_cast<std::uintptr_t>(m.bytes.data()) % 16 == 0);
            BOOST_REQUIRE(m.sequence == static_cast<std::uint64_t>(received));
            BOOST_REQUIRE(m.sender_pid == static_cast<std::uint32_t>(100 + received));
            BOOST_REQUIRE(m.text() ==
                          std::string(m.bytes.size(), static_cast<char>('a' + received % 26)));
            ++received;
        }
        // 6 records of at most 64 bytes fit the 4 KiB it starts with: it never grows again.
        if (!batch[0].bytes.empty() && first_buffer == nullptr)
            first_buffer = batch[0].bytes.data();
        else if (!batch[0].bytes.empty())
            BOOST_REQUIRE(batch[0].bytes.data() == first_buffer);
    }
    // truncate() keeps the first messages and appends after them; push_back copies.
    batch.clear();
    const std::string a = "first", b = "second", c = std::string(5000, 'c');
    batch.push_back(std::as_bytes(std::span(a)), 1, 10);
    batch.push_back(std::as_bytes(std::span(b)), 2, 11);
    batch.truncate(1);
    batch.push_back(std::as_bytes(std::span(c)), 3, 12); // grows past 4 KiB: moves what it holds
    BOOST_REQUIRE(batch.size() == 2u);
    BOOST_TEST(batch[0].text() == a);
    BOOST_TEST(batch[1].text() == c);
    BOOST_TEST(batch[1].sender_pid == 3u);
    BOOST_TEST(batch[1].sequence == 12u);
    BOOST_TEST(batch.missed() == 0u);
    batch.set_missed(7);
    batch.clear();
    BOOST_TEST(batch.missed() == 0u);
    BOOST_TEST(batch.empty());
}

BOOST_AUTO_TEST_CASE(an_interrupted_write_is_repaired_and_invisible) {
    test_ring r(small_layout());
    r.view.join(0, 1, "reader");
    r.send("complete");
    // A writer marks the write, scribbles part of a record beyond head, and dies.
    r.view.begin_write(99);
    const auto offset = ring::offsets::header_size + 4 * ring::offsets::entry_size +
                        r.view.head() % r.shape.capacity;
    std::memset(r.memory.data() + offset, 0x7f, 20);
    BOOST_TEST(r.view.repair());
    BOOST_TEST(!r.view.repair());
    BOOST_TEST(r.view.repairs() == 1u);
    BOOST_TEST((r.receive(0) == std::vector<std::string>{"complete"}));
    r.send("next");
    BOOST_TEST((r.receive(0) == std::vector<std::string>{"next"}));
}

BOOST_AUTO_TEST_CASE(the_lock_word_has_one_holder_and_tells_of_sleepers) {
    test_ring r({2, 64, 1024});
    ring::lock_word lock(r.memory);
    const auto alice = ring::lock_identity(100, 5), bob = ring::lock_identity(200, 6);
    BOOST_TEST(ring::lock_identity_pid(bob) == 200u);
    BOOST_TEST(ring::lock_identity(100, 5) != ring::lock_identity(100, 6)); // pid reused
    BOOST_TEST(lock.holder() == 0u); // a fresh ring's lock is free
    BOOST_TEST(lock.try_lock(alice));
    BOOST_TEST(!lock.try_lock(bob));
    BOOST_TEST(lock.holder() == alice);
    // Only the holder releases it, and a take-over needs the exact word found.
    BOOST_TEST((lock.unlock(bob) == ring::lock_word::unlock_result::not_held));
    BOOST_TEST(!lock.steal(ring::lock_identity(100, 4), bob));
    BOOST_TEST(lock.steal(alice, bob));
    BOOST_TEST(lock.holder() == bob);
    // A sleeper's mark is reported by the next unlock only.
    lock.mark_sleeper();
    BOOST_TEST((lock.unlock(bob) == ring::lock_word::unlock_result::released_wake_sleepers));
    BOOST_TEST(lock.try_lock(alice));
    BOOST_TEST((lock.unlock(alice) == ring::lock_word::unlock_result::released));
    BOOST_TEST(lock.holder() == 0u);
}

BOOST_AUTO_TEST_CASE(a_count_of_sleeping_readers_tells_writers_whether_to_look) {
    // Writers read the count (on the header line they write anyway) before any reader entry.
    test_ring r({4, 64, 1024});
    BOOST_TEST(!r.view.any_sleeping());
    r.view.set_sleeping(1, true);
    r.view.set_sleeping(1, true); // already set: counted once
    r.view.set_sleeping(3, true);
    BOOST_TEST(r.view.any_sleeping());
    BOOST_TEST(r.view.take_sleeping(1));
    BOOST_TEST(!r.view.take_sleeping(1));
    BOOST_TEST(r.view.any_sleeping()); // reader 3 still sleeps
    r.view.set_sleeping(3, false);
    BOOST_TEST(!r.view.any_sleeping());
    // A reader killed between its two writes leaves the count above the flags, never below: the
    // next writer looks, finds nothing, and clears it.
    std::uint32_t stale = 1;
    std::memcpy(r.memory.data() + ring::offsets::sleeping_readers, &stale, sizeof stale);
    BOOST_TEST(r.view.any_sleeping());
    for (std::size_t slot = 0; slot < 4; ++slot)
        BOOST_TEST(!r.view.take_sleeping(slot));
    r.view.clear_sleeping_count();
    BOOST_TEST(!r.view.any_sleeping());
}

BOOST_AUTO_TEST_CASE(foreign_and_truncated_segments_are_refused) {
    std::vector<std::byte> memory(ring::segment_size(small_layout()));
    sysv::error_code ec;
    BOOST_TEST(ring::is_blank(memory));
    ring::view::open(memory, ec);
    BOOST_TEST((ec == sysv::errc::foreign_object));
    ring::initialise(memory, small_layout());
    BOOST_TEST(!ring::is_blank(memory));
    // A header claiming more than the real segment holds.
    ring::view::open(std::span(memory).first(memory.size() - 8), ec);
    BOOST_TEST((ec == sysv::errc::corrupt_segment));
    ring::view::open(std::span(memory).first(64), ec);
    BOOST_TEST((ec == sysv::errc::corrupt_segment));
    // A member that knows its layout: the stored one must be exactly it.
    const auto known = ring::view::open(memory, small_layout(), ec);
    BOOST_TEST(!ec);
    BOOST_TEST((known.shape() == small_layout()));
    auto other = small_layout();
    other.max_readers = 3; // also fits in the segment: still another layout
    ring::view::open(memory, other, ec);
    BOOST_TEST((ec == sysv::errc::corrupt_segment));
    ring::view::open(std::span(memory).first(memory.size() - 8), small_layout(), ec);
    BOOST_TEST((ec == sysv::errc::corrupt_segment));
    // Capacity rewritten to something huge.
    const std::uint64_t huge = std::uint64_t(1) << 60;
    std::memcpy(memory.data() + ring::offsets::capacity, &huge, 8);
    ring::view::open(memory, ec);
    BOOST_TEST((ec == sysv::errc::corrupt_segment));
    ring::view::open(memory, small_layout(), ec);
    BOOST_TEST((ec == sysv::errc::corrupt_segment));
    // Another magic.
    std::memset(memory.data(), 0x5a, 8);
    ring::view::open(memory, small_layout(), ec);
    BOOST_TEST((ec == sysv::errc::foreign_object));
}

BOOST_AUTO_TEST_CASE(malformed_records_and_cursors_give_clear_errors) {
    auto corrupt_and_read = [](auto&& damage) {
        test_ring r(small_layout());
        r.view.join(0, 1, "reader");
        r.send("first");
        r.send("second");
        damage(r);
        sysv::error_code ec;
        std::uint64_t missed = 0;
        r.receive(0, &missed, &ec);
        BOOST_TEST((ec == sysv::errc::corrupt_segment));
        // The reader recovers: the next message is read normally.
        r.send("after");
        BOOST_TEST((r.receive(0, &missed, &ec) == std::vector<std::string>{"after"}));
        BOOST_TEST(!ec);
    };
    const std::size_t ring_start = ring::offsets::header_size + 4 * ring::offsets::entry_size;
    const std::size_t cursor = ring::offsets::header_size + ring::offsets::cursor;
    corrupt_and_read([&](test_ring& r) { // length beyond the message limit
        const std::uint32_t bad = 1000;
        std::memcpy(r.memory.data() + ring_start, &bad, 4);
    });
    corrupt_and_read([&](test_ring& r) { // wrong sequence number
        const std::uint64_t bad = 77;
        std::memcpy(r.memory.data() + ring_start + 8, &bad, 8);
    });
    corrupt_and_read([&](test_ring& r) { // cursor beyond head
        const std::uint64_t bad = 1u << 30;
        std::memcpy(r.memory.data() + cursor, &bad, 8);
    });
    corrupt_and_read([&](test_ring& r) { // cursor in the middle of a record
        const std::uint64_t bad = 8;
        std::memcpy(r.memory.data() + cursor, &bad, 8);
    });
    corrupt_and_read([&](test_ring& r) { // tail after head
        const std::uint64_t bad = 1u << 20;
        std::memcpy(r.memory.data() + ring::offsets::tail, &bad, 8);
    });
}

// Random damage to a live ring (a cheap, always-on cousin of the libFuzzer target): nothing may
// crash or read out of bounds (run under the asan preset), and errors are corrupt_segment.
BOOST_AUTO_TEST_CASE(random_damage_never_crashes) {
    std::mt19937_64 random(12345);
    int errors = 0;
    for (int round = 0; round < 3000; ++round) {
        test_ring r(small_layout());
        for (std::size_t slot = 0; slot < 4; ++slot)
            r.view.join(slot, 1, "reader");
        for (int i = 0, n = static_cast<int>(random() % 12); i < n && r.view.fits(30); ++i)
            r.send(std::string(random() % 30, 'z'));
        for (int hits = 0, n = 1 + static_cast<int>(random() % 4); hits < n; ++hits)
            r.memory[random() % r.memory.size()] = static_cast<std::byte>(random());
        sysv::error_code ec;
        auto view = ring::view::open(r.memory, ec);
        if (ec)
            continue;
        const std::uint8_t live[] = {1, 1, 1, 1};
        view.repair();
        view.collect(live);
        for (std::size_t slot = 0; slot < 4; ++slot) {
            std::vector<ring::message> out;
            std::uint64_t missed = 0;
            view.read(slot, out, missed, 1000, ec);
            errors += ec ? 1 : 0;
            BOOST_REQUIRE((!ec || ec == sysv::errc::corrupt_segment));
            for (auto& m : out)
                BOOST_REQUIRE(m.bytes.size() <= r.shape.max_message_size);
            (void)view.label(slot);
        }
        view.drop_oldest(60, ec);
        BOOST_REQUIRE((!ec || ec == sysv::errc::corrupt_segment));
        if (view.fits(10)) {
            const std::string text = "ok";
            view.append(std::as_bytes(std::span(text)), 1, ec);
        }
    }
    BOOST_TEST(errors > 0); // the damage did reach the reader's checks
}

BOOST_AUTO_TEST_SUITE_END()
