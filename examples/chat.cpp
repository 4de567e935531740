// chat: talk with other processes on this machine through a sysv::channel.
//
//   chat [--room NAME] [--name NICK]
//
// Rooms are channels keyed with ftok on a file in a private directory ($XDG_RUNTIME_DIR, or a
// per-user 0700 directory under /tmp). One io_context reads stdin asynchronously and awaits
// incoming messages at the same time. Lines are shown as "[HH:MM:SS] name: text"; joins and
// leaves are announced ("bob left", "carol left (lost)" for a participant that crashed).
// Commands: /who, /quit (or end of input). The last participant to leave removes the room's
// System V objects; a room left behind by crashed participants is recycled by the next one.
#include <boost/asio.hpp>
#include <boost/asio/experimental/channel.hpp>

#include "chat_room.hpp"

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

import sysv;

namespace asio = boost::asio;
using boost::system::error_code;

namespace {

// ---- wire format: one byte of kind, the sender's name, a 0 byte, the text ----
enum class kind : char { joined = 'J', left = 'L', lost = 'X', text = 'M' };

std::string encode(kind k, std::string_view name, std::string_view text) {
    std::string out;
    out.reserve(2 + name.size() + text.size());
    out.push_back(static_cast<char>(k));
    out.append(name).push_back('\0');
    out.append(text);
    return out;
}

struct decoded {
    kind what;
    std::string name;
    std::string text;
};

/// Messages come from other processes: anything malformed is rejected, not trusted.
std::optional<decoded> decode(std::string_view bytes) {
    if (bytes.size() < 2)
        return std::nullopt;
    const char k = bytes[0];
    if (k != 'J' && k != 'L' && k != 'X' && k != 'M')
        return std::nullopt;
    const auto zero = bytes.find('\0', 1);
    if (zero == std::string_view::npos)
        return std::nullopt;
    return decoded{static_cast<kind>(k), std::string(bytes.substr(1, zero - 1)),
                   std::string(bytes.substr(zero + 1))};
}

/// Text from peers reaches the terminal only as printable characters: control characters
/// (including ESC, so no escape sequences), DEL, C1 controls and invalid UTF-8 become '?'.
std::string sanitise(std::string_view in) {
    std::string out;
    out.reserve(in.size());
    for (std::size_t i = 0; i < in.size();) {
        const auto c = static_cast<unsigned char>(in[i]);
        if (c < 0x80) {
            out.push_back(c < 0x20 || c == 0x7f ? '?' : static_cast<char>(c));
            ++i;
            continue;
        }
        std::size_t len = c >= 0xf0 && c <= 0xf4  ? 4
                          : c >= 0xe0             ? 3
                          : c >= 0xc2 && c < 0xe0 ? 2
                                                  : 0;
        bool valid = len != 0 && i + len <= in.size();
        for (std::size_t j = 1; valid && j < len; ++j)
            valid = (static_cast<unsigned char>(in[i + j]) & 0xc0) == 0x80;
        // U+0080..U+009F (C1 controls) are encoded as C2 80..C2 9F.
        if (valid && c == 0xc2 && static_cast<unsigned char>(in[i + 1]) < 0xa0)
            valid = false;
        if (!valid) {
            out.push_back('?');
            ++i;
            continue;
        }
        out.append(in.substr(i, len));
        i += len;
    }
    return out;
}

std::string timestamp() {
    const std::time_t now = std::time(nullptr);
    std::tm local{};
    ::localtime_r(&now, &local);
    char buffer[16];
    std::strftime(buffer, sizeof buffer, "%H:%M:%S", &local);
    return buffer;
}

void show(const std::string& line) {
    std::printf("[%s] %s\n", timestamp().c_str(), line.c_str());
    std::fflush(stdout);
}

sysv::key room_key(const std::string& room) {
    return sysv::key::from_path(chat::room_file(room), chat::project_id);
}

std::string default_name() {
    if (const passwd* pw = ::getpwuid(::geteuid()); pw && pw->pw_name)
        return pw->pw_name;
    if (const char* user = std::getenv("USER"))
        return user;
    return "user" + std::to_string(::geteuid());
}

class chat_session {
public:
    chat_session(asio::io_context& io, std::string room, std::string name)
        : io_(io), room_(std::move(room)), name_(std::move(name)), input_(io),
          signals_(io, SIGINT, SIGTERM), interactive_(::isatty(STDIN_FILENO) != 0) {}

