// The chat example as users run it: separate `chat` processes, scripted through pipes and
// interactive in terminals (tmux), including crashes and hostile text.
#include "harness.hpp"

#include "chat_process.hpp"
#include "chat_room.hpp"

#include <cstdlib>
#include <filesystem>
#include <string>

namespace {

std::string chat_binary() {
    if (const char* dir = std::getenv("SYSV_TEST_BINARY_DIR"))
        return std::string(dir) + "/examples/chat";
    return (std::filesystem::canonical("/proc/self/exe").parent_path().parent_path() / "examples" /
            "chat")
        .string();
}

/// A fresh room; at the end its objects must be gone, and its file is removed.
class test_room {
public:
    test_room() : name_("test-" + std::to_string(::getpid()) + "-" + std::to_string(counter()++)) {
        file_ = chat::room_file(name_);
        key_ = ::ftok(file_.c_str(), chat::project_id);
    }
    ~test_room() {
        // Whatever happened, leave nothing behind.
        if (const int id = ::semget(key_, 0, 0); id != -1)
            ::semctl(id, 0, IPC_RMID);
        if (const int id = ::shmget(key_, 0, 0); id != -1)
            ::shmctl(id, IPC_RMID, nullptr);
        std::error_code ignored;
        std::filesystem::remove(file_, ignored);
    }
    const std::string& name() const { return name_; }
    bool objects_gone() const {
        return ::semget(key_, 0, 0) == -1 && errno == ENOENT && ::shmget(key_, 0, 0) == -1 &&
               errno == ENOENT;
    }

private:
    static int& counter() {
        static int n = 0;
        return n;
    }
    std::string name_;
    std::filesystem::path file_;
    key_t key_ = -1;
};

std::size_t count(const std::string& haystack, const std::string& needle) {
    std::size_t n = 0;
    for (auto at = haystack.find(needle); at != std::string::npos;
         at = haystack.find(needle, at + needle.size()))
        ++n;
    return n;
}

int run(const std::string& command) {
    return std::system(command.c_str());
}

std::string capture(const std::string& command) {
    std::string out;
    if (FILE* p = ::popen(command.c_str(), "r")) {
        char buffer[4096];
        std::size_t n;
        while ((n = std::fread(buffer, 1, sizeof buffer, p)) > 0)
            out.append(buffer, n);
        ::pclose(p);
    }
    return out;
}

} // namespace

BOOST_AUTO_TEST_SUITE(chat_program)

BOOST_AUTO_TEST_CASE(a_crashed_participant_is_announced_once_and_the_room_goes_on) {
    test_room room;
    chat::participant alice(chat_binary(), room.name(), "alice");
    BOOST_REQUIRE(alice.wait_for("joined room"));
    chat::participant bob(chat_binary(), room.name(), "bob");
    BOOST_REQUIRE(alice.wait_for("bob joined"));
    chat::participant carol(chat_binary(), room.name(), "carol");
    BOOST_REQUIRE(alice.wait_for("carol joined") && bob.wait_for("carol joined"));
    carol.say("about to crash");
    BOOST_REQUIRE(alice.wait_for("carol: about to crash"));
    const auto killed = std::chrono::steady_clock::now();
    carol.kill(SIGKILL);
    BOOST_TEST(carol.wait_exit() == 128 + SIGKILL);
    BOOST_TEST(alice.wait_for("carol left (lost)"));
    BOOST_TEST_MESSAGE("crash noticed after "
                       << std::chrono::duration_cast<std::chrono::milliseconds>(
                              std::chrono::steady_clock::now() - killed)
                              .count()
                       << " ms (reap interval 300 ms)");
    BOOST_TEST(bob.wait_for("carol left (lost)"));
    bob.say("still here");
    BOOST_TEST(alice.wait_for("bob: still here"));
    alice.say("/quit");
    BOOST_TEST(alice.wait_exit() == 0);
    BOOST_TEST(bob.wait_for("alice left"));
    bob.close_input();
    BOOST_TEST(bob.wait_exit() == 0);
    BOOST_TEST(count(alice.transcript(), "carol left (lost)") == 1u);
    BOOST_TEST(count(bob.transcript(), "carol left (lost)") == 1u);
    BOOST_TEST(bob.transcript().find("room " + room.name() + " removed") != std::string::npos);
    BOOST_TEST(room.objects_gone());
}

