// Channel throughput between two processes: sysv::channel against Asio Unix-domain stream
// sockets carrying the same messages, measured side by side in the same run.
#include "bench.hpp"

#include <boost/asio.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

import sysv;

namespace asio = boost::asio;
using bench::now_ns;

namespace {

struct transport {
    std::string id;
    std::string label;
    bool channel;
    std::size_t batch; ///< messages per send call (channel: async_send_batch; socket: gather)
};

struct result {
    double messages_per_second;
    double bytes_per_second;
};

/// One process writes `count` messages of `size` bytes; this one reads them all (copying each
/// into its own buffer, as a receiver of messages does). Time from the writer's start to the
/// last message read.
result run_socket(std::size_t size, long count, std::size_t batch) {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == -1)
        throw std::runtime_error("socketpair failed");
    const std::int64_t start = now_ns();
    bench::child writer([&]() -> int {
        ::close(fds[0]);
        asio::io_context io;
        asio::local::stream_protocol::socket s(io, asio::local::stream_protocol(), fds[1]);
        std::vector<char> payload(size, 'p');
        const std::uint32_t length = static_cast<std::uint32_t>(size);
        asio::co_spawn(
            io,
            [&]() -> asio::awaitable<void> {
                std::vector<asio::const_buffer> frames;
                for (long sent = 0; sent < count;) {
                    frames.clear();
                    for (std::size_t i = 0; i < batch && sent < count; ++i, ++sent) {
                        frames.push_back(asio::buffer(&length, sizeof length));
                        frames.push_back(asio::buffer(payload));
                    }
                    co_await asio::async_write(s, frames, asio::use_awaitable);
                }
            },
            asio::detached);
        io.run();
        return 0;
    });
    ::close(fds[1]);
    asio::io_context io;
    asio::local::stream_protocol::socket s(io, asio::local::stream_protocol(), fds[0]);
    long received = 0;
    std::int64_t end = 0;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            std::vector<char> buffer(256 * 1024);
            std::size_t have = 0;
            std::vector<std::byte> message;
            while (received < count) {
                have += co_await s.async_read_some(
                    asio::buffer(buffer.data() + have, buffer.size() - have), asio::use_awaitable);
                std::size_t used = 0;
                for (;;) {
                    if (have - used < 4)
                        break;
                    std::uint32_t length;
                    std::memcpy(&length, buffer.data() + used, 4);
                    if (have - used < 4 + length)
                        break;
                    const auto* data = reinterpret_cast<const std::byte*>(buffer.data() + used + 4);
                    message.assign(data, data + length);
                    used += 4 + length;
                    ++received;
                }
                std::memmove(buffer.data(), buffer.data() + used, have - used);
                have -= used;
            }
            end = now_ns();
        },
        asio::detached);
    io.run();
    writer.join("socket writer");
    const double seconds = static_cast<double>(end - start) / 1e9;
    return {static_cast<double>(count) / seconds,
            static_cast<double>(count) * static_cast<double>(size) / seconds};
}

result run_channel(std::size_t size, long count, std::size_t batch) {
    sysv::channel_options options;
    options.shape.max_readers = 2;
    options.shape.max_message_size = static_cast<std::uint32_t>(std::max<std::size_t>(size, 64));
    // A ring the size of a socket's buffers: it stays in the CPU caches (a 4 MiB ring, much
    // larger than L2, ran at half the speed at 64 KiB).
    options.shape.capacity = std::max<std::uint64_t>(
        256 * 1024, 4 * sysv::ring::record_size(options.shape.max_message_size));
    options.slow_reader_grace = std::chrono::seconds(60); // measure backpressure, never drops
    // A key of our own (a fresh temporary file) so the writer process opens the same channel.
    char path[] = "/tmp/sysv-bench-channel-XXXXXX";
    const int fd = ::mkstemp(path);
    if (fd == -1)
        throw std::runtime_error("mkstemp failed");
    ::close(fd);
    struct unlink_at_end {
        const char* path;
        ~unlink_at_end() { ::unlink(path); }
    } unlink_file{path};
    const auto key = sysv::key::from_path(path, 1);
    asio::io_context io;
    auto ch = sysv::channel::open_or_create(io.get_executor(), key, options);
    bench::track_segment(ch.segment().id());
    bench::track_semaphore_set(ch.semaphores().id());
    struct removal {
        sysv::channel& ch;
        int segment, set;
        ~removal() {
            sysv::error_code ignored;
            ch.remove(ignored);
            bench::untrack_segment(segment);
            bench::untrack_semaphore_set(set);
        }
    } remove_at_end{ch, ch.segment().id(), ch.semaphores().id()};
    long received = 0;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> { co_await ch.async_join("reader", asio::use_awaitable); },
        asio::detached);
    io.run();
    io.restart();
    const std::int64_t start = now_ns();
    bench::child writer([&]() -> int {
        asio::io_context wio;
        // The writer's own object (the parent's belongs to the parent's io_context).
        auto writer_channel = sysv::channel::open_or_create(wio.get_executor(), key, options);
        std::vector<std::byte> payload(size, std::byte{'p'});
        asio::co_spawn(
            wio,
            [&]() -> asio::awaitable<void> {
                std::vector<asio::const_buffer> messages;
                for (long sent = 0; sent < count;) {
                    messages.clear();
                    for (std::size_t i = 0; i < batch && sent < count; ++i, ++sent)
                        messages.push_back(asio::buffer(payload));
                    if (messages.size() == 1)
                        co_await writer_channel.async_send(messages[0], asio::use_awaitable);
                    else
                        co_await writer_channel.async_send_batch(messages, asio::use_awaitable);
                }
            },
            asio::detached);
        wio.run();
        return 0;
    });
    std::int64_t end = 0;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            while (received < count) {
                if (batch > 1) { // batched on both sides: async_receive_batch
                    auto all = co_await ch.async_receive_batch(asio::use_awaitable);
                    for (const auto& m : all)
                        if (m.bytes.size() != size)
                            throw std::runtime_error("channel delivered a wrong-sized message");
                    received += static_cast<long>(all.size());
                    continue;
                }
                auto m = co_await ch.async_receive(asio::use_awaitable);
                if (m.bytes.size() != size)
                    throw std::runtime_error("channel delivered a message of the wrong size");
                ++received;
            }
            end = now_ns();
        },
        asio::detached);
    io.run();
    writer.join("channel writer");
    const double seconds = static_cast<double>(end - start) / 1e9;
    return {static_cast<double>(count) / seconds,
            static_cast<double>(count) * static_cast<double>(size) / seconds};
}

