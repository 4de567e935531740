// sysv.channel: a bounded broadcast message channel between processes (sysv::basic_channel),
// the ring of sysv.ring in a shared segment, guarded by the semaphores of sysv.async.
module;

// Only the Asio headers this unit uses (see sysv.async.cppm).
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/append.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/compose.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/post.hpp>

#include <cerrno>
#include <csignal>
#include <sys/sem.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

export module sysv.channel;

export import sysv.async;
export import sysv.ring;

export namespace sysv {

/// The shape and behaviour of a channel (the shape is fixed at creation and checked on open).
struct channel_options {
    ring::layout shape{};
    /// How long a writer waits for a live reader that does not consume before dropping the
    /// oldest messages (that reader then gets errc::messages_missed). Bounds how long a stopped
    /// or slow reader can stall the writers.
    std::chrono::milliseconds slow_reader_grace{1000};
    mode_t mode = 0600;
    /// Backoff of the channel's sleeps (on the lock's bell, a reader's doorbell, `space`),
    /// which follow a short spin on posted passes. With doorbells (see wake_mode_of()) the
    /// channel's own releases wake its sleepers at once, and the polls are only a backstop,
    /// for releasers that do not ring (the kernel's undo of a dead reader's slot, `ipcrm`): the
    /// default polls every 100 ms at most then, instead of 3 ms, which takes an idle member's
    /// CPU to next to nothing (a dead lock holder is noticed by a lock waiter's naps, at most
    /// 50 ms apart). Without doorbells it polls as backoff{} does.
    backoff wait_backoff = [] {
        backoff b;
        b.doorbell_max_sleep = std::chrono::milliseconds(100);
        return b;
    }();
    /// Bound on waiting for another process that is creating the channel's semaphore set.
    open_options open{};
};

/// A message received from a channel.
struct channel_message {
    std::vector<std::byte> bytes;
    std::uint32_t sender_pid = 0;
    std::uint64_t sequence = 0; ///< position in the channel's history (all senders)
    std::uint64_t missed = 0;   ///< with errc::messages_missed: how many were dropped
    std::string_view text() const noexcept {
        return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
    }
};

/// What async_receive_batch(channel_batch&) fills: one buffer reused from receive to receive, so
/// a busy reader allocates nothing per message (ring::message_batch: how long views are valid).
using channel_batch = ring::message_batch;

/// Who holds a channel's lock (channel::lock_holder()).
struct channel_lock_holder {
    std::uint32_t pid = 0;
    std::string label;   ///< its reader label if it joined, else empty (text from the segment)
    process_state state; ///< stopped: the channel waits until it is continued
};

#include "channel_state.hpp"

/// A bounded broadcast message channel between processes: one shared segment holding a ring
/// (sysv::ring) and one semaphore set, both at the same key. Any process may send; up to
/// shape.max_readers processes join as readers and each receives every message sent after it
/// joined, in order.
///
///  * Writers are held back while a live reader has not consumed what would be overwritten
///    (backpressure), but never longer than slow_reader_grace: then the oldest messages are
///    dropped and that reader's next receive reports errc::messages_missed with the count.
///  * The lock is a 64-bit word in the segment's header, taken and released by compare-and-
///    swap: uncontended, a send is a copy and a few atomics, with no syscall (see "Why a lock
///    word" below). A waiter retries it on posted passes for a few tens of microseconds, then
///    marks itself asleep and sleeps on the lock's bell semaphore, which the holder's unlock
///    rings only when it sees that mark. The word names its holder (pid and start time): a
///    waiter about to sleep looks at the holder, and takes the lock over (compare-and-swap
///    from that exact word) when the holder is dead, its pid gone, a zombie, or reused by a
///    process with another start time. A holder that is stopped keeps it (lock_holder()).
///    A writer killed mid-write leaves no partial message visible (the record is published by
///    moving head after it is complete; a dirty marker records the interruption and the next
///    writer repairs it).
///  * A reader's slot is a semaphore it holds with SEM_UNDO: when it dies its slot is freed,
///    writers stop waiting for it, and async_reap_lost() reports it once.
///  * Everything read from the segment is validated against its real size; a malformed
///    segment gives errc::corrupt_segment, never a crash.
///  * Readers drain every available message per wake-up (one lock round trip for a batch);
///    async_receive then hands them out one by one without syscalls.
///
///  * An awake reader (one async_receive after another) finds new messages on posted passes
///    without syscalls; only a reader with nothing to read for receive_spin_time marks itself
///    asleep and costs the writer a doorbell semop. A writer that finds the ring full retries
///    on posted passes for space_spin_time before it sleeps on `space`.
///
/// Why a lock word and not a semaphore or a robust mutex: see lock_attempt in channel.cpp.
///
/// All async operations follow basic_async_semaphore_set's rules (any completion token,
/// handler on its associated executor, never completed inline, per-operation cancellation of
/// type terminal, partial and total, whether the operation is waiting on a semaphore or
/// retrying on posted passes; a batch send, which may have sent some of its messages, takes
/// terminal and partial only), with one opt-in: a send or receive whose result is known at once is
/// dispatched through the handler's immediate executor when it has one
/// (sysv::bind_immediate_executor), which saves the scheduler round trip of a post per call. The
/// channel object must outlive its operations and must not be moved while any is pending; one
/// operation of a kind at a time per object (one send, one receive).
template <class Executor = boost::asio::any_io_executor>
class basic_channel : private detail::channel_state {
public:
    using executor_type = Executor;
    static constexpr std::size_t no_slot = channel_state::no_slot;

