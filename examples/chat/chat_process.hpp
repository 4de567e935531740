// A `chat` process driven through pipes: used by the chat_demo driver and by the tests.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace chat {

/// One chat process with its stdin and stdout on pipes.
class participant {
public:
    using clock_type = std::chrono::steady_clock;

    participant(const std::string& program, const std::string& room, std::string name)
        : name_(std::move(name)) {
        int in[2], out[2];
        if (::pipe2(in, O_CLOEXEC) == -1 || ::pipe2(out, O_CLOEXEC) == -1)
            throw std::runtime_error("pipe failed");
        posix_spawn_file_actions_t actions;
        ::posix_spawn_file_actions_init(&actions);
        ::posix_spawn_file_actions_adddup2(&actions, in[0], STDIN_FILENO);
        ::posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
        ::posix_spawn_file_actions_adddup2(&actions, out[1], STDERR_FILENO);
        std::vector<std::string> args{program, "--room", room, "--name", name_};
        std::vector<char*> argv;
        for (auto& a : args)
            argv.push_back(a.data());
        argv.push_back(nullptr);
        const int rc =
            ::posix_spawn(&pid_, program.c_str(), &actions, nullptr, argv.data(), environ);
        ::posix_spawn_file_actions_destroy(&actions);
        ::close(in[0]);
        ::close(out[1]);
        if (rc != 0)
            throw std::runtime_error("cannot start " + program + ": " + std::strerror(rc));
        input_ = in[1];
        output_ = out[0];
    }
    participant(const participant&) = delete;
    participant& operator=(const participant&) = delete;
    ~participant() {
        if (input_ != -1)
            ::close(input_);
        if (output_ != -1)
            ::close(output_);
        if (!reaped_) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
    }

    const std::string& name() const { return name_; }
    pid_t pid() const { return pid_; }
    void kill(int signal) const { ::kill(pid_, signal); }
    const std::string& transcript() const { return transcript_; }

    void say(const std::string& line) { write(line + "\n"); }
    /// Writes `text` to the chat's input as is (waiting while the pipe is full).
    void write(const std::string& text) {
        for (std::size_t done = 0; done < text.size();) {
            const ssize_t n = ::write(input_, text.data() + done, text.size() - done);
            if (n == -1 && errno == EINTR)
                continue;
            if (n <= 0)
                throw std::runtime_error(name_ + ": cannot write to chat");
            done += static_cast<std::size_t>(n);
        }
    }
    void close_input() {
        ::close(input_);
        input_ = -1;
    }

    /// Reads what is available (waiting at most `timeout`).
    void pump(std::chrono::milliseconds timeout) {
        pollfd p{output_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0)
            return;
        char buffer[4096];
        const ssize_t n = ::read(output_, buffer, sizeof buffer);
        if (n > 0)
            transcript_.append(buffer, static_cast<std::size_t>(n));
    }

    /// Waits until the transcript contains `text`.
    bool wait_for(const std::string& text, std::chrono::seconds limit = std::chrono::seconds(10)) {
        const auto deadline = clock_type::now() + limit;
        while (transcript_.find(text) == std::string::npos) {
            if (clock_type::now() > deadline) {
                std::printf("  !! %s did not show \"%s\" in time; it showed:\n%s\n", name_.c_str(),
                            text.c_str(), transcript_.c_str());
                return false;
            }
            pump(std::chrono::milliseconds(20));
        }
        return true;
    }

    /// Waits (up to 10 s) for the process to end: its exit code, 128 + signal, or -1.
    int wait_exit() {
        const auto deadline = clock_type::now() + std::chrono::seconds(10);
        while (clock_type::now() < deadline) {
            pump(std::chrono::milliseconds(10));
            int status = 0;
            if (::waitpid(pid_, &status, WNOHANG) == pid_) {
                reaped_ = true;
                for (int j = 0; j < 10; ++j)
                    pump(std::chrono::milliseconds(5));
                return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
        return -1;
    }

private:
    std::string name_;
    pid_t pid_ = -1;
    int input_ = -1, output_ = -1;
    bool reaped_ = false;
    std::string transcript_;
};

} // namespace chat
