// Objects another user created are never trusted, even once handed over. The kernel gives an
// object's creator (cuid) the owner's rights for as long as the object lives, so an attacker who
// creates an object at a victim's key and hands it over with IPC_SET can still read, write and
// remove it. Each case runs the attack with two real unprivileged users (forked children that
// drop privileges): `nobody` squats the key and hands the object to `daemon`, whose open must
// refuse it with errc::foreign_object and a message naming the creator.
#include "harness.hpp"

#include <grp.h>
#include <pwd.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>

#include <boost/asio.hpp>

import sysv.channel;
import sysv.mutex;

#include "harness_ipc.hpp"

namespace asio = boost::asio;
using sysv::error_code;

namespace {

struct user {
    uid_t uid;
    gid_t gid;
};

/// A user of this machine by name (the test fails when it does not exist).
user user_named(const char* name) {
    const passwd* pw = ::getpwnam(name);
    BOOST_REQUIRE_MESSAGE(pw != nullptr, "no user " << name << " on this machine");
    return {pw->pw_uid, pw->pw_gid};
}

const user& attacker() {
    static const user u = user_named("nobody");
    return u;
}
const user& victim() {
    static const user u = user_named("daemon");
    return u;
}

/// Runs `body` in a child that has become `who` (no supplementary groups, no way back).
void as_user(const user& who, const char* what, const std::function<int()>& body) {
    const auto status = sysv_test::run_in_child([&] {
        SYSV_CHILD_CHECK(::setgroups(0, nullptr) == 0);
        SYSV_CHILD_CHECK(::setgid(who.gid) == 0);
        SYSV_CHILD_CHECK(::setuid(who.uid) == 0);
        SYSV_CHILD_CHECK(::geteuid() == who.uid);
        return body();
    });
    BOOST_TEST(status.exited_with(0), what);
}

/// IPC_SET: hands an object over to `to` (owner uid and gid), mode 0600.
void hand_over_set(int id, const user& to) {
    semid_ds ds{};
    SYSV_CHILD_CHECK(::semctl(id, 0, IPC_STAT, &ds) == 0);
    ds.sem_perm.uid = to.uid;
    ds.sem_perm.gid = to.gid;
    ds.sem_perm.mode = 0600;
    SYSV_CHILD_CHECK(::semctl(id, 0, IPC_SET, &ds) == 0);
}
void hand_over_segment(int id, const user& to) {
    shmid_ds ds{};
    SYSV_CHILD_CHECK(::shmctl(id, IPC_STAT, &ds) == 0);
    ds.shm_perm.uid = to.uid;
    ds.shm_perm.gid = to.gid;
    ds.shm_perm.mode = 0600;
    SYSV_CHILD_CHECK(::shmctl(id, IPC_SET, &ds) == 0);
}

/// The handed-over object really is the victim's now, as far as ownership says.
void check_handed_over_set(key_t k) {
    semid_ds ds{};
    const int id = ::semget(k, 0, 0);
    BOOST_REQUIRE(id != -1);
    BOOST_REQUIRE(::semctl(id, 0, IPC_STAT, &ds) == 0);
    BOOST_TEST(ds.sem_perm.uid == victim().uid);
    BOOST_TEST(ds.sem_perm.cuid == attacker().uid);
}

bool names_the_creator(const std::string& message) {
    return message.find("created by uid " + std::to_string(attacker().uid)) != std::string::npos;
}

} // namespace

BOOST_AUTO_TEST_SUITE(foreign_creators)

BOOST_AUTO_TEST_CASE(a_semaphore_set_squatted_and_handed_over_is_refused) {
    sysv_test::ipc_guard guard;
    const key_t k = guard.temp_key();
    guard.objects_at(k);
    as_user(attacker(), "attacker squats the key", [&] {
        auto set = sysv::semaphore_set::create(sysv::key(k), {3, 7}, 0600); // published
        hand_over_set(set.id(), victim());
        return 0;
    });
    check_handed_over_set(k);
    as_user(victim(), "victim refuses the set", [&] {
        error_code ec;
        const std::array<int, 2> wanted{3, 7};
        sysv::semaphore_set::open_or_create(sysv::key(k), wanted, 0600, {}, ec);
        SYSV_CHILD_CHECK(ec == sysv::errc::foreign_object);
        try {
            sysv::semaphore_set::open_or_create(sysv::key(k), {3, 7});
            SYSV_CHILD_CHECK(false && "open_or_create accepted the squatted set");
        } catch (const sysv::system_error& e) {
            SYSV_CHILD_CHECK(e.code() == sysv::errc::foreign_object);
            SYSV_CHILD_CHECK(names_the_creator(e.what()));
        }
        return 0;
    });
}

