// Every error of the synchronous core provoked for real, with the error code and the thrown
// message (operation, object key/id, cause, and for limits which limit and where to raise it);
// permission errors from an unprivileged child, objects removed by another handle or process,
// and handles that are not open.
#include "harness.hpp"

#include <grp.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <functional>
#include <initializer_list>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

import sysv.core;

namespace {

using sysv_test::eventually;

using sysv_test::check_thrown;

/// The same for a forked child (no Boost.Test there): prints what is wrong, returns false.
template <class Expected>
bool child_thrown(const char* label, const std::function<void()>& statement,
                  const Expected& expected, std::initializer_list<std::string_view> needles) {
    try {
        statement();
    } catch (const boost::system::system_error& e) {
        const std::string what = e.what();
        bool ok = e.code() == expected;
        if (!ok)
            std::fprintf(stderr, "child: %s: unexpected code in: %s\n", label, what.c_str());
        for (std::string_view needle : needles)
            if (what.find(needle) == std::string::npos) {
                std::fprintf(stderr, "child: %s: \"%.*s\" missing in: %s\n", label,
                             static_cast<int>(needle.size()), needle.data(), what.c_str());
                ok = false;
            }
        return ok;
    }
    std::fprintf(stderr, "child: %s: nothing thrown\n", label);
    return false;
}

const boost::system::error_code system_error_code(int err) {
    return boost::system::error_code(err, boost::system::system_category());
}

/// In a forked child: become nobody (uid and gid 65534, no supplementary groups).
void drop_privileges() {
    SYSV_CHILD_CHECK(::setgroups(0, nullptr) == 0);
    SYSV_CHILD_CHECK(::setgid(65534) == 0);
    SYSV_CHILD_CHECK(::setuid(65534) == 0);
    SYSV_CHILD_CHECK(::geteuid() == 65534);
}

std::string id_text(int id) {
    return "id " + std::to_string(id);
}

} // namespace

BOOST_AUTO_TEST_SUITE(core_errors)

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(missing_ftok_file_names_the_path_and_project_id) {
    sysv_test::ipc_guard guard;
    const auto missing = guard.temp_file().parent_path() / "no-such-file";
    sysv::error_code ec;
    const auto k = sysv::key::from_path(missing, 42, ec);
    BOOST_TEST((ec == boost::system::errc::no_such_file_or_directory), ec.message());
    BOOST_TEST((ec.category() == boost::system::system_category()));
    BOOST_TEST(k.is_private());

    check_thrown([&] { sysv::key::from_path(missing, 42); }, system_error_code(ENOENT),
                 {"ftok", missing.string(), "project id 42", "No such file or directory"});
}

