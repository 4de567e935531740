// sysv: System V IPC for Boost.Asio. The one module users import:
//
//     #include <boost/asio.hpp>   // std, Boost and POSIX headers first...
//     import sysv;                // ...then the module
//
// It re-exports sysv.core (keys, shared memory, semaphore sets, errors); the asynchronous layer
// lives here because it needs Boost.Asio in this unit's global module fragment.
module;

#include <boost/asio.hpp>

export module sysv;

export import sysv.core;
