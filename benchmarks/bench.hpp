// The benchmark framework of sysv_bench (no Asio, no module import: every benchmark source
// includes this first, then other headers, then `import sysv;`).
//
//  * sections: a section is a function that measures some rows and prints one markdown table
//    per question it answers. Register one from any source of the sysv_bench target with
//
//        static const bench::registrar my_section{
//            {"channel", 50, "Channel throughput", &run_channel_section}};
//
//    (`order` sorts the sections; `--section channel` runs it alone). Inside, use the context:
//    ctx.opt (--quick, --runs, --rounds, --row, ...), ctx.record() for each CSV value,
//    ctx.print() for each table, ctx.target() for each project target checked;
//  * statistics: summarize() gives median/p99/min/max of a sample;
//  * processes and cleanup: bench::child forks a peer (killed and reaped if anything fails);
//    track_semaphore_set()/track_segment() register IPC ids that a signal (Ctrl-C, SIGTERM, the
//    watchdog's SIGALRM) removes before the program exits; normal removal is the caller's
//    job (sysv::scoped_remover).
#pragma once

#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <exception>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bench {

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

/// A backoff given on the command line (--backoff Y,F,G,M[,J]); converted to sysv::backoff by
/// the sections. Rows named "custom" appear only when it is given.
struct backoff_spec {
    unsigned immediate_yields = 64;
    long first_sleep_us = 20;
    double growth = 2.0;
    long max_sleep_us = 3000;
    double jitter = 0.0;
    std::string text() const;
};

struct options {
    bool quick = false;
    std::string section;                 ///< empty: every section
    std::vector<std::string> row_filter; ///< row ids ("id*": prefix); empty: every row
    std::filesystem::path csv;
    int runs = 0;       ///< 0: the section's default
    long rounds = 0;    ///< 0: the section's default (iterations per run)
    double seconds = 0; ///< 0: the section's default (measuring time where time-based)
    std::optional<backoff_spec> custom_backoff;
    std::string placement; ///< ping-pong: "any", "two" or "one" CPUs; empty: all three

    /// Whether row `id` is selected by --row (always true without --row).
    bool wants(std::string_view id) const;
    int runs_or(int full, int quick_value) const {
        return runs > 0 ? runs : (quick ? quick_value : full);
    }
    long rounds_or(long full, long quick_value) const {
        return rounds > 0 ? rounds : (quick ? quick_value : full);
    }
    double seconds_or(double full, double quick_value) const {
        return seconds > 0 ? seconds : (quick ? quick_value : full);
    }
};

// ---------------------------------------------------------------------------------------------
// Statistics and formatting
// ---------------------------------------------------------------------------------------------

struct summary {
    std::size_t count = 0;
    double p50 = 0, p90 = 0, p99 = 0, min = 0, max = 0, mean = 0;
};

/// Percentiles by linear interpolation between order statistics (q in [0, 1]).
double percentile(const std::vector<double>& sorted, double q);
summary summarize(std::vector<double> sample);
double median(std::vector<double> sample);

/// Fixed-point text: fmt(3.14159, 2) == "3.14".
std::string fmt(double value, int decimals = 1);
/// "1.23x".
std::string ratio_text(double ratio);

/// CLOCK_MONOTONIC in nanoseconds (the same clock in every process of the machine).
inline std::int64_t now_ns() noexcept {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

/// A markdown table.
class table {
public:
    explicit table(std::vector<std::string> headers) : headers_(std::move(headers)) {}
    void add(std::vector<std::string> cells) { rows_.push_back(std::move(cells)); }
    bool empty() const noexcept { return rows_.empty(); }
    std::string markdown() const;

private:
    std::vector<std::string> headers_;
    std::vector<std::vector<std::string>> rows_;
};

// ---------------------------------------------------------------------------------------------
// Sections, results and targets
// ---------------------------------------------------------------------------------------------

class context;

struct section {
    std::string name; ///< for --section
    int order;        ///< sections run in increasing order
    std::string title;
    void (*run)(context&);
};

/// Every registered section.
std::vector<section>& registry();

struct registrar {
    explicit registrar(section s) { registry().push_back(std::move(s)); }
};

/// A project target checked by a section.
struct target_check {
    std::string section;
    std::string target;
    std::string measured;
    bool met;
};

class context {
public:
    context(const options& o, std::FILE* csv) : opt(o), csv_(csv) {}

    const options& opt;

    /// One CSV line: section, run ("all" for values pooled over runs), row, metric, value,
    /// unit.
    void record(std::string_view row, std::string_view metric, double value, std::string_view unit,
                std::string_view run = "all");
    /// Prints a titled markdown table (and notes under it) to stdout.
    void print(std::string_view title, const table& t, std::string_view notes = {});
    void target(std::string target_text, std::string measured, bool met);
    /// Progress on stderr (stdout carries only the report).
    void progress(std::string_view text);

    void set_section(std::string_view name) { section_ = name; }
    const std::vector<target_check>& targets() const noexcept { return targets_; }

private:
    std::FILE* csv_;
    std::string section_;
    std::vector<target_check> targets_;
};

// ---------------------------------------------------------------------------------------------
// Processes and cleanup
// ---------------------------------------------------------------------------------------------

/// Registered ids are removed (IPC_RMID) and registered children killed when the program
/// receives SIGINT, SIGTERM, SIGHUP, SIGQUIT or the watchdog's SIGALRM; it then exits with 3.
void install_cleanup_handlers();
void track_semaphore_set(int id) noexcept;
void untrack_semaphore_set(int id) noexcept;
void track_segment(int id) noexcept;
void untrack_segment(int id) noexcept;
void track_child(pid_t pid) noexcept;
void untrack_child(pid_t pid) noexcept;

/// Arms (or with 0, disarms) the watchdog: if the program is still in the same step after
/// `seconds`, everything registered is removed and the program exits with a message naming
/// `what`.
void watchdog(unsigned seconds, const char* what) noexcept;

/// A forked peer process running `body` (returning its exit code; an exception prints and
/// exits 99). It dies with its parent (PR_SET_PDEATHSIG). The destructor kills (SIGKILL) and
/// reaps it if it is still running.
class child {
public:
    template <class F>
    explicit child(F&& body) {
        pid_ = start_fork();
        if (pid_ == 0) {
            int code = 99;
            try {
                code = body();
            } catch (const std::exception& e) {
                std::fprintf(stderr, "sysv_bench child %d: %s\n", static_cast<int>(::getpid()),
                             e.what());
            } catch (...) {
                std::fprintf(stderr, "sysv_bench child %d: unknown exception\n",
                             static_cast<int>(::getpid()));
            }
            finish_child(code);
        }
    }
    child(const child&) = delete;
    child& operator=(const child&) = delete;
    ~child();

    pid_t pid() const noexcept { return pid_; }
    /// Waits for the child; throws unless it exited with 0.
    void join(std::string_view what);

private:
    static pid_t start_fork();
    [[noreturn]] static void finish_child(int code) noexcept;
    int wait_status();

    pid_t pid_ = -1;
    bool reaped_ = false;
};

/// Anonymous resident memory in bytes (/proc/self/statm: resident - shared).
std::size_t resident_bytes();
/// Bytes allocated with malloc and not freed (mallinfo2).
std::size_t heap_in_use();
/// CPU time (user + system) of this process in seconds (getrusage RUSAGE_SELF).
double process_cpu_seconds();

} // namespace bench
