// Two processes (parent and a forked child) share one segment and pass the turn back and forth
// through a semaphore set: the parent writes "ping N", the child answers "pong N".
// Everything it creates is removed at the end, also when something fails.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <string_view>

#include "common/cli.hpp"

import sysv;

namespace {

constexpr std::size_t parent_turn = 0; // semaphore the parent waits on
constexpr std::size_t child_turn = 1;  // semaphore the child waits on

void put(sysv::attachment& memory, std::string_view text) {
    auto bytes = memory.bytes();
    const auto n = std::min(text.size(), bytes.size() - 1);
    std::memcpy(bytes.data(), text.data(), n);
    bytes[n] = std::byte{0};
}

const char* get(const sysv::attachment& memory) {
    return reinterpret_cast<const char*>(memory.bytes().data());
}

} // namespace

int main(int argc, char** argv) try {
    int rounds = 5;
    CLI::App app{"Two processes (this one and a forked child) pass the turn back and forth "
                 "through a semaphore set and exchange text in a shared segment.",
                 "ping_pong"};
    cli::describe(app);
    app.add_option("--rounds", rounds, "Round trips to make, 1..1000000")
        ->type_name("N")
        ->capture_default_str()
        ->check(CLI::Range(1, 1000000).description(""));
    app.footer("Exit status: 0 on success, 1 on an error, 2 for a usage error.");
    if (auto status = cli::parse(app, argc, argv))
        return *status;
    // IPC_PRIVATE objects: reachable by this process and the child it forks, by nobody else.
    auto memory = sysv::shared_memory::create(sysv::key::private_key(), 4096);
    sysv::scoped_remover remove_memory(memory);
    auto turns = sysv::semaphore_set::create(sysv::key::private_key(), {0, 0});
    sysv::scoped_remover remove_turns(turns);
    std::printf("created %s (%zu bytes) and %s (%zu semaphores)\n", memory.description().c_str(),
                memory.size(), turns.description().c_str(), turns.size());

    std::fflush(stdout);
    const pid_t pid = ::fork();
    if (pid == -1)
        throw std::runtime_error("fork failed");
    if (pid == 0) {
        remove_memory.release(); // the parent owns the objects
        remove_turns.release();
        auto shared = memory.attach();
        for (int i = 1; i <= rounds; ++i) {
            turns.apply(sysv::op::acquire(child_turn));
            std::printf("  child  %d read \"%s\"\n", ::getpid(), get(shared));
            char reply[32];
            std::snprintf(reply, sizeof reply, "pong %d", i);
            put(shared, reply);
            std::fflush(stdout);
            turns.apply(sysv::op::release(parent_turn));
        }
        ::_exit(0);
    }

    auto shared = memory.attach();
    for (int i = 1; i <= rounds; ++i) {
        char message[32];
        std::snprintf(message, sizeof message, "ping %d", i);
        put(shared, message);
        std::printf("parent %d wrote \"%s\"\n", ::getpid(), message);
        std::fflush(stdout);
        turns.apply(sysv::op::release(child_turn));
        turns.apply(sysv::op::acquire(parent_turn));
        std::printf("parent %d read \"%s\"\n", ::getpid(), get(shared));
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    const auto st = memory.stat();
    std::printf(
        "done: %d round trips; segment attached by %zu process(es); removing both objects\n",
        rounds, st.attach_count);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
} catch (const std::exception& e) {
    std::fprintf(stderr, "ping_pong: %s\n", e.what());
    return 1;
}
