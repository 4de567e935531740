// A program outside the library's repository, as a user writes one: std/Boost headers first, then
// the module. It co_awaits a semaphore that a timer releases, and exits 0 once it got it.
#include <boost/asio.hpp>

#include <chrono>
#include <cstdio>
#include <exception>

import sysv;

namespace asio = boost::asio;

int main() {
    asio::io_context io;
    sysv::async_semaphore_set set(io, sysv::semaphore_set::create(sysv::key::private_key(), {0}));
    sysv::scoped_remover remove_at_exit(set);
    bool acquired = false;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            asio::steady_timer timer(co_await asio::this_coro::executor,
                                     std::chrono::milliseconds(20));
            timer.async_wait(
                [&](boost::system::error_code) { set.try_apply(sysv::op::release(0)); });
            co_await set.async_acquire(0, asio::use_awaitable);
            acquired = true;
        },
        [](std::exception_ptr e) {
            if (e)
                std::rethrow_exception(e); // out of run(): main fails loudly
        });
    io.run();
    std::printf("consumer: %s\n", acquired ? "acquired the semaphore" : "did not acquire");
    return acquired ? 0 : 1;
}