BOOST_AUTO_TEST_CASE(project_ids_outside_1_to_255_are_refused) {
    sysv_test::ipc_guard guard;
    const auto path = guard.temp_file();
    for (const int project_id : {0, 256, -1, 1000}) {
        BOOST_TEST_CONTEXT("project id " << project_id) {
            sysv::error_code ec;
            sysv::key::from_path(path, project_id, ec);
            BOOST_TEST((ec == sysv::errc::invalid_argument));
            check_thrown(
                [&] { sysv::key::from_path(path, project_id); }, sysv::errc::invalid_argument,
                {path.string(), "project id " + std::to_string(project_id) + " is outside 1..255"});
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Creating where something exists, sizes, foreign objects
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(exclusive_create_at_a_used_key_is_eexist) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    auto set = sysv::semaphore_set::create(k, {1, 2});
    guard.semaphores(set);
    auto segment = sysv::shared_memory::create(k, 100); // other table: no conflict
    guard.memory(segment);

    sysv::error_code ec;
    const std::vector<int> values{1, 2};
    auto second = sysv::semaphore_set::create(k, values, 0600, ec);
    BOOST_TEST((ec == boost::system::errc::file_exists));
    BOOST_TEST((ec.category() == boost::system::system_category()));
    BOOST_TEST(!second.is_open());
    check_thrown(
        [&] {
            sysv::semaphore_set::create(k, {1, 2});
        },
        system_error_code(EEXIST),
        {"semget (create)", "semaphore set", "key " + sysv::to_string(k), "File exists"});

    sysv::shared_memory::create(k, 100, ec);
    BOOST_TEST((ec == boost::system::errc::file_exists));
    check_thrown([&] { sysv::shared_memory::create(k, 100); }, system_error_code(EEXIST),
                 {"shmget (create)", "shared memory", "key " + sysv::to_string(k), "File exists"});
    BOOST_TEST(set.values() == values, boost::test_tools::per_element()); // untouched
}

BOOST_AUTO_TEST_CASE(sizes_that_do_not_match) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    auto segment = sysv::shared_memory::create(k, 1000);
    guard.memory(segment);
    check_thrown([&] { sysv::shared_memory::open_or_create(k, 1001); }, sysv::errc::foreign_object,
                 {"wanted 1001 bytes", "found 1000 bytes"});

    auto set = sysv::semaphore_set::create(sysv::key::private_key(), {1, 2});
    guard.semaphores(set);
    check_thrown(
        [&] {
            set.set_values({1, 2, 3});
        },
        sysv::errc::invalid_argument,
        {"semctl (SETALL)", id_text(set.id()), "3 values for a set of 2 semaphore(s)"});
    check_thrown([&] { set.set_values({1}); }, sysv::errc::invalid_argument,
                 {"1 values for a set of 2 semaphore(s)"});
    BOOST_TEST(set.values() == std::vector<int>({1, 2}), boost::test_tools::per_element());

    check_thrown([&] { sysv::shared_memory::create(sysv::key::private_key(), 0); },
                 sysv::errc::invalid_argument, {"size 0 bytes"});
    check_thrown([&] { sysv::semaphore_set::create(sysv::key::private_key(), {}); },
                 sysv::errc::invalid_argument, {"0 semaphore(s)"});
}

BOOST_AUTO_TEST_CASE(foreign_objects_are_named_in_the_message) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    auto set = sysv::semaphore_set::create(k, {1}, 0660);
    guard.semaphores(set);
    auto segment = sysv::shared_memory::create(k, 100, 0660);
    guard.memory(segment);
    check_thrown([&] { sysv::semaphore_set::open_or_create(k, {1}); }, sysv::errc::foreign_object,
                 {"semget (open or create)", "key " + sysv::to_string(k), "not ours",
                  "found " + id_text(set.id()), "mode 0660"});
    check_thrown([&] { sysv::shared_memory::open_or_create(k, 100); }, sysv::errc::foreign_object,
                 {"shmget (open or create)", "key " + sysv::to_string(k), "not ours",
                  "(" + id_text(segment.id()) + ")", "mode 0660"});
}

