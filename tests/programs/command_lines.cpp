// Every program's command line as a user meets it: --help explains the options, --version
// prints the project version, and a wrong command line is refused with a message on standard
// error and exit status 2, before the program does anything.
#include <boost/test/unit_test.hpp>

#include "sysv_version.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::filesystem::path binary_dir() {
    if (const char* dir = std::getenv("SYSV_TEST_BINARY_DIR"))
        return dir;
    return std::filesystem::canonical("/proc/self/exe").parent_path().parent_path();
}

struct program_run {
    int status = -1;
    std::string out, err;
};

/// Runs `program` (a path under the build directory) with `arguments` (shell words).
program_run run_program(const std::string& program, const std::string& arguments) {
    char directory[] = "/tmp/sysv-cli-test-XXXXXX";
    BOOST_REQUIRE(::mkdtemp(directory) != nullptr);
    const std::filesystem::path dir = directory;
    const std::string command = (binary_dir() / program).string() + " " + arguments + " > " +
                                (dir / "out").string() + " 2> " + (dir / "err").string() +
                                " < /dev/null";
    program_run result;
    const int raw = std::system(command.c_str());
    result.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
    auto slurp = [](const std::filesystem::path& path) {
        std::ifstream in(path);
        std::stringstream text;
        text << in.rdbuf();
        return text.str();
    };
    result.out = slurp(dir / "out");
    result.err = slurp(dir / "err");
    std::filesystem::remove_all(dir);
    return result;
}

struct program_case {
    std::string path;                   ///< under the build directory
    std::vector<std::string> options;   ///< each must be explained by --help
    std::string missing_value;          ///< an option given without its value
    std::vector<std::string> malformed; ///< command lines with a bad value
};

const std::vector<program_case>& programs() {
    static const std::vector<program_case> all{
        {"examples/chat",
         {"--room", "--name", "--no-color"},
         "--room",
         {"--room 'a b'", "--room ''", "--name ''", "--name " + std::string(48, 'n'), "stray"}},
        {"examples/chat_demo", {"--chat"}, "--chat", {"--chat /nonexistent/chat", "stray"}},
        {"examples/ping_pong",
         {"--rounds"},
         "--rounds",
         {"--rounds abc", "--rounds 0", "--rounds 5x", "stray"}},
        {"benchmarks/sysv_bench",
         {"--quick", "--section", "--row", "--csv", "--runs", "--rounds", "--seconds", "--backoff",
          "--placement", "--list"},
         "--runs",
         {"--runs x", "--runs -1", "--seconds 0", "--backoff 1,2,3", "--backoff 1,2,x,4",
          "--placement three", "stray"}},
    };
    return all;
}

std::string name_of(const program_case& p) {
    return std::filesystem::path(p.path).filename().string();
}

} // namespace

BOOST_AUTO_TEST_SUITE(command_lines)

BOOST_AUTO_TEST_CASE(help_explains_every_option_and_exits_0) {
    for (const auto& p : programs()) {
        BOOST_TEST_CONTEXT(p.path) {
            for (const char* help : {"--help", "-h"}) {
                const auto r = run_program(p.path, help);
                BOOST_TEST(r.status == 0);
                BOOST_TEST(r.err.empty(), r.err);
                BOOST_TEST(r.out.find("Usage: " + name_of(p)) != std::string::npos, r.out);
                for (const auto& option : p.options)
                    BOOST_TEST(r.out.find(option + " ") != std::string::npos, option << " not in:\n"
                                                                                     << r.out);
                BOOST_TEST(r.out.find("--version") != std::string::npos);
                BOOST_TEST(r.out.find("Exit status") != std::string::npos);
            }
        }
    }
}

BOOST_AUTO_TEST_CASE(version_prints_the_project_version_and_exits_0) {
    for (const auto& p : programs()) {
        BOOST_TEST_CONTEXT(p.path) {
            const auto r = run_program(p.path, "--version");
            BOOST_TEST(r.status == 0);
            BOOST_TEST(r.out == name_of(p) + " (asio-sysv) " + sysv_project::version + "\n");
            BOOST_TEST(r.err.empty(), r.err);
        }
    }
}

BOOST_AUTO_TEST_CASE(an_unknown_option_is_a_usage_error) {
    for (const auto& p : programs()) {
        BOOST_TEST_CONTEXT(p.path) {
            const auto r = run_program(p.path, "--no-such-option");
            BOOST_TEST(r.status == 2);
            BOOST_TEST(r.out.empty(), r.out); // refused before doing anything
            BOOST_TEST(r.err.rfind(name_of(p) + ": ", 0) == 0u, r.err);
            BOOST_TEST(r.err.find("--no-such-option") != std::string::npos, r.err);
            BOOST_TEST(r.err.find("--help") != std::string::npos, r.err);
        }
    }
}

BOOST_AUTO_TEST_CASE(a_missing_value_is_a_usage_error) {
    for (const auto& p : programs()) {
        BOOST_TEST_CONTEXT(p.path << " " << p.missing_value) {
            const auto r = run_program(p.path, p.missing_value);
            BOOST_TEST(r.status == 2);
            BOOST_TEST(r.out.empty(), r.out);
            BOOST_TEST(r.err.rfind(name_of(p) + ": " + p.missing_value, 0) == 0u, r.err);
        }
    }
}

BOOST_AUTO_TEST_CASE(a_malformed_value_is_a_usage_error) {
    for (const auto& p : programs()) {
        for (const auto& arguments : p.malformed) {
            BOOST_TEST_CONTEXT(p.path << " " << arguments) {
                const auto r = run_program(p.path, arguments);
                BOOST_TEST(r.status == 2);
                BOOST_TEST(r.out.empty(), r.out);
                BOOST_TEST(r.err.rfind(name_of(p) + ": ", 0) == 0u, r.err);
                BOOST_TEST(std::count(r.err.begin(), r.err.end(), '\n') == 2, r.err);
            }
        }
    }
}

BOOST_AUTO_TEST_SUITE_END()
