// Keys (ftok, IPC_PRIVATE), kernel limits, and shared memory: create/open/open_or_create,
// read-write and read-only attachments shared with a child, typed access, IPC_STAT.
#include "harness.hpp"

#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

import sysv.core;

namespace {

using sysv_test::check_thrown;

sysv::shared_memory make_segment(sysv_test::ipc_guard& guard, std::size_t size,
                                 mode_t mode = 0600) {
    auto segment = sysv::shared_memory::create(sysv::key(guard.temp_key()), size, mode);
    guard.memory(segment);
    return segment;
}

std::size_t attach_count(const sysv::shared_memory& segment) {
    return segment.stat().attach_count;
}

} // namespace

// ---------------------------------------------------------------------------------------------
// Keys and limits
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(core_keys)

BOOST_AUTO_TEST_CASE(from_path_is_ftok) {
    sysv_test::ipc_guard guard;
    const auto path = guard.temp_file();
    const auto k = sysv::key::from_path(path, 7);
    BOOST_TEST(k.value() == ::ftok(path.c_str(), 7));
    BOOST_TEST(!k.is_private());
    BOOST_TEST((sysv::key::from_path(path, 7) == k)); // stable
    BOOST_TEST((sysv::key::from_path(path, 8) != k)); // the project id is part of the key
    BOOST_TEST(sysv::key::from_path(path, 1).value() == ::ftok(path.c_str(), 1));
    BOOST_TEST(sysv::key::from_path(path, 255).value() == ::ftok(path.c_str(), 255));
    BOOST_TEST((sysv::key::from_path(guard.temp_file(), 7) != k)); // another file

    sysv::error_code ec = sysv::errc::removed;
    BOOST_TEST((sysv::key::from_path(path, 7, ec) == k));
    BOOST_TEST(!ec);
}

BOOST_AUTO_TEST_CASE(private_and_raw_keys) {
    constexpr sysv::key defaulted;
    static_assert(defaulted.is_private());
    static_assert(sysv::key::private_key() == defaulted);
    static_assert(sysv::key::private_key().value() == IPC_PRIVATE);
    static_assert(sysv::key(0xbeef).value() == 0xbeef);
    static_assert(!sysv::key(0xbeef).is_private());
    BOOST_TEST(sysv::to_string(sysv::key::private_key()) == "IPC_PRIVATE");
    BOOST_TEST(sysv::to_string(sysv::key(0xbeef)) == "0x0000beef");
    BOOST_TEST(sysv::to_string(sysv::key(static_cast<key_t>(0x8a0b0c0d))) == "0x8a0b0c0d");
}

