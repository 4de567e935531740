// sysv.async: how a poll service waits on doorbell words without polling.
//
//  * uring_watcher: one io_uring per poll service (per execution context). Its FUTEX_WAITV
//    requests (up to 128 words each) complete when a word changes. An eventfd registered with
//    the ring is watched by the context like any other descriptor, so no thread blocks and
//    nothing polls. The ring defers its completions (IORING_SETUP_DEFER_TASKRUN): a release
//    in another process signals the eventfd from its own FUTEX_WAKE, so the context's
//    epoll_wait returns at once (a plain ring would first interrupt it, EINTR, to run the
//    completion in this thread, then report it on a second epoll_wait). Whether a word changed
//    is read in the words themselves: the woken waits' pass (semop and handlers) runs first,
//    the ring's completions are reaped after it (io_uring_enter runs them), off the path of
//    the wake. Such a ring accepts io_uring_enter from one thread only: the first thread that
//    watches becomes its issuer, and a context whose passes run on several threads gets a
//    plain ring instead at the first pass on another thread.
//    Requests are submitted from the service's passes (the context's threads). No word to
//    watch: every request is cancelled and the eventfd is not waited on, so run() returns as
//    it would without us.
//  * thread_watcher: one helper thread per process, blocked in futex_waitv on the words of every
//    service (at most 127, plus its own control word), which posts to the services whose words
//    changed.
module;

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>

#include <fcntl.h>
#include <linux/futex.h>
#include <linux/io_uring.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

module sysv.async;

namespace sysv::detail {

namespace {

namespace asio = boost::asio;

// Linux >= 6.7; the uapi headers of older distributions do not name them.
constexpr std::uint8_t op_futex_waitv = 53;
constexpr std::uint32_t futex2_size_u32 = 0x02;
constexpr std::uint32_t futex2_private = 128;
constexpr std::size_t max_words_per_request = 128;

std::string errno_text(const char* what) {
    return std::string(what) + ": " + std::strerror(errno);
}

/// The raw ring: mapped queues, submission of SQEs, reaping of CQEs. Not thread-safe.
class ring {
public:
    ~ring() {
        if (sqes_ != nullptr)
            ::munmap(sqes_, sqes_size_);
        if (cq_ptr_ != nullptr && cq_ptr_ != sq_ptr_)
            ::munmap(cq_ptr_, cq_size_);
        if (sq_ptr_ != nullptr)
            ::munmap(sq_ptr_, sq_size_);
        if (fd_ >= 0)
            ::close(fd_);
    }

    /// `flags`: IORING_SETUP_* (an EINVAL from a kernel without them is reported like others).
    bool setup(unsigned entries, unsigned flags, std::string& why) {
        io_uring_params p{};
        p.flags = flags;
        fd_ = static_cast<int>(::syscall(__NR_io_uring_setup, entries, &p));
        if (fd_ < 0) { // ENOSYS: no io_uring; EPERM: disabled (kernel.io_uring_disabled, seccomp)
            why = errno_text("io_uring_setup");
            return false;
        }
        ::fcntl(fd_, F_SETFD, FD_CLOEXEC);
        sq_size_ = p.sq_off.array + p.sq_entries * sizeof(unsigned);
        cq_size_ = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe);
        const bool single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
        if (single)
            sq_size_ = cq_size_ = std::max(sq_size_, cq_size_);
        sq_ptr_ = ::mmap(nullptr, sq_size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_,
                         IORING_OFF_SQ_RING);
        if (sq_ptr_ == MAP_FAILED) {
            sq_ptr_ = nullptr;
            why = errno_text("mmap of the io_uring submission queue");
            return false;
        }
        cq_ptr_ = single ? sq_ptr_
                         : ::mmap(nullptr, cq_size_, PROT_READ | PROT_WRITE,
                                  MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_CQ_RING);
        if (cq_ptr_ == MAP_FAILED) {
            cq_ptr_ = nullptr;
            why = errno_text("mmap of the io_uring completion queue");
            return false;
        }
        sqes_size_ = p.sq_entries * sizeof(io_uring_sqe);
        sqes_ = static_cast<io_uring_sqe*>(::mmap(nullptr, sqes_size_, PROT_READ | PROT_WRITE,
                                                  MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_SQES));
        if (sqes_ == MAP_FAILED) {
            sqes_ = nullptr;
            why = errno_text("mmap of the io_uring entries");
            return false;
        }
        auto* sq = static_cast<char*>(sq_ptr_);
        sq_head_ = reinterpret_cast<unsigned*>(sq + p.sq_off.head);
        sq_tail_ = reinterpret_cast<unsigned*>(sq + p.sq_off.tail);
        sq_mask_ = *reinterpret_cast<unsigned*>(sq + p.sq_off.ring_mask);
        sq_array_ = reinterpret_cast<unsigned*>(sq + p.sq_off.array);
        sq_entries_ = p.sq_entries;
        auto* cq = static_cast<char*>(cq_ptr_);
        cq_head_ = reinterpret_cast<unsigned*>(cq + p.cq_off.head);
        cq_tail_ = reinterpret_cast<unsigned*>(cq + p.cq_off.tail);
        cq_mask_ = *reinterpret_cast<unsigned*>(cq + p.cq_off.ring_mask);
        cqes_ = reinterpret_cast<io_uring_cqe*>(cq + p.cq_off.cqes);
        return true;
    }

