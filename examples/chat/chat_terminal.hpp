// The chat's input line on a terminal: a prompt at the bottom that incoming messages never
// garble, with line editing and history.
//
// Why libedit (editline), and its native API: it is a line editor under the BSD licence that
// Debian ships (libedit-dev), with emacs/vi key bindings, history and ~/.editrc, and its
// unbuffered mode (EL_UNBUFFERED) processes one key per el_gets() call, so the chat's Asio
// event loop decides when keys are read and can print between two keys. Its readline
// emulation (rl_callback_read_char) is the same mechanism with gaps that matter here:
// rl_replace_line("") is a no-op, rl_redisplay() queues a ^R keystroke, rl_copy_text() drops a
// character, and rl_line_buffer can point to a buffer libedit has reallocated. GNU readline
// (GPL) and an ncurses two-pane view (whose input line would be hand-written) were the
// alternatives.
//
// What libedit does not offer is "print a line above the input": libedit only redraws from
// the first row of the prompt. print_above() therefore moves the cursor there itself (CR,
// cursor up, erase below: ECMA-48 sequences every terminal emulator understands), prints, and
// lets libedit redraw the prompt and the partial input below. The number of rows to go up is
// computed the way libedit lays out the prompt and the line (wide characters, ^X for controls,
// tabs, wrapping at the last column).
#pragma once

#include <histedit.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cwchar>
#include <stdexcept>
#include <string>
#include <string_view>

namespace chat {

/// The terminal settings of `fd` when constructed, put back when destroyed: the last guard of
/// a clean terminal on every way out, whatever the line editor did or could not do.
class terminal_settings {
public:
    explicit terminal_settings(int fd) : fd_(fd), saved_(::tcgetattr(fd, &settings_) == 0) {}
    terminal_settings(const terminal_settings&) = delete;
    terminal_settings& operator=(const terminal_settings&) = delete;
    ~terminal_settings() { restore(); }
    void restore() noexcept {
        if (saved_)
            ::tcsetattr(fd_, TCSADRAIN, &settings_); // fails harmlessly on a hung-up terminal
    }

private:
    int fd_;
    termios settings_{};
    bool saved_;
};

/// A libedit input line on standard input and output (both terminals). Keys are processed one
/// at a time by process_key(), called when standard input is readable.
class line_editor {
public:
    /// What one key did.
    struct result {
        enum class kind { editing, line, end } what = kind::editing;
        std::string text; ///< kind::line: the line entered (without newline)
    };

    /// `prompt` is shown as is: it must be sanitised and free of escape sequences.
    explicit line_editor(std::string prompt) : prompt_(std::move(prompt)) {
        history_ = ::history_init();
        HistEvent event;
        ::history(history_, &event, H_SETSIZE, 500);
        ::history(history_, &event, H_SETUNIQUE, 1);
        editor_ = ::el_init("chat", stdin, stdout, stderr);
        if (editor_ == nullptr) {
            ::history_end(history_);
            throw std::runtime_error("cannot start the line editor (libedit)");
        }
        ::el_set(editor_, EL_CLIENTDATA, this);
        ::el_set(editor_, EL_PROMPT, &line_editor::prompt_of);
        ::el_set(editor_, EL_EDITOR, "emacs");
        // Signals are the event loop's (SIGINT, SIGTERM, SIGHUP end the chat cleanly, SIGTSTP and
        // SIGWINCH call suspend() and resized()); libedit's handlers would re-raise them.
        ::el_set(editor_, EL_SIGNAL, 0);
        ::el_set(editor_, EL_HIST, ::history, history_);
        ::el_set(editor_, EL_GETCFN, &line_editor::read_char);
        // What users of readline expect, as libedit's own readline emulation binds them.
        ::el_set(editor_, EL_BIND, "^W", "ed-delete-prev-word", nullptr);
        ::el_set(editor_, EL_BIND, "\\e[1~", "ed-move-to-beg", nullptr);
        ::el_set(editor_, EL_BIND, "\\e[4~", "ed-move-to-end", nullptr);
        ::el_set(editor_, EL_BIND, "\\e[H", "ed-move-to-beg", nullptr);
        ::el_set(editor_, EL_BIND, "\\e[F", "ed-move-to-end", nullptr);
        ::el_set(editor_, EL_BIND, "\\e[3~", "ed-delete-next-char", nullptr);
        ::el_set(editor_, EL_BIND, "\\e[1;5C", "em-next-word", nullptr);
        ::el_set(editor_, EL_BIND, "\\e[1;5D", "ed-prev-word", nullptr);
        ::el_source(editor_, nullptr); // the user's ~/.editrc (e.g. "bind -v" for vi keys)
    }
    line_editor(const line_editor&) = delete;
    line_editor& operator=(const line_editor&) = delete;
    ~line_editor() {
        stop();
        ::el_end(editor_);
        ::history_end(history_);
    }