BOOST_AUTO_TEST_CASE(limits_are_those_of_the_running_kernel) {
    const auto l = sysv::limits();
    std::ifstream sem("/proc/sys/kernel/sem");
    long semmsl = 0, semmns = 0, semopm = 0, semmni = 0;
    BOOST_REQUIRE(static_cast<bool>(sem >> semmsl >> semmns >> semopm >> semmni));
    BOOST_TEST(l.max_semaphores_per_set == semmsl);
    BOOST_TEST(l.max_semaphores == semmns);
    BOOST_TEST(l.max_operations_per_call == semopm);
    BOOST_TEST(l.max_semaphore_sets == semmni);
    BOOST_TEST(l.max_semaphore_value == 32767);

    std::ifstream shmmax_file("/proc/sys/kernel/shmmax");
    std::ifstream shmmni_file("/proc/sys/kernel/shmmni");
    unsigned long long shmmax = 0, shmmni = 0;
    BOOST_REQUIRE(static_cast<bool>(shmmax_file >> shmmax));
    BOOST_REQUIRE(static_cast<bool>(shmmni_file >> shmmni));
    BOOST_TEST(l.max_segment_size == shmmax);
    BOOST_TEST(l.max_segments == shmmni);
    BOOST_TEST(l.min_segment_size == 1u);
    std::ifstream shmall_file("/proc/sys/kernel/shmall");
    unsigned long long shmall = 0;
    BOOST_REQUIRE(static_cast<bool>(shmall_file >> shmall));
    BOOST_TEST(l.max_total_pages == shmall);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Shared memory
// ---------------------------------------------------------------------------------------------

// Views of a temporary attachment would dangle (it detaches at the end of the expression):
// they do not compile.
template <class A>
concept views_of_temporary = requires(A&& a) { std::move(a).bytes(); } || requires(A&& a) {
    std::move(a).template as<int>(0);
} || requires(A&& a) { std::move(a).template as_array<int>(1, 0); };
static_assert(!views_of_temporary<sysv::attachment>);
static_assert(!views_of_temporary<sysv::read_only_attachment>);
static_assert(requires(const sysv::attachment& a) { a.bytes(); });

BOOST_AUTO_TEST_SUITE(core_shared_memory)

BOOST_AUTO_TEST_CASE(create_open_and_open_id_reach_the_same_segment) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    auto created = sysv::shared_memory::create(k, 1000);
    guard.memory(created);
    BOOST_TEST(created.is_open());
    BOOST_TEST(created.size() == 1000u);
    BOOST_TEST((created.ipc_key() == k));

    auto opened = sysv::shared_memory::open(k);
    BOOST_TEST(opened.id() == created.id());
    BOOST_TEST(opened.size() == 1000u); // the real size, not what open asked for
    BOOST_TEST((opened.ipc_key() == k));

    auto by_id = sysv::shared_memory::open_id(created.id());
    BOOST_TEST(by_id.size() == 1000u);
    BOOST_TEST((by_id.ipc_key() == k));

    auto writer = created.attach();
    writer.as<std::uint32_t>(996) = 0xfeedbeef;
    const auto reader = by_id.attach(sysv::access::read_only);
    BOOST_TEST(reader.as<std::uint32_t>(996) == 0xfeedbeefu);

    // A private segment is reachable through its id only.
    auto hidden = sysv::shared_memory::create(sysv::key::private_key(), 64);
    guard.memory(hidden);
    BOOST_TEST(sysv::shared_memory::open_id(hidden.id()).ipc_key().is_private());
}

BOOST_AUTO_TEST_CASE(open_or_create_creates_then_opens_ours) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    auto first = sysv::shared_memory::open_or_create(k, 4096);
    guard.memory(first);
    BOOST_TEST(first.size() == 4096u);
    BOOST_TEST(first.stat().owner.mode == 0600u);
    {
        auto view = first.attach();
        view.as<std::uint64_t>(8) = 42;
    }

    auto second = sysv::shared_memory::open_or_create(k, 4096);
    BOOST_TEST(second.id() == first.id());
    auto smaller = sysv::shared_memory::open_or_create(k, 100); // at least 100 bytes: fine
    BOOST_TEST(smaller.id() == first.id());
    BOOST_TEST(smaller.size() == 4096u); // the real size
    const auto kept = smaller.attach();
    BOOST_TEST(kept.as<std::uint64_t>(8) == 42u); // contents kept

    sysv::error_code ec = sysv::errc::removed;
    auto third = sysv::shared_memory::open_or_create(k, 4096, ec);
    BOOST_TEST(!ec);
    BOOST_TEST(third.id() == first.id());

    const auto status = sysv_test::run_in_child([&] {
        SYSV_CHILD_CHECK(sysv::shared_memory::open_or_create(k, 4096).id() == first.id());
        return 0;
    });
    BOOST_TEST(status.exited_with(0), status);
}

BOOST_AUTO_TEST_CASE(open_or_create_refuses_a_smaller_segment_or_another_mode) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    auto existing = sysv::shared_memory::create(k, 1000);
    guard.memory(existing);

    sysv::error_code ec;
    auto refused = sysv::shared_memory::open_or_create(k, 2000, ec);
    BOOST_TEST((ec == sysv::errc::foreign_object), ec.message());
    BOOST_TEST(!refused.is_open());
    check_thrown([&] { sysv::shared_memory::open_or_create(k, 2000); }, sysv::errc::foreign_object,
                 {"shmget (open or create)", sysv::to_string(k), "wanted 2000 bytes",
                  "found 1000 bytes", "id " + std::to_string(existing.id())});

    sysv::shared_memory::open_or_create(k, 1000, 0640, ec);
    BOOST_TEST((ec == sysv::errc::foreign_object), ec.message());
    check_thrown([&] { sysv::shared_memory::open_or_create(k, 1000, 0640); },
                 sysv::errc::foreign_object, {"mode 0640", "mode 0600"});
}

