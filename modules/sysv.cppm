// sysv: System V IPC for Boost.Asio. The one module users import:
//
//     #include <boost/asio.hpp>   // std, Boost and POSIX headers first...
//     import sysv;                // ...then the module
//
// It re-exports one module per layer, each importable alone:
//   sysv.core     keys, shared memory, semaphore sets, errors (synchronous, no Asio)
//   sysv.ring     the byte layout and logic of the channel's ring (plain code, no syscalls)
//   sysv.async    backoff, the poll service, async_semaphore_set, async_open_or_create (and,
//                 re-exported by it, sysv.immediate: bind_immediate_executor)
//   sysv.mutex    a crash-safe lock between processes, awaited with async_lock
//   sysv.channel  a bounded broadcast message channel between processes
export module sysv;

export import sysv.core;
export import sysv.ring;
export import sysv.async;
export import sysv.mutex;
export import sysv.channel;
