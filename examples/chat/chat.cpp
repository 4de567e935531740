// chat: talk with other processes on this machine through a sysv::channel.
//
//   chat [--room NAME] [--name NICK] [--no-color]        (chat --help)
//
// Rooms are channels keyed with ftok on a file in a private directory ($XDG_RUNTIME_DIR, or a
// per-user 0700 directory under /tmp). One io_context reads the input, awaits incoming
// messages, looks for crashed participants and waits for signals, all at once. Lines are shown
// as "[HH:MM:SS] name: text", your own included; joins and leaves are announced ("bob left",
// "carol left (lost)" for a participant that crashed). Commands: /who, /wake, /help, /quit.
//
// On a terminal (standard input and output both terminals) the input is a libedit line at the
// bottom (see chat_terminal.hpp): messages appear above it, with editing and history, and
// names in colours unless --no-color or NO_COLOR. Otherwise lines are read from the pipe or
// file as they come and printed plainly, which is how chat_demo and the tests script it.
//
// Ending: /quit, end of input (Ctrl-D), SIGINT (Ctrl-C), SIGTERM and SIGHUP (the terminal was
// closed) all leave the room properly and exit 0; the last one out removes the room's System V
// objects, and a room left behind by crashed participants is recycled by the next one. Any
// error ends the program with one message on standard error and exit status 1, after giving
// back what it holds (it leaves the room if it can; a room whose objects were removed under it
// is removed completely). Usage errors exit 2.
#include <boost/asio.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/experimental/channel.hpp>

#include "chat_room.hpp"
#include "chat_terminal.hpp"
#include "chat_text.hpp"
#include "common/cli.hpp"

#include <fcntl.h>
#include <pwd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <clocale>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <exception>
#include <langinfo.h>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

import sysv;

namespace asio = boost::asio;
using boost::system::error_code;
using namespace asio::experimental::awaitable_operators;
using namespace std::chrono_literals;

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

