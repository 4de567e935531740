// A directory of this user's own, for the files whose inodes key the programs' IPC objects
// (ftok): shared by chat (rooms) and shared_stats_server (its default key file).
#pragma once

#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>

namespace examples {

/// $XDG_RUNTIME_DIR/<name>, or <temp>/<name>-<uid> when XDG_RUNTIME_DIR is unset, not
/// absolute (the XDG spec says to ignore a relative value: it would depend on the current
/// directory) or not writable; created 0700, and refused if it is not a directory owned by
/// this user and closed to others (anyone who could modify it could swap a file, and so a
/// key).
inline std::filesystem::path private_directory(std::string_view name) {
    std::filesystem::path dir;
    if (const char* xdg = std::getenv("XDG_RUNTIME_DIR");
        xdg != nullptr && xdg[0] == '/' && ::access(xdg, W_OK) == 0)
        dir = std::filesystem::path(xdg) / name;
    else
        dir = std::filesystem::temp_directory_path() /
              (std::string(name) + "-" + std::to_string(::geteuid()));
    if (::mkdir(dir.c_str(), 0700) == -1 && errno != EEXIST)
        throw std::runtime_error("cannot create " + dir.string() + ": " + std::strerror(errno));
    struct stat st {};
    if (::lstat(dir.c_str(), &st) == -1 || !S_ISDIR(st.st_mode) || st.st_uid != ::geteuid() ||
        (st.st_mode & 077) != 0)
        throw std::runtime_error(dir.string() +
                                 " is not a private directory of this user (expected owner uid " +
                                 std::to_string(::geteuid()) + " and mode 0700)");
    return dir;
}

} // namespace examples