    /// Opens the channel at `k`, or creates it (segment and set, mode options.mode). The set
    /// is opened race-free (semaphore_set::open_or_create); the segment is initialised by the
    /// first process to take the lock. An existing channel with another shape, owner or mode is
    /// errc::foreign_object. May block briefly: while another process is creating the set (at
    /// most options.open.initialisation_timeout) and while another holds the lock (a critical
    /// section lasts microseconds; a dead holder's lock is released by the kernel).
    ///
    /// A segment and a set are used together only if the segment was initialised for that set
    /// (its header holds the set's id), so objects of different generations are never paired:
    /// a segment whose set was removed (`ipcrm -s`) is removed and replaced, and a set whose
    /// segment was removed (`ipcrm -m`) while members remain is removed (its members' next
    /// operation fails with errc::removed) and replaced. A room that keeps being removed while
    /// this runs gives errc::removed after a few attempts.
    static basic_channel open_or_create(const executor_type& ex, key k,
                                        const channel_options& options, error_code& ec) {
        ec = ring::validate(options.shape);
        if (ec)
            return basic_channel(ex, options);
        for (int attempt = 1;; ++attempt) {
            basic_channel ch(ex, options);
            if (ch.open_once(k, ec) || attempt == 5) {
                if (!ec && !ch.set_.is_open())
                    ec = make_error_code(errc::removed);
                return ch;
            }
        }
    }
    static basic_channel open_or_create(const executor_type& ex, key k,
                                        const channel_options& options = {}) {
        error_code ec;
        auto ch = open_or_create(ex, k, options, ec);
        if (ec)
            detail::throw_error(ec, ch.failed_step_, "channel (key " + to_string(k) + ")",
                                ch.open_detail(ec, k));
        return ch;
    }

    basic_channel(basic_channel&&) noexcept = default;
    basic_channel& operator=(basic_channel&&) noexcept = default;
    ~basic_channel() = default;

    executor_type get_executor() const noexcept { return set_.get_executor(); }
    using channel_state::shape;
    /// This process's reader slot, or no_slot before async_join.
    using channel_state::slot;
    basic_async_semaphore_set<Executor>& semaphores() noexcept { return set_; }
    using channel_state::segment;
    /// Messages received from the ring but not yet handed out by async_receive.
    using channel_state::buffered;