    /// Whether the kernel knows FUTEX_WAITV and ASYNC_CANCEL.
    bool supports_futex_waitv(std::string& why) {
        constexpr unsigned ops = 256;
        std::vector<unsigned char> buffer(sizeof(io_uring_probe) + ops * sizeof(io_uring_probe_op));
        auto* probe = reinterpret_cast<io_uring_probe*>(buffer.data());
        if (::syscall(__NR_io_uring_register, fd_, IORING_REGISTER_PROBE, probe, ops) < 0) {
            why = errno_text("io_uring probe");
            return false;
        }
        const auto supported = [&](unsigned op) {
            return op <= probe->last_op && (probe->ops[op].flags & IO_URING_OP_SUPPORTED) != 0;
        };
        if (!supported(op_futex_waitv) || !supported(IORING_OP_ASYNC_CANCEL)) {
            why = "this kernel's io_uring has no FUTEX_WAITV (Linux >= 6.7 has it)";
            return false;
        }
        return true;
    }

    int fd() const noexcept { return fd_; }

    /// Signals `event_fd` whenever completions are posted (and, for a ring that defers them,
    /// as soon as one is ready to run).
    bool register_eventfd(int event_fd, std::string& why) {
        if (::syscall(__NR_io_uring_register, fd_, IORING_REGISTER_EVENTFD, &event_fd, 1) < 0) {
            why = errno_text("io_uring eventfd registration");
            return false;
        }
        return true;
    }

    /// Enables a ring set up disabled; with IORING_SETUP_SINGLE_ISSUER the calling thread
    /// becomes the only one allowed to submit and run its completions.
    bool enable(std::string& why) {
        if (::syscall(__NR_io_uring_register, fd_, IORING_REGISTER_ENABLE_RINGS, nullptr, 0) < 0) {
            why = errno_text("io_uring enable");
            return false;
        }
        return true;
    }

    /// Runs the completions a ring with IORING_SETUP_DEFER_TASKRUN holds back (from its issuer
    /// thread only), so that reap() sees them. Returns whether it posted any (the completion
    /// queue's tail moved): the one sure sign that there was something to run.
    bool run_deferred() {
        const unsigned before = __atomic_load_n(cq_tail_, __ATOMIC_ACQUIRE);
        while (::syscall(__NR_io_uring_enter, fd_, 0, 0, IORING_ENTER_GETEVENTS, nullptr, 0) < 0 &&
               errno == EINTR) {
        }
        return __atomic_load_n(cq_tail_, __ATOMIC_ACQUIRE) != before;
    }