    asio::awaitable<int> run() {
        co_await join();
        show("joined room " + room_ + " as " + name_ + " (/who lists participants, /quit leaves)");
        co_await send(kind::joined, "");
        signals_.async_wait([this](error_code ec, int) {
            if (!ec)
                stop();
        });
        asio::co_spawn(io_, receive_loop(), asio::detached);
        asio::co_spawn(io_, reap_loop(), asio::detached);
        co_await read_input();
        if (!leaving_)
            co_await leave();
        co_return exit_code_;
    }

private:
    /// Open or create the room and join it; if the last participant removed it meanwhile, the
    /// objects are gone: create them again.
    asio::awaitable<void> join() {
        for (int attempt = 0;; ++attempt) {
            channel_.emplace(sysv::channel::open_or_create(io_.get_executor(), room_key(room_)));
            auto [ec] = co_await channel_->async_join(name_, asio::as_tuple(asio::use_awaitable));
            if (!ec)
                co_return;
            if (ec != sysv::errc::removed || attempt == 10)
                throw sysv::system_error(ec, "joining room " + room_);
        }
    }

    asio::awaitable<void> send(kind k, std::string_view text) {
        const auto bytes = encode(k, name_, text);
        co_await channel_->async_send(asio::buffer(bytes), asio::use_awaitable);
    }

    asio::awaitable<void> receive_loop() {
        while (!leaving_) {
            auto [ec, m] = co_await channel_->async_receive(asio::as_tuple(asio::use_awaitable));
            if (leaving_)
                break;
            if (ec == sysv::errc::messages_missed) {
                show("(" + std::to_string(m.missed) +
                     " messages missed: this process fell behind)");
                continue;
            }
            if (ec) {
                show("error: " + ec.message() + "; leaving");
                stop();
                break;
            }
            const auto message = decode(m.text());
            if (!message) {
                show("(a malformed message from pid " + std::to_string(m.sender_pid) +
                     " was ignored)");
                continue;
            }
            const bool mine = m.sender_pid == static_cast<std::uint32_t>(::getpid());
            const auto who = sanitise(message->name);
            switch (message->what) {
            case kind::joined:
                if (!mine)
                    show(who + " joined");
                break;
            case kind::left:
                if (!mine)
                    show(who + " left");
                break;
            case kind::lost:
                show(sanitise(message->text) + " left (lost)");
                break;
            case kind::text:
                if (!mine || !interactive_) // a terminal already shows what was typed
                    show(who + ": " + sanitise(message->text));
                break;
            }
        }
    }

    /// Participants that died without leaving are announced once, by whoever notices first.
    asio::awaitable<void> reap_loop() {
        asio::steady_timer timer(io_);
        while (!leaving_) {
            timer.expires_after(std::chrono::milliseconds(300));
            auto [wait_error] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
            if (wait_error || leaving_)
                break;
            auto [ec, lost] =
                co_await channel_->async_reap_lost(asio::as_tuple(asio::use_awaitable));
            if (ec)
                continue;
            for (const auto& member : lost)
                co_await send(kind::lost, member.label);
        }
    }