    /// Takes a free reader slot (with SEM_UNDO) and counts this process as a member. `label`
    /// (up to 47 bytes) is shown to others by async_members and async_reap_lost. Completion:
    /// `void(error_code)`; errc::no_free_slot when all slots are taken.
    template <boost::asio::completion_token_for<void(error_code)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto async_join(std::string label,
                    Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return boost::asio::async_compose<Token, void(error_code)>(
            detail::with_cancellation(locked_op<join_step>{this, {std::move(label)}}), token,
            get_executor());
    }

    /// Gives the reader slot back. The last member to leave removes the segment and the set.
    /// Completion: `void(error_code, bool removed)`.
    template <boost::asio::completion_token_for<void(error_code, bool)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto async_leave(Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return boost::asio::async_compose<Token, void(error_code, bool)>(
            detail::with_cancellation(locked_op<leave_step, bool>{this, {}}), token,
            get_executor());
    }

    /// Sends one message (at most shape().max_message_size bytes) to every joined reader. The
    /// buffer must stay valid until completion. Completion: `void(error_code)`.
    template <boost::asio::completion_token_for<void(error_code)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto async_send(boost::asio::const_buffer message,
                    Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return boost::asio::async_initiate<Token, void(error_code)>(initiate_send{this}, token,
                                                                    send_op{this, message});
    }

    /// Sends each buffer of `messages` as one message, in order, taking the lock once for as
    /// many as fit (the cost per message is then a copy, not two semops). Waits for room like
    /// async_send when the ring is full, and completes when all are sent. The buffers and the
    /// span's array must stay valid until completion. Completion: `void(error_code)`; a
    /// message above the size limit fails the whole batch before anything is sent. Cancelled
    /// while waiting for room, it completes with operation_aborted; the messages before that
    /// point were sent.
    template <boost::asio::completion_token_for<void(error_code)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto
    async_send_batch(std::span<const boost::asio::const_buffer> messages,
                     Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return boost::asio::async_initiate<Token, void(error_code)>(
            initiate_send{this}, token, send_op{this, {}, messages.data(), messages.size()});
    }

    /// Receives the next message (requires async_join). Completion:
    /// `void(error_code, channel_message)`. errc::messages_missed (with message.missed set)
    /// reports messages dropped because this reader did not keep up; the next receive continues
    /// with the oldest message still available.
    template <boost::asio::completion_token_for<void(error_code, channel_message)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto async_receive(Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return boost::asio::async_initiate<Token, void(error_code, channel_message)>(
            initiate_receive<channel_message>{this}, token);
    }

    /// Receives every message available now, up to 256 (at least one; waits like
    /// async_receive when there is none): one completion for a whole batch. Completion:
    /// `void(error_code, std::vector<channel_message>)`; errc::messages_missed comes alone,
    /// as one message with `missed` set.
    template <boost::asio::completion_token_for<void(error_code, std::vector<channel_message>)>
                  Token = boost::asio::default_completion_token_t<executor_type>>
    auto
    async_receive_batch(Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return boost::asio::async_initiate<Token, void(error_code, std::vector<channel_message>)>(
            initiate_receive<std::vector<channel_message>>{this}, token);
    }

    /// async_receive_batch into `into`, which is cleared first and then holds the messages
    /// (their bytes in its reused buffer: no allocation per message). Completion:
    /// `void(error_code, std::size_t count)`; errc::messages_missed comes alone (count 0,
    /// into.missed() set). `into` must outlive the operation and not be touched meanwhile.
    template <boost::asio::completion_token_for<void(error_code, std::size_t)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto
    async_receive_batch(channel_batch& into,
                        Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return boost::asio::async_initiate<Token, void(error_code, std::size_t)>(
            initiate_receive<std::size_t>{this, &into}, token);
    }

