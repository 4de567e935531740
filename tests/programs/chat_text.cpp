// The chat's text handling without processes: what may reach a terminal (strict UTF-8, no
// control characters), name colours, and the bounded line reader; and the private directory the
// example programs keep their key files in.
#include <boost/test/unit_test.hpp>

#include "chat/chat_text.hpp"
#include "common/private_dir.hpp"

#include <cstdlib>
#include <filesystem>
#include <optional>

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

namespace {

using chat::sanitise;
const std::string fffd(chat::invalid_replacement);

bool valid_utf8_without_controls(std::string_view text) {
    for (std::size_t i = 0; i < text.size();) {
        const auto step = chat::decode_utf8(text.substr(i));
        if (!step.valid || chat::is_control(step.code_point))
            return false;
        i += step.length;
    }
    return true;
}

std::vector<chat::line_reader::event> feed(chat::line_reader& reader, std::string_view bytes) {
    std::vector<chat::line_reader::event> out;
    reader.feed(bytes, out);
    return out;
}

bool is_line(const chat::line_reader::event& e, std::string_view text) {
    return e.what == chat::line_reader::event::kind::line && e.text == text;
}
bool is_refusal(const chat::line_reader::event& e) {
    return e.what == chat::line_reader::event::kind::too_long;
}

} // namespace

BOOST_AUTO_TEST_SUITE(chat_text)

BOOST_AUTO_TEST_CASE(valid_text_passes_unchanged) {
    for (std::string_view text :
         {"hello", "caf\xc3\xa9", "\xe2\x82\xac 5", "\xe4\xb8\xad\xe6\x96\x87",
          "\xf0\x9f\x98\x80 smile", "\xc2\xa0nbsp", "\xed\x9f\xbf", // U+D7FF, just below surrogates
          "\xee\x80\x80", "\xf4\x8f\xbf\xbf",                       // U+E000, U+10FFFF
          "~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./"})
        BOOST_TEST(sanitise(text) == text);
}

BOOST_AUTO_TEST_CASE(control_characters_become_question_marks) {
    BOOST_TEST(sanitise("a\x1b[31mred") == "a?[31mred"); // ESC: no escape sequences
    BOOST_TEST(sanitise("bell\x07 tab\t nl\n cr\r nul") == "bell? tab? nl? cr? nul");
    BOOST_TEST(sanitise(std::string("nul\0x", 5)) == "nul?x");
    BOOST_TEST(sanitise("del\x7f") == "del?");
    BOOST_TEST(sanitise("csi\xc2\x9b"
                        "1m") == "csi?1m");           // C1 CSI, U+009B
    BOOST_TEST(sanitise("\xc2\x80\xc2\x9f") == "??"); // first and last C1
}

BOOST_AUTO_TEST_CASE(bidi_controls_become_question_marks) {
    // "Trojan Source": U+202E RIGHT-TO-LEFT OVERRIDE would show "txt.exe" as "exe.txt".
    BOOST_TEST(sanitise("file\xe2\x80\xaetxt.exe") == "file?txt.exe");
    BOOST_TEST(sanitise("\xe2\x80\xaa\xe2\x80\xab\xe2\x80\xac\xe2\x80\xad\xe2\x80\xae") ==
               "?????"); // U+202A-U+202E
    BOOST_TEST(sanitise("\xe2\x81\xa6\xe2\x81\xa7\xe2\x81\xa8\xe2\x81\xa9") ==
               "????");                                                // isolates U+2066-U+2069
    BOOST_TEST(sanitise("\xe2\x80\x8e\xe2\x80\x8f\xd8\x9c") == "???"); // LRM, RLM, ALM
    // Their neighbours pass: U+200D ZWJ (emoji sequences), U+202F narrow no-break space, Arabic.
    for (std::string_view text : {"\xe2\x80\x8d", "\xe2\x80\xaf", "\xd8\x9b\xd8\xb3"})
        BOOST_TEST(sanitise(text) == text);
}