// ---------------------------------------------------------------------------------------------
// Permissions: an unprivileged child and root's 0600 objects
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(another_user_gets_permission_denied) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    auto set = sysv::semaphore_set::create(k, {1});
    guard.semaphores(set);
    auto segment = sysv::shared_memory::create(k, 4096);
    guard.memory(segment);
    const auto denied = boost::system::errc::permission_denied;

    const auto status = sysv_test::run_in_child([&] {
        drop_privileges();
        const std::string key_text = sysv::to_string(k);
        // Opening by key finds the object but may not read its status.
        sysv::error_code ec;
        sysv::semaphore_set::open(k, ec);
        SYSV_CHILD_CHECK(ec == denied);
        SYSV_CHILD_CHECK(ec.category() == boost::system::system_category());
        SYSV_CHILD_CHECK(child_thrown("semaphore_set::open", [&] { sysv::semaphore_set::open(k); },
                                      denied, {"semget (open)", key_text, "Permission denied"}));
        SYSV_CHILD_CHECK(child_thrown("semaphore_set::open_or_create",
                                      [&] { sysv::semaphore_set::open_or_create(k, {1}); }, denied,
                                      {key_text, "Permission denied"}));
        SYSV_CHILD_CHECK(child_thrown("shared_memory::open", [&] { sysv::shared_memory::open(k); },
                                      denied, {"shmget (open)", key_text, "Permission denied"}));
        SYSV_CHILD_CHECK(child_thrown("shared_memory::open_or_create",
                                      [&] { sysv::shared_memory::open_or_create(k, 4096); }, denied,
                                      {key_text}));

        // Handles inherited from root: every operation is refused by the kernel.
        const std::string set_id = id_text(set.id());
        SYSV_CHILD_CHECK(child_thrown("apply", [&] { set.apply(sysv::op::acquire(0)); }, denied,
                                      {"semop", set_id, key_text, "Permission denied"}));
        SYSV_CHILD_CHECK(child_thrown("try_apply", [&] { set.try_apply(sysv::op::release(0)); },
                                      denied, {set_id}));
        SYSV_CHILD_CHECK(
            child_thrown("try_apply_for",
                         [&] { set.try_apply_for(sysv::op::acquire(0), std::chrono::seconds(1)); },
                         denied, {set_id}));
        SYSV_CHILD_CHECK(child_thrown("value", [&] { set.value(0); }, denied, {"GETVAL", set_id}));
        SYSV_CHILD_CHECK(child_thrown("values", [&] { set.values(); }, denied, {"GETALL", set_id}));
        SYSV_CHILD_CHECK(
            child_thrown("set_value", [&] { set.set_value(0, 0); }, denied, {"SETVAL", set_id}));
        SYSV_CHILD_CHECK(child_thrown("stat", [&] { set.stat(); }, denied, {"IPC_STAT", set_id}));
        // Only the owner (or root) may change permissions or remove: EPERM.
        SYSV_CHILD_CHECK(child_thrown("set_permissions",
                                      [&] {
                                          set.set_permissions({65534, 65534, 0666});
                                      },
                                      boost::system::errc::operation_not_permitted,
                                      {"IPC_SET", set_id}));
        SYSV_CHILD_CHECK(child_thrown("remove", [&] { set.remove(); },
                                      boost::system::errc::operation_not_permitted,
                                      {"IPC_RMID", set_id}));

        const std::string segment_id = id_text(segment.id());
        SYSV_CHILD_CHECK(child_thrown("attach", [&] { segment.attach(); }, denied,
                                      {"shmat (read-write)", segment_id, "Permission denied"}));
        SYSV_CHILD_CHECK(child_thrown("attach read-only",
                                      [&] { segment.attach(sysv::access::read_only); }, denied,
                                      {"shmat (read-only)", segment_id}));
        SYSV_CHILD_CHECK(
            child_thrown("shm stat", [&] { segment.stat(); }, denied, {"IPC_STAT", segment_id}));
        SYSV_CHILD_CHECK(child_thrown("shm remove", [&] { segment.remove(); },
                                      boost::system::errc::operation_not_permitted,
                                      {"IPC_RMID", segment_id}));
        return 0;
    });
    BOOST_TEST(status.exited_with(0), status);
    // Nothing was changed by the child.
    BOOST_TEST(set.value(0) == 1);
    BOOST_TEST(set.stat().owner.mode == 0600u);
    BOOST_TEST(segment.stat().attach_count == 0u);
}

BOOST_AUTO_TEST_CASE(another_user_may_use_objects_shared_with_it) {
    // The control for the test above: with mode 0606 the same child succeeds.
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    auto set = sysv::semaphore_set::create(k, {1}, 0606);
    guard.semaphores(set);
    auto segment = sysv::shared_memory::create(k, 4096, 0606);
    guard.memory(segment);
    const auto status = sysv_test::run_in_child([&] {
        drop_privileges();
        auto mine = sysv::semaphore_set::open(k);
        mine.apply(sysv::op::acquire(0));
        auto memory = sysv::shared_memory::open(k);
        auto view = memory.attach();
        view.as<int>(0) = 17;
        return 0;
    });
    BOOST_TEST(status.exited_with(0), status);
    BOOST_TEST(set.value(0) == 0);
    const auto reader = segment.attach(sysv::access::read_only);
    BOOST_TEST(reader.as<int>(0) == 17);
}

