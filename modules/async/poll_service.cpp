// sysv.async: the poll service (the non-template part of the asynchronous layer).
module;

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/execution.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <sys/sem.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <array>
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

pid_t this_thread_id() noexcept {
    thread_local const pid_t tid = static_cast<pid_t>(::syscall(SYS_gettid));
    return tid;
}

/// This thread's time on a CPU and waiting for one (nanoseconds, since it started), from
/// /proc/thread-self/schedstat (opened once per thread and process); nothing where it cannot
/// be read.
std::optional<thread_times> read_thread_times() noexcept {
    struct file {
        int fd = -1;
        pid_t pid = 0;
        ~file() {
            if (fd >= 0)
                ::close(fd);
        }
    };
    thread_local file f;
    if (f.pid != this_process()) { // first use on this thread, or a forked child's copy
        if (f.fd >= 0)
            ::close(f.fd);
        f.fd = ::open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
        f.pid = this_process();
    }
    if (f.fd < 0)
        return std::nullopt;
    char text[96];
    const ssize_t n = ::pread(f.fd, text, sizeof text - 1, 0);
    if (n <= 0)
        return std::nullopt;
    text[n] = '\0';
    char* end = nullptr;
    const unsigned long long on_cpu = std::strtoull(text, &end, 10);
    const unsigned long long waiting = std::strtoull(end, nullptr, 10);
    return thread_times{this_thread_id(), on_cpu, waiting};
}
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

bool operator==(const watched_word& a, const watched_word& b) noexcept {
    return a.word == b.word && a.expected == b.expected;
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
    config_ = wake_config::polling;
    watcher_.reset();
    std::string forced;
    if (const char* env = std::getenv("SYSV_WAIT_MODE"); env != nullptr && *env != '\0')
        forced = env;
    std::string why;
    static constexpr std::array all{wake_config::uring_deferred, wake_config::uring_plain,
                                    wake_config::helper_thread};
    std::span<const wake_config> candidates = all;
    if (forced == "polling") {
        mode_reason_ = "polling forced (SYSV_WAIT_MODE=polling)";
        return;
    } else if (forced == "io_uring_plain") {
        candidates = candidates.subspan(1);
        why = "io_uring ring + eventfd forced (SYSV_WAIT_MODE=io_uring_plain); ";
    } else if (forced == "thread") {
        candidates = candidates.subspan(2);
        why = "helper thread forced (SYSV_WAIT_MODE=thread); ";
    } else if (!forced.empty() && forced != "io_uring" && forced != "io_uring_deferred") {
        why = "SYSV_WAIT_MODE='" + forced +
              "' is not io_uring, io_uring_deferred, io_uring_plain, thread or polling; ";
    }
    if (doorbell_table::get() == nullptr) {
        mode_reason_ = why + doorbell_table::unavailable_reason();
        return;
    }
    make_watcher_locked(candidates, why);
    mode_reason_ = why;
}

void poll_service::make_watcher_locked(std::span<const wake_config> candidates, std::string& why) {
    const char* env = std::getenv("SYSV_WAKE_CHECK");
    const bool check = env == nullptr || std::string_view(env) != "off";
    for (const wake_config candidate : candidates) {
        const auto refuse = [&](const std::string& what) {
            why += std::string(describe(candidate)) + ": " + what + "; ";
        };
        if (check) {
            const auto verdict = check_delivery(candidate);
            if (!verdict.delivered) {
                refuse("not used, its start-up check failed: " + verdict.what);
                continue;
            }
        }
        std::string unavailable;
        watcher_ = candidate == wake_config::helper_thread
                       ? make_thread_watcher(*this, unavailable)
                       : make_uring_watcher(*this, candidate, unavailable);
        if (watcher_) {
            config_ = candidate;
            break;
        }
        refuse("unavailable (" + unavailable + ")");
    }
    if (!watcher_)
        config_ = wake_config::polling;
    if (why.size() >= 2 && why.ends_with("; "))
        why.resize(why.size() - 2);
}

wake_mode poll_service::mode() const {
    std::lock_guard lock(mutex_);
    const_cast<poll_service*>(this)->choose_mode_locked();
    return mode_of(watcher_ ? watcher_->config() : config_);
}

std::string poll_service::mode_reason() const {
    std::lock_guard lock(mutex_);
    const_cast<poll_service*>(this)->choose_mode_locked();
    std::string reason = mode_reason_;
    if (watcher_ && watcher_->config() != config_) // a deferring ring replaced by a plain one
        reason += std::string(reason.empty() ? "" : "; ") +
                  "the context is run by several threads: a plain ring replaced the deferring one";
    return reason;
}

wake_status poll_service::status() const {
    std::lock_guard lock(mutex_);
    const_cast<poll_service*>(this)->choose_mode_locked();
    const wake_config config = watcher_ ? watcher_->config() : config_;
    wake_status status;
    status.mode = mode_of(config);
    status.configuration = describe(config);
    status.reason = mode_reason_;
    if (watcher_ && config != config_)
        status.reason += std::string(status.reason.empty() ? "" : "; ") +
                         "the context is run by several threads: a plain ring replaced the "
                         "deferring one";
    status.stats = stats_;
    return status;
}

