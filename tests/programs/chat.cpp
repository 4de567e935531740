// The chat example as users run it: separate `chat` processes, scripted through pipes and
// interactive in terminals (tmux), including crashes, hostile text, objects removed with ipcrm
// or overwritten under the participants, and every way of ending.
#include "harness.hpp"

#include "chat/chat_process.hpp"
#include "chat/chat_room.hpp"

#include <sys/ipc.h>
#include <sys/shm.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>

import sysv.channel;

#include "channel_lock.hpp"

namespace {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

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
    test_room(const test_room&) = delete;
    test_room& operator=(const test_room&) = delete;
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
    key_t key() const { return key_; }
    int set_id() const { return ::semget(key_, 0, 0); }
    int segment_id() const { return ::shmget(key_, 0, 0); }
    bool objects_gone() const {
        return ::semget(key_, 0, 0) == -1 && errno == ENOENT && ::shmget(key_, 0, 0) == -1 &&
               errno == ENOENT;
    }
    /// Waits (up to `limit`) for the room's objects to be gone.
    bool objects_gone_within(std::chrono::milliseconds limit) const {
        const auto deadline = clock_type::now() + limit;
        while (!objects_gone() && clock_type::now() < deadline)
            std::this_thread::sleep_for(20ms);
        return objects_gone();
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

/// `text` as one word for sh.
std::string quote(const std::string& text) {
    std::string out = "'";
    for (char c : text)
        out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out + "'";
}

std::string read_file(const std::filesystem::path& path) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

/// Waits for every participant to exit; returns their statuses and the time the last took.
std::vector<int> exits(std::initializer_list<chat::participant*> people,
                       std::chrono::milliseconds& slowest, clock_type::time_point since) {
    std::vector<int> statuses;
    for (auto* p : people) {
        statuses.push_back(p->wait_exit());
        slowest = std::max(slowest, std::chrono::duration_cast<std::chrono::milliseconds>(
                                        clock_type::now() - since));
    }
    return statuses;
}

/// A private tmux server (its own socket): terminals for chats and shells. Panes stay after
/// their program exits (remain-on-exit), so a chat that ended can still be read, and its exit
/// status is known.
class terminals {
public:
    terminals()
        : tmux_("tmux -u -L sysv-test-" + std::to_string(::getpid()) + "-" +
                std::to_string(counter()++)) {
        char directory[] = "/tmp/sysv-chat-test-XXXXXX";
        if (::mkdtemp(directory) == nullptr)
            throw std::runtime_error("mkdtemp failed");
        directory_ = directory;
        std::ofstream(directory_ / "tmux.conf") << "set -g remain-on-exit on\n"
                                                << "set -g history-limit 1000\n";
        tmux_ += " -f " + (directory_ / "tmux.conf").string() + " ";
    }
    terminals(const terminals&) = delete;
    terminals& operator=(const terminals&) = delete;
    ~terminals() {
        run(tmux_ + "kill-server 2> /dev/null");
        std::error_code ignored;
        std::filesystem::remove_all(directory_, ignored);
    }

    /// A private directory for files of the test (removed at the end).
    const std::filesystem::path& directory() const { return directory_; }

    /// Starts `command` (a sh command line) in a new 100x20 terminal called `name`. The
    /// terminal stays open after the command ended and shows its exit status (tmux can drop the
    /// last output of a program whose terminal closes as it exits).
    bool start(const std::string& name, const std::string& command) {
        return start_alone(name, command + "; echo \"[exited with $?]\"; exec sleep 1000000");
    }
    /// Starts `command` as the terminal's only process (its controlling process: closing the
    /// terminal sends it SIGHUP).
    bool start_alone(const std::string& name, const std::string& command) {
        return run(tmux_ + "new-session -d -s " + name + " -x 100 -y 20 " + quote(command)) == 0;
    }
    /// A shell (bash without startup files, prompt "$ ") in a new terminal.
    bool start_shell(const std::string& name) {
        return start_alone(name, "env PS1='$ ' bash --norc --noprofile");
    }

    /// The terminal's text, with its scrollback; with `escapes`, colours and attributes as
    /// escape sequences.
    std::string screen(const std::string& name, bool escapes = false) const {
        return capture(tmux_ + "capture-pane -p -J -S -200 " + (escapes ? "-e " : "") + "-t " +
                       name + " 2> /dev/null");
    }
    /// The last line with something on it (the prompt line of a chat).
    std::string last_line(const std::string& name) const {
        std::istringstream lines(screen(name));
        std::string line, last;
        while (std::getline(lines, line))
            if (line.find_first_not_of(' ') != std::string::npos)
                last = line.substr(0, line.find_last_not_of(' ') + 1);
        return last;
    }

    /// Waits until the last line with something on it is `text`.
    bool wait_last_line(const std::string& name, const std::string& text,
                        std::chrono::milliseconds limit = 10s) const {
        const auto deadline = clock_type::now() + limit;
        while (clock_type::now() < deadline) {
            if (last_line(name) == text)
                return true;
            std::this_thread::sleep_for(30ms);
        }
        BOOST_TEST_MESSAGE(name << "'s last line is \"" << last_line(name) << "\", not \"" << text
                                << "\"; its screen:\n"
                                << screen(name));
        return false;
    }

    bool wait_for(const std::string& name, const std::string& text,
                  std::chrono::milliseconds limit = 10s) const {
        const auto deadline = clock_type::now() + limit;
        while (clock_type::now() < deadline) {
            if (screen(name).find(text) != std::string::npos)
                return true;
            std::this_thread::sleep_for(30ms);
        }
        BOOST_TEST_MESSAGE(name << " did not show \"" << text << "\"; its screen:\n"
                                << screen(name) << "(pane: " << state(name) << ")");
        return false;
    }

    /// Types `text` literally.
    void type(const std::string& name, const std::string& text) const {
        run(tmux_ + "send-keys -t " + name + " -l " + quote(text));
    }
    /// Presses keys: "Enter", "Up", "C-c", ...
    void press(const std::string& name, const std::string& keys) const {
        run(tmux_ + "send-keys -t " + name + " " + keys);
    }
    void type_line(const std::string& name, const std::string& text) const {
        type(name, text);
        press(name, "Enter");
    }

    /// Waits for the command started with start() to end: its exit status, or -1.
    int wait_exit(const std::string& name, std::chrono::milliseconds limit = 10s) const {
        const std::string mark = "[exited with ";
        const auto deadline = clock_type::now() + limit;
        while (clock_type::now() < deadline) {
            const auto text = screen(name);
            if (const auto at = text.find(mark); at != std::string::npos)
                return std::atoi(text.c_str() + at + mark.size());
            std::this_thread::sleep_for(30ms);
        }
        BOOST_TEST_MESSAGE(name << " did not end; " << state(name) << screen(name));
        return -1;
    }
    std::string state(const std::string& name) const {
        return capture(tmux_ + "display-message -p -t " + name +
                       " 'pid #{pane_pid}, dead #{pane_dead}, status #{pane_dead_status}' 2>&1");
    }

    /// The process the terminal runs (the shell, for start_shell).
    pid_t pane_pid(const std::string& name) const {
        return std::atoi(
            capture(tmux_ + "display-message -p -t " + name + " '#{pane_pid}'").c_str());
    }

    /// Closes the terminal as closing its window does: the program gets SIGHUP.
    void close(const std::string& name) const {
        run(tmux_ + "kill-session -t " + name + " 2> /dev/null");
    }

private:
    static int& counter() {
        static int n = 0;
        return n;
    }
    std::string tmux_;
    std::filesystem::path directory_;
};

/// The `chat` child of `parent` (a shell), waiting for it up to 10 s; -1 if none.
pid_t chat_child_of(pid_t parent) {
    const auto deadline = clock_type::now() + 10s;
    while (clock_type::now() < deadline) {
        for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
            const std::string name = entry.path().filename();
            if (name.find_first_not_of("0123456789") != std::string::npos)
                continue;
            // /proc/N/stat: "N (comm) state ppid ..."
            const std::string stat = read_file(entry.path() / "stat");
            const auto close = stat.rfind(')');
            if (close == std::string::npos || stat.find("(chat)") == std::string::npos)
                continue;
            std::istringstream rest(stat.substr(close + 1));
            std::string state;
            pid_t ppid = 0;
            rest >> state >> ppid;
            if (ppid == parent)
                return std::stoi(name);
        }
        std::this_thread::sleep_for(20ms);
    }
    return -1;
}

bool tmux_available() {
    if (run("command -v tmux > /dev/null") == 0)
        return true;
    BOOST_FAIL("tmux is not installed (./dev test installs it)");
    return false;
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
    const auto killed = clock_type::now();
    carol.kill(SIGKILL);
    BOOST_TEST(carol.wait_exit() == 128 + SIGKILL);
    BOOST_TEST(alice.wait_for("carol left (lost)"));
    BOOST_TEST_MESSAGE(
        "crash noticed after "
        << std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - killed).count()
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
    // ESC as an overlong 2-byte sequence, a UTF-16 surrogate, a code point above U+10FFFF, a
    // C1 CSI, a truncated sequence: each reaches the screen as U+FFFD or '?'.
    mallory.say("overlong \xc0\x9b[2J surrogate \xed\xa0\x80 big \xf4\x90\x80\x80 "
                "csi \xc2\x9b"
                "1m cut \xe2\x82 end");
    BOOST_REQUIRE(alice.wait_for(" end"));
    mallory.say(std::string(5000, 'x'));
    BOOST_TEST(mallory.wait_for("error: line too long"));
    mallory.say("done");
    BOOST_REQUIRE(alice.wait_for("done"));
    const auto& seen = alice.transcript();
    BOOST_TEST(seen.find('\x1b') == std::string::npos);
    BOOST_TEST(seen.find('\x07') == std::string::npos);
    BOOST_TEST(seen.find('\x7f') == std::string::npos);
    BOOST_TEST(seen.find("\xc2\x9b") == std::string::npos);
    BOOST_TEST(seen.find("\xc0") == std::string::npos);
    BOOST_TEST(seen.find("\xed\xa0") == std::string::npos);
    BOOST_TEST(seen.find("\xf4\x90") == std::string::npos);
    BOOST_TEST(seen.find("caf\xc3\xa9") != std::string::npos); // UTF-8 text survives
    BOOST_TEST(seen.find("overlong \xef\xbf\xbd\xef\xbf\xbd[2J") != std::string::npos);
    BOOST_TEST(seen.find("cut \xef\xbf\xbd end") != std::string::npos);
    BOOST_TEST(seen.find("mal?[2Jlory: ") != std::string::npos);
    BOOST_TEST(seen.find(std::string(100, 'x')) == std::string::npos); // never sent
    // Her own screen shows her name sanitised too, and no colours: this is not a terminal.
    BOOST_TEST(mallory.transcript().find("as mal?[2Jlory") != std::string::npos);
    BOOST_TEST(mallory.transcript().find('\x1b') == std::string::npos);
    mallory.kill(SIGTERM); // a signal leaves the room properly
    BOOST_TEST(mallory.wait_exit() == 0);
    BOOST_TEST(alice.wait_for("lory left"));
    alice.close_input();
    BOOST_TEST(alice.wait_exit() == 0);
    BOOST_TEST(room.objects_gone());
}

BOOST_AUTO_TEST_CASE(an_endless_input_line_is_refused_once_and_the_next_lines_still_go) {
    test_room room;
    chat::participant alice(chat_binary(), room.name(), "alice");
    BOOST_REQUIRE(alice.wait_for("joined room"));
    chat::participant bob(chat_binary(), room.name(), "bob");
    BOOST_REQUIRE(alice.wait_for("bob joined"));
    // 8 MiB without a newline, written while bob's chat reads it: refused as soon as it passes
    // the limit (not at the newline), the rest discarded up to the newline.
    const std::string chunk(64 * 1024, 'y');
    for (int i = 0; i < 128; ++i) {
        bob.write(chunk);
        bob.pump(0ms);
    }
    BOOST_TEST(bob.wait_for("error: line too long"));
    bob.say(" tail of the long line");
    bob.say("short one");
    BOOST_TEST(alice.wait_for("bob: short one"));
    BOOST_TEST(count(bob.transcript(), "error: line too long") == 1u);
    BOOST_TEST(alice.transcript().find("tail of the long line") == std::string::npos);
    BOOST_TEST(alice.transcript().find("yyyy") == std::string::npos);
    bob.close_input();
    alice.close_input();
    BOOST_TEST(bob.wait_exit() == 0);
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

// Two people starting at the same moment: whoever joins second may have missed the other's
// "joined" announcement (it was sent before it joined). That was the cause of the flaky
// two_participants_in_terminals. Each must still learn of the other, exactly once.
BOOST_AUTO_TEST_CASE(participants_starting_together_each_learn_of_the_other_once) {
    for (int round = 0; round < 8; ++round) {
        test_room room;
        chat::participant alice(chat_binary(), room.name(), "alice");
        chat::participant bob(chat_binary(), room.name(), "bob");
        auto learnt = [](chat::participant& p, const std::string& other) {
            const auto deadline = clock_type::now() + 10s;
            while (clock_type::now() < deadline) {
                const auto& t = p.transcript();
                if (t.find(other + " joined") != std::string::npos ||
                    t.find("also here: " + other) != std::string::npos)
                    return true;
                p.pump(20ms);
            }
            BOOST_TEST_MESSAGE(p.name() << " never learnt of " << other << ":\n" << p.transcript());
            return false;
        };
        BOOST_TEST(learnt(alice, "bob"));
        BOOST_TEST(learnt(bob, "alice"));
        alice.say("/quit");
        BOOST_TEST(alice.wait_exit() == 0);
        BOOST_TEST(bob.wait_for("alice left"));
        bob.say("/quit");
        BOOST_TEST(bob.wait_exit() == 0);
        for (auto* p : {&alice, &bob}) {
            const std::string other = p == &alice ? "bob" : "alice";
            BOOST_TEST(count(p->transcript(), other + " joined") +
                           count(p->transcript(), "also here: " + other) ==
                       1u);
        }
        BOOST_TEST(room.objects_gone());
    }
}

BOOST_AUTO_TEST_CASE(ipcrm_of_the_semaphore_set_ends_every_participant_with_one_message) {
    test_room room;
    chat::participant alice(chat_binary(), room.name(), "alice");
    BOOST_REQUIRE(alice.wait_for("joined room"));
    chat::participant bob(chat_binary(), room.name(), "bob");
    BOOST_REQUIRE(alice.wait_for("bob joined"));
    const auto removed = clock_type::now();
    BOOST_REQUIRE(run("ipcrm -s " + std::to_string(room.set_id())) == 0);
    std::chrono::milliseconds slowest{0};
    const auto statuses = exits({&alice, &bob}, slowest, removed);
    BOOST_TEST_MESSAGE("both exited " << slowest.count() << " ms after ipcrm -s");
    BOOST_TEST(slowest.count() < 5000);
    for (std::size_t i = 0; i < 2; ++i) {
        const auto& t = (i == 0 ? alice : bob).transcript();
        BOOST_TEST(statuses[i] == 1, t);
        BOOST_TEST(count(t, "chat: ") == 1u, t);
        BOOST_TEST(count(t, "chat: room " + room.name() + " was removed while in use") == 1u, t);
        BOOST_TEST(count(t, "error") == 0u, t);
    }
    BOOST_TEST(room.objects_gone()); // the segment went with them
}

// The channel notices that its segment was marked for removal (IPC_STAT: SHM_DEST), removes the
// set too and reports sysv::errc::removed to every member.
BOOST_AUTO_TEST_CASE(ipcrm_of_the_segment_ends_every_participant_with_one_message) {
    test_room room;
    chat::participant alice(chat_binary(), room.name(), "alice");
    BOOST_REQUIRE(alice.wait_for("joined room"));
    chat::participant bob(chat_binary(), room.name(), "bob");
    BOOST_REQUIRE(alice.wait_for("bob joined"));
    const auto removed = clock_type::now();
    BOOST_REQUIRE(run("ipcrm -m " + std::to_string(room.segment_id())) == 0);
    alice.say("anyone?");
    std::chrono::milliseconds slowest{0};
    const auto statuses = exits({&alice, &bob}, slowest, removed);
    BOOST_TEST_MESSAGE("both exited " << slowest.count() << " ms after ipcrm -m");
    BOOST_TEST(slowest.count() < 5000);
    for (std::size_t i = 0; i < 2; ++i) {
        const auto& t = (i == 0 ? alice : bob).transcript();
        BOOST_TEST(statuses[i] == 1, t);
        BOOST_TEST(count(t, "chat: ") == 1u, t);
        BOOST_TEST(count(t, "error") == 0u, t);
    }
    BOOST_TEST(room.objects_gone()); // the set too: no later joiner pairs it with a new segment
}

BOOST_AUTO_TEST_CASE(a_segment_overwritten_by_another_program_ends_every_participant) {
    test_room room;
    chat::participant alice(chat_binary(), room.name(), "alice");
    BOOST_REQUIRE(alice.wait_for("joined room"));
    chat::participant bob(chat_binary(), room.name(), "bob");
    BOOST_REQUIRE(alice.wait_for("bob joined"));
    void* memory = ::shmat(room.segment_id(), nullptr, 0);
    BOOST_REQUIRE(memory != reinterpret_cast<void*>(-1));
    std::memset(memory, 0xa5, 4096); // the header and the start of the ring
    ::shmdt(memory);
    const auto overwritten = clock_type::now();
    std::chrono::milliseconds slowest{0};
    const auto statuses = exits({&alice, &bob}, slowest, overwritten);
    BOOST_TEST_MESSAGE("both exited " << slowest.count() << " ms after the overwrite");
    BOOST_TEST(slowest.count() < 5000); // noticed without anyone sending (the reaper looks)
    for (std::size_t i = 0; i < 2; ++i) {
        const auto& t = (i == 0 ? alice : bob).transcript();
        BOOST_TEST(statuses[i] == 1, t);
        BOOST_TEST(count(t, "chat: ") == 1u, t);
        BOOST_TEST(count(t, "chat: room " + room.name() + " is corrupt") == 1u, t);
    }
    BOOST_TEST(room.objects_gone()); // the last one out removed it
}

BOOST_AUTO_TEST_CASE(a_participant_stopped_holding_the_lock_is_named_and_the_room_goes_on) {
    test_room room;
    chat::participant alice(chat_binary(), room.name(), "alice");
    BOOST_REQUIRE(alice.wait_for("joined room"));
    // carol joins through the library, takes the room's lock as a writer does, and is stopped
    // (Ctrl-Z, a debugger) while holding it.
    sysv_test::child carol([&] {
        boost::asio::io_context io;
        auto ch = sysv::channel::open_or_create(io.get_executor(), sysv::key(room.key()));
        ch.async_join("carol", [](boost::system::error_code) {});
        io.run();
        auto memory = ch.segment().attach();
        sysv_test::lock_channel(memory.bytes()); // the room's lock, as a writer takes it
        ::raise(SIGSTOP);
        sysv_test::unlock_channel(memory.bytes());
        ::pause(); // until killed: then "left (lost)"
        return 0;
    });
    BOOST_TEST(alice.wait_for("waiting for carol (pid " + std::to_string(carol.pid()) +
                              ", stopped while holding the room's lock)"),
               alice.transcript());
    ::kill(carol.pid(), SIGCONT);
    BOOST_TEST(alice.wait_for("the room goes on"), alice.transcript());
    carol.kill(SIGKILL);
    carol.wait();
    BOOST_TEST(alice.wait_for("carol left (lost)"), alice.transcript());
    alice.say("/quit");
    BOOST_TEST(alice.wait_exit() == 0, alice.transcript());
    BOOST_TEST(count(alice.transcript(), "waiting for carol") == 1u); // said once
    BOOST_TEST(room.objects_gone());
}

BOOST_AUTO_TEST_CASE(a_newcomer_waiting_for_a_stopped_holder_is_told_and_can_give_up) {
    // The lock is watched while joining too: whoever arrives while the holder is stopped is
    // told who the room waits for, can leave with Ctrl-C, or joins once the holder continues.
    test_room room;
    sysv_test::child carol([&] {
        boost::asio::io_context io;
        auto ch = sysv::channel::open_or_create(io.get_executor(), sysv::key(room.key()));
        ch.async_join("carol", [](boost::system::error_code) {});
        io.run();
        auto memory = ch.segment().attach();
        sysv_test::lock_channel(memory.bytes()); // the room's lock, as a writer takes it
        ::raise(SIGSTOP);
        sysv_test::unlock_channel(memory.bytes());
        ::pause(); // until killed
        return 0;
    });
    BOOST_REQUIRE(sysv_test::eventually(
        [&] { return sysv::state_of(carol.pid()) == sysv::process_state::stopped; }));
    const std::string waiting = "waiting for carol (pid " + std::to_string(carol.pid()) +
                                ", stopped while holding the room's lock)";
    {
        chat::participant alice(chat_binary(), room.name(), "alice");
        BOOST_TEST(alice.wait_for(waiting), alice.transcript());
        alice.kill(SIGINT);
        BOOST_TEST(alice.wait_exit() == 0, alice.transcript());
        BOOST_TEST(count(alice.transcript(), "joined room") == 0u, alice.transcript());
    }
    chat::participant bob(chat_binary(), room.name(), "bob");
    BOOST_TEST(bob.wait_for(waiting), bob.transcript());
    ::kill(carol.pid(), SIGCONT);
    BOOST_TEST(bob.wait_for("the room goes on"), bob.transcript());
    BOOST_TEST(bob.wait_for("joined room " + room.name() + " as bob"), bob.transcript());
    BOOST_TEST(bob.wait_for("also here: carol"), bob.transcript());
    carol.kill(SIGKILL);
    carol.wait();
    BOOST_TEST(bob.wait_for("carol left (lost)"), bob.transcript());
    bob.say("/quit");
    BOOST_TEST(bob.wait_exit() == 0, bob.transcript());
    BOOST_TEST(room.objects_gone());
}

BOOST_AUTO_TEST_CASE(a_foreign_object_at_the_room_key_is_refused_and_left_alone) {
    test_room room;
    const int foreign = ::semget(room.key(), 1, IPC_CREAT | IPC_EXCL | 0600);
    BOOST_REQUIRE(foreign != -1);
    chat::participant alice(chat_binary(), room.name(), "alice");
    BOOST_TEST(alice.wait_exit() == 1);
    BOOST_TEST(count(alice.transcript(), "chat: ") == 1u, alice.transcript());
    BOOST_TEST(alice.transcript().find("chat: cannot open room " + room.name()) !=
               std::string::npos);
    semid_ds ds{};
    BOOST_TEST(::semctl(foreign, 0, IPC_STAT, &ds) == 0); // not adopted, not removed
    ::semctl(foreign, 0, IPC_RMID);
}

BOOST_AUTO_TEST_CASE(a_participant_without_doorbells_says_so_once_and_still_chats) {
    // A corrupt doorbell table at a key of this test's own, attached here (so it is in use and
    // not replaced): bob's chat polls, says why in one line, and messages still reach him.
    test_room room;
    const auto table_key = static_cast<key_t>(0x5d600000u | (::getpid() & 0xffffu));
    const int corrupt =
        ::shmget(table_key, sysv::detail::doorbell_table::size, IPC_CREAT | IPC_EXCL | 0600);
    BOOST_REQUIRE(corrupt != -1);
    void* held = ::shmat(corrupt, nullptr, 0);
    BOOST_REQUIRE(held != reinterpret_cast<void*>(-1));
    std::memcpy(held, "NOTATABL", 8);
    const std::string usual =
        std::getenv("SYSV_DOORBELL_KEY") ? std::getenv("SYSV_DOORBELL_KEY") : "";
    ::setenv("SYSV_DOORBELL_KEY", std::to_string(table_key).c_str(), 1);
    chat::participant bob(chat_binary(), room.name(), "bob");
    if (usual.empty())
        ::unsetenv("SYSV_DOORBELL_KEY");
    else
        ::setenv("SYSV_DOORBELL_KEY", usual.c_str(), 1);
    BOOST_TEST(bob.wait_for("joined room"), bob.transcript());
    BOOST_TEST(bob.wait_for("notice: messages reach this process by polling"), bob.transcript());
    BOOST_TEST(bob.wait_for("holds something else than a doorbell table"), bob.transcript());
    chat::participant alice(chat_binary(), room.name(), "alice");
    BOOST_TEST(alice.wait_for("also here: bob"), alice.transcript());
    alice.say("hello bob");
    BOOST_TEST(bob.wait_for("hello bob"), bob.transcript());
    BOOST_TEST(alice.transcript().find("notice:") == std::string::npos, alice.transcript());
    alice.say("/quit");
    bob.say("/quit");
    BOOST_TEST(alice.wait_exit() == 0);
    BOOST_TEST(bob.wait_exit() == 0);
    BOOST_TEST(count(bob.transcript(), "notice:") == 1u, bob.transcript());
    ::shmdt(held);
    ::shmctl(corrupt, IPC_RMID, nullptr);
    BOOST_TEST(room.objects_gone_within(5s));
}

// ---- in terminals: tmux runs each chat in a pseudo-terminal, send-keys types,
// ---- capture-pane reads the screen.

BOOST_AUTO_TEST_CASE(two_participants_in_terminals) {
    if (!tmux_available())
        return;
    test_room room;
    terminals tmux;
    const std::string chat = chat_binary() + " --room " + room.name() + " --name ";
    BOOST_REQUIRE(tmux.start("alice", chat + "alice"));
    // Bob starts once alice is in, so she sees him join (together, see
    // participants_starting_together_each_learn_of_the_other_once).
    BOOST_REQUIRE(tmux.wait_for("alice", "joined room " + room.name()));
    BOOST_REQUIRE(tmux.start("bob", chat + "bob"));
    BOOST_REQUIRE(tmux.wait_for("alice", "bob joined"));
    BOOST_REQUIRE(tmux.wait_for("bob", "bob> "));
    tmux.type_line("alice", "hello bob");
    BOOST_TEST(tmux.wait_for("bob", "] alice: hello bob"));
    // Her own message is shown as everyone sees it, and what she typed is gone from the screen.
    BOOST_TEST(tmux.wait_for("alice", "] alice: hello bob"));
    BOOST_TEST(tmux.wait_last_line("alice", "alice>"));
    BOOST_TEST(count(tmux.screen("alice"), "hello bob") == 1u, tmux.screen("alice"));
    tmux.type_line("bob", "hi alice");
    BOOST_TEST(tmux.wait_for("alice", "] bob: hi alice"));
    tmux.type_line("bob", "/who");
    BOOST_TEST(tmux.wait_for("bob", "in " + room.name() + ": alice, bob"));
    tmux.type_line("alice", "/quit");
    BOOST_TEST(tmux.wait_for("bob", "alice left"));
    BOOST_TEST(tmux.wait_exit("alice") == 0);
    tmux.type_line("bob", "/quit");
    BOOST_TEST(tmux.wait_exit("bob") == 0);
    // (tmux may learn that the program ended before it has shown its last output)
    BOOST_TEST(tmux.wait_for("bob", "last one out: room " + room.name() + " removed"));
    BOOST_TEST(room.objects_gone());
}

BOOST_AUTO_TEST_CASE(a_message_arriving_while_typing_appears_above_the_half_typed_line) {
    if (!tmux_available())
        return;
    test_room room;
    terminals tmux;
    const std::string chat = chat_binary() + " --room " + room.name() + " --name ";
    BOOST_REQUIRE(tmux.start("alice", chat + "alice"));
    BOOST_REQUIRE(tmux.wait_for("alice", "alice> "));
    BOOST_REQUIRE(tmux.start("bob", chat + "bob"));
    BOOST_REQUIRE(tmux.wait_for("alice", "bob joined"));
    tmux.type("alice", "I am typing a long sen");
    BOOST_REQUIRE(tmux.wait_for("alice", "alice> I am typing a long sen"));
    BOOST_REQUIRE(tmux.wait_for("bob", "bob> "));
    tmux.type_line("bob", "interrupting!");
    BOOST_REQUIRE(tmux.wait_for("alice", "] bob: interrupting!"));
    BOOST_TEST(tmux.wait_last_line("alice", "alice> I am typing a long sen"));
    const auto screen = tmux.screen("alice");
    BOOST_TEST(screen.find("] bob: interrupting!") < screen.find("alice> I am typing"), screen);
    BOOST_TEST(count(screen, "I am typing") == 1u, screen);
    tmux.type_line("alice", "tence");
    BOOST_TEST(tmux.wait_for("bob", "] alice: I am typing a long sentence"));
    BOOST_TEST(tmux.wait_for("alice", "] alice: I am typing a long sentence"));
    // A line longer than the terminal is wide wraps, and a message still goes above all of it.
    const std::string long_line = "wide " + std::string(150, 'w') + " end";
    tmux.type("alice", long_line);
    BOOST_REQUIRE(tmux.wait_for("alice", "w end"));
    tmux.type_line("bob", "again");
    BOOST_REQUIRE(tmux.wait_for("alice", "] bob: again"));
    BOOST_TEST(tmux.wait_last_line("alice", "alice> " + long_line)); // (-J joins wrapped rows)
    const auto wrapped = tmux.screen("alice");
    BOOST_TEST(wrapped.find("] bob: again") < wrapped.find("alice> wide"), wrapped);
    BOOST_TEST(count(wrapped, "alice> wide") == 1u, wrapped);
    tmux.press("alice", "Enter");
    BOOST_TEST(tmux.wait_for("bob", "] alice: " + long_line));
    tmux.close("bob");
    tmux.close("alice");
    BOOST_TEST(room.objects_gone_within(5s));
}

BOOST_AUTO_TEST_CASE(line_editing_and_history_in_a_terminal) {
    if (!tmux_available())
        return;
    test_room room;
    terminals tmux;
    const std::string chat = chat_binary() + " --room " + room.name() + " --name ";
    BOOST_REQUIRE(tmux.start("alice", chat + "alice"));
    BOOST_REQUIRE(tmux.wait_for("alice", "alice> "));
    BOOST_REQUIRE(tmux.start("bob", chat + "bob"));
    BOOST_REQUIRE(tmux.wait_for("alice", "bob joined"));
    tmux.type_line("alice", "first line");
    BOOST_REQUIRE(tmux.wait_for("bob", "] alice: first line"));
    tmux.type_line("alice", "second line");
    BOOST_REQUIRE(tmux.wait_for("bob", "] alice: second line"));
    tmux.press("alice", "Up");
    BOOST_TEST(tmux.wait_for("alice", "alice> second line"));
    tmux.press("alice", "Up");
    BOOST_TEST(tmux.wait_for("alice", "alice> first line"));
    tmux.press("alice", "Enter");
    BOOST_TEST(tmux.wait_for("bob", "] alice: second line\n[", 10s)); // something came after it
    BOOST_TEST(count(tmux.screen("bob"), "] alice: first line") == 2u, tmux.screen("bob"));
    // Ctrl-A goes to the start, Ctrl-E to the end, Ctrl-W deletes the word before the cursor.
    tmux.type("alice", "world");
    tmux.press("alice", "C-a");
    tmux.type("alice", "hello ");
    tmux.press("alice", "C-e");
    tmux.type("alice", " and moon");
    tmux.press("alice", "C-w");
    tmux.type_line("alice", "sun");
    BOOST_TEST(tmux.wait_for("bob", "] alice: hello world and sun"));
    tmux.type_line("alice", "/help");
    BOOST_TEST(tmux.wait_for("alice", "/who "));
    BOOST_TEST(tmux.wait_for("alice", "/quit "));
    tmux.type_line("alice", "/quit");
    tmux.type_line("bob", "/quit");
    BOOST_TEST(tmux.wait_exit("alice") == 0);
    BOOST_TEST(tmux.wait_exit("bob") == 0);
    BOOST_TEST(room.objects_gone());
}

BOOST_AUTO_TEST_CASE(names_are_coloured_only_on_terminals_that_want_colours) {
    if (!tmux_available())
        return;
    test_room room;
    terminals tmux;
    const std::string chat = chat_binary() + " --room " + room.name() + " --name ";
    // NO_COLOR is removed for the coloured one: the suite may run with it set.
    BOOST_REQUIRE(tmux.start("colour", "env -u NO_COLOR " + chat + "alice"));
    BOOST_REQUIRE(tmux.wait_for("colour", "alice> "));
    BOOST_REQUIRE(tmux.start("no_color_env", "env NO_COLOR=1 " + chat + "bob"));
    BOOST_REQUIRE(tmux.wait_for("no_color_env", "bob> "));
    BOOST_REQUIRE(tmux.start("no_color_option", "env -u NO_COLOR " + chat + "carol --no-color"));
    BOOST_REQUIRE(tmux.wait_for("no_color_option", "carol> "));
    chat::participant dave(chat_binary(), room.name(), "dave"); // piped
    BOOST_REQUIRE(tmux.wait_for("colour", "dave joined"));
    tmux.type_line("colour", "colours?");
    for (const char* who : {"colour", "no_color_env", "no_color_option"})
        BOOST_REQUIRE(tmux.wait_for(who, "alice: colours?"));
    BOOST_REQUIRE(dave.wait_for("alice: colours?"));
    // tmux shows attributes it received as escape sequences with -e: only the first got any.
    const auto coloured = tmux.screen("colour", true);
    BOOST_TEST(coloured.find("\x1b[") != std::string::npos, coloured);
    BOOST_TEST(tmux.screen("no_color_env", true).find("\x1b[") == std::string::npos,
               tmux.screen("no_color_env", true));
    BOOST_TEST(tmux.screen("no_color_option", true).find("\x1b[") == std::string::npos,
               tmux.screen("no_color_option", true));
    BOOST_TEST(dave.transcript().find('\x1b') == std::string::npos, dave.transcript());
    dave.close_input();
    BOOST_TEST(dave.wait_exit() == 0);
    for (const char* who : {"colour", "no_color_env", "no_color_option"}) {
        tmux.type_line(who, "/quit");
        BOOST_TEST(tmux.wait_exit(who) == 0);
    }
    BOOST_TEST(room.objects_gone());
}

// Every way of ending, run from a shell in a terminal: the terminal settings afterwards
// (stty -a) are those before, the exit status is the documented one, the room is gone.
BOOST_AUTO_TEST_CASE(the_terminal_is_restored_on_every_way_out) {
    if (!tmux_available())
        return;
    terminals tmux;
    std::string shell; // the terminal of the current way out
    const auto before = tmux.directory() / "before";
    const auto after = tmux.directory() / "after";
    const std::string after_chat =
        "echo \"chat exited with $?\"; stty -a > " + after.string() + "; echo settings saved";
    struct way_out {
        std::string name;
        int status;
        std::function<void(test_room&, pid_t chat)> act;
        bool stops = false; ///< the chat is started alone: act() runs what follows it
    };
    const std::vector<way_out> ways{
        {"quit", 0, [&](test_room&, pid_t) { tmux.type_line(shell, "/quit"); }},
        {"ctrl-d", 0, [&](test_room&, pid_t) { tmux.press(shell, "C-d"); }},
        {"ctrl-c", 0,
         [&](test_room&, pid_t) {
             tmux.type(shell, "half a line");
             tmux.press(shell, "C-c");
         }},
        {"sigterm", 0, [&](test_room&, pid_t chat) { ::kill(chat, SIGTERM); }},
        {"sighup", 0, [&](test_room&, pid_t chat) { ::kill(chat, SIGHUP); }},
        {"ctrl-z", 0,
         [&](test_room&, pid_t) {
             // Stopped, the shell gets the terminal as it was; continued, the chat goes on. (The
             // shell runs the rest of a command list when a job stops: the chat was started
             // alone, and the rest comes with fg.)
             tmux.type(shell, "typed before ");
             // Ctrl-Z flushes what the terminal holds unread: wait until the chat has it.
             BOOST_TEST(tmux.wait_for(shell, "alice> typed before"));
             tmux.press(shell, "C-z");
             BOOST_TEST(tmux.wait_for(shell, "Stopped"));
             tmux.type_line(shell, "stty -a > " + (tmux.directory() / "stopped").string() +
                                       "; fg; " + after_chat);
             BOOST_TEST(tmux.wait_for(shell, "alice> typed before"));
             tmux.type_line(shell, "and after");
             BOOST_TEST(tmux.wait_for(shell, "] alice: typed before and after"));
             BOOST_TEST(read_file(tmux.directory() / "stopped") ==
                        read_file(tmux.directory() / "before"));
             tmux.type_line(shell, "/quit");
         },
         true},
        {"error", 1,
         [&](test_room& room, pid_t) {
             tmux.type(shell, "half a line");
             run("ipcrm -s " + std::to_string(room.set_id()));
         }},
    };
    for (const auto& way : ways) {
        BOOST_TEST_CONTEXT("way out: " << way.name) {
            test_room room;
            std::filesystem::remove(before);
            std::filesystem::remove(after);
            // A fresh shell (and screen) for each; sessions are not closed before the end (the
            // server exits with its last session, and a new one could meet the dying server).
            shell = "shell-" + way.name;
            BOOST_REQUIRE(tmux.start_shell(shell));
            BOOST_REQUIRE(tmux.wait_for(shell, "$ "));
            const pid_t shell_pid = tmux.pane_pid(shell);
            const std::string chat_command =
                chat_binary() + " --room " + room.name() + " --name alice";
            tmux.type_line(shell, "stty -a > " + before.string() + "; " + chat_command +
                                      (way.stops ? "" : "; " + after_chat));
            BOOST_REQUIRE(tmux.wait_for(shell, "alice> "));
            const pid_t chat = chat_child_of(shell_pid);
            BOOST_REQUIRE(chat > 0);
            way.act(room, chat);
            BOOST_TEST(tmux.wait_for(shell, "chat exited with " + std::to_string(way.status)));
            BOOST_TEST(tmux.wait_for(shell, "\nsettings saved"));
            BOOST_TEST(read_file(after) == read_file(before));
            const auto screen = tmux.screen(shell);
            BOOST_TEST(screen.find("alice> ") == std::string::npos, screen); // prompt erased
            if (way.status != 0)
                BOOST_TEST(count(screen, "chat: ") == 1u, screen);
            BOOST_TEST(room.objects_gone());
        }
    }
}

// Closing the terminal window is the most common way to leave: it is a clean leave, and the
// last one to close removes the room.
BOOST_AUTO_TEST_CASE(closing_the_terminals_leaves_cleanly_and_the_last_removes_the_room) {
    if (!tmux_available())
        return;
    test_room room;
    terminals tmux;
    const std::string chat = chat_binary() + " --room " + room.name() + " --name ";
    BOOST_REQUIRE(tmux.start_alone("alice", chat + "alice"));
    BOOST_REQUIRE(tmux.wait_for("alice", "alice> "));
    BOOST_REQUIRE(tmux.start_alone("bob", chat + "bob"));
    BOOST_REQUIRE(tmux.wait_for("alice", "bob joined"));
    tmux.close("bob");
    BOOST_TEST(tmux.wait_for("alice", "bob left"));
    std::this_thread::sleep_for(700ms); // two reaper rounds: bob must not be "lost"
    BOOST_TEST(tmux.screen("alice").find("bob left (lost)") == std::string::npos);
    BOOST_TEST(!room.objects_gone());
    tmux.close("alice");
    BOOST_TEST(room.objects_gone_within(5s));
}

BOOST_AUTO_TEST_SUITE_END()
