// Helpers of the tests that use the library itself. Include after `import sysv;` (and after
// harness.hpp and every std/Boost/POSIX header, which it does not include again).
#pragma once

namespace sysv_test {

/// A fresh IPC_PRIVATE semaphore set with `values`, removed by `guard`.
inline sysv::semaphore_set private_set(ipc_guard& guard, std::initializer_list<int> values,
                                       mode_t mode = 0600) {
    auto set = sysv::semaphore_set::create(sysv::key::private_key(), values, mode);
    guard.semaphores(set);
    return set;
}

/// A fresh semaphore set at the ftok key of a new temporary file, removed by `guard`.
inline sysv::semaphore_set keyed_set(ipc_guard& guard, std::initializer_list<int> values,
                                     mode_t mode = 0600) {
    auto set = sysv::semaphore_set::create(sysv::key(guard.temp_key()), values, mode);
    guard.semaphores(set);
    return set;
}

/// A barrier between processes: a semaphore set with one semaphore at `n`; each of the `n`
/// participants takes one unit and waits for zero.
struct barrier {
    sysv::semaphore_set set;
    barrier(ipc_guard& guard, int n) : set(private_set(guard, {n})) {}
    void arrive_and_wait() {
        set.apply(sysv::op::acquire(0));
        set.apply(sysv::op::wait_zero(0));
    }
};

} // namespace sysv_test