void poll_service::judge_delivery_locked(clock::time_point now, bool bad, const std::string& what) {
    if (!bad) {
        bad_streak_ = 0;
        streak_what_.clear();
        return;
    }
    ++bad_streak_;
    streak_what_ += (streak_what_.empty() ? "" : "; ") + what;
    if (bad_streak_ >= wake_demotion_streak)
        demote_locked(now, std::to_string(bad_streak_) +
                               " wakes in a row late or missed: " + streak_what_);
}

void poll_service::demote_locked(clock::time_point now, const std::string& why) {
    const wake_config from = watcher_ ? watcher_->config() : config_;
    if (from == wake_config::polling)
        return;
    ++stats_.demotions;
    bad_streak_ = 0;
    streak_what_.clear();
    std::string reason = mode_reason_;
    if (!reason.empty())
        reason += "; ";
    reason += "demoted from " + std::string(describe(from)) + " (" + why + ")";
    // The next configurations, fastest first; a check not run yet runs now.
    static constexpr std::array order{wake_config::uring_deferred, wake_config::uring_plain,
                                      wake_config::helper_thread};
    const auto next = std::find(order.begin(), order.end(), from) + 1;
    std::span<const wake_config> candidates(next, order.end());
    watcher_.reset();
    watched_.clear();
    watch_complete_ = false;
    std::string refused;
    make_watcher_locked(candidates, refused);
    if (!refused.empty())
        reason += "; " + refused;
    mode_reason_ = reason;
    // Whatever the old watcher held back is looked at now; without doorbells any more, the
    // waits poll on the plain backoff (a doorbell's long backstop would be a silent stall).
    for (pending_wait* w = head_; w != nullptr; w = w->next) {
        w->on_doorbell = false;
        w->due = std::min(w->due, now);
        if (!watcher_) {
            w->words = {};
            w->table = nullptr;
            w->schedule.set_doorbells(false);
        }
    }
    post_pass_locked();
}