    unsigned free_entries() const {
        const unsigned head = __atomic_load_n(sq_head_, __ATOMIC_ACQUIRE);
        return sq_entries_ - (local_tail_ - head);
    }

    /// A zeroed entry to fill, or null when the queue is full.
    io_uring_sqe* next_entry() {
        if (free_entries() == 0)
            return nullptr;
        const unsigned index = local_tail_ & sq_mask_;
        io_uring_sqe* sqe = &sqes_[index];
        std::memset(sqe, 0, sizeof *sqe);
        sq_array_[index] = index;
        ++local_tail_;
        return sqe;
    }

    /// Publishes the filled entries and submits them.
    bool submit(std::string& why) {
        const unsigned pending = local_tail_ - __atomic_load_n(sq_tail_, __ATOMIC_RELAXED);
        __atomic_store_n(sq_tail_, local_tail_, __ATOMIC_RELEASE);
        if (pending == 0)
            return true;
        for (;;) {
            const long r = ::syscall(__NR_io_uring_enter, fd_, pending, 0, 0, nullptr, 0);
            if (r >= 0)
                return true;
            if (errno != EINTR) {
                why = errno_text("io_uring_enter");
                return false;
            }
        }
    }

    /// Calls f(cqe) for every completion posted, and consumes them.
    template <class F>
    void reap(F&& f) {
        unsigned head = *cq_head_;
        for (;;) {
            const unsigned tail = __atomic_load_n(cq_tail_, __ATOMIC_ACQUIRE);
            if (head == tail)
                break;
            for (; head != tail; ++head)
                f(cqes_[head & cq_mask_]);
            __atomic_store_n(cq_head_, head, __ATOMIC_RELEASE);
        }
    }

private:
    int fd_ = -1;
    void* sq_ptr_ = nullptr;
    void* cq_ptr_ = nullptr;
    std::size_t sq_size_ = 0, cq_size_ = 0, sqes_size_ = 0;
    io_uring_sqe* sqes_ = nullptr;
    unsigned* sq_head_ = nullptr;
    unsigned* sq_tail_ = nullptr;
    unsigned* sq_array_ = nullptr;
    unsigned sq_mask_ = 0, sq_entries_ = 0, local_tail_ = 0;
    unsigned* cq_head_ = nullptr;
    unsigned* cq_tail_ = nullptr;
    unsigned cq_mask_ = 0;
    io_uring_cqe* cqes_ = nullptr;
};

constexpr std::uint64_t cancel_tag = ~std::uint64_t(0);

} // namespace

// ---------------------------------------------------------------------------------------------
// io_uring
// ---------------------------------------------------------------------------------------------

class uring_watcher final : public doorbell_watcher {
public:
    explicit uring_watcher(poll_service& service) : state_(std::make_shared<state>()) {
        state_->service = &service;
    }
    ~uring_watcher() override {
        std::lock_guard lock(state_->mutex);
        state_->service = nullptr; // a completion still queued finds nobody to tell
        if (state_->descriptor) {
            boost::system::error_code ignored;
            state_->descriptor->cancel(ignored);
        }
    }

    bool open(std::string& why) {
        auto& st = *state_;
        st.event_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (st.event_fd < 0) {
            why = errno_text("eventfd");
            return false;
        }
        // Disabled until the first watch(), whose thread becomes the ring's issuer.
        std::string deferred_why;
        if (open_ring(st,
                      IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
                          IORING_SETUP_R_DISABLED,
                      deferred_why)) {
            st.deferred = true;
        } else if (!open_ring(st, 0, why)) { // before Linux 6.1: a ring that runs its completions
            return false;
        }
        st.owner_pid = this_process();
        return true;
    }

