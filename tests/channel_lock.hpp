// Holding a channel's lock as its members do (the lock word in its segment's header), for tests
// that act on a channel from outside it: rewrite its header "as a writer would", or be stopped
// while holding it. Include after `import sysv.channel;`.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <thread>

namespace sysv_test {

/// This process in a channel's lock word.
inline std::uint64_t channel_lock_identity() {
    return sysv::ring::lock_identity(static_cast<std::uint32_t>(::getpid()),
                                     sysv::start_time_of(::getpid()).value_or(0));
}

/// Takes the lock of the channel whose segment is `memory` (polls while another holds it).
inline void lock_channel(std::span<std::byte> memory) {
    while (!sysv::ring::lock_word(memory).try_lock(channel_lock_identity()))
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

/// Releases it. Members that sleep on it notice within their nap (tens of milliseconds).
inline void unlock_channel(std::span<std::byte> memory) {
    sysv::ring::lock_word(memory).unlock(channel_lock_identity());
}

} // namespace sysv_test