void run_channel_section(bench::context& ctx) {
    const auto& opt = ctx.opt;
    const int runs = opt.runs_or(3, 1);
    struct size_row {
        std::size_t size;
        long count;
    };
    const std::vector<size_row> sizes{{64, opt.rounds_or(200000, 20000)},
                                      {4096, opt.rounds_or(50000, 5000)},
                                      {65536, opt.rounds_or(5000, 500)}};
    const std::vector<transport> transports{
        {"socket", "Asio local::stream_protocol, one async_write per message [baseline]", false, 1},
        {"channel", "sysv::channel, one async_send per message", true, 1},
        {"socket_batch64", "Asio local::stream_protocol, 64 messages per gather write", false, 64},
        {"channel_batch64", "sysv::channel, async_send_batch of 64 / async_receive_batch", true,
         64},
    };
    bench::table t({"message size", "transport", "messages/s", "GB/s", "ratio to baseline"});
    for (const auto& sz : sizes) {
        std::vector<std::vector<result>> results(transports.size());
        for (int run = 0; run < runs; ++run)
            for (std::size_t k = 0; k < transports.size(); ++k) {
                const std::size_t i = (k + static_cast<std::size_t>(run)) % transports.size();
                const auto& tr = transports[i];
                const std::string row = tr.id + "_" + std::to_string(sz.size);
                if (!opt.wants(row))
                    continue;
                ctx.progress(row + " run " + std::to_string(run + 1));
                bench::watchdog(300, row.c_str());
                results[i].push_back(tr.channel ? run_channel(sz.size, sz.count, tr.batch)
                                                : run_socket(sz.size, sz.count, tr.batch));
                ctx.record(row, "messages_per_second", results[i].back().messages_per_second, "1/s",
                           std::to_string(run + 1));
            }
        bench::watchdog(0, nullptr);
        std::vector<double> baseline;
        for (const auto& r : results[0])
            baseline.push_back(r.messages_per_second);
        for (std::size_t i = 0; i < transports.size(); ++i) {
            if (results[i].empty())
                continue;
            std::vector<double> rates, bytes, ratios;
            for (std::size_t run = 0; run < results[i].size(); ++run) {
                rates.push_back(results[i][run].messages_per_second);
                bytes.push_back(results[i][run].bytes_per_second);
                if (run < baseline.size())
                    ratios.push_back(results[i][run].messages_per_second / baseline[run]);
            }
            const std::string row = transports[i].id + "_" + std::to_string(sz.size);
            const double rate = bench::median(rates), gbps = bench::median(bytes) / 1e9;
            const double ratio = ratios.empty() ? 0 : bench::median(ratios);
            ctx.record(row, "messages_per_second", rate, "1/s");
            ctx.record(row, "gigabytes_per_second", gbps, "GB/s");
            ctx.record(row, "ratio_to_baseline", ratio, "x");
            t.add({std::to_string(sz.size) + " B", transports[i].label, bench::fmt(rate, 0),
                   bench::fmt(gbps, 3), bench::ratio_text(ratio)});
            // The targets compare with the per-message socket; both channel APIs are judged.
            const bool single = transports[i].id == "channel";
            const bool batched = transports[i].id == "channel_batch64";
            if ((single || batched) && !ratios.empty()) {
                const std::string how = single ? " (one async_send per message)"
                                               : " (async_send_batch / async_receive_batch)";
                if (sz.size == 64)
                    ctx.target("channel at 64 B: >= 5x the Unix-socket message rate" + how,
                               bench::ratio_text(ratio), ratio >= 5.0);
                if (sz.size == 65536)
                    ctx.target("channel at 64 KiB: >= 1.5x the Unix-socket GB/s" + how,
                               bench::ratio_text(ratio), ratio >= 1.5);
            }
        }
    }
    ctx.print("Channel throughput between two processes", t,
              "Median of " + std::to_string(runs) +
                  " runs; the writer is a forked process, the reader copies every message out "
                  "(a channel_message / a std::vector per socket frame); ratio = row / the "
                  "one-write-per-message socket row of the same run.");
}

const bench::registrar channel_section{
    {"channel", 50, "6. Channel throughput", &run_channel_section}};

} // namespace