BOOST_AUTO_TEST_CASE(overlong_encodings_are_replaced) {
    // ESC (U+001B) and '/' written with more bytes than needed: a classic filter bypass.
    BOOST_TEST(sanitise("\xc0\x9b") == fffd + fffd); // C0 is never a lead byte
    BOOST_TEST(sanitise("\xc1\xbf") == fffd + fffd);
    BOOST_TEST(sanitise("\xe0\x80\x9b") == fffd + fffd + fffd); // E0 needs A0..BF next
    BOOST_TEST(sanitise("\xe0\x9f\xbf") == fffd + fffd + fffd);
    BOOST_TEST(sanitise("\xf0\x80\x80\x9b") == fffd + fffd + fffd + fffd); // F0 needs 90..BF
    BOOST_TEST(sanitise("\xf0\x8f\xbf\xbf") == fffd + fffd + fffd + fffd);
    BOOST_TEST(sanitise("\xe0\xa0\x80") == "\xe0\xa0\x80"); // U+0800: the shortest form
}

BOOST_AUTO_TEST_CASE(surrogates_and_code_points_above_u10ffff_are_replaced) {
    BOOST_TEST(sanitise("\xed\xa0\x80") == fffd + fffd + fffd); // U+D800
    BOOST_TEST(sanitise("\xed\xbf\xbf") == fffd + fffd + fffd); // U+DFFF
    BOOST_TEST(sanitise("\xed\xa0\xbd\xed\xb8\x80") == fffd + fffd + fffd + fffd + fffd + fffd);
    BOOST_TEST(sanitise("\xf4\x90\x80\x80") == fffd + fffd + fffd + fffd); // U+110000
    BOOST_TEST(sanitise("\xf5\x80\x80\x80") == fffd + fffd + fffd + fffd);
    BOOST_TEST(sanitise("\xff\xfe") == fffd + fffd);
}

BOOST_AUTO_TEST_CASE(truncated_and_stray_bytes_are_replaced_once_per_maximal_subpart) {
    BOOST_TEST(sanitise("caf\xc3") == "caf" + fffd); // cut at the end
    BOOST_TEST(sanitise("\xe2\x82") == fffd);        // one subpart, one U+FFFD
    BOOST_TEST(sanitise("\xf0\x9f\x98") == fffd);
    BOOST_TEST(sanitise("\xe2\x82x") == fffd + "x");    // the next byte is kept
    BOOST_TEST(sanitise("\xe2\x82\x1b") == fffd + "?"); // ...and still checked
    BOOST_TEST(sanitise("\x80") == fffd);               // a lone continuation
    BOOST_TEST(sanitise("a\xbf\xbf"
                        "b") == "a" + fffd + fffd + "b");
    BOOST_TEST(sanitise("\xc3\xc3\xa9") == fffd + "\xc3\xa9");
}

BOOST_AUTO_TEST_CASE(every_two_byte_input_comes_out_valid_and_free_of_controls) {
    // Exhaustive over two bytes, and over every lead byte with each class of continuation.
    for (int a = 0; a < 256; ++a)
        for (int b = 0; b < 256; ++b) {
            const char bytes[] = {static_cast<char>(a), static_cast<char>(b)};
            const auto out = sanitise(std::string_view(bytes, 2));
            if (!valid_utf8_without_controls(out)) {
                BOOST_TEST(false, "input " << a << " " << b << " came out unsafe");
                return;
            }
        }
    for (int lead = 0x80; lead < 0x100; ++lead)
        for (int second : {0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0})
            for (int third : {0x1b, 0x80, 0xbf, 0xc0}) {
                const char bytes[] = {static_cast<char>(lead), static_cast<char>(second),
                                      static_cast<char>(third), static_cast<char>(0x80)};
                BOOST_TEST(valid_utf8_without_controls(sanitise(std::string_view(bytes, 4))));
            }
}

BOOST_AUTO_TEST_CASE(a_name_has_one_colour_everywhere) {
    BOOST_TEST(chat::name_colour("alice") == chat::name_colour("alice"));
    BOOST_TEST(chat::name_colour("alice") == chat::name_colour(std::string("ali") + "ce"));
    std::vector<int> seen;
    for (std::string name : {"alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"}) {
        const int colour = chat::name_colour(name);
        BOOST_TEST((std::find(chat::name_colours.begin(), chat::name_colours.end(), colour) !=
                    chat::name_colours.end()));
        if (std::find(seen.begin(), seen.end(), colour) == seen.end())
            seen.push_back(colour);
    }
    BOOST_TEST(seen.size() >= 4u); // names are spread over the palette
    BOOST_TEST(chat::coloured("bob", 32) == "\x1b[1;32mbob\x1b[0m");
}