    void watch(const std::vector<watched_word>& words) override {
        auto& st = *state_;
        std::lock_guard lock(st.mutex);
        if (st.owner_pid != this_process())
            return; // a forked child: the ring's queues are the parent's (notify_fork replaces us)
        if (!issuer_locked(st))
            return; // no ring: the waits rely on their backstop polls
        if (words == st.words && st.armed > 0) {
            // Already waiting on exactly these; heard, unless a handler that threw out of the
            // last completion's pass left nobody waiting for the eventfd.
            wait_for_completions(state_);
            return;
        }
        // Cancel what is armed: its completions carry an old generation and are ignored.
        if (st.armed > 0) {
            if (io_uring_sqe* sqe = st.queue->next_entry()) {
                sqe->opcode = IORING_OP_ASYNC_CANCEL;
                sqe->fd = -1;
                sqe->cancel_flags = IORING_ASYNC_CANCEL_ANY;
                sqe->user_data = cancel_tag;
            }
            st.armed = 0;
        }
        st.words = words;
        arm_locked(state_);
    }

private:
    struct state {
        std::mutex mutex;
        poll_service* service = nullptr;
        std::unique_ptr<ring> queue;
        bool deferred = false; ///< IORING_SETUP_DEFER_TASKRUN: one issuer thread
        bool enabled = false;  ///< a deferred ring is set up disabled, until its issuer is known
        pid_t issuer = 0;      ///< the thread (tid) of a deferred ring
        int event_fd = -1;     ///< signalled by the ring
        pid_t owner_pid = 0;
        std::optional<asio::posix::stream_descriptor> descriptor;
        bool waiting = false;
        std::uint64_t generation = 0;
        unsigned armed = 0; ///< requests of the current generation in flight
        std::vector<watched_word> words;
        std::vector<std::vector<futex_waitv>> vectors; ///< kept until the requests end
        ~state() {
            if (!descriptor && event_fd >= 0)
                ::close(event_fd);
        }
    };

    /// Replaces st.queue with a new ring (IORING_SETUP_* `flags`) that signals st.event_fd.
    static bool open_ring(state& st, unsigned flags, std::string& why) {
        auto queue = std::make_unique<ring>();
        if (!queue->setup(64, flags, why) || !queue->supports_futex_waitv(why) ||
            !queue->register_eventfd(st.event_fd, why))
            return false;
        st.queue = std::move(queue); // closing the previous ring cancels its requests
        return true;
    }

    static pid_t this_thread() noexcept {
        thread_local const pid_t tid = static_cast<pid_t>(::syscall(SYS_gettid));
        return tid;
    }

    /// Whether this thread may use the ring: the first thread of a deferred ring becomes its
    /// issuer; another thread replaces it with a plain ring (a context run by several threads),
    /// whose requests are armed again.
    static bool issuer_locked(state& st) {
        if (!st.deferred)
            return true;
        std::string why;
        if (!st.enabled) {
            if (!st.queue->enable(why))
                return false;
            st.enabled = true;
            st.issuer = this_thread();
            return true;
        }
        if (st.issuer == this_thread())
            return true;
        if (!open_ring(st, 0, why))
            return false; // out of descriptors or memory: the waits rely on their backstop polls
        st.deferred = false;
        st.armed = 0; // the caller arms st.words again
        return true;
    }

    /// Submits waits on st.words (a new generation).
    static void arm_locked(const std::shared_ptr<state>& stp) {
        auto& st = *stp;
        ++st.generation;
        st.vectors.clear();
        for (std::size_t i = 0; i < st.words.size(); i += max_words_per_request) {
            const std::size_t n = std::min(max_words_per_request, st.words.size() - i);
            std::vector<futex_waitv> v(n);
            for (std::size_t j = 0; j < n; ++j) {
                v[j].val = st.words[i + j].expected;
                v[j].uaddr = reinterpret_cast<std::uintptr_t>(st.words[i + j].word);
                v[j].flags = futex2_size_u32; // shared: the words are in a System V segment
            }
            st.vectors.push_back(std::move(v));
        }
        for (auto& v : st.vectors) {
            io_uring_sqe* sqe = st.queue->next_entry();
            if (sqe == nullptr)
                break; // the rest rely on the backstop polls until the next watch()
            sqe->opcode = op_futex_waitv;
            sqe->addr = reinterpret_cast<std::uintptr_t>(v.data());
            sqe->len = static_cast<std::uint32_t>(v.size());
            sqe->user_data = st.generation;
            ++st.armed;
        }
        std::string why;
        if (!st.queue->submit(why))
            st.armed = 0;
        if (st.armed > 0)
            wait_for_completions(stp);
        else if (st.descriptor && st.waiting) {
            // Nothing to hear: no pending wait on the eventfd either, or run() would not return.
            boost::system::error_code ignored;
            st.descriptor->cancel(ignored);
        }
    }

