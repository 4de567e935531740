// sysv_bench: the driver (options, report, CSV, cleanup on signals) and the framework of
// bench.hpp. The sections live in the other sources of the target and register themselves.
#include "bench.hpp"
#include "common/cli.hpp"

#include <fcntl.h>
#include <malloc.h>
#include <sys/ipc.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <system_error>

namespace bench {

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

std::string backoff_spec::text() const {
    std::ostringstream out;
    out << immediate_yields << " yields, " << first_sleep_us << "-" << max_sleep_us << " us x"
        << growth;
    if (jitter > 0)
        out << " jitter " << jitter;
    return out.str();
}

bool options::wants(std::string_view id) const {
    if (row_filter.empty())
        return true;
    return std::any_of(row_filter.begin(), row_filter.end(), [&](const std::string& f) {
        if (!f.empty() && f.back() == '*')
            return id.substr(0, f.size() - 1) == std::string_view(f).substr(0, f.size() - 1);
        return id == f;
    });
}

// ---------------------------------------------------------------------------------------------
// Statistics and formatting
// ---------------------------------------------------------------------------------------------

double percentile(const std::vector<double>& sorted, double q) {
    if (sorted.empty())
        return std::nan("");
    const double position = q * static_cast<double>(sorted.size() - 1);
    const auto below = static_cast<std::size_t>(position);
    const std::size_t above = std::min(below + 1, sorted.size() - 1);
    const double fraction = position - static_cast<double>(below);
    return sorted[below] + (sorted[above] - sorted[below]) * fraction;
}

summary summarize(std::vector<double> sample) {
    summary s;
    if (sample.empty())
        return s;
    std::sort(sample.begin(), sample.end());
    s.count = sample.size();
    s.p50 = percentile(sample, 0.50);
    s.p90 = percentile(sample, 0.90);
    s.p99 = percentile(sample, 0.99);
    s.min = sample.front();
    s.max = sample.back();
    double total = 0;
    for (double v : sample)
        total += v;
    s.mean = total / static_cast<double>(sample.size());
    return s;
}

double median(std::vector<double> sample) {
    std::sort(sample.begin(), sample.end());
    return percentile(sample, 0.5);
}

std::string fmt(double value, int decimals) {
    if (std::isnan(value))
        return "-";
    char text[64];
    std::snprintf(text, sizeof text, "%.*f", decimals, value);
    return text;
}

std::string ratio_text(double ratio) {
    if (std::isnan(ratio))
        return "-";
    return fmt(ratio, ratio >= 100 ? 0 : 2) + "x";
}

std::string table::markdown() const {
    std::vector<std::size_t> width(headers_.size(), 3);
    for (std::size_t c = 0; c < headers_.size(); ++c)
        width[c] = std::max(width[c], headers_[c].size());
    for (const auto& row : rows_)
        for (std::size_t c = 0; c < row.size() && c < width.size(); ++c)
            width[c] = std::max(width[c], row[c].size());
    std::string out;
    auto line = [&](const std::vector<std::string>& cells) {
        out += "|";
        for (std::size_t c = 0; c < width.size(); ++c) {
            const std::string cell = c < cells.size() ? cells[c] : "";
            out += " " + cell + std::string(width[c] - cell.size(), ' ') + " |";
        }
        out += "\n";
    };
    line(headers_);
    out += "|";
    for (std::size_t c = 0; c < width.size(); ++c)
        out +=
            (c == 0 ? std::string(width[c] + 2, '-') : std::string(width[c] + 1, '-') + ":") + "|";
    out += "\n";
    for (const auto& row : rows_)
        line(row);
    return out;
}

// ---------------------------------------------------------------------------------------------
// Sections and results
// ---------------------------------------------------------------------------------------------

std::vector<section>& registry() {
    static std::vector<section> sections;
    return sections;
}

namespace {
std::string csv_field(std::string_view text) {
    if (text.find_first_of(",\"\n") == std::string_view::npos)
        return std::string(text);
    std::string quoted = "\"";
    for (char c : text) {
        if (c == '"')
            quoted += '"';
        quoted += c;
    }
    return quoted + "\"";
}
} // namespace

void context::record(std::string_view row, std::string_view metric, double value,
                     std::string_view unit, std::string_view run) {
    if (csv_ == nullptr)
        return;
    char number[64];
    std::snprintf(number, sizeof number, "%.6g", value);
    std::fprintf(csv_, "%s,%s,%s,%s,%s,%s\n", csv_field(section_).c_str(), csv_field(run).c_str(),
                 csv_field(row).c_str(), csv_field(metric).c_str(), number,
                 csv_field(unit).c_str());
    std::fflush(csv_);
}

void context::print(std::string_view title, const table& t, std::string_view notes) {
    std::printf("\n### %.*s\n\n%s", static_cast<int>(title.size()), title.data(),
                t.markdown().c_str());
    if (!notes.empty())
        std::printf("\n%.*s\n", static_cast<int>(notes.size()), notes.data());
    std::fflush(stdout);
}

void context::target(std::string target_text, std::string measured, bool met) {
    targets_.push_back({section_, std::move(target_text), std::move(measured), met});
}

void context::progress(std::string_view text) {
    std::fprintf(stderr, "[%s] %.*s\n", section_.c_str(), static_cast<int>(text.size()),
                 text.data());
}

// ---------------------------------------------------------------------------------------------
// Cleanup on signals
// ---------------------------------------------------------------------------------------------

namespace {
constexpr std::size_t max_tracked = 8192;
std::array<std::atomic<int>, max_tracked> tracked_sets;
std::array<std::atomic<int>, 256> tracked_segments;
std::array<std::atomic<int>, 64> tracked_children;
std::atomic<const char*> watchdog_step{nullptr};
std::vector<int> every_set_created; // checked at exit
std::vector<int> every_segment_created;

template <std::size_t N>
void clear_slots(std::array<std::atomic<int>, N>& slots) noexcept {
    for (auto& s : slots)
        s.store(-1);
}
template <std::size_t N>
void add_slot(std::array<std::atomic<int>, N>& slots, int value) noexcept {
    for (auto& s : slots) {
        int expected = -1;
        if (s.compare_exchange_strong(expected, value))
            return;
    }
    std::fprintf(stderr, "sysv_bench: too many objects to track for cleanup on signals\n");
}
template <std::size_t N>
void remove_slot(std::array<std::atomic<int>, N>& slots, int value) noexcept {
    for (auto& s : slots) {
        int expected = value;
        if (s.compare_exchange_strong(expected, -1))
            return;
    }
}

void write_stderr(const char* text) noexcept {
    const auto ignored = ::write(STDERR_FILENO, text, std::strlen(text));
    (void)ignored;
}
// Async-signal-safe decimal output.
void write_stderr_number(long value) noexcept {
    char digits[24];
    char* p = digits + sizeof digits;
    *--p = '\0';
    const bool negative = value < 0;
    unsigned long v =
        negative ? 0UL - static_cast<unsigned long>(value) : static_cast<unsigned long>(value);
    do {
        *--p = static_cast<char>('0' + v % 10);
        v /= 10;
    } while (v != 0);
    if (negative)
        *--p = '-';
    write_stderr(p);
}

extern "C" void cleanup_and_exit(int signal) {
    for (auto& s : tracked_sets)
        if (const int id = s.load(); id != -1)
            ::semctl(id, 0, IPC_RMID);
    for (auto& s : tracked_segments)
        if (const int id = s.load(); id != -1)
            ::shmctl(id, IPC_RMID, nullptr);
    for (auto& s : tracked_children)
        if (const int pid = s.load(); pid > 0) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, nullptr, 0);
        }
    if (signal == SIGALRM) {
        write_stderr("sysv_bench: watchdog expired during: ");
        const char* step = watchdog_step.load();
        write_stderr(step != nullptr ? step : "?");
        write_stderr("; removed this run's IPC objects\n");
    } else if (signal == SIGCHLD) {
        write_stderr("sysv_bench: removed this run's IPC objects\n");
    } else {
        write_stderr("sysv_bench: interrupted; removed this run's IPC objects\n");
    }
    ::_exit(3);
}
// A peer that dies abnormally would leave the other process waiting forever: clean up and exit
// at once. A peer that exited with 0 is left for child::join to reap (WNOWAIT); children that
// child's destructor kills are no longer tracked.
extern "C" void on_child_exit(int) {
    const int saved_errno = errno;
    for (auto& s : tracked_children) {
        const int pid = s.load();
        if (pid <= 0)
            continue;
        siginfo_t info{};
        if (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
            info.si_pid == pid && !(info.si_code == CLD_EXITED && info.si_status == 0)) {
            write_stderr("sysv_bench: peer process ");
            write_stderr_number(pid);
            if (info.si_code == CLD_EXITED) {
                write_stderr(" exited with ");
            } else {
                write_stderr(info.si_code == CLD_DUMPED ? " dumped core on signal "
                                                        : " was killed by signal ");
            }
            write_stderr_number(info.si_status);
            if (const char* step = watchdog_step.load(); step != nullptr) {
                write_stderr(" during: ");
                write_stderr(step);
            }
            write_stderr("\n");
            cleanup_and_exit(SIGCHLD);
        }
    }
    errno = saved_errno;
}
} // namespace

