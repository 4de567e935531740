// sysv.immediate: how a handler asks to be completed inline when an operation completes at once.
//
// Asio's rule, which every operation of this library keeps by default: a handler is never
// invoked from within the initiating function. An operation whose result is known at once
// posts its completion, and that post costs a trip through the scheduler (with Asio 1.81's
// epoll reactor, one epoll_wait between two handlers). Asio 1.82 added a way for a handler to
// waive the rule: an associated immediate executor, through which such a completion is
// dispatched. This module is that association for the Asio this library builds with:
//
//     co_await ch.async_send(msg, sysv::bind_immediate_executor(ex, asio::use_awaitable));
//
// With `ex` the executor the coroutine runs on, a send that finds room completes inline and
// the coroutine goes on without a scheduler round trip. Operations that honour it say so
// (today: the channel's async_send, async_send_batch, async_receive and
// async_receive_batch). At most immediate_depth_limit completions nest on one thread; the
// next one is posted, so a loop of immediate completions cannot exhaust the stack. The binder
// is found only outermost: bind_immediate_executor(ex, asio::as_tuple(asio::use_awaitable)),
// not as_tuple(bind_immediate_executor(...)), whose adapter hides it (the completion is then
// posted, as without a binder).
module;

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/append.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/associator.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/execution/blocking.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/query.hpp>

#include <type_traits>
#include <utility>

export module sysv.immediate;

export namespace sysv {

/// A handler or completion token `T` with an immediate executor `Executor`: when an
/// operation completes at once, the completion is dispatched through `Executor` (inline when
/// the calling thread runs it) instead of posted. Every other association (executor,
/// allocator, cancellation slot) is `T`'s.
template <class T, class Executor>
class immediate_executor_binder {
public:
    using target_type = T;
    using immediate_executor_type = Executor;

    template <class U>
    immediate_executor_binder(const Executor& ex, U&& target)
        : target_(std::forward<U>(target)), executor_(ex) {}

    target_type& get() noexcept { return target_; }
    const target_type& get() const noexcept { return target_; }
    const immediate_executor_type& get_immediate_executor() const noexcept { return executor_; }

    template <class... Args>
    decltype(auto) operator()(Args&&... args) {
        return target_(std::forward<Args>(args)...);
    }

private:
    T target_;
    Executor executor_;
};

/// Binds immediate executor `ex` to a handler or completion token.
template <class Executor, class T>
immediate_executor_binder<std::decay_t<T>, Executor> bind_immediate_executor(const Executor& ex,
                                                                             T&& target) {
    return {ex, std::forward<T>(target)};
}

/// Whether `Handler` has an immediate executor (is an immediate_executor_binder).
template <class Handler>
constexpr bool has_immediate_executor = false;
template <class T, class Executor>
constexpr bool has_immediate_executor<immediate_executor_binder<T, Executor>> = true;

/// Completions dispatched inline that may nest on one thread before the next one is posted.
inline constexpr int immediate_depth_limit = 64;

} // namespace sysv