    /// Readers that died without leaving (their slot semaphore was freed by the kernel): each
    /// is reported once, to the first process that asks, and its slot is cleared. Completion:
    /// `void(error_code, std::vector<ring::member>)`.
    template <boost::asio::completion_token_for<void(error_code, std::vector<ring::member>)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto async_reap_lost(Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return boost::asio::async_compose<Token, void(error_code, std::vector<ring::member>)>(
            detail::with_cancellation(
                locked_op<table_step, std::vector<ring::member>>{this, {true}}),
            token, get_executor());
    }

    /// The joined readers that are alive. Completion:
    /// `void(error_code, std::vector<ring::member>)`.
    template <boost::asio::completion_token_for<void(error_code, std::vector<ring::member>)> Token =
                  boost::asio::default_completion_token_t<executor_type>>
    auto async_members(Token&& token = boost::asio::default_completion_token_t<executor_type>{}) {
        return boost::asio::async_compose<Token, void(error_code, std::vector<ring::member>)>(
            detail::with_cancellation(
                locked_op<table_step, std::vector<ring::member>>{this, {false}}),
            token, get_executor());
    }

    /// Removes the segment and the set now (pending operations everywhere fail with
    /// errc::removed).
    using channel_state::remove;

    /// Who holds the lock right now, if anyone (a snapshot of the lock word, and a read of
    /// /proc). A holder's critical section lasts microseconds, and the lock of a holder that
    /// dies is taken over by the next waiter, but a holder that is stopped (SIGSTOP, Ctrl-Z, a
    /// debugger) keeps it until it is continued: every member's operations wait meanwhile, and
    /// slow_reader_grace does not cover it (it bounds waiting for readers that do not read, and
    /// taking the lock from a stopped holder would expose its half-written record). Call this
    /// when an operation has been pending for a while, to tell the user who the room waits for
    /// (the chat says "waiting for <name> (pid N, stopped)").
    using channel_state::lock_holder;

    /// Aborts the operations of this object that are waiting on a semaphore (operation_aborted);
    /// one that is retrying on posted passes at that moment (a receive looking for new
    /// messages, a send for room, a lock waiter spinning) is not reached and goes on.
    /// Operations continue to be accepted. To abort everything, close(), or cancel each
    /// operation through its cancellation slot (which reaches it in either state).
    void cancel() { set_.cancel(); }

    /// Aborts every operation of this object, pending or between two steps, and refuses new
    /// ones (operation_aborted). A step that has just taken the lock gives it back first. The
    /// kernel objects stay (see async_leave and remove()).
    void close() {
        closed_ = true;
        set_.cancel();
    }
    using channel_state::is_closed;

private:
    basic_channel(const executor_type& ex, const channel_options& options)
        : channel_state(options), set_(ex) {}

    const semaphore_set& set() const noexcept override { return set_.handle(); }
    bool apply_now(operation_list ops, error_code& ec, std::chrono::nanoseconds timeout) override {
        return timeout == timeout.zero() ? set_.try_apply(ops, ec)
                                         : set_.try_apply_for(ops, timeout, ec);
    }
    void remove_set(error_code& ec) override { set_.remove(ec); }

    /// One attempt of open_or_create (see open_objects).
    bool open_once(key k, error_code& ec) {
        semaphore_set set;
        if (!open_objects(k, set, ec))
            return false;
        if (ec)
            return true;
        set_ = basic_async_semaphore_set<Executor>(set_.get_executor(), std::move(set),
                                                   options_.wait_backoff);
        return check_or_initialise(ec);
    }

    /// Continues `handler` with the lock held (error_code{}), or with what ended the wait.
    template <class Handler>
    void async_lock(Handler&& handler) {
        compose<void(error_code)>(detail::with_cancellation(lock_wait_op{this}),
                                  std::forward<Handler>(handler));
    }
    /// Runs composed operation `op` for a handler already made (an initiation's, an operation's).
    template <class Signature, class Op, class Handler>
    void compose(Op op, Handler&& handler) {
        std::decay_t<Handler> h(std::forward<Handler>(handler));
        boost::asio::async_compose<std::decay_t<Handler>, Signature>(std::move(op), h,
                                                                     get_executor());
    }