void poll_service::on_doorbell() {
    {
        std::lock_guard lock(mutex_);
        bool any = false;
        const auto now = clock::now();
        // How long after its ring this delivery came: the oldest change it reports, by the
        // stamps of the words (for words that were all watched; else unknown).
        std::optional<std::uint32_t> late_us;
        for (pending_wait* w = head_; w != nullptr; w = w->next) {
            if (!w->on_doorbell)
                continue;
            for (std::size_t k = 0; k < 2; ++k)
                if (w->words[k] != nullptr && doorbell_value(w->words[k]) != w->expected[k]) {
                    w->on_doorbell = false;
                    w->due = std::min(w->due, now);
                    any = true;
                    if (const auto ago = doorbell_rung_ago(w->words[k], w->expected[k]);
                        ago && watch_complete_)
                        late_us = std::max(late_us.value_or(0), *ago);
                    break;
                }
        }
        if (!any) { // nothing changed for us (a shared slot, a spurious wake): watch again
            update_watch_locked(now);
            return;
        }
        if (shut_down_)
            return;
        ++stats_.delivered;
        if (late_us) {
            bool late = std::chrono::microseconds(*late_us) > wake_delivery_bound;
            const wake_config config = watcher_ ? watcher_->config() : config_;
            if (late && config == wake_config::helper_thread) {
                // Its post waits behind this context's handlers, and its thread for a CPU:
                // the delivery cannot tell the mechanism's lateness from the machine's.
                ++stats_.late_busy;
                late = false;
            } else if (late) {
                // Late because this thread was busy or waited for a CPU since it armed the
                // watch (a delivery through a ring needs this thread to run), or because the
                // mechanism was late while the thread slept? Only the latter counts.
                const auto times = read_thread_times();
                if (times && armed_times_ && times->thread == armed_times_->thread) {
                    const std::uint64_t busy_us = (times->on_cpu_ns - armed_times_->on_cpu_ns +
                                                   times->waiting_ns - armed_times_->waiting_ns) /
                                                  1000;
                    if (*late_us <= busy_us ||
                        std::chrono::microseconds(*late_us - busy_us) <= wake_delivery_bound) {
                        ++stats_.late_busy;
                        late = false;
                    }
                }
            }
            stats_.late += late ? 1 : 0;
            if (late || std::chrono::microseconds(*late_us) <= wake_delivery_bound)
                judge_delivery_locked(now, late,
                                      "delivered " + std::to_string(*late_us / 1000) + "." +
                                          std::to_string(*late_us % 1000 / 100) +
                                          " ms after the ring");
        }
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
    if (words != watched_ && !words.empty() && watcher_->config() != wake_config::helper_thread)
        armed_times_ = read_thread_times(); // what this thread had used when it began to sleep
    if (!watcher_->failure().empty()) {     // it can watch no more: the next configuration
        demote_locked(now, watcher_->failure());
        return;
    }
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
    watch_complete_ = watcher_->watch(watched_);
    if (!watch_complete_ && !watcher_->failure().empty())
        demote_locked(now, watcher_->failure());
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

void poll_service::assign_words(pending_wait* w, doorbell_table* table) noexcept {
    const unsigned heard = doorbells_heard_by(w->ops.span());
    w->words = {};
    if (heard & doorbell_up)
        w->words[0] = table->word(w->set_id, doorbell_up);
    if (heard & doorbell_zero)
        w->words[1] = table->word(w->set_id, doorbell_zero);
    w->table = table;
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
            assign_words(w, table);
            w->schedule.set_doorbells(true);
        }
    }
    const auto now = clock::now();
    const auto pause = w->schedule.next(uniform01(random_));
    bool rung_meanwhile = false;
    if (pause.count() != 0 && w->schedule.doorbells() && (w->words[0] || w->words[1])) {
        // A wait that sleeps at once sleeps on its doorbell from now, not from its first poll:
        // the words are read before one more attempt, so a release in between is not missed.
        for (std::size_t k = 0; k < 2; ++k)
            if (w->words[k] != nullptr)
                w->seen[k] = doorbell_value(w->words[k]);
        error_code ec;
        if (try_semop(w->set_id, w->ops, ec) != attempt_result::would_block) {
            w->done = true;
            lock.unlock();
            w->finish(w, ec, true);
            return;
        }
        bool changed = false;
        for (std::size_t k = 0; k < 2; ++k)
            if (w->words[k] != nullptr) {
                const auto v = mark_sleeper(w->words[k], w->seen[k]);
                changed = changed || !v;
                w->expected[k] = v.value_or(0);
            }
        w->on_doorbell = !changed;
        rung_meanwhile = changed; // rung since the read: the timer tries again at once
    }
    link(w);
    if (pause.count() == 0) {
        w->sleeping = false;
        post_pass_locked();
    } else {
        w->sleeping = true;
        w->interval = pause;
        w->due = rung_meanwhile ? now : now + pause;
    }
    if (w->on_doorbell) {
        // Watched from here only on a thread that runs the context (a deferring ring takes the
        // first thread that watches as its only issuer); from any other, by a pass.
        if (runs_context_here())
            update_watch_locked(now);
        else
            post_pass_locked();
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

bool poll_service::runs_context_here() const {
    const auto* io = executor_->target<asio::io_context::executor_type>();
    return io != nullptr && io->running_in_this_thread();
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

void poll_service::check_missed_locked(std::span<pending_wait* const> candidates,
                                       clock::time_point now) {
    if (!watcher_ || !watch_complete_)
        return; // words that were not all watched: a poll is how they are heard
    // A wait still asleep on its doorbell whose word changed: nothing delivered it (a delivery
    // takes it off its doorbell first). Missed when the change is older than the bound (a
    // fresh one is this process's own release, or a wake on its way) and no delivery is
    // pending (a busy context has not run it yet).
    std::optional<std::uint32_t> oldest_us;
    for (pending_wait* w : candidates)
        if (w->on_doorbell)
            for (std::size_t k = 0; k < 2; ++k)
                if (w->words[k] != nullptr && w->seen[k] != w->expected[k])
                    if (const auto ago = doorbell_rung_ago(w->words[k], w->expected[k]))
                        oldest_us = std::max(oldest_us.value_or(0), *ago);
    const auto miss_age = watcher_->config() == wake_config::helper_thread
                              ? std::chrono::milliseconds(wake_delivery_bound)
                              : wake_miss_age;
    if (!oldest_us || std::chrono::microseconds(*oldest_us) <= miss_age ||
        watcher_->delivery_pending())
        return;
    ++stats_.missed;
    judge_delivery_locked(now, true,
                          "not delivered, found by a poll " + std::to_string(*oldest_us / 1000) +
                              "." + std::to_string(*oldest_us % 1000 / 100) + " ms after the ring");
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
        if (!std::is_sorted(candidates.begin(), candidates.end(), by_set)) {
            // Stable (first come, first tried within a set), by position: libstdc++'s
            // stable_sort uses get_temporary_buffer, deprecated in C++17.
            std::vector<std::pair<int, std::size_t>> order;
            order.reserve(candidates.size());
            for (std::size_t i = 0; i < candidates.size(); ++i)
                order.emplace_back(candidates[i]->set_id, i);
            std::sort(order.begin(), order.end());
            std::vector<pending_wait*> sorted;
            sorted.reserve(candidates.size());
            for (const auto& entry : order)
                sorted.push_back(candidates[entry.second]);
            candidates.swap(sorted);
        }
        // A table removed (`ipcrm`) is replaced by get(): the waits move to the new one here,
        // before their words are read, so they hear the rings of processes that use it.
        if (doorbell_table* table = watcher_ ? doorbell_table::get() : nullptr)
            for (pending_wait* w : candidates)
                if (w->table != nullptr && w->table != table)
                    assign_words(w, table);
        // The doorbell words are read before the attempts: a release after this read changes
        // them, so a wait that then sleeps on them cannot miss it.
        for (pending_wait* w : candidates)
            for (std::size_t k = 0; k < 2; ++k)
                if (w->words[k] != nullptr)
                    w->seen[k] = doorbell_value(w->words[k]);
        check_missed_locked(candidates, now);
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
