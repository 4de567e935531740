// sysv.async: the io_uring doorbell watcher, and the start-up check of its configurations.
//
// One io_uring per poll service (per execution context). Its FUTEX_WAITV requests (up to 128
// words each) complete when a word changes. An eventfd registered with the ring is watched by
// the context like any other descriptor, so no thread blocks and nothing polls. Requests are
// submitted from the service's passes (the context's threads). No word to watch: every request
// is cancelled and the eventfd is not waited on, so run() returns as it would without us.
//
// Two configurations (wake_config), tried in this order when their start-up check delivers:
//  * uring_deferred: IORING_SETUP_DEFER_TASKRUN | SINGLE_ISSUER, created
//    R_DISABLED and enabled by the first thread that watches (its issuer). A futex wake queues
//    the completion as task work local to the ring (io_req_local_work_add) and signals the
//    registered eventfd from there; the completion runs later, in the issuer's
//    io_uring_enter(GETEVENTS) (reap_locked). One epoll_wait return per wake. Such a ring
//    accepts io_uring_enter from its issuer only: a context whose passes run on several
//    threads gets a plain ring at the first pass on another thread.
//  * uring_plain: no setup flags. A futex wake queues task work on the submitting thread with
//    TWA_SIGNAL, which interrupts its epoll_wait (EINTR); the task work posts the completion
//    and that signals the eventfd; the reactor's next epoll_wait reports it.
//
// Why the order is checked, not assumed (kernel 6.18.44-fc-v1272, Firecracker build with
// CONFIG_RCU_NOCB_CPU and CONFIG_RCU_LAZY, HZ 250): with uring_deferred, another process's
// FUTEX_WAKE completed the FUTEX_WAITV, yet the eventfd became readable only 13.6-21 ms later.
// A kernel trace (sched_waking with a stack trace) shows who woke the waiting epoll_wait:
// eventfd_signal_mask <- io_eventfd_do_signal <- rcu_do_batch <- rcu_core (softirq), i.e.
// io_uring's __io_eventfd_signal() took its deferred branch, call_rcu_hurry(...,
// io_eventfd_do_signal), and the signal waited for an RCU grace period. The plain ring on the
// same kernel delivered in ~50 us (its eventfd is signalled by the woken thread itself, when
// its task work posts the completion). No other deferring setup delivers to a thread asleep in
// epoll_wait: the ring's descriptor is not readable until the task work runs (only its issuer
// can run it), IORING_REGISTER_EVENTFD_ASYNC signals from io-wq workers only, and a wake of
// the issuer (wake_up_state) happens only while it waits in io_uring_enter itself. Hence the
// start-up check (probe_ring) and the running check in the poll service: a configuration is
// used only while it delivers within wake_delivery_bound.
module;

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include <fcntl.h>
#include <linux/futex.h>
#include <linux/io_uring.h>
#include <poll.h>
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
#include <memory>
#include <mutex>
#include <optional>
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

unsigned setup_flags(wake_config config) noexcept {
    return config == wake_config::uring_deferred
               ? IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED
               : 0u;
}

/// A ring of `config` that signals `event_fd`: set up, probed for FUTEX_WAITV, the eventfd
/// registered. A deferring ring is left disabled (ring::enable() makes the caller its issuer).
std::unique_ptr<ring> open_ring(wake_config config, int event_fd, std::string& why) {
    auto queue = std::make_unique<ring>();
    if (!queue->setup(64, setup_flags(config), why) || !queue->supports_futex_waitv(why) ||
        !queue->register_eventfd(event_fd, why))
        return nullptr;
    return queue;
}

/// Submits one FUTEX_WAITV request on `words` (kept alive by the caller until it ends).
bool submit_waitv(ring& queue, std::vector<futex_waitv>& words, std::uint64_t tag) {
    io_uring_sqe* sqe = queue.next_entry();
    if (sqe == nullptr)
        return false;
    sqe->opcode = op_futex_waitv;
    sqe->addr = reinterpret_cast<std::uintptr_t>(words.data());
    sqe->len = static_cast<std::uint32_t>(words.size());
    sqe->user_data = tag;
    return true;
}

std::int64_t monotonic_ns() noexcept {
    timespec t{};
    ::clock_gettime(CLOCK_MONOTONIC, &t);
    return static_cast<std::int64_t>(t.tv_sec) * 1'000'000'000 + t.tv_nsec;
}

} // namespace