// ---------------------------------------------------------------------------------------------
// Objects removed by someone else
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(a_set_removed_through_another_handle_reports_removed) {
    sysv_test::ipc_guard guard;
    auto set = sysv::semaphore_set::create(sysv::key(guard.temp_key()), {1, 1});
    guard.semaphores(set);
    const std::string id = id_text(set.id());
    sysv::semaphore_set::open_id(set.id()).remove();

    BOOST_TEST(set.is_open()); // this handle does not know yet
    sysv::error_code ec;
    set.value(0, ec);
    BOOST_TEST((ec == sysv::errc::removed), ec.message());
    BOOST_TEST(!set.try_apply(sysv::op::release(0), ec));
    BOOST_TEST((ec == sysv::errc::removed), ec.message());
    set.apply(sysv::op::release(0), ec);
    BOOST_TEST((ec == sysv::errc::removed), ec.message());

    const auto removed = sysv::errc::removed;
    check_thrown([&] { set.value(0); }, removed, {"GETVAL 0", id, "the object was removed"});
    check_thrown([&] { set.values(); }, removed, {"GETALL", id});
    check_thrown([&] { set.set_value(1, 3); }, removed, {"SETVAL 1", id});
    check_thrown([&] { set.set_values({3, 3}); }, removed, {"SETALL", id});
    check_thrown([&] { set.last_pid(0); }, removed, {"GETPID", id});
    check_thrown([&] { set.waiting_for_increase(0); }, removed, {"GETNCNT", id});
    check_thrown([&] { set.waiting_for_zero(0); }, removed, {"GETZCNT", id});
    check_thrown([&] { set.stat(); }, removed, {"IPC_STAT", id});
    check_thrown([&] { set.set_permissions({0, 0, 0600}); }, removed, {"IPC_SET", id});
    check_thrown([&] { set.apply(sysv::op::acquire(0)); }, removed, {"semop", id});
    check_thrown([&] { set.try_apply(sysv::op::acquire(0)); }, removed, {"semop", id});
    check_thrown([&] { set.try_apply_for(sysv::op::acquire(0), std::chrono::seconds(1)); }, removed,
                 {"semtimedop", id});
    check_thrown([&] { set.remove(); }, removed, {"IPC_RMID", id});
    check_thrown([&] { sysv::semaphore_set::open_id(set.id()); }, removed, {id});
}

BOOST_AUTO_TEST_CASE(a_segment_removed_by_another_process_reports_removed) {
    sysv_test::ipc_guard guard;
    auto segment = sysv::shared_memory::create(sysv::key(guard.temp_key()), 4096);
    guard.memory(segment);
    const std::string id = id_text(segment.id());
    const auto status = sysv_test::run_in_child([&] {
        sysv::shared_memory::open_id(segment.id()).remove();
        return 0;
    });
    BOOST_REQUIRE(status.exited_with(0));

    sysv::error_code ec;
    segment.attach(ec);
    BOOST_TEST((ec == sysv::errc::removed), ec.message());
    const auto removed = sysv::errc::removed;
    check_thrown([&] { segment.attach(); }, removed, {"shmat", id, "the object was removed"});
    check_thrown([&] { segment.attach(sysv::access::read_only); }, removed, {"shmat", id});
    check_thrown([&] { segment.stat(); }, removed, {"IPC_STAT", id});
    check_thrown([&] { segment.set_permissions({0, 0, 0600}); }, removed, {"IPC_SET", id});
    check_thrown([&] { segment.remove(); }, removed, {"IPC_RMID", id});
    check_thrown([&] { sysv::shared_memory::open_id(segment.id()); }, removed, {id});
}