    bool active() const noexcept { return active_; }

    /// Raw mode, and the prompt on the current line.
    void start() {
        if (active_)
            return;
        active_ = true;
        ::el_set(editor_, EL_UNBUFFERED, 1);
    }

    /// Removes the prompt and the partial input from the screen and gives the terminal its
    /// settings back. Idempotent.
    void stop() noexcept {
        if (!active_)
            return;
        active_ = false;
        erase(cursor_row());
        ::el_set(editor_, EL_UNBUFFERED, 0); // cooked mode
        std::fflush(stdout);
    }

    /// Processes one key (call only when standard input has bytes).
    result process_key() {
        int count = 0;
        const char* line = ::el_gets(editor_, &count);
        if (line == nullptr || count <= 0)
            return {};
        const std::string_view text(line, static_cast<std::size_t>(count));
        if (text == "\x04") { // ^D on an empty line (libedit has echoed "^D")
            stop();
            return {result::kind::end, {}};
        }
        if (text.back() != '\n' && text.back() != '\r')
            return {};
        std::string entered(text.substr(0, text.size() - 1));
        // libedit has moved below the entered line: take its echo off the screen (the chat
        // shows the line as everyone sees it once it went through the room) and start afresh.
        erase(rows_of(entered) + 1);
        if (!entered.empty()) {
            HistEvent event;
            ::history(history_, &event, H_ENTER, entered.c_str());
        }
        ::el_set(editor_, EL_UNBUFFERED, 0); // resets the line and the history position...
        ::el_set(editor_, EL_UNBUFFERED, 1); // ...and draws the prompt again
        return {result::kind::line, std::move(entered)};
    }

    /// Bytes typed so far on the input line.
    std::size_t input_size() const {
        const LineInfo* info = ::el_line(editor_);
        return static_cast<std::size_t>(info->lastchar - info->buffer);
    }

    /// Shows `text` on its own line(s) above the prompt, then redraws the prompt and the
    /// partial input with the cursor where it was.
    void print_above(std::string_view text) {
        if (!active_) {
            write(text);
            write("\n");
            return;
        }
        erase(cursor_row());
        write(text);
        write("\r\n");
        ::el_set(editor_, EL_REFRESH);
        std::fflush(stdout);
    }

    /// Throws away the partial input and shows `text` above the empty prompt.
    void discard_input(std::string_view text) {
        if (!active_)
            return;
        erase(cursor_row());
        const LineInfoW* info = ::el_wline(editor_);
        ::el_cursor(editor_, static_cast<int>(info->lastchar - info->cursor));
        ::el_deletestr(editor_, static_cast<int>(info->lastchar - info->buffer));
        write(text);
        write("\r\n");
        ::el_set(editor_, EL_REFRESH);
        std::fflush(stdout);
    }

    /// Before the process stops (SIGTSTP): the screen and the terminal as the shell expects.
    void suspend() noexcept {
        if (!active_)
            return;
        erase(cursor_row());
        ::el_set(editor_, EL_PREP_TERM, 0);
        std::fflush(stdout);
    }
    /// After it continued: raw mode again, prompt and partial input redrawn.
    void resume() {
        if (!active_)
            return;
        ::el_set(editor_, EL_PREP_TERM, 1);
        write("\r");
        ::el_set(editor_, EL_REFRESH);
        std::fflush(stdout);
    }

    /// After SIGWINCH: libedit learns the new width and redraws.
    void resized() {
        if (!active_)
            return;
        erase(cursor_row()); // the terminal may have re-wrapped it: best effort
        ::el_resize(editor_);
        ::el_set(editor_, EL_REFRESH);
        std::fflush(stdout);
    }

private:
    static char* prompt_of(EditLine* editor) {
        void* self = nullptr;
        ::el_get(editor, EL_CLIENTDATA, &self);
        return static_cast<line_editor*>(self)->prompt_.data();
    }