// ---------------------------------------------------------------------------------------------
// The start-up check
// ---------------------------------------------------------------------------------------------

delivery_check probe_ring(wake_config config) {
    // A word in shared memory (a shared futex, as the doorbell words in their System V
    // segment: both are shmem), changed and woken by another thread while this one waits on
    // the eventfd in poll(), as a context's thread waits in epoll_wait.
    void* page = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED)
        return {false, errno_text("mmap of the check's word")};
    struct unmap {
        void* p;
        ~unmap() { ::munmap(p, 4096); }
    } unmap_page{page};
    auto* word = static_cast<std::uint32_t*>(page);
    constexpr int attempts = 2;
    constexpr auto waker_pause = std::chrono::microseconds(300); // the waiter is asleep by then
    const auto bound_ns = std::chrono::nanoseconds(wake_delivery_bound).count();
    std::string late;
    for (int attempt = 0; attempt < attempts; ++attempt) {
        const int event_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (event_fd < 0)
            return {false, errno_text("eventfd")};
        struct close_fd {
            int fd;
            ~close_fd() { ::close(fd); }
        } closer{event_fd};
        std::string why;
        auto queue = open_ring(config, event_fd, why);
        if (!queue || (config == wake_config::uring_deferred && !queue->enable(why)))
            return {false, why};
        std::vector<futex_waitv> v(1);
        v[0].val = __atomic_load_n(word, __ATOMIC_ACQUIRE);
        v[0].uaddr = reinterpret_cast<std::uintptr_t>(word);
        v[0].flags = futex2_size_u32;
        if (!submit_waitv(*queue, v, 1) || !queue->submit(why))
            return {false, why.empty() ? "io_uring: no room to submit" : why};
        std::atomic<std::int64_t> rung_at{0};
        std::thread waker;
        try {
            waker = std::thread([&] {
                std::this_thread::sleep_for(waker_pause);
                rung_at.store(monotonic_ns(), std::memory_order_release);
                __atomic_add_fetch(word, 2, __ATOMIC_SEQ_CST);
                ::syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
            });
        } catch (const std::exception& e) {
            return {false, std::string("cannot start a thread to check with: ") + e.what()};
        }
        // Wait until the eventfd is readable or the bound has passed since the wake.
        std::int64_t arrived = 0;
        const std::int64_t started = monotonic_ns();
        for (;;) {
            const std::int64_t now = monotonic_ns();
            const std::int64_t rung = rung_at.load(std::memory_order_acquire);
            const std::int64_t limit =
                rung != 0 ? rung + bound_ns : started + bound_ns + 1'000'000'000;
            if (now >= limit)
                break;
            pollfd p{event_fd, POLLIN, 0};
            const int n = ::poll(&p, 1, static_cast<int>((limit - now) / 1'000'000) + 1);
            if (n > 0) {
                arrived = monotonic_ns();
                break;
            }
            if (n < 0 && errno != EINTR)
                break;
        }
        waker.join();
        const std::int64_t rung = rung_at.load(std::memory_order_acquire);
        if (arrived != 0 && arrived - rung <= bound_ns)
            return {true, "delivered in " + std::to_string((arrived - rung) / 1000) + " us"};
        late += late.empty() ? "" : ", ";
        late += arrived != 0 ? std::to_string((arrived - rung) / 1000) + " us"
                             : "not within " + std::to_string(wake_delivery_bound.count()) + " ms";
        // Closing the ring (at the end of the scope) ends its request.
    }
    return {false,
            "a FUTEX_WAKE by another thread reached its eventfd: " + late + " (trusted within " +
                std::to_string(wake_delivery_bound.count()) + " ms)",
            true};
}