BOOST_AUTO_TEST_CASE(a_set_removed_by_another_process_wakes_a_blocked_apply) {
    sysv_test::ipc_guard guard;
    auto set = sysv::semaphore_set::create(sysv::key(guard.temp_key()), {0});
    guard.semaphores(set);
    sysv_test::child waiter([&] {
        sysv::error_code ec;
        set.apply(sysv::op::acquire(0), ec); // EIDRM
        SYSV_CHILD_CHECK(ec == sysv::errc::removed);
        SYSV_CHILD_CHECK(child_thrown("apply after removal",
                                      [&] { set.apply(sysv::op::acquire(0)); }, sysv::errc::removed,
                                      {"semop", "the object was removed"}));
        return 0;
    });
    BOOST_REQUIRE(eventually([&] { return set.waiting_for_increase(0) == 1; }));
    sysv::semaphore_set::open_id(set.id()).remove();
    const auto status = waiter.wait_for(std::chrono::seconds(60));
    BOOST_TEST(status.exited_with(0), status);

    // The same for a blocked try_apply_for, in this process.
    auto second = sysv::semaphore_set::create(sysv::key::private_key(), {0});
    guard.semaphores(second);
    sysv_test::child remover([&] {
        SYSV_CHILD_CHECK(eventually([&] { return second.waiting_for_increase(0) == 1; }));
        sysv::semaphore_set::open_id(second.id()).remove();
        return 0;
    });
    sysv::error_code ec;
    BOOST_TEST(!second.try_apply_for(sysv::op::acquire(0), std::chrono::seconds(60), ec));
    BOOST_TEST((ec == sysv::errc::removed), ec.message());
    BOOST_TEST(remover.wait().exited_with(0));
}