BOOST_AUTO_TEST_CASE(open_or_create_refuses_a_segment_of_another_owner) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    auto theirs = sysv::shared_memory::create(k, 1000);
    guard.memory(theirs);
    theirs.set_permissions({65534, 65534, 0600});
    check_thrown([&] { sysv::shared_memory::open_or_create(k, 1000); }, sysv::errc::foreign_object,
                 {"owner uid 65534"});
}

BOOST_AUTO_TEST_CASE(read_write_and_read_only_attachments_share_bytes_with_a_child) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    auto segment = sysv::shared_memory::create(k, 4096);
    guard.memory(segment);

    sysv::attachment rw = segment.attach(sysv::access::read_write);
    sysv::read_only_attachment ro = segment.attach(sysv::access::read_only);
    static_assert(std::is_same_v<decltype(rw.bytes()), std::span<std::byte>>);
    static_assert(std::is_same_v<decltype(ro.bytes()), std::span<const std::byte>>);
    static_assert(std::is_same_v<decltype(ro.as<int>()), const int&>);
    static_assert(std::is_same_v<decltype(rw.as<int>()), int&>);
    static_assert(std::is_same_v<decltype(segment.attach()), sysv::attachment>);
    BOOST_TEST(rw.size() == 4096u);
    BOOST_TEST(ro.size() == 4096u);
    BOOST_TEST(rw.bytes().data() != ro.bytes().data()); // two mappings...

    rw.as<std::uint64_t>(8) = 0x1234; // ...of the same memory
    BOOST_TEST(ro.as<std::uint64_t>(8) == 0x1234u);
    BOOST_TEST(std::to_integer<int>(ro.bytes()[4095]) == 0); // zero-filled by the kernel

    // A child opens the segment by key, reads what we wrote, and writes back.
    const auto status = sysv_test::run_in_child([&] {
        auto mine = sysv::shared_memory::open(k);
        auto view = mine.attach(sysv::access::read_only);
        SYSV_CHILD_CHECK(view.as<std::uint64_t>(8) == 0x1234u);
        SYSV_CHILD_CHECK(rw.as<std::uint64_t>(8) == 0x1234u); // the inherited mapping too
        auto writer = mine.attach();
        writer.as<std::uint64_t>(16) = 0x5678;
        return 0;
    });
    BOOST_TEST(status.exited_with(0), status);
    BOOST_TEST(ro.as<std::uint64_t>(16) == 0x5678u);
    BOOST_TEST(rw.as<std::uint64_t>(16) == 0x5678u);
}

BOOST_AUTO_TEST_CASE(a_read_only_attachment_is_mapped_read_only) {
    sysv_test::ipc_guard guard;
    auto segment = make_segment(guard, 4096);
    auto ro = segment.attach(sysv::access::read_only);
    // Writing through it (forcing away the const) faults: SHM_RDONLY was used.
    const auto status = sysv_test::run_in_child([&] {
        ::signal(SIGSEGV, SIG_DFL); // not the test framework's handler
        auto* p = const_cast<std::byte*>(ro.bytes().data());
        *reinterpret_cast<volatile std::byte*>(p) = std::byte{1};
        return 0;
    });
    BOOST_TEST(status.killed_by(SIGSEGV), status);
    BOOST_TEST(std::to_integer<int>(ro.bytes()[0]) == 0);
}

