// Text handling of the chat, shared by `chat` and its tests: what may reach the terminal
// (sanitise), the colour of a name, and the bounded splitting of input into lines.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace chat {

/// What replaces bytes that are not UTF-8: U+FFFD REPLACEMENT CHARACTER, once per maximal
/// ill-formed subsequence (Unicode §3.9, "U+FFFD Substitution of Maximal Subparts", which is
/// what browsers do). U+FFFD rather than '?' so that a reader can tell undecodable bytes from a
/// question mark the sender typed.
inline constexpr std::string_view invalid_replacement = "\xEF\xBF\xBD";

/// What replaces a control character (C0, DEL, C1, bidi controls): '?', as the chat always did.
/// They are valid UTF-8 but a terminal acts on them (ESC starts escape sequences, BEL rings, CSI
/// U+009B is a one-character ESC [, U+202E reverses what follows), so none may pass.
inline constexpr char control_replacement = '?';

/// One step of a strict UTF-8 decoder (RFC 3629; the well-formed sequences of Unicode Table
/// 3-7): no overlong forms (C0, C1, E0 80..9F, F0 80..8F), no UTF-16 surrogates (ED A0..BF),
/// nothing above U+10FFFF (F4 90.., F5..FF), no truncated sequence.
struct utf8_step {
    char32_t code_point = 0;
    std::size_t length = 1; ///< bytes consumed (for an invalid sequence: its maximal subpart)
    bool valid = false;
};

/// Decodes the character at the start of `in` (not empty).
inline utf8_step decode_utf8(std::string_view in) noexcept {
    const auto lead = static_cast<unsigned char>(in[0]);
    if (lead < 0x80)
        return {lead, 1, true};
    std::size_t trailing = 0;
    char32_t code_point = 0;
    unsigned char low = 0x80, high = 0xbf; // allowed range of the second byte
    if (lead >= 0xc2 && lead <= 0xdf) {
        trailing = 1;
        code_point = lead & 0x1fu;
    } else if (lead >= 0xe0 && lead <= 0xef) {
        trailing = 2;
        code_point = lead & 0x0fu;
        if (lead == 0xe0)
            low = 0xa0; // below: overlong
        else if (lead == 0xed)
            high = 0x9f; // above: surrogates D800..DFFF
    } else if (lead >= 0xf0 && lead <= 0xf4) {
        trailing = 3;
        code_point = lead & 0x07u;
        if (lead == 0xf0)
            low = 0x90; // below: overlong
        else if (lead == 0xf4)
            high = 0x8f; // above: beyond U+10FFFF
    } else {
        return {0, 1, false}; // a continuation byte, an overlong lead (C0, C1) or F5..FF
    }
    for (std::size_t i = 1; i <= trailing; ++i) {
        if (i == in.size())
            return {0, i, false}; // truncated
        const auto byte = static_cast<unsigned char>(in[i]);
        if (byte < low || byte > high)
            return {0, i, false}; // the maximal subpart ends before this byte
        code_point = (code_point << 6) | (byte & 0x3fu);
        low = 0x80;
        high = 0xbf;
    }
    return {code_point, trailing + 1, true};
}

/// The bidirectional format controls: ALM U+061C, LRM/RLM U+200E-U+200F, the embeddings and
/// overrides U+202A-U+202E, the isolates U+2066-U+2069. They are invisible, and a terminal
/// that implements the bidi algorithm reorders the text after them: a line can display other
/// words than it holds, or appear to come from someone else ("Trojan Source", CVE-2021-42574).
inline bool is_bidi_control(char32_t c) noexcept {
    return c == 0x061c || c == 0x200e || c == 0x200f || (c >= 0x202a && c <= 0x202e) ||
           (c >= 0x2066 && c <= 0x2069);
}

/// What never reaches the terminal as is: C0 controls (including TAB, LF, ESC), DEL, C1
/// controls and the bidirectional format controls.
inline bool is_control(char32_t c) noexcept {
    return c < 0x20 || (c >= 0x7f && c <= 0x9f) || is_bidi_control(c);
}