// ---------------------------------------------------------------------------------------------
// Values, indexes and limits
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(the_kernel_refuses_values_above_semvmx_with_erange) {
    sysv_test::ipc_guard guard;
    auto set = sysv::semaphore_set::create(sysv::key::private_key(), {0, 0});
    guard.semaphores(set);
    set.set_value(0, 32767);
    const std::string id = id_text(set.id());

    sysv::error_code ec;
    BOOST_TEST(!set.try_apply(sysv::op::release(0), ec));
    BOOST_TEST((ec == boost::system::errc::result_out_of_range), ec.message());
    BOOST_TEST((ec.category() == boost::system::system_category()));
    check_thrown([&] { set.try_apply(sysv::op::release(0)); }, system_error_code(ERANGE),
                 {"semop (IPC_NOWAIT)", id, "SEMVMX = 32767"});
    check_thrown([&] { set.apply(sysv::op::release(0)); }, system_error_code(ERANGE),
                 {"semop", id, "SEMVMX = 32767"});
    // Two valid releases that together overflow: nothing is applied.
    check_thrown(
        [&] {
            set.apply({sysv::op::release(1, 20000), sysv::op::release(1, 20000)});
        },
        system_error_code(ERANGE), {"SEMVMX"});
    BOOST_TEST(set.values() == std::vector<int>({32767, 0}), boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(values_outside_0_to_32767_are_refused_before_the_kernel) {
    sysv_test::ipc_guard guard;
    auto set = sysv::semaphore_set::create(sysv::key::private_key(), {0, 0});
    guard.semaphores(set);
    const auto out = sysv::errc::value_out_of_range;
    sysv::error_code ec;
    set.set_value(0, 40000, ec);
    BOOST_TEST((ec == out));
    check_thrown([&] { set.set_value(0, 40000); }, out,
                 {"SETVAL 0", id_text(set.id()), "value 40000", "0..32767"});
    check_thrown([&] { set.set_value(1, -1); }, out, {"value -1"});
    check_thrown([&] { set.set_values({1, 40000}); }, out, {"SETALL", "value 40000 at index 1"});
    check_thrown([&] { set.apply(sysv::op::release(0, 0)); }, out,
                 {"semop", "0 units on semaphore 0, must be 1..32767"});
    check_thrown([&] { set.try_apply(sysv::op::acquire(1, 40000)); }, out,
                 {"40000 units on semaphore 1"});
    check_thrown([&] { set.try_apply_for(sysv::op::release(0, -3), std::chrono::seconds(1)); }, out,
                 {"-3 units"});
    BOOST_TEST((set.validate(sysv::op::release(0, 32768)) == out));
    BOOST_TEST(!set.validate(sysv::op::release(0, 32767)));
    BOOST_TEST(set.values() == std::vector<int>({0, 0}), boost::test_tools::per_element());

    check_thrown(
        [&] {
            sysv::semaphore_set::create(sysv::key::private_key(), {1, 40000});
        },
        out, {"semget (create)", "value 40000 at index 1"});
    check_thrown([&] { sysv::semaphore_set::open_or_create(sysv::key::private_key(), {-1}); }, out,
                 {"semget (open or create)", "value -1 at index 0"});
}

BOOST_AUTO_TEST_CASE(indexes_outside_the_set_name_the_index_and_the_size) {
    sysv_test::ipc_guard guard;
    auto set = sysv::semaphore_set::create(sysv::key::private_key(), {1, 1});
    guard.semaphores(set);
    const auto out = sysv::errc::index_out_of_range;
    const std::string id = id_text(set.id());
    sysv::error_code ec;
    BOOST_TEST(set.value(5, ec) == -1);
    BOOST_TEST((ec == out));
    check_thrown([&] { set.value(5); }, out,
                 {"GETVAL 5", id, "semaphore index 5, the set has 2 semaphore(s)"});
    check_thrown([&] { set.last_pid(2); }, out, {"GETPID 2", "semaphore index 2"});
    check_thrown([&] { set.waiting_for_increase(2); }, out, {"GETNCNT 2", "index 2"});
    check_thrown([&] { set.waiting_for_zero(9); }, out, {"GETZCNT 9", "index 9"});
    check_thrown([&] { set.set_value(2, 1); }, out, {"SETVAL 2", "the set has 2 semaphore(s)"});
    check_thrown(
        [&] {
            set.apply({sysv::op::release(0), sysv::op::release(2)});
        },
        out, {"semop", "semaphore index 2, the set has 2 semaphore(s)"});
    check_thrown([&] { set.try_apply(sysv::op::wait_zero(70000)); }, out,
                 {"semaphore index 70000"});
    BOOST_TEST(set.values() == std::vector<int>({1, 1}), boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(too_many_operations_exceed_semopm) {
    sysv_test::ipc_guard guard;
    auto set = sysv::semaphore_set::create(sysv::key::private_key(), {0});
    guard.semaphores(set);
    const auto semopm = static_cast<std::size_t>(sysv::limits().max_operations_per_call);
    const std::vector<sysv::operation> group(semopm + 1, sysv::op::release(0));
    sysv::error_code ec;
    set.apply(group, ec);
    BOOST_TEST((ec == sysv::errc::limit_exceeded));
    check_thrown(
        [&] { set.apply(group); }, sysv::errc::limit_exceeded,
        {"semop", id_text(set.id()),
         std::to_string(semopm + 1) + " operations, more than SEMOPM = " + std::to_string(semopm),
         "/proc/sys/kernel/sem"});
    check_thrown([&] { set.try_apply(group); }, sysv::errc::limit_exceeded, {"SEMOPM"});
    BOOST_TEST(set.value(0) == 0);

    const std::vector<sysv::operation> none;
    check_thrown([&] { set.apply(none); }, sysv::errc::invalid_argument, {"empty operation group"});
}

BOOST_AUTO_TEST_CASE(too_many_semaphores_exceed_semmsl) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    const auto semmsl = static_cast<std::size_t>(sysv::limits().max_semaphores_per_set);
    const std::vector<int> values(semmsl + 1, 0);
    sysv::error_code ec;
    sysv::semaphore_set::create(k, values, 0600, ec);
    BOOST_TEST((ec == sysv::errc::limit_exceeded));
    check_thrown([&] { sysv::semaphore_set::create(k, values); }, sysv::errc::limit_exceeded,
                 {"semget (create)", sysv::to_string(k),
                  "more than SEMMSL = " + std::to_string(semmsl), "/proc/sys/kernel/sem"});
    check_thrown([&] { sysv::semaphore_set::open_or_create(k, values); },
                 sysv::errc::limit_exceeded, {"SEMMSL"});
    BOOST_TEST(::semget(k.value(), 0, 0) == -1); // nothing was created
}

BOOST_AUTO_TEST_CASE(segments_above_shmmax_exceed_the_limit) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    const auto shmmax = sysv::limits().max_segment_size;
    BOOST_REQUIRE(shmmax < std::numeric_limits<std::size_t>::max());
    sysv::error_code ec;
    sysv::shared_memory::create(k, shmmax + 1, ec);
    BOOST_TEST((ec == sysv::errc::limit_exceeded));
    check_thrown([&] { sysv::shared_memory::create(k, shmmax + 1); }, sysv::errc::limit_exceeded,
                 {"shmget (create)", sysv::to_string(k), "size " + std::to_string(shmmax + 1),
                  "SHMMAX", "/proc/sys/kernel/shmmax"});
    check_thrown([&] { sysv::shared_memory::open_or_create(k, shmmax + 1); },
                 sysv::errc::limit_exceeded, {"shmmax"});
    BOOST_TEST(::shmget(k.value(), 0, 0) == -1); // nothing was created
}

BOOST_AUTO_TEST_CASE(modes_with_bits_outside_0777_are_invalid) {
    sysv_test::ipc_guard guard;
    const sysv::key k(guard.temp_key());
    const auto invalid = sysv::errc::invalid_argument;
    check_thrown([&] { sysv::semaphore_set::create(k, {1}, 01600); }, invalid,
                 {"semget (create)", "mode 01600 has bits outside 0777"});
    check_thrown([&] { sysv::semaphore_set::open_or_create(k, {1}, 04600); }, invalid,
                 {"semget (open or create)", "mode 04600"});
    check_thrown([&] { sysv::shared_memory::create(k, 100, 01600); }, invalid,
                 {"shmget (create)", "mode 01600 has bits outside 0777"});
    check_thrown([&] { sysv::shared_memory::open_or_create(k, 100, 02600); }, invalid,
                 {"shmget (open or create)", "mode 02600"});
    BOOST_TEST(::semget(k.value(), 0, 0) == -1);
    BOOST_TEST(::shmget(k.value(), 0, 0) == -1);

    auto set = sysv::semaphore_set::create(k, {1});
    guard.semaphores(set);
    auto segment = sysv::shared_memory::create(k, 100);
    guard.memory(segment);
    check_thrown(
        [&] {
            set.set_permissions({::geteuid(), ::getegid(), 01666});
        },
        invalid, {"IPC_SET", id_text(set.id()), "mode 01666"});
    check_thrown(
        [&] {
            segment.set_permissions({::geteuid(), ::getegid(), 01666});
        },
        invalid, {"IPC_SET", id_text(segment.id()), "mode 01666"});
    BOOST_TEST(set.stat().owner.mode == 0600u);
    BOOST_TEST(segment.stat().owner.mode == 0600u);
}

BOOST_AUTO_TEST_CASE(an_invalid_owner_is_invalid_argument_not_removed) {
    // The kernel answers IPC_SET with an unmappable uid/gid with EINVAL, which on other calls
    // means "no such id": the object is still there, so it must not be reported as removed.
    sysv_test::ipc_guard guard;
    auto set = sysv::semaphore_set::create(sysv::key::private_key(), {1});
    guard.semaphores(set);
    auto segment = sysv::shared_memory::create(sysv::key::private_key(), 100);
    guard.memory(segment);
    const auto invalid_uid = static_cast<uid_t>(-1);
    sysv::error_code ec;
    set.set_permissions({invalid_uid, 0, 0600}, ec);
    BOOST_TEST((ec == sysv::errc::invalid_argument), ec.message());
    check_thrown(
        [&] {
            set.set_permissions({invalid_uid, 0, 0600});
        },
        sysv::errc::invalid_argument,
        {"semctl (IPC_SET)", id_text(set.id()), "owner uid 4294967295, gid 0, mode 0600"});
    check_thrown(
        [&] {
            segment.set_permissions({0, static_cast<gid_t>(-1), 0600});
        },
        sysv::errc::invalid_argument,
        {"shmctl (IPC_SET)", id_text(segment.id()), "gid 4294967295"});
    BOOST_TEST(set.stat().owner.owner_uid == ::geteuid()); // unchanged, still there
    BOOST_TEST(segment.stat().owner.owner_gid == ::getegid());
}

// ---------------------------------------------------------------------------------------------
// Handles that are not open
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(semaphore_handles_that_are_not_open_report_not_open) {
    sysv_test::ipc_guard guard;
    auto original = sysv::semaphore_set::create(sysv::key::private_key(), {1});
    guard.semaphores(original);
    sysv::semaphore_set moved_to(std::move(original));
    auto removed = sysv::semaphore_set::create(sysv::key::private_key(), {1});
    guard.semaphores(removed);
    removed.remove();
    sysv::semaphore_set defaulted;

    const auto not_open = sysv::errc::not_open;
    for (sysv::semaphore_set* set : {&original, &removed, &defaulted}) {
        BOOST_TEST(!set->is_open());
        sysv::error_code ec;
        set->values(ec);
        BOOST_TEST((ec == not_open));
        BOOST_TEST((set->validate(sysv::op::release(0)) == not_open));
        check_thrown([&] { set->value(0); }, not_open, {"GETVAL", "the handle is not open"});
        check_thrown([&] { set->values(); }, not_open, {"GETALL"});
        check_thrown([&] { set->set_value(0, 1); }, not_open, {"SETVAL"});
        check_thrown([&] { set->set_values({1}); }, not_open, {"SETALL"});
        check_thrown([&] { set->last_pid(0); }, not_open, {"GETPID"});
        check_thrown([&] { set->waiting_for_increase(0); }, not_open, {"GETNCNT"});
        check_thrown([&] { set->waiting_for_zero(0); }, not_open, {"GETZCNT"});
        check_thrown([&] { set->stat(); }, not_open, {"IPC_STAT"});
        check_thrown([&] { set->set_permissions({0, 0, 0600}); }, not_open, {"IPC_SET"});
        check_thrown([&] { set->remove(); }, not_open, {"IPC_RMID"});
        check_thrown([&] { set->apply(sysv::op::release(0)); }, not_open, {"semop"});
        check_thrown([&] { set->try_apply(sysv::op::release(0)); }, not_open, {"semop"});
        check_thrown([&] { set->try_apply_for(sysv::op::release(0), std::chrono::seconds(1)); },
                     not_open, {"semtimedop"});
    }
    BOOST_TEST(moved_to.value(0) == 1); // the moved-to handle works
}

BOOST_AUTO_TEST_CASE(memory_handles_that_are_not_open_report_not_open) {
    sysv_test::ipc_guard guard;
    auto original = sysv::shared_memory::create(sysv::key::private_key(), 100);
    guard.memory(original);
    sysv::shared_memory moved_to(std::move(original));
    auto removed = sysv::shared_memory::create(sysv::key::private_key(), 100);
    guard.memory(removed);
    removed.remove();
    sysv::shared_memory defaulted;

    const auto not_open = sysv::errc::not_open;
    for (sysv::shared_memory* segment : {&original, &removed, &defaulted}) {
        BOOST_TEST(!segment->is_open());
        sysv::error_code ec;
        auto view = segment->attach(ec);
        BOOST_TEST((ec == not_open));
        BOOST_TEST(!view.is_attached());
        check_thrown([&] { segment->attach(); }, not_open, {"shmat", "the handle is not open"});
        check_thrown([&] { segment->attach(sysv::access::read_only); }, not_open, {"shmat"});
        check_thrown([&] { segment->stat(); }, not_open, {"IPC_STAT"});
        check_thrown([&] { segment->set_permissions({0, 0, 0600}); }, not_open, {"IPC_SET"});
        check_thrown([&] { segment->remove(); }, not_open, {"IPC_RMID"});
    }
    BOOST_TEST(moved_to.attach().size() == 100u);
}

BOOST_AUTO_TEST_SUITE_END()