BOOST_AUTO_TEST_CASE(typed_access_checks_size_and_alignment) {
    sysv_test::ipc_guard guard;
    auto segment = make_segment(guard, 64);
    auto view = segment.attach();
    BOOST_TEST(view.size() == 64u);

    view.as<std::uint64_t>(56) = 7; // the last one that fits
    BOOST_TEST(view.as<std::uint64_t>(56) == 7u);
    BOOST_TEST(view.as<std::uint32_t>(4) == 0u);
    BOOST_TEST(view.as<char>(63) == 0);
    auto all = view.as_array<std::uint32_t>(16);
    BOOST_TEST(all.size() == 16u);
    BOOST_TEST(static_cast<void*>(all.data()) == static_cast<void*>(view.bytes().data()));
    all[15] = 99;
    BOOST_TEST(view.as<std::uint32_t>(60) == 99u);
    BOOST_TEST(view.as_array<std::uint32_t>(0, 64).empty()); // nothing at the end: fits

    // Does not fit.
    check_thrown([&] { view.as<std::uint64_t>(60); }, sysv::errc::bad_layout,
                 {"1 object(s) of 8 bytes", "at offset 60", "segment of 64 bytes"});
    check_thrown([&] { view.as_array<std::uint32_t>(17); }, sysv::errc::bad_layout,
                 {"17 object(s) of 4 bytes", "offset 0"});
    check_thrown([&] { view.as_array<std::uint32_t>(1, 65); }, sysv::errc::bad_layout,
                 {"offset 65"});
    // Huge counts do not overflow into "fits".
    check_thrown(
        [&] { view.as_array<std::uint64_t>(std::numeric_limits<std::size_t>::max() / 4 + 1); },
        sysv::errc::bad_layout, {});
    check_thrown([&] { view.as<std::uint64_t>(std::numeric_limits<std::size_t>::max()); },
                 sysv::errc::bad_layout, {});
    // Misaligned.
    check_thrown([&] { view.as<std::uint64_t>(4); }, sysv::errc::bad_layout,
                 {"alignment 8", "offset 4"});
    check_thrown([&] { view.as<std::uint32_t>(2); }, sysv::errc::bad_layout, {"alignment 4"});

    sysv::error_code ec;
    auto none = view.as_array<std::uint64_t>(2, 3, ec);
    BOOST_TEST((ec == sysv::errc::bad_layout));
    BOOST_TEST(none.empty());
    auto some = view.as_array<std::uint64_t>(2, 8, ec);
    BOOST_TEST(!ec);
    BOOST_TEST(some.size() == 2u);
    // The non-throwing as<T> gives a pointer: null when the object does not fit.
    BOOST_TEST(view.as<std::uint64_t>(60, ec) == nullptr);
    BOOST_TEST((ec == sysv::errc::bad_layout));
    std::uint64_t* fits = view.as<std::uint64_t>(56, ec);
    BOOST_TEST(!ec);
    BOOST_TEST(fits == &view.as<std::uint64_t>(56));

    // The same checks on a read-only attachment.
    auto ro = segment.attach(sysv::access::read_only);
    BOOST_TEST(ro.as<std::uint64_t>(56) == view.as<std::uint64_t>(56));
    BOOST_TEST(ro.as<std::uint32_t>(60) == 99u);
    check_thrown([&] { ro.as<std::uint64_t>(57); }, sysv::errc::bad_layout, {});
}

BOOST_AUTO_TEST_CASE(attachments_move_and_detach) {
    sysv_test::ipc_guard guard;
    auto segment = make_segment(guard, 4096);
    BOOST_TEST(attach_count(segment) == 0u);

    auto a = segment.attach();
    BOOST_TEST(attach_count(segment) == 1u);
    a.as<int>(0) = 5;

    sysv::attachment b(std::move(a)); // moves the mapping, does not detach
    BOOST_TEST(!a.is_attached());
    BOOST_TEST(a.size() == 0u);
    BOOST_TEST(a.bytes().empty());
    BOOST_TEST(b.is_attached());
    BOOST_TEST(b.as<int>(0) == 5);
    BOOST_TEST(attach_count(segment) == 1u);

    auto c = segment.attach();
    BOOST_TEST(attach_count(segment) == 2u);
    c = std::move(b); // c's own mapping is detached, b's moves in
    BOOST_TEST(attach_count(segment) == 1u);
    BOOST_TEST(!b.is_attached());
    BOOST_TEST(c.as<int>(0) == 5);

    c.detach();
    BOOST_TEST(!c.is_attached());
    BOOST_TEST(attach_count(segment) == 0u);
    c.detach(); // harmless
    check_thrown([&] { c.as<int>(0); }, sysv::errc::bad_layout, {});

    {
        auto scoped = segment.attach(sysv::access::read_only);
        BOOST_TEST(attach_count(segment) == 1u);
        sysv::read_only_attachment other;
        BOOST_TEST(!other.is_attached());
        other = std::move(scoped);
        BOOST_TEST(attach_count(segment) == 1u);
    }
    BOOST_TEST(attach_count(segment) == 0u); // the destructor detached
}

