// sysv_bench, what the semaphore sections share: wake modes forced per row, IPC objects owned by
// a measurement, the shared block, coroutines, clocks, the backoffs compared. Part of
// semaphores.cpp's translation unit (one TU with Asio keeps the build lean): included there after
// its headers and `import sysv;`.
#pragma once

namespace {

// ---------------------------------------------------------------------------------------------
// Wake modes: a row names the mode its waits use (SYSV_WAIT_MODE, read when a context makes
// its first wait, inherited by forked peers). "polling" keeps the rows of earlier runs
// comparable; "io_uring" and "thread" are the doorbell rows.
// ---------------------------------------------------------------------------------------------

class forced_mode {
public:
    explicit forced_mode(const std::string& mode) {
        if (const char* old = std::getenv("SYSV_WAIT_MODE"))
            previous_ = old;
        if (!mode.empty())
            ::setenv("SYSV_WAIT_MODE", mode.c_str(), 1);
    }
    forced_mode(const forced_mode&) = delete;
    forced_mode& operator=(const forced_mode&) = delete;
    ~forced_mode() {
        if (previous_)
            ::setenv("SYSV_WAIT_MODE", previous_->c_str(), 1);
        else
            ::unsetenv("SYSV_WAIT_MODE");
    }

private:
    std::optional<std::string> previous_;
};

/// Whether wake mode `mode` is what a context gets when it is asked for.
bool mode_available(const std::string& mode) {
    forced_mode force(mode);
    asio::io_context io;
    const auto got = sysv::wake_mode_of(io);
    return std::string(sysv::to_string(got)) == (mode == "thread" ? "helper_thread" : mode);
}

// ---------------------------------------------------------------------------------------------
// IPC objects owned by a measurement: IPC_PRIVATE, removed by a sysv::scoped_remover when the
// measurement ends (also on exceptions) and registered for removal on signals.
// ---------------------------------------------------------------------------------------------

class owned_set {
public:
    explicit owned_set(std::span<const int> initial)
        : set_(sysv::semaphore_set::create(sysv::key::private_key(), initial)),
          tracking_(set_.id()), remover_(set_) {}
    owned_set(std::initializer_list<int> initial)
        : owned_set(std::span<const int>(initial.begin(), initial.size())) {}
    owned_set(const owned_set&) = delete;
    owned_set& operator=(const owned_set&) = delete;

    int id() const noexcept { return set_.id(); }
    sysv::semaphore_set& get() noexcept { return set_; }
    /// Another handle to the set (an async_semaphore_set or mutex takes its handle over).
    sysv::semaphore_set handle() const { return sysv::semaphore_set::open_id(set_.id()); }

private:
    struct tracking {
        int id;
        explicit tracking(int i) noexcept : id(i) { bench::track_semaphore_set(i); }
        ~tracking() { bench::untrack_semaphore_set(id); }
    };
    sysv::semaphore_set set_;
    tracking tracking_;
    sysv::scoped_remover<sysv::semaphore_set> remover_;
};

/// What the processes of a measurement share (trivially copyable: it lives in a segment).
struct shared_block {
    std::int64_t stamp;    ///< wake: CLOCK_MONOTONIC ns written right before the release
    std::int64_t deadline; ///< contended mutex: when both processes stop
    std::int64_t ended[2]; ///< contended mutex: when each process stopped
    std::uint64_t counter; ///< contended mutex: incremented under the lock
    std::uint64_t ops[2];  ///< contended mutex: lock/unlock pairs of each process
    std::int32_t peer_cpu; ///< ping-pong: the CPU the peer answered from
};

template <class T>
void store(T& place, T value) noexcept {
    __atomic_store_n(&place, value, __ATOMIC_RELEASE);
}
template <class T>
T load(const T& place) noexcept {
    return __atomic_load_n(&place, __ATOMIC_ACQUIRE);
}

/// A segment holding a shared_block, attached here (and in children forked later).
class owned_segment {
public:
    owned_segment()
        : memory_(sysv::shared_memory::create(sysv::key::private_key(), 4096)),
          tracking_(memory_.id()), remover_(memory_), view_(memory_.attach()) {}
    owned_segment(const owned_segment&) = delete;
    owned_segment& operator=(const owned_segment&) = delete;

    shared_block& block() const { return view_.as<shared_block>(0); }

private:
    struct tracking {
        int id;
        explicit tracking(int i) noexcept : id(i) { bench::track_segment(i); }
        ~tracking() { bench::untrack_segment(id); }
    };
    sysv::shared_memory memory_;
    tracking tracking_;
    sysv::scoped_remover<sysv::shared_memory> remover_;
    sysv::attachment view_; // detached before the segment is removed
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Runs the coroutine made by `make` on `io` until `io` runs out of work; rethrows what it threw.
template <class F>
void run_coroutine(asio::io_context& io, F make) {
    std::exception_ptr failure;
    asio::co_spawn(io, std::move(make), [&](std::exception_ptr e) { failure = e; });
    io.run();
    if (failure)
        std::rethrow_exception(failure);
}

void sleep_until_ns(std::int64_t deadline) {
    timespec ts{};
    ts.tv_sec = deadline / 1'000'000'000;
    ts.tv_nsec = deadline % 1'000'000'000;
    while (::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
    }
}

double us_since(std::int64_t start_ns, std::int64_t end_ns) {
    return static_cast<double>(end_ns - start_ns) / 1e3;
}

std::string backoff_text(const sysv::backoff& b) {
    std::string text = std::to_string(b.immediate_yields) + " yields, " +
                       std::to_string(b.first_sleep.count()) + "-" +
                       std::to_string(b.max_sleep.count()) + " us x" + bench::fmt(b.growth, 1);
    if (b.jitter > 0)
        text += " jitter " + bench::fmt(b.jitter, 2);
    return text;
}

struct named_backoff {
    std::string id;    ///< suffix of row ids: default, latency, cpu, custom
    std::string label; ///< for tables
    sysv::backoff value;
};

/// default, latency_tuned(), cpu_tuned() and the --backoff one if given.
std::vector<named_backoff> backoffs(const bench::options& opt) {
    std::vector<named_backoff> list{
        {"default", "default backoff{}", sysv::backoff{}},
        {"latency", "backoff::latency_tuned()", sysv::backoff::latency_tuned()},
        {"cpu", "backoff::cpu_tuned()", sysv::backoff::cpu_tuned()},
    };
    if (opt.custom_backoff) {
        const auto& c = *opt.custom_backoff;
        sysv::backoff b;
        b.immediate_yields = c.immediate_yields;
        b.first_sleep = std::chrono::microseconds(c.first_sleep_us);
        b.growth = c.growth;
        b.max_sleep = std::chrono::microseconds(c.max_sleep_us);
        b.jitter = c.jitter;
        if (b.validate())
            throw std::invalid_argument("--backoff: invalid backoff " + c.text());
        list.push_back({"custom", "custom backoff", b});
    }
    for (auto& b : list)
        b.label += " (" + backoff_text(b.value) + ")";
    return list;
}

/// Ratio of two values, NaN when the baseline is missing.
double ratio(double value, double baseline) {
    return baseline > 0 ? value / baseline : std::nan("");
}

} // namespace
