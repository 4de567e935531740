// chat_demo: a scripted conversation between three `chat` processes (alice, bob, carol) in a
// fresh room. Shows what each one saw, checks that each saw every other participant's
// messages in the order they were sent, and that the room's System V objects are gone after
// the last one left. Exit status 0 when every check passed.
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "chat_process.hpp"
#include "chat_room.hpp"
#include "common/cli.hpp"

namespace {

/// Positions of `needles` in `haystack`, in order; false if one is missing or out of order.
bool in_order(const std::string& haystack, const std::vector<std::string>& needles) {
    std::size_t from = 0;
    for (const auto& n : needles) {
        const auto at = haystack.find(n, from);
        if (at == std::string::npos)
            return false;
        from = at + n.size();
    }
    return true;
}

} // namespace

int main(int argc, char** argv) try {
    const auto self = std::filesystem::canonical("/proc/self/exe");
    std::string program = (self.parent_path() / "chat").string();
    CLI::App app{"A scripted conversation between three chat processes in a fresh room; checks "
                 "that each saw every other's messages in order and that the room is gone "
                 "afterwards.",
                 "chat_demo"};
    cli::describe(app);
    app.add_option("--chat", program, "The chat program to run")
        ->type_name("PATH")
        ->capture_default_str()
        ->check(CLI::ExistingFile.description(""));
    app.footer("Exit status: 0 when every check passed, 1 otherwise, 2 for a usage error.");
    if (auto status = cli::parse(app, argc, argv))
        return *status;
    const std::string room = "demo-" + std::to_string(::getpid());
    std::printf("chat_demo: three chat processes talk in room %s\n\n", room.c_str());
    std::fflush(stdout);

    bool ok = true;
    auto check = [&](bool condition, const std::string& what) {
        std::printf("  %s %s\n", condition ? "ok  " : "FAIL", what.c_str());
        ok = ok && condition;
    };

    // What each one says, in order.
    const std::map<std::string, std::vector<std::string>> lines{
        {"alice", {"hi everyone", "how is the ring buffer today?", "see you"}},
        {"bob", {"hello alice", "no torn messages here", "bye"}},
        {"carol", {"hey both", "semaphores all the way down", "leaving now"}},
    };
    const auto room_file = chat::room_file(room);
    const key_t key = ::ftok(room_file.c_str(), chat::project_id);

    {
        chat::participant alice(program, room, "alice");
        ok = alice.wait_for("joined room") && ok;
        chat::participant bob(program, room, "bob");
        ok = alice.wait_for("bob joined") && ok;
        chat::participant carol(program, room, "carol");
        ok = alice.wait_for("carol joined") && bob.wait_for("carol joined") && ok;
        std::map<std::string, chat::participant*> people{
            {"alice", &alice}, {"bob", &bob}, {"carol", &carol}};

        for (std::size_t round = 0; round < 3; ++round)
            for (auto& [name, p] : people) {
                p->say(lines.at(name)[round]);
                std::this_thread::sleep_for(std::chrono::milliseconds(30));
            }
        // Everyone waits to see everyone else's last line.
        for (auto& [name, p] : people)
            for (auto& [other, q] : people)
                if (other != name)
                    ok = p->wait_for(other + ": " + lines.at(other).back()) && ok;
        bob.say("/who");
        ok = bob.wait_for("in " + room + ": ") && ok;
        carol.say("/quit");
        ok = alice.wait_for("carol left") && bob.wait_for("carol left") && ok;
        const int carol_status = carol.wait_exit();
        check(carol_status == 0,
              "carol exited cleanly after /quit (status " + std::to_string(carol_status) + ")");
        bob.close_input(); // end of input leaves too
        ok = alice.wait_for("bob left") && ok;
        const int bob_status = bob.wait_exit();
        check(bob_status == 0,
              "bob exited cleanly at end of input (status " + std::to_string(bob_status) + ")");
        alice.say("/quit");
        ok = alice.wait_for("room " + room + " removed") && ok;
        const int alice_status = alice.wait_exit();
        check(alice_status == 0,
              "alice exited cleanly; she was last and removed the room (status " +
                  std::to_string(alice_status) + ")");

        for (auto& [name, p] : people) {
            std::printf("\n--- what %s saw ---\n%s", name.c_str(), p->transcript().c_str());
        }
        std::printf("\n--- checks ---\n");
        for (auto& [name, p] : people)
            for (auto& [other, q] : people) {
                if (other == name)
                    continue;
                std::vector<std::string> expected;
                for (const auto& l : lines.at(other))
                    expected.push_back(other + ": " + l);
                check(in_order(p->transcript(), expected),
                      name + " saw all of " + other + "'s messages, in order");
            }
        check(bob.transcript().find("in " + room + ": ") != std::string::npos &&
                  bob.transcript().find("alice") != std::string::npos,
              "/who listed the participants");
    }
    const bool semaphores_gone = ::semget(key, 0, 0) == -1 && errno == ENOENT;
    const bool memory_gone = ::shmget(key, 0, 0) == -1 && errno == ENOENT;
    check(semaphores_gone && memory_gone, "no System V object is left at the room's key");
    std::filesystem::remove(room_file);
    std::printf("\n%s\n", ok ? "chat_demo: all checks passed" : "chat_demo: SOME CHECKS FAILED");
    return ok ? 0 : 1;
} catch (const std::exception& e) {
    std::fprintf(stderr, "chat_demo: %s\n", e.what());
    return 1;
}