    /// Waits for the lock word: posted passes retry it for lock_spin_time (a holder's critical
    /// section lasts microseconds), then the waiter marks itself asleep and sleeps on the lock's
    /// bell (channel_state::lock_attempt: a dead holder's lock is taken over). Naps are bounded
    /// (lock_nap_max), so a wake lost to a mark another waiter took is only late.
    struct lock_wait_op {
        basic_channel* self;
        enum { start, spinning, sleeping } state = start;
        std::chrono::steady_clock::time_point spin_until{};
        std::chrono::milliseconds nap{1};

        template <class Self>
        void operator()(Self& handler, error_code ec = {}) {
            auto& ch = *self;
            if (state == start) { // never completes from the initiating function
                state = spinning;
                spin_until = std::chrono::steady_clock::now() + lock_spin_time;
                return boost::asio::post(ch.get_executor(), std::move(handler));
            }
            bool rang = false;
            if (state == sleeping) {
                if (ec == boost::asio::error::timed_out)
                    ec.clear();
                else if (!ec)
                    rang = true;
                else
                    return handler.complete(ch.room_error(ec));
            }
            if (ch.closed_ || handler.cancelled() != boost::asio::cancellation_type::none)
                return handler.complete(aborted());
            const bool may_spin =
                state == spinning && std::chrono::steady_clock::now() < spin_until;
            switch (ch.lock_attempt(may_spin, ec)) {
            case lock_step::acquired:
                // One ring wakes one sleeper: pass it on at our unlock, in case others sleep.
                if (rang)
                    ch.pass_wake_on();
                return handler.complete(error_code{});
            case lock_step::spin:
                return boost::asio::post(ch.get_executor(), std::move(handler));
            case lock_step::failed:
                return handler.complete(ec);
            case lock_step::sleep:
                break;
            }
            state = sleeping;
            const auto this_nap = nap;
            nap = std::min(nap * 2, lock_nap_max);
            ch.set_.async_apply_for(op::acquire(ch.sems_.lock_bell()), this_nap,
                                    ch.asleep_backoff(), std::move(handler));
        }
    };

    /// Defers a completion decided in an initiating function: the operation is posted to the
    /// channel's executor and completes from there (never inline).
    template <class Self, class Result>
    void defer(Self& handler, std::optional<Result>& slot, Result result) {
        slot.emplace(std::move(result));
        boost::asio::post(get_executor(), std::move(handler));
    }

    struct send_op {
        basic_channel* self;
        boost::asio::const_buffer single;                 ///< async_send's message
        const boost::asio::const_buffer* batch = nullptr; ///< async_send_batch's messages
        std::size_t count = 1;
        std::size_t next = 0; ///< the first message not sent yet
        enum { start, locking, retrying, waiting_for_space } state = start;
        bool initiating = false; ///< in the initiating function: complete through defer()
        std::chrono::steady_clock::time_point spin_until{}; ///< set when the ring was full
        std::optional<error_code> deferred{};

        // Not stored as a span: the operation moves, and `single` with it.
        std::span<const boost::asio::const_buffer> messages() const noexcept {
            return batch != nullptr ? std::span(batch, count) : std::span(&single, 1);
        }