BOOST_AUTO_TEST_CASE(a_segment_squatted_and_handed_over_is_refused) {
    sysv_test::ipc_guard guard;
    const key_t k = guard.temp_key();
    guard.objects_at(k);
    as_user(attacker(), "attacker squats the key", [&] {
        auto segment = sysv::shared_memory::create(sysv::key(k), 4096, 0600);
        hand_over_segment(segment.id(), victim());
        return 0;
    });
    as_user(victim(), "victim refuses the segment", [&] {
        error_code ec;
        sysv::shared_memory::open_or_create(sysv::key(k), 4096, 0600, ec);
        SYSV_CHILD_CHECK(ec == sysv::errc::foreign_object);
        try {
            sysv::shared_memory::open_or_create(sysv::key(k), 4096);
            SYSV_CHILD_CHECK(false && "open_or_create accepted the squatted segment");
        } catch (const sysv::system_error& e) {
            SYSV_CHILD_CHECK(e.code() == sysv::errc::foreign_object);
            SYSV_CHILD_CHECK(names_the_creator(e.what()));
        }
        return 0;
    });
}

BOOST_AUTO_TEST_CASE(a_mutex_set_squatted_and_handed_over_is_refused) {
    sysv_test::ipc_guard guard;
    const key_t k = guard.temp_key();
    guard.objects_at(k);
    as_user(attacker(), "attacker squats the key", [&] {
        auto set = sysv::semaphore_set::create(sysv::key(k), {1}, 0600); // a free mutex
        hand_over_set(set.id(), victim());
        return 0;
    });
    check_handed_over_set(k);
    as_user(victim(), "victim refuses the mutex", [&] {
        asio::io_context io;
        try {
            auto m = sysv::mutex::open_or_create(io.get_executor(), sysv::key(k));
            SYSV_CHILD_CHECK(false && "mutex::open_or_create accepted the squatted set");
        } catch (const sysv::system_error& e) {
            SYSV_CHILD_CHECK(e.code() == sysv::errc::foreign_object);
            SYSV_CHILD_CHECK(names_the_creator(e.what()));
        }
        return 0;
    });
}

BOOST_AUTO_TEST_CASE(a_room_squatted_set_up_and_handed_over_is_refused) {
    sysv_test::ipc_guard guard;
    const key_t k = guard.temp_key();
    guard.objects_at(k);
    sysv::channel_options options;
    options.shape.max_readers = 4;
    options.shape.max_message_size = 64;
    options.shape.capacity = 4096;
    as_user(attacker(), "attacker sets up a room at the key", [&] {
        asio::io_context io;
        {
            // A room like the victim's would be: the library's own layout, fully initialised.
            auto room = sysv::channel::open_or_create(io.get_executor(), sysv::key(k), options);
            hand_over_set(::semget(k, 0, 0), victim());
            hand_over_segment(::shmget(k, 0, 0), victim());
        }
        return 0;
    });
    check_handed_over_set(k);
    as_user(victim(), "victim refuses the room", [&] {
        asio::io_context io;
        error_code ec;
        auto room = sysv::channel::open_or_create(io.get_executor(), sysv::key(k), options, ec);
        SYSV_CHILD_CHECK(ec == sysv::errc::foreign_object);
        try {
            auto again = sysv::channel::open_or_create(io.get_executor(), sysv::key(k), options);
            SYSV_CHILD_CHECK(false && "channel::open_or_create joined the squatted room");
        } catch (const sysv::system_error& e) {
            SYSV_CHILD_CHECK(e.code() == sysv::errc::foreign_object);
            SYSV_CHILD_CHECK(names_the_creator(e.what()));
        }
        return 0;
    });
}

BOOST_AUTO_TEST_CASE(a_doorbell_table_squatted_and_handed_over_is_not_used) {
    sysv_test::ipc_guard guard;
    // The victim's table key (this suite runs in an IPC namespace of its own: nobody else's).
    const key_t table_key = static_cast<key_t>(0x5d000000u | (victim().uid & 0xffffffu));
    BOOST_REQUIRE(::shmget(table_key, 0, 0) == -1);
    guard.objects_at(table_key);
    as_user(attacker(), "attacker squats the victim's table key", [&] {
        // An all-zero segment of the table's size is a valid empty table.
        const int id = ::shmget(table_key, sysv::detail::doorbell_table::size, IPC_CREAT | 0600);
        SYSV_CHILD_CHECK(id != -1);
        hand_over_segment(id, victim());
        return 0;
    });
    as_user(victim(), "victim does not use the table", [&] {
        ::unsetenv("SYSV_DOORBELL_KEY"); // the user's own key, which the attacker squatted
        SYSV_CHILD_CHECK(sysv::detail::doorbell_table::table_key() == sysv::key(table_key));
        SYSV_CHILD_CHECK(sysv::detail::doorbell_table::get() == nullptr);
        const std::string reason = sysv::detail::doorbell_table::unavailable_reason();
        std::fprintf(stderr, "victim: %s\n", reason.c_str());
        SYSV_CHILD_CHECK(names_the_creator(reason));
        // Waits still work: they poll.
        asio::io_context io;
        SYSV_CHILD_CHECK(sysv::wake_mode_of(io) == sysv::wake_mode::polling);
        SYSV_CHILD_CHECK(sysv::wake_mode_reason(io).find("created by uid") != std::string::npos);
        return 0;
    });
}

BOOST_AUTO_TEST_SUITE_END()
