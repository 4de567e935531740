// Another implementation of System V IPC as a peer: Python's sysv_ipc (python3-sysv-ipc) opens
// our objects by key and we open theirs, so the library speaks the kernel's protocol, not only
// to itself.
#include "harness.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

import sysv.async;

namespace asio = boost::asio;
using namespace std::chrono_literals;

namespace {

/// Runs a Python snippet with `key` bound to the ftok key; its exit status.
int python(const std::string& code, key_t key) {
    // Debian's interpreter: python3-sysv-ipc installs there (PATH may list another python3).
    const std::string command =
        "/usr/bin/python3 -c 'import sysv_ipc, time\nkey = " + std::to_string(key) + "\n" + code +
        "'";
    return std::system(command.c_str());
}

} // namespace

BOOST_AUTO_TEST_SUITE(python_peer)

BOOST_AUTO_TEST_CASE(a_python_process_releases_what_a_coroutine_awaits) {
    BOOST_REQUIRE_MESSAGE(python("", 0) == 0,
                          "python3-sysv-ipc is missing (./dev test installs it)");
    sysv_test::ipc_guard guard;
    const key_t k = guard.temp_key();
    asio::io_context io;
    sysv::async_semaphore_set set(io, sysv::semaphore_set::create(sysv::key(k), {0}));
    guard.semaphores(set);
    sysv_test::child peer([k] {
        return python("time.sleep(0.05)\nsysv_ipc.Semaphore(key).release()\n"
                      "sysv_ipc.Semaphore(key).release()",
                      k) == 0
                   ? 0
                   : 1;
    });
    int acquired = 0;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            co_await set.async_acquire(0, 2, asio::use_awaitable);
            acquired = 2;
        },
        asio::detached);
    io.run();
    BOOST_TEST(acquired == 2);
    BOOST_TEST(peer.wait().exited_with(0));
    BOOST_TEST(set.value(0) == 0);
}

BOOST_AUTO_TEST_CASE(we_read_a_segment_python_wrote_and_python_reads_ours) {
    sysv_test::ipc_guard guard;
    const key_t theirs = guard.temp_key();
    BOOST_REQUIRE(python("m = sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, mode=0o600, "
                         "size=4096)\nm.write(b\"written by python\")",
                         theirs) == 0);
    auto segment = sysv::shared_memory::open(sysv::key(theirs));
    guard.memory(segment);
    BOOST_TEST(segment.size() == 4096u);
    const auto view = segment.attach(sysv::access::read_only);
    const auto bytes = view.bytes();
    BOOST_TEST(std::string(reinterpret_cast<const char*>(bytes.data()), 17) == "written by python");

    const key_t ours = guard.temp_key();
    auto mine = sysv::shared_memory::create(sysv::key(ours), 4096);
    guard.memory(mine);
    const std::string text = "written by C++";
    const auto writer = mine.attach();
    std::memcpy(writer.bytes().data(), text.data(), text.size());
    BOOST_TEST(python("m = sysv_ipc.SharedMemory(key)\n"
                      "assert m.read(14) == b\"written by C++\", m.read(14)",
                      ours) == 0);
}

BOOST_AUTO_TEST_SUITE_END()
