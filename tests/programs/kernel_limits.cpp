// Kernel limits exhausted: each test forks a child that enters an IPC namespace of its own,
// lowers the limits there (/proc/sys/kernel/sem, shmmax, shmall, shmmni belong to the namespace),
// and checks that every create path fails with an error that names the limit, its value and
// where to raise it: the core API, the channel, and the chat program.
#include "harness.hpp"

#include "chat/chat_room.hpp"

#include <sched.h>
#include <spawn.h>

#include <cstdlib>
#include <fstream>
#include <string>

import sysv.channel;

extern char** environ;

namespace asio = boost::asio;

namespace {

bool can_make_ipc_namespaces() {
    sysv_test::child probe([] { return ::unshare(CLONE_NEWIPC) == 0 ? 0 : 1; });
    return probe.wait().exited_with(0);
}

struct needs_ipc_namespaces {
    boost::test_tools::assertion_result operator()(boost::unit_test::test_unit_id) const {
        boost::test_tools::assertion_result result(can_make_ipc_namespaces());
        result.message() << "cannot create an IPC namespace (needs root or CAP_SYS_ADMIN)";
        return result;
    }
};

void write_sysctl(const std::string& name, const std::string& value) {
    std::ofstream out("/proc/sys/kernel/" + name);
    out << value;
    out.close();
    if (!out)
        throw std::runtime_error("cannot write /proc/sys/kernel/" + name);
}

/// In a fresh IPC namespace (of this child process only): the limits given, everything else as
/// the kernel's defaults.
void enter_limited_namespace(const std::string& sem, const std::string& shmmax,
                             const std::string& shmall, const std::string& shmmni) {
    if (::unshare(CLONE_NEWIPC) != 0)
        throw std::runtime_error("unshare(CLONE_NEWIPC) failed");
    write_sysctl("sem", sem);
    write_sysctl("shmmax", shmmax);
    write_sysctl("shmall", shmall);
    write_sysctl("shmmni", shmmni);
}

/// Runs `statement`; it must throw a system_error whose code is `expected` and whose message
/// contains every one of `needles`. Returns false (after printing why) otherwise.
template <class Expected>
bool fails_naming(const std::function<void()>& statement, Expected expected,
                  std::initializer_list<std::string_view> needles) {
    try {
        statement();
    } catch (const sysv::system_error& e) {
        const std::string what = e.what();
        bool ok = e.code() == expected;
        for (auto needle : needles)
            ok = ok && what.find(needle) != std::string::npos;
        if (!ok)
            std::fprintf(stderr, "unexpected error (code %s): %s\n", e.code().message().c_str(),
                         what.c_str());
        return ok;
    }
    std::fprintf(stderr, "no error\n");
    return false;
}

const auto no_space = boost::system::errc::no_space_on_device;

} // namespace

BOOST_AUTO_TEST_SUITE(kernel_limits, *boost::unit_test::precondition(needs_ipc_namespaces()))