BOOST_AUTO_TEST_CASE(hostile_text_never_reaches_the_terminal_and_long_lines_are_refused) {
    test_room room;
    chat::participant alice(chat_binary(), room.name(), "alice");
    BOOST_REQUIRE(alice.wait_for("joined room"));
    chat::participant mallory(chat_binary(), room.name(), "mal\x1b[2Jlory");
    BOOST_REQUIRE(alice.wait_for(" joined"));
    mallory.say("\x1b]0;pwned\x07\x1b[31mred\x1b[0m \x9b"
                "1m bell\x07 tab\t del\x7f caf\xc3\xa9");
    BOOST_REQUIRE(alice.wait_for("bell"));
    mallory.say(std::string(5000, 'x'));
    BOOST_TEST(mallory.wait_for("error: line too long"));
    mallory.say("done");
    BOOST_REQUIRE(alice.wait_for("done"));
    const auto& seen = alice.transcript();
    BOOST_TEST(seen.find('\x1b') == std::string::npos);
    BOOST_TEST(seen.find('\x07') == std::string::npos);
    BOOST_TEST(seen.find('\x7f') == std::string::npos);
    BOOST_TEST(seen.find("\xc2\x9b") == std::string::npos);
    BOOST_TEST(seen.find("caf\xc3\xa9") != std::string::npos); // UTF-8 text survives
    BOOST_TEST(seen.find("mal?[2Jlory: ") != std::string::npos);
    BOOST_TEST(seen.find(std::string(100, 'x')) == std::string::npos); // never sent
    mallory.kill(SIGTERM); // a signal leaves the room properly
    BOOST_TEST(mallory.wait_exit() == 0);
    BOOST_TEST(alice.wait_for("lory left"));
    alice.close_input();
    BOOST_TEST(alice.wait_exit() == 0);
    BOOST_TEST(room.objects_gone());
}

BOOST_AUTO_TEST_CASE(a_room_left_by_crashed_participants_is_recycled) {
    test_room room;
    {
        chat::participant alice(chat_binary(), room.name(), "alice");
        BOOST_REQUIRE(alice.wait_for("joined room"));
        chat::participant bob(chat_binary(), room.name(), "bob");
        BOOST_REQUIRE(alice.wait_for("bob joined"));
        alice.kill(SIGKILL);
        bob.kill(SIGKILL);
        BOOST_TEST(alice.wait_exit() == 128 + SIGKILL);
        BOOST_TEST(bob.wait_exit() == 128 + SIGKILL);
    }
    BOOST_TEST(!room.objects_gone()); // nobody was left to clean up...
    chat::participant carol(chat_binary(), room.name(), "carol");
    BOOST_TEST(carol.wait_for("alice left (lost)"));
    BOOST_TEST(carol.wait_for("bob left (lost)"));
    carol.say("/who");
    BOOST_TEST(carol.wait_for("in " + room.name() + ": carol"));
    carol.say("/quit");
    BOOST_TEST(carol.wait_exit() == 0);
    BOOST_TEST(room.objects_gone()); // ...until the room was reused and left
}

// Two people at terminals: tmux runs each chat in a pseudo-terminal, send-keys types,
// capture-pane reads the screen.
BOOST_AUTO_TEST_CASE(two_participants_in_terminals) {
    if (run("command -v tmux > /dev/null") != 0) {
        BOOST_FAIL("tmux is not installed (./dev test installs it)");
        return;
    }
    test_room room;
    const std::string tmux = "tmux -L sysv-test-" + std::to_string(::getpid()) + " ";
    struct server_guard {
        std::string tmux;
        ~server_guard() { run(tmux + "kill-server 2> /dev/null"); }
    } guard{tmux};
    const std::string program = chat_binary();
    for (const char* who : {"alice", "bob"})
        BOOST_REQUIRE(run(tmux + "new-session -d -s " + who + " -x 100 -y 20 '" + program +
                          " --room " + room.name() + " --name " + who + "'") == 0);
    auto screen = [&](const std::string& who) {
        return capture(tmux + "capture-pane -p -t " + who + " 2> /dev/null");
    };
    auto wait_screen = [&](const std::string& who, const std::string& text) {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (std::chrono::steady_clock::now() < deadline) {
            if (screen(who).find(text) != std::string::npos)
                return true;
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        BOOST_TEST_MESSAGE(who << "'s screen:\n" << screen(who));
        return false;
    };
    auto type = [&](const std::string& who, const std::string& text) {
        run(tmux + "send-keys -t " + who + " -l '" + text + "'");
        run(tmux + "send-keys -t " + who + " Enter");
    };
    BOOST_REQUIRE(wait_screen("alice", "joined room " + room.name()));
    BOOST_REQUIRE(wait_screen("alice", "bob joined"));
    type("alice", "hello bob");
    BOOST_TEST(wait_screen("bob", "alice: hello bob"));
    type("bob", "hi alice");
    BOOST_TEST(wait_screen("alice", "bob: hi alice"));
    // On a terminal the typed line is the echo: it is not printed a second time.
    BOOST_TEST(count(screen("alice"), "hello bob") == 1u);
    type("bob", "/who");
    BOOST_TEST(wait_screen("bob", "in " + room.name() + ": alice, bob"));
    type("alice", "/quit");
    BOOST_TEST(wait_screen("bob", "alice left"));
    type("bob", "/quit");
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (run(tmux + "has-session -t bob 2> /dev/null") == 0 &&
           std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    BOOST_TEST(run(tmux + "has-session -t bob 2> /dev/null") != 0); // the chat ended
    BOOST_TEST(room.objects_gone());
}

BOOST_AUTO_TEST_SUITE_END()