    /// libedit's character reader, made to suit the event loop. The first byte of a key is
    /// always there (process_key() is only called when standard input has bytes). After an ESC,
    /// and inside a UTF-8 character, it waits at most 100 ms for the next byte: a terminal sends
    /// a key's escape sequence at once, so a lone ESC (or a sequence cut by a slow link) is
    /// dropped instead of holding up the chat until the next key. Other keys a command reads
    /// (vi's "dw", ...) are waited for. A signal ends the wait too (the unfinished key is
    /// dropped) so that the event loop sees it. Invalid bytes are dropped, as libedit does.
    static int read_char(EditLine* editor, wchar_t* out) {
        void* client = nullptr;
        ::el_get(editor, EL_CLIENTDATA, &client);
        auto& self = *static_cast<line_editor*>(client);
        char bytes[MB_LEN_MAX];
        std::size_t have = 0;
        for (;;) {
            pollfd ready{STDIN_FILENO, POLLIN, 0};
            const int polled = ::poll(&ready, 1, have > 0 || self.after_escape_ ? 100 : -1);
            if (polled == -1)
                return errno == EINTR ? 0 : -1;
            if (polled == 0 || (ready.revents & POLLIN) == 0) { // timed out, or hung up
                self.after_escape_ = false;
                return 0;
            }
            const ssize_t got = ::read(STDIN_FILENO, bytes + have, 1);
            if (got == -1 && errno == EINTR)
                return 0;
            if (got <= 0)
                return got == 0 ? 0 : -1;
            ++have;
            std::mbstate_t state{};
            const std::size_t used = std::mbrtowc(out, bytes, have, &state);
            if (used == static_cast<std::size_t>(-2) && have < sizeof bytes)
                continue; // incomplete character
            if (used == static_cast<std::size_t>(-1) || used == static_cast<std::size_t>(-2)) {
                have = 0; // invalid: drop it
                continue;
            }
            self.after_escape_ = *out == L'\x1b';
            return 1;
        }
    }

    /// Where libedit puts things: the row reached after laying out the prompt and then `text`
    /// from the first column of row 0 (see re_putc and re_addc in libedit's refresh.c).
    struct layout {
        int columns;
        int row = 0, column = 0;
        void put(int width) {
            if (column + width > columns) { // a wide character that does not fit: next row
                ++row;
                column = 0;
            }
            column += width;
            if (column >= columns) {
                ++row;
                column = 0;
            }
        }
        void add(wchar_t c) {
            if (c == L'\t') {
                do
                    put(1);
                while (column % 8 != 0);
                return;
            }
            if (c == L'\n')
                return;
            if (const int width = ::wcwidth(c); width >= 0) {
                put(width);
                return;
            }
            // Shown as ^X, or as \U+XXXX / \U+XXXXX.
            const int width = c < 0x20 || c == 0x7f ? 2 : c > 0xffff ? 8 : 7;
            for (int i = 0; i < width; ++i)
                put(1);
        }
        void add(std::string_view utf8) {
            std::mbstate_t state{};
            while (!utf8.empty()) {
                wchar_t c = 0;
                const std::size_t used = std::mbrtowc(&c, utf8.data(), utf8.size(), &state);
                if (used == 0 || used > utf8.size()) { // NUL, invalid or incomplete: one cell
                    put(1);
                    utf8.remove_prefix(1);
                    state = {};
                    continue;
                }
                add(c);
                utf8.remove_prefix(used);
            }
        }
    };

    int columns() const {
        int columns = 0;
        if (::el_get(editor_, EL_GETTC, "co", &columns, nullptr) != 0 || columns <= 0)
            columns = 80;
        return columns;
    }

    /// The row of the cursor, counted from the prompt's first row.
    int cursor_row() const {
        layout at{columns()};
        at.add(prompt_);
        const LineInfoW* info = ::el_wline(editor_);
        for (const wchar_t* c = info->buffer; c < info->cursor; ++c)
            at.add(*c);
        return at.row;
    }
    /// The last row the prompt followed by `line` occupies.
    int rows_of(std::string_view line) const {
        layout at{columns()};
        at.add(prompt_);
        at.add(line);
        return at.row;
    }

    /// From `rows_up` rows below the prompt's first row: back to its first column, and erase
    /// everything from there to the end of the screen.
    static void erase(int rows_up) noexcept {
        char sequence[32];
        if (rows_up > 0)
            std::snprintf(sequence, sizeof sequence, "\r\x1b[%dA\x1b[J", rows_up);
        else
            std::snprintf(sequence, sizeof sequence, "\r\x1b[J");
        write(sequence);
    }

    static void write(std::string_view text) noexcept {
        std::fwrite(text.data(), 1, text.size(), stdout);
    }

    std::string prompt_;
    History* history_ = nullptr;
    EditLine* editor_ = nullptr;
    bool active_ = false;
    bool after_escape_ = false; ///< the last character read was ESC
};

} // namespace chat
