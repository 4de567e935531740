// The command line of every program of the project (chat, chat_demo, ping_pong, sysv_bench):
// CLI11, with --help, --version and the same exit statuses.
#pragma once

#include <CLI/CLI.hpp>

#include "sysv_version.hpp"

#include <optional>
#include <string>

namespace cli {

/// Exit status of a usage error (unknown option, missing or malformed value), as for most
/// command line tools; 0 after --help and --version.
inline constexpr int usage_error = 2;

/// Adds --version (the project version from CMake) and makes errors name the program.
inline void describe(CLI::App& app) {
    app.set_version_flag("--version", app.get_name() + " (asio-sysv) " + sysv_project::version,
                         "Print the version and exit");
    app.failure_message([](const CLI::App* failed, const CLI::Error& e) {
        return failed->get_name() + ": " + e.what() + "\nRun with --help for more information.\n";
    });
}

/// Parses the command line. Returns the status to exit with (0 after --help or --version,
/// usage_error after printing what was wrong), or nothing when the program should go on.
inline std::optional<int> parse(CLI::App& app, int argc, char** argv) {
    try {
        app.parse(argc, argv);
        return std::nullopt;
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? 0 : usage_error;
    }
}

} // namespace cli