    asio::awaitable<void> read_input() {
        std::string buffer;
        const std::size_t limit = channel_->shape().max_message_size - 2 - name_.size();
        auto handle_line = [&](std::string line) -> asio::awaitable<bool> {
            if (!line.empty() && line.back() == '\r')
                line.pop_back();
            if (line == "/quit")
                co_return false;
            if (line == "/who") {
                auto members = co_await channel_->async_members(asio::use_awaitable);
                std::string names;
                for (const auto& m : members)
                    names += (names.empty() ? "" : ", ") + sanitise(m.label);
                show("in " + room_ + ": " + names);
            } else if (!line.empty() && line[0] == '/') {
                show("error: unknown command " + sanitise(line) + " (try /who or /quit)");
            } else if (line.size() > limit) {
                show("error: line too long (" + std::to_string(line.size()) +
                     " bytes; the limit is " + std::to_string(limit) + "); not sent");
            } else if (!line.empty()) {
                co_await send(kind::text, line);
            }
            co_return true;
        };
        error_code assign_error;
        input_.assign(::dup(STDIN_FILENO), assign_error);
        if (!assign_error) {
            for (;;) {
                auto [ec, n] =
                    co_await asio::async_read_until(input_, asio::dynamic_buffer(buffer), '\n',
                                                    asio::as_tuple(asio::use_awaitable));
                if (leaving_)
                    co_return;
                if (ec) { // end of input: a last line without newline still counts
                    if (!buffer.empty())
                        co_await handle_line(std::exchange(buffer, {}));
                    co_return;
                }
                std::string line = buffer.substr(0, n - 1);
                buffer.erase(0, n);
                if (!co_await handle_line(std::move(line)))
                    co_return;
            }
        }
        // stdin is a regular file (epoll cannot watch those): read it on a helper thread.
        auto lines =
            std::make_shared<asio::experimental::channel<void(error_code, std::string)>>(io_, 64);
        std::thread([lines] {
            std::string line;
            while (std::getline(std::cin, line))
                lines->async_send(error_code{}, line, asio::use_future).wait();
            lines->async_send(asio::error::eof, std::string{}, asio::use_future).wait();
        }).detach();
        for (;;) {
            auto [ec, line] = co_await lines->async_receive(asio::as_tuple(asio::use_awaitable));
            if (ec || leaving_ || !co_await handle_line(std::move(line)))
                co_return;
        }
    }

    asio::awaitable<void> leave() {
        leaving_ = true;
        co_await send(kind::left, "");
        auto [ec, removed] = co_await channel_->async_leave(asio::as_tuple(asio::use_awaitable));
        if (ec)
            show("error while leaving: " + ec.message());
        if (removed)
            show("last one out: room " + room_ + " removed");
        channel_->close(); // ends the receive and reap loops' operations
        error_code ignored;
        input_.close(ignored);
        signals_.cancel();
    }

    void stop() {
        if (leaving_)
            return;
        asio::co_spawn(io_, leave(), asio::detached);
    }

    asio::io_context& io_;
    std::string room_, name_;
    std::optional<sysv::channel> channel_;
    asio::posix::stream_descriptor input_;
    asio::signal_set signals_;
    bool interactive_;
    bool leaving_ = false;
    int exit_code_ = 0;
};

} // namespace

int main(int argc, char** argv) {
    std::string room = "lobby", name = default_name();
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if ((arg == "--room" || arg == "--name") && i + 1 < argc)
            (arg == "--room" ? room : name) = argv[++i];
        else if (arg == "-h" || arg == "--help") {
            std::printf("usage: chat [--room NAME] [--name NICK]\n");
            return 0;
        } else {
            std::fprintf(stderr,
                         "chat: unknown argument '%s'\nusage: chat [--room NAME] [--name NICK]\n",
                         argv[i]);
            return 2;
        }
    }
    if (!chat::valid_room_name(room)) {
        std::fprintf(stderr, "chat: room names are 1..64 letters, digits, '-' or '_'\n");
        return 2;
    }
    if (name.empty() || name.size() > sysv::ring::label_capacity - 1) {
        std::fprintf(stderr, "chat: names are 1..%zu bytes\n", sysv::ring::label_capacity - 1);
        return 2;
    }
    try {
        asio::io_context io;
        chat_session session(io, room, name);
        int result = 1;
        asio::co_spawn(io, session.run(), [&](std::exception_ptr e, int r) {
            if (e)
                std::rethrow_exception(e);
            result = r;
        });
        io.run();
        return result;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "chat: %s\n", e.what());
        return 1;
    }
}