std::string timestamp() {
    const std::time_t now = std::time(nullptr);
    std::tm local{};
    ::localtime_r(&now, &local);
    char buffer[16];
    std::strftime(buffer, sizeof buffer, "%H:%M:%S", &local);
    return buffer;
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

/// Bytes waiting on a terminal (-1 when it cannot tell, e.g. after a hang-up).
int bytes_available(int fd) {
    int count = 0;
    return ::ioctl(fd, FIONREAD, &count) == 0 ? count : -1;
}

/// How long leaving may take before the program gives up (a critical section of the channel
/// lasts microseconds; longer means another participant is stopped while holding the lock).
constexpr auto leave_timeout = 3s;

struct settings {
    std::string room;
    std::string name;
    bool colour = false;      ///< names in colour
    bool interactive = false; ///< standard input and output are terminals: the line editor
};

/// Why the session ended.
struct ending {
    enum class reason { quit, end_of_input, signal, error } why = reason::quit;
    error_code error{};  ///< reason::error
    std::string doing{}; ///< reason::error: what failed ("receiving messages", ...)

    static ending failed(error_code ec, std::string doing) {
        return {reason::error, ec, std::move(doing)};
    }
};

class chat_session {
public:
    chat_session(asio::io_context& io, settings s)
        : io_(io), settings_(std::move(s)), own_name_(chat::sanitise(settings_.name)), input_(io),
          signals_(io, SIGINT, SIGTERM, SIGHUP), send_lock_(io, 1) {}

    /// The whole session; returns the exit status. Never throws: every failure becomes one
    /// message on standard error and status 1.
    ///
    /// The room's lock is watched and signals are handled from the start: joining and
    /// announcing take the lock too, and a participant stopped while holding it must not leave
    /// a newcomer waiting in silence, deaf to Ctrl-C.
    asio::awaitable<int> run() {
        if (!open())
            co_return 1;
        ending end;
        try {
            auto first = co_await (guarded(take_part(), "joining") ||
                                   guarded(watch_lock(), "watching the room's lock") ||
                                   guarded(wait_for_signals(), "waiting for signals"));
            end = std::visit([](ending& e) { return std::move(e); }, first);
        } catch (const std::exception& e) {
            end = ending::failed(error_code{}, std::string("joining: ") + e.what());
        }
        co_return co_await finish(std::move(end));
    }

private:
    // ---- output ----

    /// One line of the conversation, "[HH:MM:SS] line". `line` is already sanitised.
    void show(std::string_view line) {
        const std::string stamped = "[" + timestamp() + "] " + std::string(line);
        if (editor_ && editor_->active()) {
            editor_->print_above(stamped);
        } else {
            std::fwrite(stamped.data(), 1, stamped.size(), stdout);
            std::fputc('\n', stdout);
            std::fflush(stdout);
        }
    }

    /// A sanitised name as shown: in its colour when colours are on.
    std::string paint(const std::string& name) const {
        return settings_.colour ? chat::coloured(name, chat::name_colour(name)) : name;
    }

    /// The one message of a failed session, on standard error.
    void report(const std::string& message) {
        std::fflush(stdout);
        std::fprintf(stderr, "chat: %s\n", message.c_str());
        std::fflush(stderr);
    }

    std::string describe(const ending& end) const {
        const std::string room = "room " + settings_.room;
        if (end.error == sysv::errc::removed)
            return room + " was removed while in use (by ipcrm or another program); left it";
        if (end.error == sysv::errc::corrupt_segment || end.error == sysv::errc::foreign_object)
            return room + " is corrupt: another program changed its shared memory (" +
                   end.error.message() + "); left it";
        if (!end.error)
            return end.doing;
        return end.doing + " in " + room + " failed: " + end.error.message();
    }

    // ---- joining ----

    /// Opens or creates the room. False (after the message) when it cannot.
    bool open() {
        if (auto failure = open_room()) {
            report(*failure);
            return false;
        }
        return true;
    }
    /// Opens or creates the room (again, after it was removed): the message when it cannot.
    std::optional<std::string> open_room() {
        try {
            channel_.emplace(
                sysv::channel::open_or_create(io_.get_executor(), room_key(settings_.room)));
            return std::nullopt;
        } catch (const std::exception& e) {
            return "cannot open room " + settings_.room + ": " + e.what();
        }
    }

    /// Joins the room, announces it, then reads, receives and looks for lost participants
    /// until one of them ends the session.
    asio::awaitable<ending> take_part() {
        if (auto failed = co_await join())
            co_return std::move(*failed);
        co_await introduce();
        if (auto ec = co_await send(kind::joined, ""))
            co_return ending::failed(ec, "announcing the join");
        if (editor_)
            editor_->start();
        // All three run until the first one ends the session; the others are then cancelled
        // and awaited (nothing is left running detached).
        auto first = co_await (guarded(read_input(), "reading the input") ||
                               guarded(receive_loop(), "receiving messages") ||
                               guarded(reap_loop(), "looking for lost participants"));
        co_return std::visit([](ending& e) { return std::move(e); }, first);
    }

    /// Joins the opened room; if the last participant removed it meanwhile, the objects are
    /// gone: create them again. The ending when it cannot.
    asio::awaitable<std::optional<ending>> join() {
        for (int attempt = 0;; ++attempt) {
            auto [ec] =
                co_await channel_->async_join(settings_.name, asio::as_tuple(asio::use_awaitable));
            if (!ec) {
                joined_ = true;
                co_return std::nullopt;
            }
            channel_->close();
            if (ec != sysv::errc::removed || attempt == 10)
                co_return ending::failed(
                    error_code{},
                    "cannot join room " + settings_.room + ": " + ec.message() +
                        (ec == sysv::errc::no_free_slot ? " (the room is full)" : ""));
            if (auto failure = open_room())
                co_return ending::failed(error_code{}, std::move(*failure));
        }
    }

    /// The banner, and who was there already (their own "joined" may have been sent before we
    /// joined, so we would not see it; when it comes after, it is not shown twice). Whoever
    /// joins after the banner is announced as joining: the banner comes after the list.
    asio::awaitable<void> introduce() {
        auto members = co_await channel_->async_members(asio::use_awaitable);
        std::string names;
        for (const auto& m : members) {
            if (m.slot == channel_->slot())
                continue;
            names += (names.empty() ? "" : ", ") + paint(chat::sanitise(m.label));
            listed_at_join_.insert(m.pid);
        }
        show("joined room " + settings_.room + " as " + paint(own_name_) +
             " (/help lists the commands)");
        if (!names.empty())
            show("also here: " + names);
        // Doorbells off although nobody asked for polling (a doorbell table that is corrupt,
        // or another user's, say): messages still come, later. Say so once, and why.
        if (sysv::wake_mode_of(io_) == sysv::wake_mode::polling &&
            std::getenv("SYSV_WAIT_MODE") == nullptr)
            show("notice: messages reach this process by polling, not doorbells (" +
                 chat::sanitise(sysv::wake_mode_reason(io_)) + ")");
        line_limit_ = channel_->shape().max_message_size - 2 - settings_.name.size();
        if (settings_.interactive)
            editor_.emplace(own_name_ + "> ");
    }

    // ---- the activities of a session ----

    /// Runs `body`; an exception becomes an error ending (so none escapes the || above).
    static asio::awaitable<ending> guarded(asio::awaitable<ending> body, std::string doing) {
        try {
            co_return co_await std::move(body);
        } catch (const boost::system::system_error& e) {
            co_return ending::failed(e.code(), std::move(doing));
        } catch (const std::exception& e) {
            co_return ending::failed(error_code{}, doing + ": " + e.what());
        }
    }

    asio::awaitable<ending> receive_loop() {
        for (;;) {
            auto [ec, m] = co_await channel_->async_receive(asio::as_tuple(asio::use_awaitable));
            if (ec == sysv::errc::messages_missed) {
                show("(" + std::to_string(m.missed) +
                     " messages missed: this process fell behind)");
                continue;
            }
            if (ec)
                co_return ending::failed(ec, "receiving messages");
            display(m);
        }
    }

    void display(const sysv::channel_message& m) {
        const auto message = decode(m.text());
        if (!message) {
            show("(a malformed message from pid " + std::to_string(m.sender_pid) + " was ignored)");
            return;
        }
        const bool mine = m.sender_pid == static_cast<std::uint32_t>(::getpid());
        const auto who = paint(chat::sanitise(message->name));
        switch (message->what) {
        case kind::joined:
            if (!mine && listed_at_join_.erase(m.sender_pid) == 0)
                show(who + " joined");
            break;
        case kind::left:
            if (!mine)
                show(who + " left");
            break;
        case kind::lost:
            show(paint(chat::sanitise(message->text)) + " left (lost)");
            break;
        case kind::text:
            show(who + ": " + chat::sanitise(message->text));
            break;
        }
    }

    /// Participants that died without leaving are announced once, by whoever notices first.
    asio::awaitable<ending> reap_loop() {
        asio::steady_timer timer(io_);
        for (;;) {
            timer.expires_after(300ms);
            auto [wait_error] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
            if (wait_error)
                co_return ending::failed(wait_error, "waiting");
            auto [ec, lost] =
                co_await channel_->async_reap_lost(asio::as_tuple(asio::use_awaitable));
            if (ec)
                co_return ending::failed(ec, "looking for lost participants");
            for (const auto& member : lost)
                if (auto send_error = co_await send(kind::lost, member.label))
                    co_return ending::failed(send_error, "announcing a lost participant");
        }
    }

    /// A participant stopped while holding the room's lock (Ctrl-Z, a debugger) pauses the
    /// room until it continues (the kernel frees only a dead holder's lock): say so, once,
    /// instead of waiting in silence. Looks without taking the lock, so it never waits itself.
    asio::awaitable<ending> watch_lock() {
        asio::steady_timer timer(io_);
        std::uint32_t paused_by = 0;
        for (;;) {
            timer.expires_after(300ms);
            auto [wait_error] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
            if (wait_error)
                co_return ending::failed(wait_error, "waiting");
            error_code ec;
            const auto holder = channel_->lock_holder(ec);
            if (ec)
                co_return ending::failed(ec, "looking at the room's lock");
            if (holder && holder->state == sysv::process_state::stopped &&
                holder->pid != static_cast<std::uint32_t>(::getpid())) {
                if (paused_by != holder->pid) {
                    paused_by = holder->pid;
                    const std::string who =
                        holder->label.empty() ? "a process" : paint(chat::sanitise(holder->label));
                    show("waiting for " + who + " (pid " + std::to_string(holder->pid) +
                         ", stopped while holding the room's lock): the room is paused until it "
                         "continues");
                }
            } else if (paused_by != 0) {
                show("the room goes on (pid " + std::to_string(paused_by) + " continued)");
                paused_by = 0;
            }
        }
    }

    asio::awaitable<ending> wait_for_signals() {
        if (settings_.interactive) {
            signals_.add(SIGWINCH);
            signals_.add(SIGTSTP);
        }
        for (;;) {
            auto [ec, signal] = co_await signals_.async_wait(asio::as_tuple(asio::use_awaitable));
            if (ec)
                co_return ending::failed(ec, "waiting for signals");
            if (signal == SIGWINCH) {
                if (editor_)
                    editor_->resized();
            } else if (signal == SIGTSTP) { // Ctrl-Z: give the terminal back, then stop
                if (editor_)
                    editor_->suspend();
                ::raise(SIGSTOP);
                if (editor_)
                    editor_->resume();
            } else {
                co_return ending{ending::reason::signal};
            }
        }
    }

    asio::awaitable<ending> read_input() {
        if (editor_)
            co_return co_await read_terminal();
        co_return co_await read_stream();
    }

    /// The line editor on a terminal: each key when it comes.
    asio::awaitable<ending> read_terminal() {
        // A second open file description of the terminal for the readiness wait: Asio makes
        // the descriptor it waits on non-blocking, which on a duplicate of standard input would
        // also make standard output (the same open terminal) non-blocking.
        const int fd = ::open("/proc/self/fd/0", O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd == -1)
            co_return ending::failed(error_code(errno, boost::system::system_category()),
                                     "opening the terminal");
        error_code assign_error;
        input_.assign(fd, assign_error);
        if (assign_error) {
            ::close(fd);
            co_return ending::failed(assign_error, "waiting for the terminal");
        }
        for (;;) {
            auto [ec] = co_await input_.async_wait(asio::posix::descriptor_base::wait_read,
                                                   asio::as_tuple(asio::use_awaitable));
            if (ec)
                co_return ending::failed(ec, "reading the terminal");
            if (bytes_available(fd) <= 0) // readable but nothing to read: it hung up
                co_return ending{ending::reason::end_of_input};
            // Every byte now, before waiting again (the wait only reports new input).
            while (bytes_available(fd) > 0) {
                auto key = editor_->process_key();
                if (key.what == chat::line_editor::result::kind::end)
                    co_return ending{ending::reason::end_of_input};
                if (editor_->input_size() > line_limit_)
                    editor_->discard_input("[" + timestamp() + "] " + too_long_message());
                if (key.what == chat::line_editor::result::kind::line)
                    if (auto end = co_await handle_line(key.text))
                        co_return *end;
            }
        }
    }

    /// A pipe or a file: lines as they come, each bounded by the message size.
    asio::awaitable<ending> read_stream() {
        // Pipes are awaited; regular files and /dev/null cannot be (epoll refuses them) and
        // never block: they are read directly.
        const int fd = ::dup(STDIN_FILENO);
        error_code assign_error;
        input_.assign(fd, assign_error);
        const bool awaitable_input = !assign_error;
        if (assign_error && fd != -1)
            ::close(fd);
        chat::line_reader reader(line_limit_);
        std::vector<chat::line_reader::event> events;
        std::array<char, 4096> buffer;
        for (;;) {
            std::size_t got = 0;
            error_code ec;
            if (awaitable_input) {
                std::tie(ec, got) = co_await input_.async_read_some(
                    asio::buffer(buffer), asio::as_tuple(asio::use_awaitable));
            } else {
                const ssize_t n = ::read(STDIN_FILENO, buffer.data(), buffer.size());
                if (n > 0)
                    got = static_cast<std::size_t>(n);
                else if (n == 0)
                    ec = asio::error::eof;
                else if (errno != EINTR)
                    ec = error_code(errno, boost::system::system_category());
                co_await asio::post(io_, asio::use_awaitable); // let the others run
            }
            if (ec == asio::error::eof) {
                if (auto last = reader.finish())
                    events.push_back(std::move(*last));
            } else if (ec) {
                co_return ending::failed(ec, "reading standard input");
            }
            reader.feed(std::string_view(buffer.data(), got), events);
            for (auto& event : events) {
                if (event.what == chat::line_reader::event::kind::too_long)
                    show(too_long_message());
                else if (auto end = co_await handle_line(std::move(event.text)))
                    co_return *end;
            }
            events.clear();
            if (ec == asio::error::eof)
                co_return ending{ending::reason::end_of_input};
        }
    }

    std::string too_long_message() const {
        return "error: line too long (more than " + std::to_string(line_limit_) +
               " bytes); not sent";
    }

    /// A command or a message; an ending when the line ends the session.
    asio::awaitable<std::optional<ending>> handle_line(std::string line) {
        if (line == "/quit")
            co_return ending{ending::reason::quit};
        if (line == "/who") {
            auto [ec, members] =
                co_await channel_->async_members(asio::as_tuple(asio::use_awaitable));
            if (ec)
                co_return ending::failed(ec, "listing the participants");
            std::string names;
            for (const auto& m : members)
                names += (names.empty() ? "" : ", ") + paint(chat::sanitise(m.label));
            show("in " + settings_.room + ": " + names);
        } else if (line == "/wake") {
            const auto status = sysv::wake_status_of(io_);
            show("woken by " + status.configuration + ": " +
                 std::to_string(status.stats.delivered) + " deliveries, " +
                 std::to_string(status.stats.late) + " late, " +
                 std::to_string(status.stats.missed) + " missed" +
                 (status.reason.empty() ? "" : " (" + chat::sanitise(status.reason) + ")"));
        } else if (line == "/help") {
            show("/who    who is in the room");
            show("/wake   how this process is woken when a message comes");
            show("/quit   leave the room (also Ctrl-D, or Ctrl-C)");
            show("/help   this list");
            show("//text  sends /text");
        } else if (line.starts_with("//")) {
            if (auto ec = co_await send(kind::text, std::string_view(line).substr(1)))
                co_return ending::failed(ec, "sending");
        } else if (line.starts_with("/")) {
            show("error: unknown command " + chat::sanitise(line) + " (/help lists the commands)");
        } else if (line.size() > line_limit_) {
            show(too_long_message());
        } else if (!line.empty()) {
            if (auto ec = co_await send(kind::text, line))
                co_return ending::failed(ec, "sending");
        }
        co_return std::nullopt;
    }

    /// One message to the room. Sends come from the input and from the reaper: one at a time
    /// (a channel takes one send at a time per object).
    asio::awaitable<error_code> send(kind k, std::string_view text) {
        const auto bytes = encode(k, settings_.name, text);
        auto [lock_error] =
            co_await send_lock_.async_send(error_code{}, asio::as_tuple(asio::use_awaitable));
        if (lock_error)
            co_return lock_error;
        auto [ec] =
            co_await channel_->async_send(asio::buffer(bytes), asio::as_tuple(asio::use_awaitable));
        send_lock_.try_receive([](error_code) {});
        co_return ec;
    }

    // ---- the end ----

    /// Leaves the room (announced when clean), gives back what the session holds, reports a
    /// failure once. Returns the exit status.
    asio::awaitable<int> finish(ending end) {
        if (editor_)
            editor_->stop(); // the terminal as it was, before the last lines
        error_code ignored;
        input_.close(ignored);
        signals_.cancel(ignored);
        // Not joined (a signal, or an error, while joining): nothing to announce or give back.
        if (joined_ && end.why != ending::reason::error) {
            if (auto ec = co_await with_timeout(send(kind::left, "")))
                end = ending::failed(ec, "announcing the leave");
        }
        if (joined_ && (end.why != ending::reason::error || end.error != sysv::errc::removed)) {
            asio::steady_timer timer(io_, leave_timeout);
            auto left = co_await (channel_->async_leave(asio::as_tuple(asio::use_awaitable)) ||
                                  timer.async_wait(asio::as_tuple(asio::use_awaitable)));
            if (left.index() == 1) {
                if (end.why != ending::reason::error)
                    end = ending::failed(error_code{},
                                         "could not leave room " + settings_.room + " within " +
                                             std::to_string(leave_timeout.count()) +
                                             " s: another participant holds its lock");
            } else if (auto [ec, removed] = std::get<0>(left); ec) {
                if (end.why != ending::reason::error)
                    end = ending::failed(ec, "leaving");
            } else if (removed && end.why != ending::reason::error) {
                show("last one out: room " + settings_.room + " removed");
            }
        }
        if (end.why == ending::reason::error && end.error == sysv::errc::removed) {
            // Part of the room is gone: it can never work again, and nobody can tell who is
            // last. Remove what is left (by id: never a newer room at the same key).
            channel_->remove(ignored);
        }
        channel_->close();
        if (end.why != ending::reason::error)
            co_return 0;
        report(describe(end));
        co_return 1;
    }

    /// The error of `operation`, or timed_out when it took longer than leave_timeout.
    asio::awaitable<error_code> with_timeout(asio::awaitable<error_code> operation) {
        asio::steady_timer timer(io_, leave_timeout);
        auto result = co_await (std::move(operation) ||
                                timer.async_wait(asio::as_tuple(asio::use_awaitable)));
        if (result.index() == 1)
            co_return asio::error::timed_out;
        co_return std::get<0>(result);
    }

    asio::io_context& io_;
    settings settings_;
    std::string own_name_; ///< sanitised
    std::optional<sysv::channel> channel_;
    bool joined_ = false; ///< async_join succeeded: leaving is owed
    std::optional<chat::line_editor> editor_;
    asio::posix::stream_descriptor input_;
    asio::signal_set signals_;
    /// Holds one element while a send is in progress.
    asio::experimental::channel<void(error_code)> send_lock_;
    std::size_t line_limit_ = 0;
    std::set<std::uint32_t> listed_at_join_; ///< pids shown in "also here"
};

/// Text is UTF-8: the line editor needs a UTF-8 character type even where the locale is "C".
void use_utf8_characters() {
    std::setlocale(LC_CTYPE, "");
    if (std::strcmp(::nl_langinfo(CODESET), "UTF-8") != 0)
        std::setlocale(LC_CTYPE, "C.UTF-8");
}

bool colour_wanted(bool no_color_option, bool interactive) {
    const char* no_color = std::getenv("NO_COLOR"); // https://no-color.org: set and not empty
    return interactive && !no_color_option && (no_color == nullptr || *no_color == '\0');
}

} // namespace