void install_cleanup_handlers() {
    clear_slots(tracked_sets);
    clear_slots(tracked_segments);
    clear_slots(tracked_children);
    struct sigaction action {};
    action.sa_handler = &cleanup_and_exit;
    sigfillset(&action.sa_mask);
    for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGALRM})
        ::sigaction(s, &action, nullptr);
    struct sigaction child_action {};
    child_action.sa_handler = &on_child_exit;
    child_action.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigfillset(&child_action.sa_mask);
    ::sigaction(SIGCHLD, &child_action, nullptr);
}

void track_semaphore_set(int id) noexcept {
    add_slot(tracked_sets, id);
    try {
        every_set_created.push_back(id);
    } catch (...) {
    }
}
void untrack_semaphore_set(int id) noexcept {
    remove_slot(tracked_sets, id);
}
void track_segment(int id) noexcept {
    add_slot(tracked_segments, id);
    try {
        every_segment_created.push_back(id);
    } catch (...) {
    }
}
void untrack_segment(int id) noexcept {
    remove_slot(tracked_segments, id);
}
void track_child(pid_t pid) noexcept {
    add_slot(tracked_children, pid);
}
void untrack_child(pid_t pid) noexcept {
    remove_slot(tracked_children, pid);
}

void watchdog(unsigned seconds, const char* what) noexcept {
    watchdog_step.store(what);
    ::alarm(seconds);
}