        template <class Self>
        void operator()(Self& handler, error_code ec = {}) {
            auto& ch = *self;
            if (deferred)
                return handler.complete(*deferred);
            if (state == start && ch.closed_)
                return ch.defer(handler, deferred, aborted());
            if (state != start && ch.closed_at_step(state == locking && !ec))
                return handler.complete(aborted());
            switch (state) {
            case start:
                if ((ec = ch.send_error(messages())))
                    return ch.defer(handler, deferred, ec);
                if (count == 0)
                    return ch.defer(handler, deferred, error_code{});
                // Busy or full when initiate_send tried; free now: send here, post the completion.
                if (ch.try_lock()) {
                    initiating = true;
                    return critical_section(handler);
                }
                break;
            case retrying: // a pass after finding the ring full: the reader may have made room
                if (handler.cancelled() != boost::asio::cancellation_type::none)
                    return handler.complete(aborted());
                if (ch.try_lock())
                    return critical_section(handler);
                break;
            case waiting_for_space:
                if (ec == boost::asio::error::timed_out)
                    ec.clear(); // the grace period is over: drop the oldest
                break;
            case locking:
                if (!ec)
                    return critical_section(handler);
                break;
            }
            if (ec)
                return handler.complete(ch.room_error(ec));
            state = locking;
            ch.async_lock(std::move(handler));
        }

        /// Completes from wherever the operation is: through the executor when still in the
        /// initiating function.
        template <class Self>
        void finish(Self& handler, error_code ec) {
            if (std::exchange(initiating, false))
                return self->defer(handler, deferred, ec);
            handler.complete(ec);
        }

        /// channel_state::send_locked, then: done, or retry on a posted pass, or sleep on
        /// `space` (re-checking at least every 50 ms even without a ring: a reader that made
        /// room and stopped calling receive cannot ring).
        template <class Self>
        void critical_section(Self& handler) {
            auto& ch = *self;
            const auto sent = ch.send_locked(messages(), next, spin_until);
            if (sent.ec || !sent.wait_for_room)
                return finish(handler, sent.ec);
            // A cancellation that came while no wait was pending is not lost (messages before
            // `next` of a batch are sent; a single message was not).
            if (handler.cancelled() != boost::asio::cancellation_type::none)
                return finish(handler, aborted());
            initiating = false;
            if (sent.spin) {
                state = retrying;
                return boost::asio::post(ch.get_executor(), std::move(handler));
            }
            spin_until = {};
            state = waiting_for_space;
            ch.set_.async_apply_for(op::acquire(ch.sems_.space),
                                    std::min<std::chrono::steady_clock::duration>(
                                        *sent.wait_for_room, std::chrono::milliseconds(50)),
                                    std::move(handler));
        }
    };

    /// What a receive completes with: a missed notice first (alone), then message(s) in order.
    template <class Result>
    auto take_buffered(channel_batch* into) {
        if constexpr (std::is_same_v<Result, std::size_t>)
            return take_into(*into);
        else if constexpr (std::is_same_v<Result, channel_message>)
            return next_buffered();
        else
            return take_all_buffered();
    }

    /// async_receive and async_receive_batch (Result: their completion's value).
    template <class Result>
    struct receive_op {
        using result_type = Result;
        basic_channel* self;
        channel_batch* into = nullptr;
        enum { start, spinning, locking, sleeping } state = start;
        bool initiating = false; ///< in the initiating function: complete through defer()
        std::chrono::steady_clock::time_point spin_until{};
        std::optional<std::pair<error_code, result_type>> deferred{};

