// sysv.async: the start-up checks of the wake configurations, kept once per process, and the
// test hooks that make a configuration drop or delay its deliveries.
module;

#include <boost/asio/any_io_executor.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

module sysv.async;

namespace sysv::detail {

std::string_view describe(wake_config config) noexcept {
    switch (config) {
    case wake_config::uring_deferred:
        return "io_uring deferring ring + eventfd";
    case wake_config::uring_plain:
        return "io_uring ring + eventfd";
    case wake_config::helper_thread:
        return "helper thread (futex_waitv)";
    case wake_config::polling:
        break;
    }
    return "polling";
}

wake_mode mode_of(wake_config config) noexcept {
    switch (config) {
    case wake_config::uring_deferred:
    case wake_config::uring_plain:
        return wake_mode::io_uring;
    case wake_config::helper_thread:
        return wake_mode::helper_thread;
    case wake_config::polling:
        break;
    }
    return wake_mode::polling;
}

namespace {

constexpr std::size_t config_count = 4;

struct check_cache {
    std::mutex mutex;
    std::array<std::optional<delivery_check>, config_count> verdicts;
};

check_cache& cache() {
    static check_cache c;
    return c;
}

// Test hooks: a bit per configuration, and a delay per configuration (milliseconds).
std::atomic<unsigned> swallowed{0};
std::array<std::atomic<int>, config_count> delays{};

} // namespace

delivery_check check_delivery(wake_config config) {
    if (config == wake_config::polling)
        return {true, "nothing to deliver"};
    auto& c = cache();
    std::lock_guard lock(c.mutex); // one check at a time: they measure the machine
    auto& verdict = c.verdicts[static_cast<std::size_t>(config)];
    if (verdict)
        return *verdict;
    const auto index = static_cast<unsigned>(config);
    doorbell_table* table = doorbell_table::get();
    if (const auto pid = table != nullptr ? table->failed_check(index) : std::nullopt)
        verdict = delivery_check{false,
                                 "it failed in process " + std::to_string(*pid) +
                                     " of this user since boot (remembered in the doorbell "
                                     "table; remove_doorbell_table() forgets it)",
                                 true};
    else
        verdict = config == wake_config::helper_thread ? probe_helper_thread() : probe_ring(config);
    if (!verdict->delivered && verdict->measured && table != nullptr)
        table->record_failed_check(index);
    return *verdict;
}

#ifdef SYSV_CRASH_POINTS
void swallow_deliveries(wake_config config) noexcept {
    swallowed.fetch_or(1u << static_cast<unsigned>(config));
}
void delay_deliveries(wake_config config, std::chrono::milliseconds delay) noexcept {
    delays[static_cast<std::size_t>(config)].store(static_cast<int>(delay.count()));
}
#endif

bool deliveries_swallowed(wake_config config) noexcept {
    return (swallowed.load(std::memory_order_relaxed) & (1u << static_cast<unsigned>(config))) != 0;
}

std::chrono::milliseconds delivery_delay(wake_config config) noexcept {
    return std::chrono::milliseconds(
        delays[static_cast<std::size_t>(config)].load(std::memory_order_relaxed));
}

} // namespace sysv::detail