BOOST_AUTO_TEST_CASE(semaphore_limits_are_named_with_their_value_and_where_to_raise_them) {
    sysv_test::child c([] {
        // SEMMSL 3, SEMMNS 5, SEMOPM 2, SEMMNI 3.
        enter_limited_namespace("3 5 2 3", "1048576", "1024", "8");
        const auto l = sysv::limits();
        SYSV_CHILD_CHECK(l.max_semaphores_per_set == 3 && l.max_semaphores == 5 &&
                         l.max_operations_per_call == 2 && l.max_semaphore_sets == 3);
        using sysv::key;
        using sysv::semaphore_set;
        // SEMMSL: checked before the call, for create and open_or_create.
        SYSV_CHILD_CHECK(fails_naming(
            [] {
                semaphore_set::create(key(), {0, 0, 0, 0});
            },
            sysv::errc::limit_exceeded, {"SEMMSL = 3", "/proc/sys/kernel/sem"}));
        SYSV_CHILD_CHECK(fails_naming(
            [] {
                semaphore_set::open_or_create(key(0x5eed), {0, 0, 0, 0});
            },
            sysv::errc::limit_exceeded, {"SEMMSL = 3", "/proc/sys/kernel/sem"}));
        // SEMMNS: 3 + 3 semaphores are more than 5 in all.
        auto first = semaphore_set::create(key(), {0, 0, 0});
        SYSV_CHILD_CHECK(fails_naming(
            [] {
                semaphore_set::create(key(), {0, 0, 0});
            },
            no_space, {"SEMMNS = 5", "/proc/sys/kernel/sem"}));
        // SEMOPM: three operations in one call.
        SYSV_CHILD_CHECK(fails_naming(
            [&] {
                first.try_apply({sysv::op::release(0), sysv::op::release(1), sysv::op::release(2)});
            },
            sysv::errc::limit_exceeded, {"SEMOPM = 2", "/proc/sys/kernel/sem"}));
        // SEMMNI: three sets in all.
        [[maybe_unused]] auto second = semaphore_set::create(key(), {0});
        [[maybe_unused]] auto third = semaphore_set::create(key(), {0});
        SYSV_CHILD_CHECK(fails_naming([] { semaphore_set::create(key(), {0}); }, no_space,
                                      {"SEMMNI = 3", "/proc/sys/kernel/sem"}));
        SYSV_CHILD_CHECK(fails_naming([] { semaphore_set::open_or_create(key(0xbeef), {0}); },
                                      no_space, {"SEMMNI = 3", "/proc/sys/kernel/sem"}));
        // Raised again while the program runs: the next operations see the new limits.
        write_sysctl("sem", "3 5 3 3");
        first.try_apply({sysv::op::release(0), sysv::op::release(1), sysv::op::release(2)});
        SYSV_CHILD_CHECK(first.values() == std::vector<int>({1, 1, 1}));
        return 0;
    });
    BOOST_TEST(c.wait_for(std::chrono::seconds(30)).exited_with(0));
}

BOOST_AUTO_TEST_CASE(shared_memory_limits_are_named_with_their_value_and_where_to_raise_them) {
    sysv_test::child c([] {
        const long page = ::sysconf(_SC_PAGESIZE);
        // SHMMAX 2 pages, SHMALL 3 pages, SHMMNI 2.
        enter_limited_namespace("32000 1024000000 500 32000", std::to_string(2 * page), "3", "2");
        using sysv::key;
        using sysv::shared_memory;
        const auto size = static_cast<std::size_t>(page);
        // SHMMAX: checked before the call.
        SYSV_CHILD_CHECK(fails_naming(
            [&] { shared_memory::create(key(), 3 * size); }, sysv::errc::limit_exceeded,
            {"SHMMAX", std::to_string(2 * page), "/proc/sys/kernel/shmmax"}));
        SYSV_CHILD_CHECK(fails_naming([&] { shared_memory::open_or_create(key(0x5eed), 3 * size); },
                                      sysv::errc::limit_exceeded, {"SHMMAX", "shmmax"}));
        // SHMALL: 2 pages, then 2 more are more than 3 pages in all.
        auto first = shared_memory::create(key(), 2 * size);
        SYSV_CHILD_CHECK(fails_naming([&] { shared_memory::create(key(), 2 * size); }, no_space,
                                      {"SHMALL = 3", "/proc/sys/kernel/shmall"}));
        // SHMMNI: two segments in all.
        auto second = shared_memory::create(key(), size);
        SYSV_CHILD_CHECK(fails_naming([&] { shared_memory::create(key(), 1); }, no_space,
                                      {"SHMMNI = 2", "/proc/sys/kernel/shmmni"}));
        SYSV_CHILD_CHECK(fails_naming([&] { shared_memory::open_or_create(key(0xbeef), 1); },
                                      no_space, {"SHMMNI = 2", "/proc/sys/kernel/shmmni"}));
        first.remove();
        second.remove();
        return 0;
    });
    BOOST_TEST(c.wait_for(std::chrono::seconds(30)).exited_with(0));
}