// ---------------------------------------------------------------------------------------------
// Children
// ---------------------------------------------------------------------------------------------

pid_t child::start_fork() {
    std::fflush(nullptr);
    const pid_t parent = ::getpid();
    // SIGCHLD waits until the child is tracked (a child failing at once is noticed).
    sigset_t chld, old;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    ::sigprocmask(SIG_BLOCK, &chld, &old);
    const pid_t pid = ::fork();
    if (pid == -1) {
        const int err = errno;
        ::sigprocmask(SIG_SETMASK, &old, nullptr);
        throw std::system_error(err, std::generic_category(), "fork");
    }
    if (pid == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() != parent) // the parent died before prctl
            ::_exit(97);
        clear_slots(tracked_children);
        ::sigprocmask(SIG_SETMASK, &old, nullptr);
        return 0;
    }
    track_child(pid);
    ::sigprocmask(SIG_SETMASK, &old, nullptr);
    return pid;
}

void child::finish_child(int code) noexcept {
    std::fflush(nullptr);
    ::_exit(code);
}

int child::wait_status() {
    int raw = 0;
    while (::waitpid(pid_, &raw, 0) == -1 && errno == EINTR) {
    }
    reaped_ = true;
    untrack_child(pid_);
    return raw;
}

child::~child() {
    if (pid_ > 0 && !reaped_) {
        untrack_child(pid_); // killed on purpose: not a failure for on_child_exit
        ::kill(pid_, SIGKILL);
        wait_status();
    }
}