BOOST_AUTO_TEST_CASE(ipc_stat_reports_size_pids_and_removal_while_attached) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    auto segment = sysv::shared_memory::create(k, 1000, 0640);
    guard.memory(segment);

    auto st = segment.stat();
    BOOST_TEST((st.ipc_key == k));
    BOOST_TEST(st.size == 1000u);
    BOOST_TEST(st.owner.owner_uid == ::geteuid());
    BOOST_TEST(st.owner.owner_gid == ::getegid());
    BOOST_TEST(st.owner.mode == 0640u);
    BOOST_TEST(st.creator_uid == ::geteuid());
    BOOST_TEST(st.creator_pid == ::getpid());
    BOOST_TEST(st.attach_count == 0u);
    BOOST_TEST(!st.last_attach.has_value());
    BOOST_TEST(!st.last_detach.has_value());
    BOOST_TEST(!st.marked_for_removal);

    // A child attaches and detaches: last_pid names it, the times are set.
    sysv_test::child visitor([&] {
        auto view = segment.attach();
        view.as<int>(0) = 1;
        return 0;
    });
    BOOST_TEST(visitor.wait().exited_with(0));
    st = segment.stat();
    BOOST_TEST(st.last_pid == visitor.pid());
    BOOST_TEST(st.creator_pid == ::getpid());
    BOOST_TEST(st.last_attach.has_value());
    BOOST_TEST(st.last_detach.has_value());
    BOOST_TEST(st.attach_count == 0u);

    // Removed while attached: it lives on, marked, until the last detach.
    auto view = segment.attach();
    auto observer = sysv::shared_memory::open_id(segment.id());
    const int id = segment.id();
    segment.remove();
    BOOST_TEST(!segment.is_open());
    st = observer.stat();
    BOOST_TEST(st.marked_for_removal);
    BOOST_TEST(st.attach_count == 1u);
    BOOST_TEST(st.last_pid == ::getpid());
    BOOST_TEST(view.as<int>(0) == 1); // still usable
    sysv::error_code ec;
    sysv::shared_memory::open(k, ec); // the key no longer finds it
    BOOST_TEST((ec == boost::system::errc::no_such_file_or_directory), ec.message());

    view.detach();
    BOOST_TEST(!sysv_test::segment_exists(id));
    observer.stat(ec);
    BOOST_TEST((ec == sysv::errc::removed), ec.message());
}

BOOST_AUTO_TEST_CASE(ipc_set_changes_the_mode_seen_by_ipc_stat) {
    sysv_test::ipc_guard guard;
    auto segment = make_segment(guard, 128);
    segment.set_permissions({::geteuid(), ::getegid(), 0604});
    BOOST_TEST(segment.stat().owner.mode == 0604u);
    BOOST_TEST(sysv::shared_memory::open_id(segment.id()).stat().owner.mode == 0604u);
    segment.set_permissions({65534, 65534, 0660});
    const auto st = segment.stat();
    BOOST_TEST(st.owner.owner_uid == 65534u);
    BOOST_TEST(st.owner.owner_gid == 65534u);
    BOOST_TEST(st.owner.mode == 0660u);
    BOOST_TEST(st.creator_uid == ::geteuid());
}

BOOST_AUTO_TEST_CASE(handles_move_and_scoped_remover_removes) {
    sysv_test::ipc_guard guard;
    auto segment = make_segment(guard, 128);
    const int id = segment.id();
    sysv::shared_memory moved(std::move(segment));
    BOOST_TEST(moved.id() == id);
    BOOST_TEST(moved.size() == 128u);
    BOOST_TEST(!segment.is_open());
    BOOST_TEST(segment.size() == 0u);
    sysv::shared_memory assigned;
    assigned = std::move(moved);
    BOOST_TEST(assigned.id() == id);
    BOOST_TEST(!moved.is_open());
    BOOST_TEST(sysv_test::segment_exists(id)); // handles never remove on their own
    { sysv::scoped_remover remover(assigned); }
    BOOST_TEST(!sysv_test::segment_exists(id));
}

BOOST_AUTO_TEST_SUITE_END()