    /// Waits (once) for the eventfd to be readable; called with the state's mutex held.
    static void wait_for_completions(const std::shared_ptr<state>& st) {
        if (st->waiting || st->service == nullptr)
            return;
        if (!st->descriptor) {
            if (!st->service->executor_)
                return;
            // The service's untracked executor: a pending wait for the ring is the
            // service's business, and each pending semaphore wait tracks its own work.
            st->descriptor.emplace(*st->service->executor_, st->event_fd);
        }
        st->waiting = true;
        st->descriptor->async_wait(
            asio::posix::stream_descriptor::wait_read,
            [st](const boost::system::error_code& ec) { completed(st, ec); });
    }

    /// Consumes the eventfd's count and the ring's completions. The eventfd first: a
    /// completion that becomes ready after its read signals it again. A deferred ring's
    /// completions are run here (the issuer's io_uring_enter), which signals the eventfd for
    /// what they post: that count is read too, and since the read may also have taken the
    /// signal of a completion that became ready after the run, the ring is run again, until a
    /// run posts nothing. Whatever becomes ready after that last run signals the eventfd after
    /// the last read. (IORING_SQ_TASKRUN cannot end this loop: the kernel can leave it set
    /// with nothing to run, when a completion that set it was taken by a run already under
    /// way, and a run with nothing to do does not clear it; looping on it spun forever.)
    static void reap_locked(state& st) {
        std::uint64_t count = 0;
        (void)!::read(st.event_fd, &count, sizeof count);
        if (st.deferred && st.enabled)
            while (st.queue->run_deferred())
                (void)!::read(st.event_fd, &count, sizeof count);
        st.queue->reap([&](const io_uring_cqe& cqe) {
            if (cqe.user_data != st.generation)
                return; // a cancelled generation, or a cancel request's own completion
            if (st.armed > 0)
                --st.armed;
        });
    }

    static void completed(const std::shared_ptr<state>& st, const boost::system::error_code& ec) {
        poll_service* service = nullptr;
        {
            std::lock_guard lock(st->mutex);
            st->waiting = false;
            if (st->service == nullptr || ec == asio::error::operation_aborted)
                return;
            service = st->service;
        }
        // The woken waits first: the words tell which changed, so their pass (semop) and
        // handlers do not wait for the completions to be reaped. The pass's watch() replaces
        // the requests if the words to watch changed.
        service->on_doorbell();
        std::lock_guard lock(st->mutex);
        if (st->service == nullptr || st->owner_pid != this_process() || !issuer_locked(*st))
            return;
        reap_locked(*st);
        if (st->armed == 0 && !st->words.empty())
            arm_locked(st); // a request ended (a word changed) with nothing re-armed: again
        else if (st->armed > 0)
            wait_for_completions(st);
    }

    std::shared_ptr<state> state_;
};

std::unique_ptr<doorbell_watcher> make_uring_watcher(poll_service& service, std::string& why) {
    auto watcher = std::make_unique<uring_watcher>(service);
    if (!watcher->open(why))
        return nullptr;
    return watcher;
}

// ---------------------------------------------------------------------------------------------
// Helper thread
// ---------------------------------------------------------------------------------------------

namespace {

/// The process's helper thread and what it watches for each service.
class thread_hub {
public:
    static thread_hub& instance() {
        static thread_hub* hub = [] {
            auto* h = new thread_hub; // never destroyed: the thread outlives main()
            // fork() while the thread holds the lock would leave it locked in the child forever:
            // hold it across fork, and let the child start afresh.
            ::pthread_atfork([] { h_->mutex_.lock(); }, [] { h_->mutex_.unlock(); },
                             [] { h_->mutex_.unlock(); });
            return h;
        }();
        return *hub;
    }