BOOST_AUTO_TEST_CASE(lines_are_split_across_reads_and_lose_their_line_ends) {
    chat::line_reader reader(100);
    auto first = feed(reader, "hel");
    BOOST_TEST(first.empty());
    auto second = feed(reader, "lo\nwor");
    BOOST_REQUIRE(second.size() == 1u);
    BOOST_TEST(is_line(second[0], "hello"));
    auto third = feed(reader, "ld\r\n\nlast");
    BOOST_REQUIRE(third.size() == 2u);
    BOOST_TEST(is_line(third[0], "world"));
    BOOST_TEST(is_line(third[1], ""));
    auto end = reader.finish();
    BOOST_REQUIRE(end.has_value());
    BOOST_TEST(is_line(*end, "last"));
    BOOST_TEST(!reader.finish().has_value());
}

BOOST_AUTO_TEST_CASE(a_line_at_the_limit_passes_and_one_byte_more_is_refused) {
    chat::line_reader reader(10);
    auto events = feed(reader, std::string(10, 'a') + "\n" + std::string(10, 'b') + "\r\n" +
                                   std::string(11, 'c') + "\n" + std::string(11, 'd') + "\r\n");
    BOOST_REQUIRE(events.size() == 4u);
    BOOST_TEST(is_line(events[0], std::string(10, 'a')));
    BOOST_TEST(is_line(events[1], std::string(10, 'b')));
    BOOST_TEST(is_refusal(events[2]));
    BOOST_TEST(is_refusal(events[3]));
}

BOOST_AUTO_TEST_CASE(an_endless_line_is_refused_once_and_never_buffered) {
    // 64 MiB without a newline, as a peer or a pipe could send: refused as soon as it passes
    // the limit, then discarded up to the newline, holding at most limit + 1 bytes.
    const std::size_t limit = 4000;
    chat::line_reader reader(limit);
    const std::string chunk(64 * 1024, 'x');
    std::vector<chat::line_reader::event> events;
    std::size_t most = 0;
    for (int i = 0; i < 1024; ++i) {
        reader.feed(chunk, events);
        most = std::max(most, reader.buffered());
    }
    BOOST_TEST(most <= limit + 1);
    BOOST_REQUIRE(events.size() == 1u); // refused at once, not at the newline
    BOOST_TEST(is_refusal(events[0]));
    reader.feed("tail of the long line\nnext\n", events);
    BOOST_REQUIRE(events.size() == 2u);
    BOOST_TEST(is_line(events[1], "next")); // the tail was discarded with the line
    BOOST_TEST(!reader.finish().has_value());
}

BOOST_AUTO_TEST_CASE(a_long_last_line_without_newline_is_refused_at_the_end) {
    chat::line_reader reader(5);
    auto events = feed(reader, "123456");
    BOOST_TEST(events.empty()); // 6 bytes could still be 5 and a CR
    auto end = reader.finish();
    BOOST_REQUIRE(end.has_value());
    BOOST_TEST(is_refusal(*end));
    chat::line_reader discarding(5);
    BOOST_TEST(feed(discarding, "1234567").size() == 1u);
    BOOST_TEST(!discarding.finish().has_value()); // already refused: nothing more to say
}

BOOST_AUTO_TEST_CASE(a_relative_xdg_runtime_dir_is_ignored) {
    // The XDG base directory spec: a relative XDG_RUNTIME_DIR is invalid and must be ignored
    // (taken as given, the key files, and so the rooms, would depend on the current directory).
    const char* old = std::getenv("XDG_RUNTIME_DIR");
    const std::optional<std::string> saved = old ? std::optional<std::string>(old) : std::nullopt;
    const std::string name = "asio-sysv-test-" + std::to_string(::getpid());
    for (const char* value : {".", "run/user", ""}) {
        ::setenv("XDG_RUNTIME_DIR", value, 1);
        const auto dir = examples::private_directory(name);
        BOOST_TEST(dir.is_absolute(), value);
        BOOST_TEST(dir.parent_path() == std::filesystem::temp_directory_path(), value);
        std::filesystem::remove(dir);
    }
    // An absolute one is used.
    const auto base = std::filesystem::temp_directory_path() / (name + "-xdg");
    std::filesystem::create_directory(base);
    ::setenv("XDG_RUNTIME_DIR", base.c_str(), 1);
    BOOST_TEST(examples::private_directory(name) == base / name);
    std::filesystem::remove_all(base);
    if (saved)
        ::setenv("XDG_RUNTIME_DIR", saved->c_str(), 1);
    else
        ::unsetenv("XDG_RUNTIME_DIR");
}

BOOST_AUTO_TEST_SUITE_END()