BOOST_AUTO_TEST_CASE(a_channel_that_does_not_fit_the_limits_says_which) {
    sysv_test::child c([] {
        // The default channel needs a set of 4 + 2 x 32 semaphores: more than SEMMSL 10.
        enter_limited_namespace("10 1000 500 100", "1073741824", "1048576", "100");
        asio::io_context io;
        SYSV_CHILD_CHECK(fails_naming(
            [&] { sysv::channel::open_or_create(io.get_executor(), sysv::key(0x5eed)); },
            sysv::errc::limit_exceeded, {"SEMMSL = 10", "/proc/sys/kernel/sem"}));
        // A ring larger than SHMMAX.
        write_sysctl("sem", "100 1000 500 100");
        write_sysctl("shmmax", "65536");
        SYSV_CHILD_CHECK(fails_naming(
            [&] { sysv::channel::open_or_create(io.get_executor(), sysv::key(0x5eed)); },
            sysv::errc::limit_exceeded, {"SHMMAX", "/proc/sys/kernel/shmmax"}));
        // Nothing is left behind by the failed opens (but the library's doorbell table).
        const auto doorbells = sysv::detail::doorbell_table::table_key();
        int objects = 0;
        for (const char* table : {"/proc/sysvipc/sem", "/proc/sysvipc/shm"}) {
            std::ifstream in(table);
            std::string line;
            std::getline(in, line); // the header
            long long object_key = 0;
            while (in >> object_key && std::getline(in, line))
                if (!doorbells || static_cast<key_t>(object_key) != doorbells->value())
                    ++objects;
        }
        SYSV_CHILD_CHECK(objects == 0);
        return 0;
    });
    BOOST_TEST(c.wait_for(std::chrono::seconds(30)).exited_with(0));
}

BOOST_AUTO_TEST_CASE(the_chat_says_which_limit_keeps_it_from_opening_a_room) {
    const char* dir = std::getenv("SYSV_TEST_BINARY_DIR");
    BOOST_REQUIRE_MESSAGE(dir != nullptr, "SYSV_TEST_BINARY_DIR is not set (run through ctest)");
    const std::string chat = std::string(dir) + "/examples/chat";
    const std::string room = "limits-" + std::to_string(::getpid());
    const auto output = std::filesystem::temp_directory_path() / (room + ".out");
    sysv_test::child c([&] {
        enter_limited_namespace("10 1000 500 100", "1073741824", "1048576", "100");
        posix_spawn_file_actions_t actions;
        ::posix_spawn_file_actions_init(&actions);
        ::posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
        ::posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, output.c_str(),
                                           O_WRONLY | O_CREAT | O_TRUNC, 0600);
        ::posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
        std::vector<std::string> args{chat, "--room", room, "--name", "limited"};
        std::vector<char*> argv;
        for (auto& a : args)
            argv.push_back(a.data());
        argv.push_back(nullptr);
        pid_t pid = -1;
        SYSV_CHILD_CHECK(
            ::posix_spawn(&pid, chat.c_str(), &actions, nullptr, argv.data(), environ) == 0);
        ::posix_spawn_file_actions_destroy(&actions);
        int status = 0;
        while (::waitpid(pid, &status, 0) == -1 && errno == EINTR) {
        }
        return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
    });
    const auto status = c.wait_for(std::chrono::seconds(30));
    std::ifstream in(output);
    const std::string said((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::filesystem::remove(output);
    std::error_code ignored;
    std::filesystem::remove(chat::room_directory() / room, ignored);
    BOOST_TEST_MESSAGE("chat said: " << said);
    BOOST_TEST(status.signal == 0);
    BOOST_TEST(status.code != 0);
    BOOST_TEST(said.find("SEMMSL = 10") != std::string::npos);
    BOOST_TEST(said.find("/proc/sys/kernel/sem") != std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()