void child::join(std::string_view what) {
    const int raw = wait_status();
    if (WIFEXITED(raw) && WEXITSTATUS(raw) == 0)
        return;
    std::ostringstream message;
    message << what << ": peer process ";
    if (WIFSIGNALED(raw))
        message << "killed by signal " << WTERMSIG(raw);
    else
        message << "exited with " << WEXITSTATUS(raw);
    throw std::runtime_error(message.str());
}

// ---------------------------------------------------------------------------------------------
// Process measurements
// ---------------------------------------------------------------------------------------------

std::size_t resident_bytes() {
    // statm: size resident shared ...; resident - shared = anonymous pages (heap, stacks): code
    // pages faulted in by a first call are file-backed and not counted.
    std::ifstream statm("/proc/self/statm");
    std::size_t size = 0, resident = 0, shared = 0;
    statm >> size >> resident >> shared;
    return (resident - std::min(resident, shared)) *
           static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

std::size_t heap_in_use() {
    return ::mallinfo2().uordblks;
}

double process_cpu_seconds() {
    rusage usage{};
    ::getrusage(RUSAGE_SELF, &usage);
    auto seconds = [](const timeval& tv) {
        return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) * 1e-6;
    };
    return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

} // namespace bench

// ---------------------------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------------------------

namespace {

std::string first_line_of(const char* path, std::string_view prefix) {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line))
        if (line.rfind(prefix, 0) == 0) {
            const auto colon = line.find(':');
            return colon == std::string::npos ? line : line.substr(colon + 2);
        }
    return "?";
}

bench::backoff_spec parse_backoff(const std::string& text) {
    bench::backoff_spec b;
    std::vector<std::string> parts;
    std::stringstream in(text);
    for (std::string part; std::getline(in, part, ',');)
        parts.push_back(part);
    const std::string wanted = "wants Y,F,G,M[,J] (numbers), got " + text;
    if (parts.size() < 4 || parts.size() > 5)
        throw std::invalid_argument(wanted);
    try {
        std::size_t used = 0;
        auto whole = [&](const std::string& part) {
            const long value = std::stol(part, &used);
            if (used != part.size() || value < 0)
                throw std::invalid_argument(part);
            return value;
        };
        auto real = [&](const std::string& part) {
            const double value = std::stod(part, &used);
            if (used != part.size() || value < 0)
                throw std::invalid_argument(part);
            return value;
        };
        b.immediate_yields = static_cast<unsigned>(whole(parts[0]));
        b.first_sleep_us = whole(parts[1]);
        b.growth = real(parts[2]);
        b.max_sleep_us = whole(parts[3]);
        if (parts.size() == 5)
            b.jitter = real(parts[4]);
    } catch (const std::logic_error&) { // invalid_argument, out_of_range
        throw std::invalid_argument(wanted);
    }
    return b;
}

std::filesystem::path default_csv() {
    std::error_code ec;
    const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (ec)
        return "build/release/bench.csv";
    // <build dir>/benchmarks/sysv_bench -> <build dir>/bench.csv
    return exe.parent_path().parent_path() / "bench.csv";
}

/// CPU use of the whole machine from /proc/stat, in seconds: busy (user, nice, system, irq,
/// softirq) and stolen by the hypervisor.
struct machine_cpu {
    double busy = 0, steal = 0;
};
machine_cpu read_machine_cpu() {
    std::ifstream stat("/proc/stat");
    std::string cpu;
    double user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
    stat >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;
    const auto hz = static_cast<double>(::sysconf(_SC_CLK_TCK));
    return {(user + nice + system + irq + softirq) / hz, steal / hz};
}
/// CPU time of this process and of its reaped children, in seconds.
double own_cpu_seconds() {
    double total = 0;
    for (int who : {RUSAGE_SELF, RUSAGE_CHILDREN}) {
        rusage usage{};
        ::getrusage(who, &usage);
        total += static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
                 static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) * 1e-6;
    }
    return total;
}