        template <class Self>
        void operator()(Self& handler, error_code ec = {}) {
            auto& ch = *self;
            if (deferred)
                return handler.complete(deferred->first, std::move(deferred->second));
            if (state == start && ch.closed_)
                return ch.defer(handler, deferred, std::pair(aborted(), result_type{}));
            if (state != start && ch.closed_at_step(state == locking && !ec))
                return handler.complete(aborted(), result_type{});
            switch (state) {
            case start:
                if (ch.slot_ == no_slot)
                    return ch.defer(
                        handler, deferred,
                        std::pair(make_error_code(errc::invalid_argument), result_type{}));
                if (ch.has_buffered())
                    return ch.defer(handler, deferred, ch.template take_buffered<Result>(into));
                switch (ch.drain_without_lock(into)) {
                case drained::taken:
                    return ch.defer(handler, deferred, ch.template take_buffered<Result>(into));
                case drained::empty:
                    // Awake: look again on posted passes for a while before going to sleep
                    // (a writer rings only readers that sleep; an awake one costs it nothing).
                    state = spinning;
                    spin_until = std::chrono::steady_clock::now() + receive_spin_time;
                    return boost::asio::post(ch.get_executor(), std::move(handler));
                case drained::need_lock:
                    break;
                }
                if (ch.try_lock()) {
                    initiating = true;
                    return critical_section(handler);
                }
                break;
            case spinning:
                if (handler.cancelled() != boost::asio::cancellation_type::none)
                    return handler.complete(aborted(), result_type{});
                switch (ch.drain_without_lock(into)) {
                case drained::taken: {
                    auto [result, message] = ch.template take_buffered<Result>(into);
                    return handler.complete(result, std::move(message));
                }
                case drained::empty:
                    if (std::chrono::steady_clock::now() < spin_until)
                        return boost::asio::post(ch.get_executor(), std::move(handler));
                    break;
                case drained::need_lock:
                    break;
                }
                if (ch.try_lock())
                    return critical_section(handler);
                break;
            case sleeping:
                if (ec == boost::asio::error::timed_out) {
                    // No doorbell for a while: check that the room still exists and, through
                    // the locked path, that the ring is sound (a reader that only waits must
                    // learn of a removal or a corruption too), then sleep on.
                    if ((ec = ch.check_objects()))
                        break;
                    if (handler.cancelled() != boost::asio::cancellation_type::none)
                        return handler.complete(aborted(), result_type{});
                    break;
                }
                if (!ec && ch.drain_without_lock(into) == drained::taken) {
                    auto [result, message] = ch.template take_buffered<Result>(into);
                    return handler.complete(result, std::move(message));
                }
                break;
            case locking:
                if (!ec)
                    return critical_section(handler);
                break;
            }
            if (ec)
                return handler.complete(ch.room_error(ec), result_type{});
            state = locking;
            ch.async_lock(std::move(handler));
        }

        /// Completes from wherever the operation is: through the executor when still in the
        /// initiating function.
        template <class Self>
        void finish(Self& handler, error_code ec, result_type result) {
            if (std::exchange(initiating, false))
                return self->defer(handler, deferred, std::pair(ec, std::move(result)));
            handler.complete(ec, std::move(result));
        }

        /// channel_state::receive_locked, then: hand out what was read, or sleep until a writer
        /// rings this reader's doorbell or sleep_check_interval passes. The reader has looked
        /// on posted passes already: it sleeps at once (no yield phase).
        template <class Self>
        void critical_section(Self& handler) {
            auto& ch = *self;
            const auto received = ch.receive_locked(into);
            if (received.ec)
                return finish(handler, received.ec, result_type{});
            if (!received.sleep) {
                auto [result, taken] = ch.template take_buffered<Result>(into);
                return finish(handler, result, std::move(taken));
            }
            // A cancellation that came while no wait was pending is not lost: nothing was
            // received, so abort before waiting again.
            if (handler.cancelled() != boost::asio::cancellation_type::none)
                return finish(handler, aborted(), result_type{});
            state = sleeping;
            initiating = false;
            ch.set_.async_apply_for(op::acquire(ch.sems_.doorbell(ch.slot_)), sleep_check_interval,
                                    ch.asleep_backoff(), std::move(handler));
        }
    };

    /// async_send and async_send_batch. The ready path (the lock is free and the ring has room:
    /// the common case) sends in the initiating function and completes through
    /// detail::complete_at_once (posted; inline through a bound immediate executor), without a
    /// composed operation's state, work guard and cancellation state. Anything else (a wait,
    /// an error to report) goes through send_op from its start.
    struct initiate_send {
        basic_channel* self;
        using executor_type = Executor;
        executor_type get_executor() const noexcept { return self->get_executor(); }

