// Where chat rooms live: shared by `chat` and the `chat_demo` driver.
#pragma once

#include "common/private_dir.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>

namespace chat {

/// Room names become file names: 1..64 letters, digits, '-' or '_'.
inline bool valid_room_name(std::string_view room) {
    if (room.empty() || room.size() > 64)
        return false;
    for (char c : room)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_'))
            return false;
    return true;
}

/// The private directory holding room files: $XDG_RUNTIME_DIR/asio-sysv-chat, or
/// /tmp/asio-sysv-chat-<uid> (see examples::private_directory).
inline std::filesystem::path room_directory() {
    return examples::private_directory("asio-sysv-chat");
}

/// The file whose inode keys the room (ftok); created if missing. Room files are never
/// deleted by chat: a new inode would mean a new key while others still use the old one.
inline std::filesystem::path room_file(const std::string& room) {
    const auto file = room_directory() / room;
    const int fd = ::open(file.c_str(), O_CREAT | O_RDONLY | O_NOFOLLOW, 0600);
    if (fd == -1)
        throw std::runtime_error("cannot create room file " + file.string() + ": " +
                                 std::strerror(errno));
    ::close(fd);
    return file;
}

/// ftok project id of room files.
inline constexpr int project_id = 'c';

} // namespace chat
