// sysv.async: the helper-thread doorbell watcher, and the start-up check of that configuration.
//
// One helper thread per process, blocked in futex_waitv on the words of every poll service (at
// most 127, plus its own control word), which posts to the services whose words changed. Used
// where io_uring has no FUTEX_WAITV or its rings do not deliver (see uring_watcher.cpp).
module;

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/post.hpp>

#include <linux/futex.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

module sysv.async;

namespace sysv::detail {

namespace {

namespace asio = boost::asio;

constexpr std::uint32_t futex2_size_u32 = 0x02;
constexpr std::uint32_t futex2_private = 128;

std::int64_t monotonic_ns() noexcept {
    timespec t{};
    ::clock_gettime(CLOCK_MONOTONIC, &t);
    return static_cast<std::int64_t>(t.tv_sec) * 1'000'000'000 + t.tv_nsec;
}

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

    /// Watch `words` for `service`; returns whether every watched word of every service fits
    /// in the thread's futex_waitv (the others rely on their backstop polls).
    bool set(poll_service* service, asio::any_io_executor ex, std::vector<watched_word> words) {
        std::lock_guard lock(mutex_);
        start_locked();
        auto [it, added] = services_.try_emplace(service);
        auto& e = it->second;
        if (added || e.words != words) { // else: already waits on exactly these
            e.executor = std::move(ex);
            e.words = std::move(words);
            changed_locked();
        }
        std::size_t total = 0;
        for (const auto& [s, entry] : services_)
            total += entry.words.size();
        return total + 2 <= FUTEX_WAITV_MAX; // the control word and a check's word
    }

    void remove(poll_service* service) {
        std::lock_guard lock(mutex_);
        if (services_.erase(service) > 0)
            changed_locked();
    }

    /// Whether a delivery to `service` is posted and has not run yet.
    bool posted(poll_service* service) {
        std::lock_guard lock(mutex_);
        const auto it = services_.find(service);
        return it != services_.end() && it->second.posted;
    }

    /// The start-up check: a word changed by another thread (this one) reaches the helper
    /// thread, which tells this one, within wake_delivery_bound.
    delivery_check check() {
        void* page =
            ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (page == MAP_FAILED)
            return {false, std::string("mmap of the check's word: ") + std::strerror(errno)};
        auto* word = static_cast<std::uint32_t*>(page);
        const auto bound_ns = std::chrono::nanoseconds(wake_delivery_bound).count();
        delivery_check result;
        std::string late;
        for (int attempt = 0; attempt < 2 && !result.delivered; ++attempt) {
            {
                std::lock_guard lock(mutex_);
                try {
                    start_locked();
                } catch (const std::exception& e) {
                    result.what = std::string("cannot start the helper thread: ") + e.what();
                    break;
                }
                check_word_ = word;
                check_expected_ = __atomic_load_n(word, __ATOMIC_ACQUIRE);
                check_arrived_ = 0;
                changed_locked();
            }
            std::this_thread::sleep_for(std::chrono::microseconds(300));
            const std::int64_t rung = monotonic_ns();
            __atomic_add_fetch(word, 2, __ATOMIC_SEQ_CST);
            ::syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
            std::unique_lock lock(mutex_);
            checked_.wait_for(lock, wake_delivery_bound, [&] { return check_arrived_ != 0; });
            const std::int64_t arrived = check_arrived_;
            check_word_ = nullptr;
            if (arrived != 0 && arrived - rung <= bound_ns) {
                result = {true, "delivered in " + std::to_string((arrived - rung) / 1000) + " us"};
            } else {
                late += late.empty() ? "" : ", ";
                late += arrived != 0
                            ? std::to_string((arrived - rung) / 1000) + " us"
                            : "not within " + std::to_string(wake_delivery_bound.count()) + " ms";
            }
        }
        ::munmap(page, 4096);
        if (!result.delivered && result.what.empty()) {
            result.what = "a FUTEX_WAKE by another thread reached the helper thread: " + late;
            result.measured = true;
        }
        return result;
    }

private:
    thread_hub() { h_ = this; }
    static inline thread_hub* h_ = nullptr;

    struct entry {
        asio::any_io_executor executor;
        std::vector<watched_word> words;
        bool posted = false; ///< a delivery is posted to the executor, not run yet
    };

    void start_locked() {
        if (thread_pid_ == this_process())
            return;
        // First use, or a forked child (threads do not survive fork): a thread of our own.
        services_.clear();
        check_word_ = nullptr;
        std::thread([this] { run(); }).detach();
        thread_pid_ = this_process();
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
                if (check_word_ != nullptr)
                    waitv.push_back({check_expected_, reinterpret_cast<std::uintptr_t>(check_word_),
                                     futex2_size_u32, 0});
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
            if (check_word_ != nullptr && check_arrived_ == 0 &&
                __atomic_load_n(check_word_, __ATOMIC_ACQUIRE) != check_expected_) {
                check_arrived_ = monotonic_ns();
                checked_.notify_all();
            }
            for (auto& [service, e] : services_) {
                const bool rung = std::any_of(e.words.begin(), e.words.end(), [](const auto& w) {
                    return __atomic_load_n(w.word, __ATOMIC_ACQUIRE) != w.expected;
                });
                if (!rung)
                    continue;
                e.words.clear(); // until the service watches again, after its pass
                if (deliveries_swallowed(wake_config::helper_thread))
                    continue; // a test hook: the service is never told
                e.posted = true;
                asio::post(e.executor, [this, s = service] { deliver(s); });
            }
        }
    }

    void deliver(poll_service* service) {
        {
            std::lock_guard lock(mutex_);
            if (const auto it = services_.find(service); it != services_.end())
                it->second.posted = false;
        }
        if (const auto delay = delivery_delay(wake_config::helper_thread); delay.count() > 0)
            std::this_thread::sleep_for(delay); // a test hook
        service->on_doorbell();
    }

    std::mutex mutex_;
    std::map<poll_service*, entry> services_;
    std::uint32_t control_ = 0;
    pid_t thread_pid_ = 0;
    // The start-up check's word, what it held, and when the thread saw it change.
    std::uint32_t* check_word_ = nullptr;
    std::uint32_t check_expected_ = 0;
    std::int64_t check_arrived_ = 0;
    std::condition_variable checked_;
};

} // namespace

delivery_check probe_helper_thread() {
    std::string why;
    if (!thread_hub::available(why))
        return {false, why};
    return thread_hub::instance().check();
}

class thread_watcher final : public doorbell_watcher {
public:
    explicit thread_watcher(poll_service& service) : service_(service) {}
    ~thread_watcher() override { thread_hub::instance().remove(&service_); }

    bool watch(const std::vector<watched_word>& words) override {
        if (!service_.executor_)
            return false;
        return thread_hub::instance().set(&service_, *service_.executor_, words);
    }

    bool delivery_pending() override { return thread_hub::instance().posted(&service_); }

    wake_config config() const override { return wake_config::helper_thread; }

private:
    poll_service& service_;
};

std::unique_ptr<doorbell_watcher> make_thread_watcher(poll_service& service, std::string& why) {
    if (!thread_hub::available(why))
        return nullptr;
    return std::make_unique<thread_watcher>(service);
}

} // namespace sysv::detail