int main(int argc, char** argv) {
    settings s{"lobby", default_name()};
    bool no_color = false;
    CLI::App app{"Talk with other processes on this machine through a System V IPC channel "
                 "(shared memory and semaphores).",
                 "chat"};
    cli::describe(app);
    app.add_option("--room", s.room,
                   "The room to join (created if needed): 1..64 letters, "
                   "digits, '-' or '_'")
        ->type_name("ROOM")
        ->capture_default_str()
        ->check(CLI::Validator(
            [](std::string& room) {
                return chat::valid_room_name(room)
                           ? std::string()
                           : std::string("room names are 1..64 letters, digits, '-' or '_'");
            },
            ""));
    app.add_option("--name", s.name,
                   "Your name in the room, 1.." + std::to_string(sysv::ring::label_capacity - 1) +
                       " bytes (default: your user name)")
        ->type_name("NAME")
        ->check(CLI::Validator(
            [](std::string& name) {
                return !name.empty() && name.size() < sysv::ring::label_capacity
                           ? std::string()
                           : "names are 1.." + std::to_string(sysv::ring::label_capacity - 1) +
                                 " bytes";
            },
            ""));
    app.add_flag("--no-color", no_color,
                 "No colours (they are also off when NO_COLOR is set, and when input or output "
                 "is not a terminal)");
    app.footer("In the room: /who lists who is there, /help the commands, /quit (or Ctrl-D, "
               "Ctrl-C) leaves.\nExit status: 0 after leaving, 1 after an error (one message "
               "on standard error), 2 for a usage error.");
    if (auto status = cli::parse(app, argc, argv))
        return *status;

    // Output to a closed pipe must not kill the process before it leaves the room.
    std::signal(SIGPIPE, SIG_IGN);
    s.interactive = ::isatty(STDIN_FILENO) == 1 && ::isatty(STDOUT_FILENO) == 1;
    s.colour = colour_wanted(no_color, s.interactive);
    std::optional<chat::terminal_settings> terminal;
    if (s.interactive) {
        use_utf8_characters();
        terminal.emplace(STDIN_FILENO);
    }
    try {
        asio::io_context io;
        chat_session session(io, std::move(s));
        int status = 1;
        asio::co_spawn(io, session.run(), [&](std::exception_ptr e, int result) {
            status = result; // run() reports its failures itself...
            if (e) {         // ...unless reporting failed too
                status = 1;
                try {
                    std::rethrow_exception(e);
                } catch (const std::exception& failure) {
                    std::fprintf(stderr, "chat: %s\n", failure.what());
                }
            }
            io.stop(); // nothing of the session may keep the program alive after it ended
        });
        io.run();
        return status;
    } catch (const std::exception& e) {
        if (terminal)
            terminal->restore();
        std::fprintf(stderr, "chat: %s\n", e.what());
        return 1;
    }
}