int leftover_objects() {
    int left = 0;
    for (int id : bench::every_set_created) {
        semid_ds ds{};
        if (::semctl(id, 0, IPC_STAT, &ds) != -1) { // the 4th argument is union semun's buf
            std::fprintf(stderr, "sysv_bench: semaphore set %d was not removed\n", id);
            ++left;
        }
    }
    for (int id : bench::every_segment_created) {
        shmid_ds ds{};
        if (::shmctl(id, IPC_STAT, &ds) != -1) {
            std::fprintf(stderr, "sysv_bench: segment %d was not removed\n", id);
            ++left;
        }
    }
    return left;
}

} // namespace

int main(int argc, char** argv) {
    // The readers of the throughput rows allocate a buffer per message (a channel_message, a
    // std::vector per frame or queue message) and free it soon after. With glibc's defaults a
    // run of 64 KiB buffers makes the heap top shrink (trim) and grow back with fresh page
    // faults, and the mmap threshold moves as it goes: the 64 KiB rows then measured malloc,
    // at a third of their rate, in runs that differed 5x. Fixed thresholds keep the heap's
    // pages; every row gets the same allocator.
    ::mallopt(M_MMAP_THRESHOLD, 32 << 20);
    ::mallopt(M_TRIM_THRESHOLD, 256 << 20);
    bench::options opt;
    std::vector<std::string> sections;
    bool list = false;
    std::string csv_path, backoff_text;
    CLI::App app{"asio-sysv benchmarks: one section per question; markdown tables on standard "
                 "output, every number in a CSV file.",
                 "sysv_bench"};
    cli::describe(app);
    app.add_flag("--quick", opt.quick, "Fewer iterations (a smoke run of every row)");
    app.add_option("--section", sections, "Run this section (repeatable); --list shows them")
        ->type_name("NAME");
    app.add_option("--row", opt.row_filter,
                   "Run only this row (repeatable; ID* selects every row id starting with ID; the "
                   "row ids are the CSV's \"row\" column)")
        ->type_name("ID");
    app.add_option("--csv", csv_path,
                   "CSV output (default: <build dir>/bench.csv, i.e. build/release/bench.csv)")
        ->type_name("PATH");
    app.add_option("--runs", opt.runs, "Runs per row (sections interleave the rows of each run)")
        ->type_name("N")
        ->check(CLI::PositiveNumber.description(""));
    app.add_option("--rounds", opt.rounds,
                   "Iterations per run (round trips, samples, lock operations)")
        ->type_name("N")
        ->check(CLI::PositiveNumber.description(""));
    app.add_option("--seconds", opt.seconds,
                   "Measuring time of time-based rows (idle cost, contended mutex)")
        ->type_name("S")
        ->check(CLI::PositiveNumber.description(""));
    app.add_option("--backoff", backoff_text,
                   "Also measure rows \"custom\" with sysv::backoff{Y yields, first_sleep F us, "
                   "growth G, max_sleep M us, jitter J}")
        ->type_name("Y,F,G,M[,J]")
        ->check(CLI::Validator(
            [](std::string& text) {
                try {
                    parse_backoff(text);
                    return std::string();
                } catch (const std::exception& e) {
                    return std::string(e.what());
                }
            },
            ""));
    app.add_option("--placement", opt.placement,
                   "Ping-pong: only the table with the processes placed by the scheduler (any), "
                   "pinned to two CPUs (two) or both pinned to one CPU (one)")
        ->type_name("P")
        ->check(CLI::IsMember({"any", "two", "one"}).description(""));
    app.add_flag("--list", list, "List the sections");
    app.footer("Exit status: 0 when every section ran and nothing was left behind, 1 otherwise, "
               "2 for a usage error, 3 when interrupted.");
    if (auto status = cli::parse(app, argc, argv))
        return *status;
    opt.csv = csv_path;
    if (!backoff_text.empty())
        opt.custom_backoff = parse_backoff(backoff_text);

    auto& all = bench::registry();
    std::sort(all.begin(), all.end(),
              [](const bench::section& a, const bench::section& b) { return a.order < b.order; });
    if (list) {
        for (const auto& s : all)
            std::printf("%-10s %s\n", s.name.c_str(), s.title.c_str());
        return 0;
    }
    for (const auto& name : sections)
        if (std::none_of(all.begin(), all.end(),
                         [&](const bench::section& s) { return s.name == name; })) {
            std::fprintf(stderr, "sysv_bench: no section %s (--list shows them)\n", name.c_str());
            return 2;
        }

    bench::install_cleanup_handlers();
    if (opt.csv.empty())
        opt.csv = default_csv();
    if (opt.csv.has_parent_path()) {
        std::error_code ec;
        std::filesystem::create_directories(opt.csv.parent_path(), ec);
    }
    std::FILE* csv = std::fopen(opt.csv.c_str(), "w");
    if (csv == nullptr) {
        std::fprintf(stderr, "sysv_bench: cannot write %s: %s\n", opt.csv.c_str(),
                     std::strerror(errno));
        return 2;
    }
    std::fprintf(csv, "section,run,row,metric,value,unit\n");

    utsname host{};
    ::uname(&host);
    const std::time_t started = std::time(nullptr);
    char date[64];
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&started));
    std::printf("## asio-sysv benchmarks\n\n");
    std::printf("%s; %ld CPUs (nproc), %s; kernel %s %s; %s build; %s\n", date,
                ::sysconf(_SC_NPROCESSORS_ONLN),
                first_line_of("/proc/cpuinfo", "model name").c_str(), host.sysname, host.release,
#ifdef NDEBUG
                "optimised",
#else
                "DEBUG (use the release preset for numbers)",
#endif
                opt.quick ? "--quick (smoke run: too few samples for conclusions)" : "full run");
    if (opt.custom_backoff)
        std::printf("custom backoff: %s\n", opt.custom_backoff->text().c_str());
    std::fflush(stdout);

    bench::context ctx(opt, csv);
    int failures = 0;
    for (const auto& s : all) {
        if (!sections.empty() &&
            std::find(sections.begin(), sections.end(), s.name) == sections.end())
            continue;
        ctx.set_section(s.name);
        std::printf("\n## %s\n", s.title.c_str());
        std::fflush(stdout);
        const auto begin = std::chrono::steady_clock::now();
        const auto machine_before = read_machine_cpu();
        const double own_before = own_cpu_seconds();
        try {
            s.run(ctx);
        } catch (const std::exception& e) {
            ++failures;
            std::printf("\n**section %s failed: %s**\n", s.name.c_str(), e.what());
            std::fprintf(stderr, "sysv_bench: section %s failed: %s\n", s.name.c_str(), e.what());
        }
        bench::watchdog(0, nullptr);
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
        ctx.progress("done in " + bench::fmt(seconds, 1) + " s");
        // Noise check: CPU used meanwhile by other processes of the machine, and steal time.
        const auto machine_after = read_machine_cpu();
        const double others =
            (machine_after.busy - machine_before.busy) - (own_cpu_seconds() - own_before);
        const double steal = machine_after.steal - machine_before.steal;
        std::printf("\n_Section time %.0f s; meanwhile other processes used %.0f%% of one core "
                    "on average, hypervisor steal %.0f%%._\n",
                    seconds, 100.0 * std::max(0.0, others) / seconds, 100.0 * steal / seconds);
        ctx.record("machine", "other_processes_cpu", 100.0 * std::max(0.0, others) / seconds,
                   "% of one core");
        ctx.record("machine", "steal", 100.0 * steal / seconds, "% of one core");
        std::fflush(stdout);
    }

    if (!ctx.targets().empty()) {
        bench::table t({"section", "target", "measured", "verdict"});
        for (const auto& c : ctx.targets())
            t.add({c.section, c.target, c.measured, c.met ? "met" : "**missed**"});
        ctx.set_section("targets");
        ctx.print("Project targets", t);
    }
    std::fclose(csv);
    const int left = leftover_objects();
    std::printf("\nCSV: %s\nIPC objects created by this run and still present: %d\n",
                opt.csv.c_str(), left);
    return failures == 0 && left == 0 ? 0 : 1;
}
