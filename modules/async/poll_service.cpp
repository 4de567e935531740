// sysv.async: the poll service (the non-template part of the asynchronous layer).
module;

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/execution.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <sched.h>
#include <sys/sem.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <utility>
#include <vector>

module sysv.async;

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
} // namespace

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

void poll_service::run_pass() {
    std::vector<std::pair<pending_wait*, error_code>> completed;
    bool yield_pass = false;
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
                    if (w->sleeping) {
                        w->interval = pause;
                        w->due = now + pause;
                    }
                    continue;
                }
                unlink(w);
                w->done = true;
                completed.emplace_back(w, ec);
            }
            group = group_end;
        }
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
        if (yielding)
            post_pass_locked();
        arm_timer_at_locked(earliest);
    }
    for (auto& [w, ec] : completed)
        w->finish(w, ec, false);
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
        timer_.reset();
        executor_.reset();
    }
    // Outside the lock: destroying a handler (a coroutine frame) may destroy objects that
    // call back into this service.
    for (pending_wait* w : abandoned)
        w->destroy(w);
}

} // namespace sysv::detail