    /// Whether futex_waitv exists here (Linux >= 5.16).
    static bool available(std::string& why) {
        if (::syscall(__NR_futex_waitv, nullptr, 0, 0, nullptr, CLOCK_MONOTONIC) == -1 &&
            errno == ENOSYS) {
            why = "futex_waitv is not available (Linux >= 5.16 has it)";
            return false;
        }
        return true;
    }

    void set(poll_service* service, asio::any_io_executor ex, std::vector<watched_word> words) {
        std::lock_guard lock(mutex_);
        start_locked();
        auto [it, added] = services_.try_emplace(service);
        auto& e = it->second;
        if (!added && e.words == words)
            return; // the thread already waits on exactly these (every pass watches again)
        e.executor = std::move(ex);
        e.words = std::move(words);
        changed_locked();
    }

    void remove(poll_service* service) {
        std::lock_guard lock(mutex_);
        if (services_.erase(service) > 0)
            changed_locked();
    }

private:
    thread_hub() { h_ = this; }
    static inline thread_hub* h_ = nullptr;

    struct entry {
        asio::any_io_executor executor;
        std::vector<watched_word> words;
    };

    void start_locked() {
        if (thread_pid_ == this_process())
            return;
        // First use, or a forked child (threads do not survive fork): a thread of our own.
        services_.clear();
        thread_pid_ = this_process();
        std::thread([this] { run(); }).detach();
    }

    void changed_locked() {
        __atomic_add_fetch(&control_, 1, __ATOMIC_SEQ_CST);
        ::syscall(SYS_futex, &control_, FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
    }

    [[noreturn]] void run() {
        std::vector<futex_waitv> waitv;
        for (;;) {
            {
                std::lock_guard lock(mutex_);
                waitv.clear();
                waitv.push_back({__atomic_load_n(&control_, __ATOMIC_SEQ_CST),
                                 reinterpret_cast<std::uintptr_t>(&control_),
                                 futex2_size_u32 | futex2_private, 0});
                for (const auto& [service, e] : services_)
                    for (const auto& w : e.words) {
                        if (waitv.size() == FUTEX_WAITV_MAX)
                            break; // the rest rely on the backstop polls
                        waitv.push_back({w.expected, reinterpret_cast<std::uintptr_t>(w.word),
                                         futex2_size_u32, 0});
                    }
            }
            ::syscall(__NR_futex_waitv, waitv.data(), static_cast<unsigned>(waitv.size()), 0,
                      nullptr, CLOCK_MONOTONIC);
            // Woken, or a value already differed: tell every service whose words changed.
            std::lock_guard lock(mutex_);
            for (auto& [service, e] : services_) {
                const bool rung = std::any_of(e.words.begin(), e.words.end(), [](const auto& w) {
                    return __atomic_load_n(w.word, __ATOMIC_ACQUIRE) != w.expected;
                });
                if (rung) {
                    e.words.clear(); // until the service watches again, after its pass
                    asio::post(e.executor, [s = service] { s->on_doorbell(); });
                }
            }
        }
    }

    std::mutex mutex_;
    std::map<poll_service*, entry> services_;
    std::uint32_t control_ = 0;
    pid_t thread_pid_ = 0;
};

} // namespace

class thread_watcher final : public doorbell_watcher {
public:
    explicit thread_watcher(poll_service& service) : service_(service) {}
    ~thread_watcher() override { thread_hub::instance().remove(&service_); }

    void watch(const std::vector<watched_word>& words) override {
        if (!service_.executor_)
            return;
        thread_hub::instance().set(&service_, *service_.executor_, words);
    }

private:
    poll_service& service_;
};

std::unique_ptr<doorbell_watcher> make_thread_watcher(poll_service& service, std::string& why) {
    if (!thread_hub::available(why))
        return nullptr;
    return std::make_unique<thread_watcher>(service);
}

} // namespace sysv::detail