        template <class Handler>
        void operator()(Handler&& handler, send_op op) const {
            auto& ch = *self;
            error_code ec;
            if (ch.send_now(op.messages(), op.next, ec))
                return detail::complete_at_once(ch.get_executor(), std::forward<Handler>(handler),
                                                ec);
            // A batch may have sent some of its messages before it waits: no total cancellation
            // (which promises no side effect), only terminal and partial.
            const auto allowed = op.count > 1 ? boost::asio::cancellation_type::terminal |
                                                    boost::asio::cancellation_type::partial
                                              : boost::asio::cancellation_type::all;
            ch.template compose<void(error_code)>(detail::with_cancellation(std::move(op), allowed),
                                                  std::forward<Handler>(handler));
        }
    };

    /// async_receive and async_receive_batch. The ready path (messages buffered, or in the ring
    /// for this reader without the lock) hands them out from the initiating function and
    /// completes as initiate_send does; waiting goes through receive_op.
    template <class Result>
    struct initiate_receive {
        basic_channel* self;
        channel_batch* into = nullptr;
        using executor_type = Executor;
        executor_type get_executor() const noexcept { return self->get_executor(); }

        template <class Handler>
        void operator()(Handler&& handler) const {
            auto& ch = *self;
            if (into != nullptr)
                into->clear();
            if (ch.receive_now(into)) {
                auto [ec, result] = ch.template take_buffered<Result>(into);
                return detail::complete_at_once(ch.get_executor(), std::forward<Handler>(handler),
                                                ec, std::move(result));
            }
            ch.template compose<void(error_code, Result)>(
                detail::with_cancellation(receive_op<Result>{self, into}),
                std::forward<Handler>(handler));
        }
    };

    /// async_join, async_leave, async_members, async_reap_lost: a check in the initiating
    /// function (its error completes through the executor), then the lock, then one step of
    /// channel_state that runs with it and releases it.
    template <class Step, class... Result>
    struct locked_op {
        basic_channel* self;
        Step step;
        bool locking = false;
        std::optional<std::tuple<error_code, Result...>> deferred{};

        template <class Self>
        void operator()(Self& handler, error_code ec = {}) {
            auto& ch = *self;
            const auto complete = [&](std::tuple<error_code, Result...> result) {
                std::apply([&](auto&&... r) { handler.complete(std::move(r)...); },
                           std::move(result));
            };
            if (deferred)
                return complete(std::move(*deferred));
            if (!locking && ch.closed_)
                return ch.defer(handler, deferred, std::tuple(aborted(), Result{}...));
            if (locking && ch.closed_at_step(!ec)) {
                step.abandon(ch);
                return complete({aborted(), Result{}...});
            }
            if (locking)
                return complete(step.locked(ch, ec));
            if ((ec = step.check(ch)))
                return ch.defer(handler, deferred, std::tuple(ec, Result{}...));
            locking = true;
            ch.async_lock(std::move(handler));
        }
    };
    struct join_step {
        std::string label;
        error_code check(basic_channel& ch) { return ch.take_slot(); }
        std::tuple<error_code> locked(basic_channel& ch, error_code ec) {
            return {ch.join_locked(label, ec)};
        }
        void abandon(basic_channel& ch) { ch.give_slot_back(); }
    };
    struct leave_step {
        error_code check(basic_channel& ch) {
            return ch.slot_ == no_slot ? make_error_code(errc::invalid_argument) : error_code{};
        }
        std::tuple<error_code, bool> locked(basic_channel& ch, error_code ec) {
            return ch.leave_locked(ec);
        }
        void abandon(basic_channel&) {}
    };
    struct table_step {
        bool reap_lost;
        error_code check(basic_channel& ch) {
            return ch.set_.is_open() ? error_code{} : make_error_code(errc::not_open);
        }
        std::tuple<error_code, std::vector<ring::member>> locked(basic_channel& ch, error_code ec) {
            return ch.table_locked(reap_lost, ec);
        }
        void abandon(basic_channel&) {}
    };

    basic_async_semaphore_set<Executor> set_;
};

using channel = basic_channel<>;

} // namespace sysv
