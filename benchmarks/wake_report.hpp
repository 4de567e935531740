// What a row's waits ran with: the wake configuration of its context, read after the
// measurement (so a demotion shows), and whether it is what the row asked for. Include after
// `import sysv;` (and after <boost/asio.hpp>, <cstring> and <string>, included before it).
#pragma once

namespace bench {

/// Plain data, so a measuring child can send it back through a pipe.
struct wake_report {
    char configuration[48] = "-"; ///< sysv::wake_status::configuration
    char asked[16] = "";          ///< "io_uring", "thread", "polling"; empty: nothing asked
    bool as_asked = true;
    std::uint64_t delivered = 0, late = 0, missed = 0, demotions = 0;
};

/// Adds `r` to `all`: counted into the entry of the same configuration, or appended.
inline void merge(std::vector<wake_report>& all, const wake_report& r) {
    for (auto& a : all)
        if (std::strcmp(a.configuration, r.configuration) == 0 && a.as_asked == r.as_asked) {
            a.delivered += r.delivered;
            a.late += r.late;
            a.missed += r.missed;
            a.demotions += r.demotions;
            return;
        }
    all.push_back(r);
}

inline wake_report report_wake(boost::asio::execution_context& context, std::string_view asked) {
    const auto s = sysv::wake_status_of(context);
    wake_report r;
    std::strncpy(r.configuration, s.configuration.c_str(), sizeof r.configuration - 1);
    std::strncpy(r.asked, std::string(asked).c_str(), sizeof r.asked - 1);
    const auto mode = std::string(sysv::to_string(s.mode));
    r.as_asked = asked.empty() || mode == (asked == "thread" ? "helper_thread" : asked);
    r.delivered = s.stats.delivered;
    r.late = s.stats.late;
    r.missed = s.stats.missed;
    r.demotions = s.stats.demotions;
    return r;
}

inline std::string describe(const wake_report& r);

/// The entries of merge(), described and joined ("-" for none).
inline std::string describe(const std::vector<wake_report>& all) {
    std::string text;
    for (const auto& r : all)
        text += (text.empty() ? "" : "; ") + describe(r);
    return text.empty() ? "-" : text;
}

/// "io_uring ring + eventfd, 640 deliveries", with what went wrong: "**helper thread
/// (futex_waitv), ..., not io_uring**", ", demoted 1x", " (late 3, missed 1)". The counts are
/// those of the context at its end: after a demotion, of every configuration it ran with.
inline std::string describe(const wake_report& r) {
    std::string text = r.configuration;
    if (std::string_view(r.configuration) != "polling" && std::string_view(r.configuration) != "-")
        text += ", " + std::to_string(r.delivered) + " deliveries";
    if (r.demotions > 0)
        text += ", demoted " + std::to_string(r.demotions) + "x";
    if (r.late > 0 || r.missed > 0)
        text += " (late " + std::to_string(r.late) + ", missed " + std::to_string(r.missed) + ")";
    if (!r.as_asked)
        text = "**" + text + ", not " + r.asked + "**";
    return text;
}

} // namespace bench