namespace sysv::detail {

/// The immediate completions running on this thread (see immediate_depth_limit).
export inline int& immediate_depth() noexcept {
    static thread_local int depth = 0;
    return depth;
}

template <class T>
constexpr bool is_io_context_executor = false;
template <class Allocator, unsigned int Bits>
constexpr bool
    is_io_context_executor<boost::asio::io_context::basic_executor_type<Allocator, Bits>> = true;

/// Whether dispatching through `ex` runs the function inline, right now, on this thread: `ex`
/// is (or an any_io_executor holding) an io_context's executor that this thread is running
/// and that allows blocking. For any other executor: false (not known without dispatching).
template <class Executor>
bool dispatches_inline(const Executor& ex) noexcept {
    if constexpr (is_io_context_executor<Executor>) {
        return boost::asio::query(ex, boost::asio::execution::blocking) !=
                   boost::asio::execution::blocking.never &&
               ex.running_in_this_thread();
    } else if constexpr (std::is_same_v<Executor, boost::asio::any_io_executor>) {
        const auto* target = ex.template target<boost::asio::io_context::executor_type>();
        return target != nullptr && dispatches_inline(*target);
    } else {
        return false;
    }
}

/// Completes an operation whose result is known in its initiating function: dispatched
/// through the handler's immediate executor (inline on a thread that runs it) while fewer than
/// immediate_depth_limit are nested on this thread; otherwise posted to the handler's
/// associated executor (`ex` when it has none). Either way with the handler's allocator.
///
/// Dispatching through the immediate executor hops to the handler's associated executor too
/// (asio::dispatch's work_dispatcher). When both hops are known to run inline (an io_context's
/// executor, or an any_io_executor holding one, run by this thread), the handler is invoked
/// directly: the same effect without the type-erased function object, its allocation and the
/// two work counts. This is most of the cost of an immediate completion.
export template <class Executor, class Handler, class... Args>
void complete_at_once(const Executor& ex, Handler&& handler, Args&&... args) {
    if constexpr (has_immediate_executor<std::decay_t<Handler>>) {
        int& depth = immediate_depth();
        if (depth < immediate_depth_limit) {
            struct nested {
                int& depth;
                ~nested() { --depth; }
            } scope{++depth};
            const auto immediate = handler.get_immediate_executor();
            if (dispatches_inline(immediate) &&
                dispatches_inline(boost::asio::get_associated_executor(handler, ex))) {
                std::decay_t<Handler> local(std::forward<Handler>(handler));
                return std::move(local)(std::forward<Args>(args)...);
            }
            return boost::asio::dispatch(
                immediate,
                boost::asio::append(std::forward<Handler>(handler), std::forward<Args>(args)...));
        }
    }
    const auto target = boost::asio::get_associated_executor(handler, ex);
    boost::asio::post(
        target, boost::asio::append(std::forward<Handler>(handler), std::forward<Args>(args)...));
}

} // namespace sysv::detail

namespace boost::asio {

/// The binder's associations are its target's.
template <template <class, class> class Associator, class T, class Executor, class Default>
struct associator<Associator, sysv::immediate_executor_binder<T, Executor>, Default>
    : Associator<T, Default> {
    static typename Associator<T, Default>::type
    get(const sysv::immediate_executor_binder<T, Executor>& b) noexcept {
        return Associator<T, Default>::get(b.get());
    }
    static auto get(const sysv::immediate_executor_binder<T, Executor>& b,
                    const Default& c) noexcept
        -> decltype(Associator<T, Default>::get(b.get(), c)) {
        return Associator<T, Default>::get(b.get(), c);
    }
};

/// As a completion token: the operation runs with `T` as its token and gets `T`'s handler,
/// bound to the same immediate executor.
template <class T, class Executor, class Signature>
class async_result<sysv::immediate_executor_binder<T, Executor>, Signature> {
public:
    template <class Initiation>
    struct init_wrapper {
        Initiation initiation;
        Executor executor;

        template <class Handler, class... Args>
        void operator()(Handler&& handler, Args&&... args) && {
            std::move(initiation)(sysv::immediate_executor_binder<std::decay_t<Handler>, Executor>(
                                      executor, std::forward<Handler>(handler)),
                                  std::forward<Args>(args)...);
        }
    };

    template <class Initiation, class RawToken, class... Args>
    static auto initiate(Initiation&& initiation, RawToken&& token, Args&&... args) {
        return async_initiate<
            std::conditional_t<std::is_const_v<std::remove_reference_t<RawToken>>, const T, T>,
            Signature>(init_wrapper<std::decay_t<Initiation>>{std::forward<Initiation>(initiation),
                                                              token.get_immediate_executor()},
                       token.get(), std::forward<Args>(args)...);
    }
};

} // namespace boost::asio