/// Text from other processes (names, messages) and from the command line reaches the terminal
/// only through this: valid UTF-8 without control characters, so no escape sequence, bell or
/// cursor movement or reordering can pass. Invalid bytes become U+FFFD, control characters '?'.
inline std::string sanitise(std::string_view in) {
    std::string out;
    out.reserve(in.size());
    for (std::size_t i = 0; i < in.size();) {
        const auto step = decode_utf8(in.substr(i));
        if (!step.valid)
            out.append(invalid_replacement);
        else if (is_control(step.code_point))
            out.push_back(control_replacement);
        else
            out.append(in.substr(i, step.length));
        i += step.length;
    }
    return out;
}

/// The SGR foreground colours names are shown in: the six colours and their bright variants
/// (no black, white or grey, which vanish on one of the usual backgrounds).
inline constexpr std::array<int, 12> name_colours{31, 32, 33, 34, 35, 36, 91, 92, 93, 94, 95, 96};

/// A name's colour: the same in every process and every run (FNV-1a of the name's bytes), so
/// people keep their colour on every screen.
inline int name_colour(std::string_view name) noexcept {
    std::uint32_t hash = 2166136261u;
    for (const char c : name) {
        hash ^= static_cast<unsigned char>(c);
        hash *= 16777619u;
    }
    return name_colours[hash % name_colours.size()];
}

/// `text` in bold and `colour` (an SGR colour number), then back to normal.
inline std::string coloured(std::string_view text, int colour) {
    return "\x1b[1;" + std::to_string(colour) + "m" + std::string(text) + "\x1b[0m";
}

/// Splits input into lines without ever holding more than `limit` + 1 bytes: a line longer
/// than `limit` bytes (not counting its newline and a trailing CR) is refused as soon as that
/// is certain, and the rest of it is discarded up to the next newline. An endless line without
/// newline therefore costs no memory.
class line_reader {
public:
    struct event {
        enum class kind { line, too_long } what;
        std::string text; ///< the line, without "\n" or "\r\n" (empty for too_long)
    };

    explicit line_reader(std::size_t limit) : limit_(limit) {}

    /// Consumes `bytes`; complete lines and refusals are appended to `out` in input order.
    void feed(std::string_view bytes, std::vector<event>& out) {
        while (!bytes.empty()) {
            const auto newline = bytes.find('\n');
            const auto chunk = bytes.substr(0, newline);
            if (!discarding_) {
                const std::size_t room = limit_ + 1 - partial_.size(); // +1: a trailing CR
                partial_.append(chunk.substr(0, room));
                if (chunk.size() > room) {
                    refuse(out);
                    discarding_ = true;
                }
            }
            if (newline == std::string_view::npos)
                return;
            if (discarding_)
                discarding_ = false;
            else
                complete(out);
            bytes.remove_prefix(newline + 1);
        }
    }

    /// End of input: the last line if it had no newline (or its refusal), else nothing.
    std::optional<event> finish() {
        if (discarding_ || partial_.empty())
            return std::nullopt;
        std::vector<event> last;
        complete(last);
        return std::move(last.front());
    }

    std::size_t limit() const noexcept { return limit_; }
    /// Bytes held for an incomplete line: never more than limit() + 1.
    std::size_t buffered() const noexcept { return partial_.size(); }

private:
    void complete(std::vector<event>& out) {
        if (!partial_.empty() && partial_.back() == '\r')
            partial_.pop_back();
        if (partial_.size() > limit_)
            refuse(out);
        else
            out.push_back({event::kind::line, std::move(partial_)});
        partial_.clear();
    }
    void refuse(std::vector<event>& out) {
        partial_.clear();
        out.push_back({event::kind::too_long, {}});
    }

    std::size_t limit_;
    std::string partial_;
    bool discarding_ = false;
};

} // namespace chat
