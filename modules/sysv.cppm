// sysv: System V IPC for Boost.Asio. The one module users import:
//
//     #include <boost/asio.hpp>   // std, Boost and POSIX headers first...
//     import sysv;                // ...then the module
//
// The library is built as one module per layer:
//   sysv.core     keys, shared memory, semaphore sets, errors (synchronous, no Asio)
//   sysv.ring     the byte layout and logic of the channel's ring (plain code, no syscalls)
//   sysv.async    backoff, the poll service, async_semaphore_set, async_open_or_create (and,
//                 re-exported by it, sysv.immediate: bind_immediate_executor)
//   sysv.mutex    a crash-safe lock between processes, awaited with async_lock
//   sysv.channel  a bounded broadcast message channel between processes
//
// The layers export to each other what they share internally (namespace sysv::detail: the
// poll service, the doorbell table, crash points...). This module imports them without
// re-exporting them and exports the public API name by name, so an `import sysv;` user sees
// no sysv::detail name (tests/package/internals_hidden checks that naming one fails to
// compile). Importing a layer directly gives its public API and its internals: that is for the
// library's own tests and tools, and the internals may change in any release.
//
// Specialisations (boost::system::is_error_code_enum<sysv::errc>, Asio's associators for
// immediate_executor_binder) and the operators and hidden friends of the exported types need
// no line here: they are reachable through the types, and argument-dependent lookup finds
// them. A public name added to a layer must be added here too (the reference pages list them).
export module sysv;

import sysv.core;
import sysv.ring;
import sysv.async;
import sysv.mutex;
import sysv.channel;

// sysv.core
export namespace sysv {
using sysv::attachment;
using sysv::basic_attachment;
using sysv::errc;
using sysv::error_category;
using sysv::error_code;
using sysv::kernel_limits;
using sysv::key;
using sysv::limits;
using sysv::make_error_code;
using sysv::open_options;
using sysv::operation;
using sysv::operation_list;
using sysv::permissions;
using sysv::pid_namespace_id;
using sysv::process_state;
using sysv::read_only_attachment;
using sysv::scoped_remover;
using sysv::semaphore_set;
using sysv::semaphore_set_status;
using sysv::shared_memory;
using sysv::shared_memory_status;
using sysv::start_time_of;
using sysv::state_of;
using sysv::system_error;
using sysv::time_point;
using sysv::to_string;
} // namespace sysv

export namespace sysv::access {
using sysv::access::read_only;
using sysv::access::read_only_t;
using sysv::access::read_write;
using sysv::access::read_write_t;
} // namespace sysv::access

export namespace sysv::op {
using sysv::op::acquire;
using sysv::op::release;
using sysv::op::wait_zero;
} // namespace sysv::op

// sysv.ring
export namespace sysv::ring {
using sysv::ring::describe;
using sysv::ring::initialise;
using sysv::ring::is_blank;
using sysv::ring::label_capacity;
using sysv::ring::layout;
using sysv::ring::lock_identity;
using sysv::ring::lock_identity_pid;
using sysv::ring::lock_word;
using sysv::ring::magic;
using sysv::ring::member;
using sysv::ring::message;
using sysv::ring::message_batch;
using sysv::ring::record_header_size;
using sysv::ring::record_size;
using sysv::ring::segment_size;
using sysv::ring::validate;
using sysv::ring::version;
using sysv::ring::view;
using sysv::ring::wrap_marker;
} // namespace sysv::ring

export namespace sysv::ring::offsets {
using sysv::ring::offsets::capacity;
using sysv::ring::offsets::cursor;
using sysv::ring::offsets::cursor_seq;
using sysv::ring::offsets::dirty;
using sysv::ring::offsets::dirty_pid;
using sysv::ring::offsets::entry_size;
using sysv::ring::offsets::full_since;
using sysv::ring::offsets::head;
using sysv::ring::offsets::head_seq;
using sysv::ring::offsets::header_size;
using sysv::ring::offsets::in_use;
using sysv::ring::offsets::label;
using sysv::ring::offsets::lock;
using sysv::ring::offsets::lock_sleepers;
using sysv::ring::offsets::magic;
using sysv::ring::offsets::max_message_size;
using sysv::ring::offsets::max_readers;
using sysv::ring::offsets::owner;
using sysv::ring::offsets::pid;
using sysv::ring::offsets::pid_namespace;
using sysv::ring::offsets::repairs;
using sysv::ring::offsets::sleeping;
using sysv::ring::offsets::sleeping_readers;
using sysv::ring::offsets::tail;
using sysv::ring::offsets::tail_seq;
using sysv::ring::offsets::version;
using sysv::ring::offsets::waiting_writers;
} // namespace sysv::ring::offsets

// sysv.immediate, sysv.async
export namespace sysv {
using sysv::async_open_or_create;
using sysv::async_semaphore_set;
using sysv::backoff;
using sysv::backoff_schedule;
using sysv::basic_async_semaphore_set;
using sysv::bind_immediate_executor;
using sysv::has_immediate_executor;
using sysv::immediate_depth_limit;
using sysv::immediate_executor_binder;
using sysv::wake_delivery_bound;
using sysv::wake_demotion_streak;
using sysv::wake_miss_age;
using sysv::wake_mode;
using sysv::wake_mode_of;
using sysv::wake_mode_reason;
using sysv::wake_statistics;
using sysv::wake_status;
using sysv::wake_status_of;
} // namespace sysv

// sysv.mutex
export namespace sysv {
using sysv::basic_mutex;
using sysv::basic_robust_mutex;
using sysv::mutex;
using sysv::robust_mutex;
} // namespace sysv

// sysv.channel
export namespace sysv {
using sysv::basic_channel;
using sysv::channel;
using sysv::channel_batch;
using sysv::channel_lock_holder;
using sysv::channel_message;
using sysv::channel_options;
} // namespace sysv
