// sysv.async: the poll service (the non-template part of the asynchronous layer).
module;

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/execution.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <pthread.h>
#include <sched.h>
#include <sys/sem.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

module sysv.async;

namespace sysv {

std::string_view to_string(wake_mode mode) noexcept {
    switch (mode) {
    case wake_mode::io_uring:
        return "io_uring";
    case wake_mode::helper_thread:
        return "helper_thread";
    case wake_mode::polling:
        break;
    }
    return "polling";
}

} // namespace sysv

namespace sysv::detail {

namespace {
using clock = std::chrono::steady_clock;

union semun {
    int val;
    semid_ds* buf;
    unsigned short* array;
};

double uniform01(std::minstd_rand& random) {
    return static_cast<double>(random() - std::minstd_rand::min()) /
           static_cast<double>(std::minstd_rand::max() - std::minstd_rand::min() + 1);
}
std::atomic<pid_t> cached_pid{0};
} // namespace

pid_t this_process() noexcept {
    pid_t pid = cached_pid.load(std::memory_order_relaxed);
    if (pid != 0)
        return pid;
    static const int registered =
        ::pthread_atfork(nullptr, nullptr, [] { cached_pid.store(0, std::memory_order_relaxed); });
    (void)registered;
    pid = ::getpid();
    cached_pid.store(pid, std::memory_order_relaxed);
    return pid;
}

bool apply_to_snapshot(std::span<int> values, std::span<const sembuf> ops) noexcept {
    std::size_t done = 0;
    bool feasible = true;
    for (; done < ops.size(); ++done) {
        const sembuf& o = ops[done];
        if (o.sem_num >= values.size()) {
            feasible = false;
            break;
        }
        int& v = values[o.sem_num];
        if (o.sem_op == 0) {
            if (v != 0) {
                feasible = false;
                break;
            }
        } else if (v + o.sem_op < 0 || v + o.sem_op > 32767) {
            feasible = false;
            break;
        } else {
            v += o.sem_op;
        }
    }
    if (!feasible) // roll back what this group changed
        for (std::size_t i = done; i-- > 0;)
            values[ops[i].sem_num] -= ops[i].sem_op;
    return feasible;
}

poll_service::poll_service(asio::execution_context& context)
    : asio::execution_context::service(context) {}

poll_service::~poll_service() {
    watcher_.reset();
}

void poll_service::choose_mode_locked() {
    if (mode_chosen_ && mode_pid_ != this_process()) {
        // A forked child that did not call notify_fork(fork_child): the watcher's ring and
        // descriptor are the parent's (so is the reactor): leave them alone, choose again.
        (void)watcher_.release();
        mode_chosen_ = false;
        watched_.clear();
        for (pending_wait* w = head_; w != nullptr; w = w->next)
            w->on_doorbell = false;
    }
    if (mode_chosen_)
        return;
    mode_chosen_ = true;
    mode_pid_ = this_process();
    mode_ = wake_mode::polling;
    watcher_.reset();
    std::string forced;
    if (const char* env = std::getenv("SYSV_WAIT_MODE"); env != nullptr && *env != '\0')
        forced = env;
    std::string why;
    if (!forced.empty() && forced != "io_uring" && forced != "thread" && forced != "polling")
        why = "SYSV_WAIT_MODE='" + forced + "' is not io_uring, thread or polling; ";
    if (forced == "polling") {
        mode_reason_ = "polling forced (SYSV_WAIT_MODE=polling)";
        return;
    }
    if (doorbell_table::get() == nullptr) {
        mode_reason_ = why + doorbell_table::unavailable_reason();
        return;
    }
    if (forced != "thread") {
        std::string uring_why;
        if ((watcher_ = make_uring_watcher(*this, uring_why))) {
            mode_ = wake_mode::io_uring;
            mode_reason_ = why;
            return;
        }
        why += "io_uring is unavailable (" + uring_why + ")";
    } else {
        why += "helper thread forced (SYSV_WAIT_MODE=thread)";
    }
    std::string thread_why;
    if ((watcher_ = make_thread_watcher(*this, thread_why))) {
        mode_ = wake_mode::helper_thread;
        mode_reason_ = why;
        return;
    }
    mode_reason_ = why + "; the helper thread is unavailable (" + thread_why + ")";
}

wake_mode poll_service::mode() const {
    std::lock_guard lock(mutex_);
    const_cast<poll_service*>(this)->choose_mode_locked();
    return mode_;
}

std::string poll_service::mode_reason() const {
    std::lock_guard lock(mutex_);
    const_cast<poll_service*>(this)->choose_mode_locked();
    return mode_reason_;
}

void poll_service::on_doorbell() {
    {
        std::lock_guard lock(mutex_);
        bool any = false;
        const auto now = clock::now();
        for (pending_wait* w = head_; w != nullptr; w = w->next) {
            if (!w->on_doorbell)
                continue;
            for (std::size_t k = 0; k < 2; ++k)
                if (w->words[k] != nullptr && doorbell_value(w->words[k]) != w->expected[k]) {
                    w->on_doorbell = false;
                    w->due = std::min(w->due, now);
                    any = true;
                    break;
                }
        }
        if (!any) { // nothing changed for us (a shared slot, a spurious wake): watch again
            update_watch_locked(now);
            return;
        }
        if (shut_down_)
            return;
    }
    // The pass runs now rather than posted: on_doorbell is called on the context's thread (from
    // the eventfd's handler, or a handler the helper thread posted), so the woken waits'
    // handlers are dispatched from here, one scheduler round trip (an epoll_wait) sooner.
    run_pass();
}

void poll_service::update_watch_locked(clock::time_point now) {
    if (!watcher_)
        return;
    std::vector<watched_word> words;
    for (pending_wait* w = head_; w != nullptr; w = w->next)
        if (w->on_doorbell)
            for (std::size_t k = 0; k < 2; ++k)
                if (w->words[k] != nullptr)
                    words.push_back({w->words[k], w->expected[k]});
    std::sort(words.begin(), words.end(), [](const watched_word& a, const watched_word& b) {
        return a.word < b.word || (a.word == b.word && a.expected < b.expected);
    });
    // One entry per word. Two waits that read a word at different times and saw different
    // values: it changed after the older read, so that wait tries again now instead.
    bool stale = false;
    std::size_t out = 0;
    for (std::size_t i = 0; i < words.size(); ++i) {
        if (out > 0 && words[out - 1].word == words[i].word) {
            if (words[out - 1].expected != words[i].expected)
                stale = true;
            continue;
        }
        words[out++] = words[i];
    }
    words.resize(out);
    if (stale) {
        for (pending_wait* w = head_; w != nullptr; w = w->next)
            if (w->on_doorbell)
                for (std::size_t k = 0; k < 2; ++k)
                    if (w->words[k] != nullptr && doorbell_value(w->words[k]) != w->expected[k]) {
                        w->on_doorbell = false;
                        w->due = std::min(w->due, now);
                    }
        post_pass_locked();
    }
    watched_ = words;
    watcher_->watch(watched_);
}

void poll_service::notify_fork(asio::execution_context::fork_event event) {
    if (event != asio::execution_context::fork_child)
        return;
    // The child must not use the parent's ring (its queues are shared memory with the parent)
    // or count on the parent's helper thread (it did not survive the fork): choose again.
    std::lock_guard lock(mutex_);
    watcher_.reset();
    mode_chosen_ = false;
    watched_.clear();
    for (pending_wait* w = head_; w != nullptr; w = w->next)
        w->on_doorbell = false;
}

void poll_service::link(pending_wait* w) {
    w->prev = tail_;
    w->next = nullptr;
    if (tail_)
        tail_->next = w;
    else
        head_ = w;
    tail_ = w;
    w->linked = true;
    ++count_;
}

void poll_service::unlink(pending_wait* w) {
    if (w->prev)
        w->prev->next = w->next;
    else
        head_ = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        tail_ = w->prev;
    w->prev = w->next = nullptr;
    w->linked = false;
    --count_;
}

void poll_service::start(pending_wait* w, const asio::any_io_executor& ex) {
    std::unique_lock lock(mutex_);
    if (!executor_) {
        // Untracked: the service's own passes and timer must not keep run() from returning
        // once no wait is pending (each pending wait tracks work on its handler's executor).
        executor_ = asio::prefer(ex, asio::execution::outstanding_work.untracked);
        timer_.emplace(*executor_);
    }
    if (w->cancel_requested || shut_down_) {
        w->done = true;
        lock.unlock();
        w->finish(w, asio::error::operation_aborted, true);
        return;
    }
    choose_mode_locked();
    if (watcher_) {
        if (doorbell_table* table = doorbell_table::get()) {
            const unsigned heard = doorbells_heard_by(w->ops.span());
            if (heard & doorbell_up)
                w->words[0] = table->word(w->set_id, doorbell_up);
            if (heard & doorbell_zero)
                w->words[1] = table->word(w->set_id, doorbell_zero);
            w->schedule.set_doorbells(true);
        }
    }
    link(w);
    const auto pause = w->schedule.next(uniform01(random_));
    if (pause.count() == 0) {
        w->sleeping = false;
        post_pass_locked();
    } else {
        w->sleeping = true;
        w->interval = pause;
        w->due = clock::now() + pause;
    }
    // A new wait can only make the timer's next tick earlier: no need to look at the others.
    std::optional<clock::time_point> earliest;
    if (w->sleeping)
        earliest = w->due;
    if (w->deadline && (!earliest || *w->deadline < *earliest))
        earliest = w->deadline;
    if (earliest)
        arm_timer_at_locked(earliest);
}

void poll_service::cancel(pending_wait* w) {
    std::unique_lock lock(mutex_);
    if (w->linked) {
        unlink(w);
        w->done = true;
        if (count_ == 0 && !watched_.empty())
            post_pass_locked(); // stops watching, so run() can return
        lock.unlock();
        w->finish(w, asio::error::operation_aborted, true);
    } else if (!w->done) {
        w->cancel_requested = true; // not started yet: start() completes it
    }
}

void poll_service::cancel_owner(std::uint64_t owner) {
    std::vector<pending_wait*> cancelled;
    {
        std::lock_guard lock(mutex_);
        for (pending_wait* w = head_; w != nullptr;) {
            pending_wait* next = w->next;
            if (w->owner == owner) {
                unlink(w);
                w->done = true;
                cancelled.push_back(w);
            }
            w = next;
        }
        if (count_ == 0 && !watched_.empty())
            post_pass_locked(); // stops watching, so run() can return
    }
    for (pending_wait* w : cancelled)
        w->finish(w, asio::error::operation_aborted, true);
}

void poll_service::kick(int set_id) {
    std::lock_guard lock(mutex_);
    bool any = false;
    const auto now = clock::now();
    for (pending_wait* w = head_; w != nullptr; w = w->next)
        if (w->set_id == set_id) {
            w->due = std::min(w->due, now);
            any = true;
        }
    if (any)
        post_pass_locked();
}

std::size_t poll_service::pending() const {
    std::lock_guard lock(mutex_);
    return count_;
}

void poll_service::post_pass_locked() {
    if (pass_posted_ || !executor_ || shut_down_)
        return;
    pass_posted_ = true;
    asio::post(*executor_, [this] { run_pass(); });
}

void poll_service::arm_timer_at_locked(std::optional<clock::time_point> earliest) {
    if (!earliest) {
        if (timer_at_) {
            timer_->cancel(); // nothing to wait for: let run() return
            timer_at_.reset();
        }
        return;
    }
    if (timer_at_ && *timer_at_ <= *earliest)
        return; // already armed early enough
    timer_at_ = *earliest;
    timer_->expires_at(*earliest); // cancels the previous wait, if any
    timer_->async_wait([this](const error_code& ec) {
        if (ec == asio::error::operation_aborted)
            return;
        {
            std::lock_guard lock(mutex_);
            timer_at_.reset();
        }
        run_pass();
    });
}

void poll_service::plan_locked(clock::time_point now, bool retry_now) {
    // One walk for what comes next: another yield pass, and the timer.
    bool yielding = false;
    std::optional<clock::time_point> earliest;
    for (pending_wait* w = head_; w != nullptr; w = w->next) {
        if (!w->sleeping)
            yielding = true;
        else if (!earliest || w->due < *earliest)
            earliest = w->due;
        if (w->deadline && (!earliest || *w->deadline < *earliest))
            earliest = *w->deadline;
    }
    if (yielding || retry_now)
        post_pass_locked();
    arm_timer_at_locked(earliest);
    update_watch_locked(now);
}

void poll_service::run_pass() {
    std::vector<std::pair<pending_wait*, error_code>> completed;
    bool yield_pass = false;
    bool retry_now = false; // a wait was rung between its read of the words and its sleep
    {
        std::lock_guard lock(mutex_);
        pass_posted_ = false;
        if (shut_down_)
            return;
        const auto now = clock::now();
        // Waiters that are yielding, or due (a quarter period early: waiters at the same
        // period converge on the same ticks), or past their deadline.
        auto& candidates = candidates_;
        candidates.clear();
        for (pending_wait* w = head_; w != nullptr; w = w->next) {
            if (!w->sleeping) {
                yield_pass = true;
                candidates.push_back(w);
            } else if (w->due - w->interval / 4 <= now || (w->deadline && *w->deadline <= now)) {
                candidates.push_back(w);
            }
        }
        // Group by set (usually already grouped: one set, or waits started set by set).
        const auto by_set = [](const pending_wait* a, const pending_wait* b) {
            return a->set_id < b->set_id;
        };
        if (!std::is_sorted(candidates.begin(), candidates.end(), by_set))
            std::stable_sort(candidates.begin(), candidates.end(), by_set);
        // The doorbell words are read before the attempts: a release after this read changes
        // them, so a wait that then sleeps on them cannot miss it.
        for (pending_wait* w : candidates)
            for (std::size_t k = 0; k < 2; ++k)
                if (w->words[k] != nullptr)
                    w->seen[k] = doorbell_value(w->words[k]);
        for (auto group = candidates.begin(); group != candidates.end();) {
            const auto group_end =
                std::find_if(group, candidates.end(),
                             [&](const pending_wait* w) { return w->set_id != (*group)->set_id; });
            // With several waiters on one set, one GETALL tells which of them can proceed.
            bool have_snapshot = false;
            error_code set_error;
            if (group_end - group > 1) {
                raw_.assign((*group)->set_size, 0);
                semun arg{};
                arg.array = raw_.data();
                if (::semctl((*group)->set_id, 0, GETALL, arg) == -1) {
                    set_error = id_error(errno);
                } else {
                    values_.assign(raw_.begin(), raw_.end());
                    have_snapshot = true;
                }
            }
            for (auto it = group; it != group_end; ++it) {
                pending_wait* w = *it;
                error_code ec = set_error;
                attempt_result result = attempt_result::failed;
                if (!set_error) {
                    if (have_snapshot && !apply_to_snapshot(values_, w->ops.span()))
                        result = attempt_result::would_block;
                    else
                        result = try_semop(w->set_id, w->ops, ec);
                }
                if (result == attempt_result::would_block && w->deadline && *w->deadline <= now) {
                    result = attempt_result::failed;
                    ec = asio::error::timed_out;
                }
                if (result == attempt_result::would_block) {
                    const auto pause = w->schedule.next(uniform01(random_));
                    w->sleeping = pause.count() != 0;
                    w->on_doorbell = false;
                    if (w->sleeping) {
                        w->interval = pause;
                        w->due = now + pause;
                        if (w->schedule.doorbells()) {
                            bool changed = false;
                            for (std::size_t k = 0; k < 2; ++k)
                                if (w->words[k] != nullptr) {
                                    const auto v = mark_sleeper(w->words[k], w->seen[k]);
                                    changed = changed || !v;
                                    w->expected[k] = v.value_or(0);
                                }
                            if (changed) { // rung since the read: try again at once
                                w->due = now;
                                retry_now = true;
                            } else {
                                w->on_doorbell = w->words[0] != nullptr || w->words[1] != nullptr;
                            }
                        }
                    }
                    continue;
                }
                unlink(w);
                w->done = true;
                completed.emplace_back(w, ec);
            }
            group = group_end;
        }
        if (completed.empty())
            plan_locked(now, retry_now);
    }
    if (!completed.empty()) {
        // The handlers first: what comes next (the timer, the words to watch) is decided after
        // them, so its syscalls are not on the path of the wake. A wait that sleeps meanwhile
        // read its words before its attempt: a release since then is heard when they are
        // watched (the kernel does not wait on a word whose value changed).
        struct then_plan {
            poll_service& service;
            std::vector<std::pair<pending_wait*, error_code>>& completed;
            bool retry_now;
            std::size_t next = 0;
            ~then_plan() {
                // A handler threw (out of run()): the others' handlers are posted, not lost.
                for (; next < completed.size(); ++next)
                    completed[next].first->finish(completed[next].first, completed[next].second,
                                                  true);
                std::lock_guard lock(service.mutex_);
                if (!service.shut_down_)
                    service.plan_locked(clock::now(), retry_now);
            }
        } plan{*this, completed, retry_now};
        while (plan.next < completed.size()) {
            auto [w, ec] = completed[plan.next++];
            w->finish(w, ec, false);
        }
    }
    // A yield pass that freed nobody: let another runnable thread (a peer process on this
    // CPU, say the one that will release) run before the next pass. Bounded: each wait yields
    // at most backoff::immediate_yields times.
    if (yield_pass && completed.empty())
        ::sched_yield();
}

void poll_service::shutdown() {
    std::vector<pending_wait*> abandoned;
    {
        std::lock_guard lock(mutex_);
        shut_down_ = true;
        while (head_ != nullptr) {
            pending_wait* w = head_;
            unlink(w);
            w->done = true;
            abandoned.push_back(w);
        }
        watcher_.reset();
        watched_.clear();
        timer_.reset();
        executor_.reset();
    }
    // Outside the lock: destroying a handler (a coroutine frame) may destroy objects that
    // call back into this service.
    for (pending_wait* w : abandoned)
        w->destroy(w);
}

} // namespace sysv::detail