// ---------------------------------------------------------------------------------------------
// The watcher
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

    bool open(wake_config config, std::string& why) {
        auto& st = *state_;
        st.event_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (st.event_fd < 0) {
            why = errno_text("eventfd");
            return false;
        }
        // A deferring ring stays disabled until the first watch(), whose thread becomes its
        // issuer.
        if (!(st.queue = open_ring(config, st.event_fd, why)))
            return false;
        st.deferred = config == wake_config::uring_deferred;
        st.owner_pid = this_process();
        return true;
    }

    bool watch(const std::vector<watched_word>& words) override {
        auto& st = *state_;
        std::lock_guard lock(st.mutex);
        if (st.owner_pid != this_process())
            return false; // a forked child: the ring's queues are the parent's (notify_fork
                          // replaces us)
        if (!issuer_locked(st))
            return false; // no ring: the waits rely on their backstop polls (see failure())
        if (words == st.words && st.armed > 0) {
            // Already waiting on exactly these; heard, unless a handler that threw out of the
            // last completion's pass left nobody waiting for the eventfd.
            wait_for_completions(state_);
            return st.covered;
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
        return st.covered;
    }

    bool delivery_pending() override {
        pollfd p{state_->event_fd, POLLIN, 0};
        return ::poll(&p, 1, 0) > 0;
    }

    wake_config config() const override {
        std::lock_guard lock(state_->mutex);
        return state_->deferred ? wake_config::uring_deferred : wake_config::uring_plain;
    }

    std::string failure() const override {
        std::lock_guard lock(state_->mutex);
        return state_->failure;
    }

private:
    struct state {
        mutable std::mutex mutex;
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
        unsigned armed = 0;   ///< requests of the current generation in flight
        bool covered = false; ///< every word of `words` is in an armed request
        std::string failure;  ///< why this watcher cannot watch any more
        std::vector<watched_word> words;
        std::vector<std::vector<futex_waitv>> vectors; ///< kept until the requests end
        ~state() {
            if (!descriptor && event_fd >= 0)
                ::close(event_fd);
        }
    };

    static pid_t this_thread() noexcept {
        thread_local const pid_t tid = static_cast<pid_t>(::syscall(SYS_gettid));
        return tid;
    }

    /// Whether this thread may use the ring: the first thread of a deferred ring becomes its
    /// issuer; another thread replaces it with a plain ring (a context run by several threads),
    /// if plain rings deliver here, whose requests are armed again.
    static bool issuer_locked(state& st) {
        if (!st.failure.empty())
            return false;
        if (!st.deferred)
            return true;
        std::string why;
        if (!st.enabled) {
            if (!st.queue->enable(why)) {
                st.failure = "the deferring ring cannot be enabled: " + why;
                return false;
            }
            st.enabled = true;
            st.issuer = this_thread();
            return true;
        }
        if (st.issuer == this_thread())
            return true;
        const auto plain = check_delivery(wake_config::uring_plain);
        std::unique_ptr<ring> queue;
        if (!plain.delivered || !(queue = open_ring(wake_config::uring_plain, st.event_fd, why))) {
            st.failure = "the context runs on several threads, which a deferring ring does not "
                         "allow, and a plain ring " +
                         (plain.delivered ? "cannot be made: " + why
                                          : "does not deliver here: " + plain.what);
            return false;
        }
        st.queue = std::move(queue); // closing the deferring ring cancels its requests
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
        st.covered = true;
        for (auto& v : st.vectors) {
            if (!submit_waitv(*st.queue, v, st.generation)) {
                st.covered = false; // the rest rely on the backstop polls until the next watch()
                break;
            }
            ++st.armed;
        }
        std::string why;
        if (!st.queue->submit(why)) {
            st.armed = 0;
            st.covered = st.words.empty();
        }
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
        wake_config config{};
        {
            std::lock_guard lock(st->mutex);
            st->waiting = false;
            if (st->service == nullptr || ec == asio::error::operation_aborted)
                return;
            service = st->service;
            config = st->deferred ? wake_config::uring_deferred : wake_config::uring_plain;
        }
        // A test hook: a ring whose deliveries vanish. Its completions are consumed and
        // nothing is armed again until the service watches other values.
        if (deliveries_swallowed(config)) {
            std::lock_guard lock(st->mutex);
            if (st->service != nullptr && st->owner_pid == this_process() && issuer_locked(*st))
                reap_locked(*st);
            return;
        }
        // The woken waits first: the words tell which changed, so their pass (semop) and
        // handlers do not wait for the completions to be reaped. The pass's watch() replaces
        // the requests if the words to watch changed. (A test hook may delay this.)
        if (const auto delay = delivery_delay(config); delay.count() > 0)
            std::this_thread::sleep_for(delay);
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

std::unique_ptr<doorbell_watcher> make_uring_watcher(poll_service& service, wake_config config,
                                                     std::string& why) {
    auto watcher = std::make_unique<uring_watcher>(service);
    if (!watcher->open(config, why))
        return nullptr;
    return watcher;
}

} // namespace sysv::detail
