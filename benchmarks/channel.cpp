// Channel throughput and latency between two processes: sysv::channel against Asio Unix-domain
// stream sockets and boost::interprocess::message_queue carrying the same messages, measured side
// by side in the same run.
#include "bench.hpp"

#include <boost/asio.hpp>
#include <boost/interprocess/ipc/message_queue.hpp>

#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

import sysv;

#include "wake_report.hpp"

namespace asio = boost::asio;
using bench::now_ns;

namespace {

enum class kind { socket, channel, message_queue, post, copy };

struct transport {
    std::string id;
    std::string label;
    kind how;
    std::size_t batch;      ///< messages per send call (channel: async_send_batch; socket: gather)
    bool immediate = false; ///< channel: tokens bound to an immediate executor
    bool reused = false;    ///< channel batches: received into one reused sysv::channel_batch
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

/// A channel at the ftok key of a temporary file of its own (so a forked peer opens the same
/// one), tracked for removal on signals and removed at the end.
/// The ring bytes of the benchmark's channels (and of the copy ceiling's ring) for messages of
/// up to `max_message` bytes: the size of a socket's buffers, so it stays in the CPU caches (a
/// 4 MiB ring, much larger than L2, ran at half the speed at 64 KiB), and at least 4 messages.
std::uint64_t bench_ring_capacity(std::uint32_t max_message) {
    return std::max<std::uint64_t>(256 * 1024, 4 * sysv::ring::record_size(max_message));
}

class bench_room {
public:
    bench_room(asio::io_context& io, std::size_t max_message) {
        options_.shape.max_readers = 2;
        options_.shape.max_message_size =
            static_cast<std::uint32_t>(std::max<std::size_t>(max_message, 64));
        options_.shape.capacity = bench_ring_capacity(options_.shape.max_message_size);
        options_.slow_reader_grace = std::chrono::seconds(60); // backpressure, never drops
        const int fd = ::mkstemp(path_);
        if (fd == -1)
            throw std::runtime_error("mkstemp failed");
        ::close(fd);
        key_ = sysv::key::from_path(path_, 1);
        channel_.emplace(sysv::channel::open_or_create(io.get_executor(), key_, options_));
        segment_ = channel_->segment().id();
        set_ = channel_->semaphores().id();
        bench::track_segment(segment_);
        bench::track_semaphore_set(set_);
    }
    bench_room(const bench_room&) = delete;
    bench_room& operator=(const bench_room&) = delete;
    ~bench_room() {
        sysv::error_code ignored;
        channel_->remove(ignored);
        bench::untrack_segment(segment_);
        bench::untrack_semaphore_set(set_);
        ::unlink(path_);
    }
    sysv::channel& reader() { return *channel_; }
    /// The peer's own channel object (the parent's belongs to the parent's io_context).
    sysv::channel open_peer(asio::io_context& io) const {
        return sysv::channel::open_or_create(io.get_executor(), key_, options_);
    }

private:
    char path_[64] = "/tmp/sysv-bench-channel-XXXXXX";
    sysv::channel_options options_;
    sysv::key key_ = sysv::key::private_key();
    std::optional<sysv::channel> channel_;
    int segment_ = -1, set_ = -1;
};

result run_channel(std::size_t size, long count, std::size_t batch, bool immediate, bool reused) {
    asio::io_context io;
    bench_room room(io, size);
    auto& ch = room.reader();
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
        auto writer_channel = room.open_peer(wio);
        std::vector<std::byte> payload(size, std::byte{'p'});
        asio::co_spawn(
            wio,
            [&]() -> asio::awaitable<void> {
                std::vector<asio::const_buffer> messages;
                for (long sent = 0; sent < count;) {
                    messages.clear();
                    for (std::size_t i = 0; i < batch && sent < count; ++i, ++sent)
                        messages.push_back(asio::buffer(payload));
                    if (messages.size() == 1 && immediate)
                        co_await writer_channel.async_send(
                            messages[0],
                            sysv::bind_immediate_executor(wio.get_executor(), asio::use_awaitable));
                    else if (messages.size() == 1)
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
            sysv::channel_batch into;
            while (received < count) {
                if (batch > 1 && reused) { // into one batch object, reused from call to call
                    const std::size_t n =
                        co_await ch.async_receive_batch(into, asio::use_awaitable);
                    for (const auto& m : into)
                        if (m.bytes.size() != size)
                            throw std::runtime_error("channel delivered a wrong-sized message");
                    received += static_cast<long>(n);
                    continue;
                }
                if (batch > 1) { // batched on both sides: async_receive_batch
                    auto all = co_await ch.async_receive_batch(asio::use_awaitable);
                    for (const auto& m : all)
                        if (m.bytes.size() != size)
                            throw std::runtime_error("channel delivered a wrong-sized message");
                    received += static_cast<long>(all.size());
                    continue;
                }
                auto m = immediate ? co_await ch.async_receive(sysv::bind_immediate_executor(
                                         io.get_executor(), asio::use_awaitable))
                                   : co_await ch.async_receive(asio::use_awaitable);
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

/// A boost::interprocess::message_queue (POSIX shared memory in /dev/shm), named after this
/// process, removed at the end.
class bench_queue {
public:
    bench_queue(std::size_t size, std::size_t max_messages) {
        static int counter = 0;
        name_ = "sysv-bench-mq-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
        namespace bip = boost::interprocess;
        bip::message_queue::remove(name_.c_str());
        queue_.emplace(bip::create_only, name_.c_str(), max_messages, size);
    }
    bench_queue(const bench_queue&) = delete;
    bench_queue& operator=(const bench_queue&) = delete;
    ~bench_queue() {
        queue_.reset();
        boost::interprocess::message_queue::remove(name_.c_str());
    }
    boost::interprocess::message_queue& queue() { return *queue_; }
    const char* name() const { return name_.c_str(); }

private:
    std::string name_;
    std::optional<boost::interprocess::message_queue> queue_;
};

/// What a C++ user would take instead of the channel: one blocking send per message in a forked
/// writer, one blocking receive per message here, straight into one reused buffer: the queue's
/// cheapest use (one copy out of shared memory, no allocation, where the channel's reader
/// allocates a channel_message per message). The queue holds as many messages as the channel's
/// ring (256 KiB of payload, at least 4 messages).
result run_message_queue(std::size_t size, long count) {
    bench_queue q(size, std::max<std::size_t>(4, 256 * 1024 / size));
    const std::int64_t start = now_ns();
    bench::child writer([&]() -> int {
        boost::interprocess::message_queue peer(boost::interprocess::open_only, q.name());
        std::vector<std::byte> payload(size, std::byte{'p'});
        for (long sent = 0; sent < count; ++sent)
            peer.send(payload.data(), payload.size(), 0);
        return 0;
    });
    // No second copy into another vector: two 64 KiB vectors allocated one after the other sit
    // 16 bytes apart modulo a page, where glibc's memcpy is at its slowest on AMD processors (see
    // copy_bytes in modules/ring/ring.cpp); it made this row four times slower than the queue.
    std::vector<std::byte> buffer(size);
    for (long received = 0; received < count; ++received) {
        boost::interprocess::message_queue::size_type length = 0;
        unsigned priority = 0;
        q.queue().receive(buffer.data(), buffer.size(), length, priority);
        if (length != size)
            throw std::runtime_error("message_queue delivered a message of the wrong size");
    }
    const std::int64_t end = now_ns();
    writer.join("message_queue writer");
    const double seconds = static_cast<double>(end - start) / 1e9;
    return {static_cast<double>(count) / seconds,
            static_cast<double>(count) * static_cast<double>(size) / seconds};
}

/// The ceiling of any API with one asynchronous call per message on an io_context: a coroutine
/// that does nothing but `co_await post` (one process, no IPC, no copy). Asio's scheduler polls
/// its reactor (epoll_wait with a zero timeout) between two handlers, so each call costs a
/// syscall even when nothing waits; a reactor exists in any program with a timer or a socket.
result run_post_ceiling(std::size_t size, long count) {
    asio::io_context io(1);
    asio::steady_timer timer(io); // a reactor, as in every real program
    const std::int64_t start = now_ns();
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            for (long i = 0; i < count; ++i)
                co_await asio::post(io, asio::use_awaitable);
        },
        asio::detached);
    io.run();
    const double seconds = static_cast<double>(now_ns() - start) / 1e9;
    return {static_cast<double>(count) / seconds,
            static_cast<double>(count) * static_cast<double>(size) / seconds};
}

/// The ceiling of any transport that copies each message into shared memory and out of it again
/// (the channel, the message_queue): two processes, a ring of fixed slots in an anonymous shared
/// mapping with the channel's capacity and record size, the writer memcpy-ing each message into
/// the next slot and publishing it with one release store, the reader spinning until it is there,
/// memcpy-ing it into one reused buffer and releasing the slot with another. No lock, no
/// validation, no syscall, no crash safety: what the two copies and the cache lines they move
/// between the two cores cost on this machine, in this run. At 64 KiB it is what bounds both
/// the channel and the queue.
result run_copy_ceiling(std::size_t size, long count) {
    struct alignas(64) shared_positions {
        std::atomic<std::uint64_t> written{0};
        alignas(64) std::atomic<std::uint64_t> read{0};
    };
    const std::uint64_t record = sysv::ring::record_size(size);
    const std::uint64_t capacity = bench_ring_capacity(static_cast<std::uint32_t>(size));
    const std::uint64_t slots = capacity / record;
    const std::size_t bytes = sizeof(shared_positions) + capacity;
    void* mapping =
        ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mapping == MAP_FAILED)
        throw std::runtime_error("mmap of the copy ceiling's ring failed");
    struct unmap {
        void* p;
        std::size_t n;
        ~unmap() { ::munmap(p, n); }
    } guard{mapping, bytes};
    auto* positions = new (mapping) shared_positions;
    std::byte* ring = static_cast<std::byte*>(mapping) + sizeof(shared_positions);
    // Both sides spin, yielding the CPU now and then in case the peer shares it.
    const auto spin_until = [](auto&& ready) {
        for (unsigned i = 1; !ready(); ++i)
            if (i % 256 == 0)
                ::sched_yield();
    };
    const std::int64_t start = now_ns();
    bench::child writer([&]() -> int {
        std::vector<std::byte> payload(size, std::byte{'p'});
        for (std::uint64_t i = 0; i < static_cast<std::uint64_t>(count); ++i) {
            spin_until([&] { return i - positions->read.load(std::memory_order_acquire) < slots; });
            std::memcpy(ring + (i % slots) * record + sysv::ring::record_header_size,
                        payload.data(), size);
            positions->written.store(i + 1, std::memory_order_release);
        }
        return 0;
    });
    std::vector<std::byte> buffer(size);
    for (std::uint64_t i = 0; i < static_cast<std::uint64_t>(count); ++i) {
        spin_until([&] { return positions->written.load(std::memory_order_acquire) > i; });
        std::memcpy(buffer.data(), ring + (i % slots) * record + sysv::ring::record_header_size,
                    size);
        positions->read.store(i + 1, std::memory_order_release);
    }
    const std::int64_t end = now_ns();
    writer.join("copy ceiling writer");
    if (buffer.front() != std::byte{'p'} || buffer.back() != std::byte{'p'})
        throw std::runtime_error("the copy ceiling's reader read something else than was written");
    const double seconds = static_cast<double>(end - start) / 1e9;
    return {static_cast<double>(count) / seconds,
            static_cast<double>(count) * static_cast<double>(size) / seconds};
}

// ---- One-way latency of a lone 64-byte message ----------------------------------------------

/// The writer sends `count` 64-byte messages, one every `gap` (an absolute schedule, so each
/// message travels alone), each carrying CLOCK_MONOTONIC taken right before its send; the reader
/// subtracts it from CLOCK_MONOTONIC when the message is in its hands. Samples in microseconds.
constexpr std::size_t latency_size = 64;

void sleep_until_ns(std::int64_t t) {
    timespec ts{static_cast<time_t>(t / 1'000'000'000), static_cast<long>(t % 1'000'000'000)};
    while (::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
    }
}

/// The writer's side: message i is due at 20 ms from construction + i * gap, and carries
/// CLOCK_MONOTONIC taken right before it is sent.
class paced_stamps {
public:
    explicit paced_stamps(std::int64_t gap) : first_(now_ns() + 20'000'000), gap_(gap) {}
    /// Sleeps until message `i` is due, then stamps it: the buffer to send right away.
    asio::const_buffer next(long i) {
        sleep_until_ns(first_ + i * gap_);
        const std::int64_t t = now_ns();
        std::memcpy(payload_.data(), &t, sizeof t);
        return asio::buffer(payload_);
    }

private:
    std::vector<std::byte> payload_ = std::vector<std::byte>(latency_size, std::byte{'p'});
    std::int64_t first_, gap_;
};

/// The reader's side: microseconds from the stamp in `data` to `arrived`.
double us_since_stamp(const void* data, std::int64_t arrived) {
    std::int64_t t;
    std::memcpy(&t, data, sizeof t);
    return static_cast<double>(arrived - t) / 1e3;
}

/// The wake configuration and counts of the last latency_channel() reader, as it ended.
bench::wake_report latency_channel_wake;

std::vector<double> latency_channel(long count, std::int64_t gap) {
    asio::io_context io;
    // The wake configuration is chosen (and checked, once per process) now, not at the first
    // receive: the measurement is of messages, not of that check.
    sysv::wake_mode_of(io);
    bench_room room(io, latency_size);
    auto& ch = room.reader();
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> { co_await ch.async_join("reader", asio::use_awaitable); },
        asio::detached);
    io.run();
    io.restart();
    bench::child writer([&]() -> int {
        asio::io_context wio;
        auto writer_channel = room.open_peer(wio);
        asio::co_spawn(
            wio,
            [&]() -> asio::awaitable<void> {
                paced_stamps stamps(gap);
                for (long i = 0; i < count; ++i)
                    co_await writer_channel.async_send(stamps.next(i), asio::use_awaitable);
            },
            asio::detached);
        wio.run();
        return 0;
    });
    std::vector<double> samples;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            while (static_cast<long>(samples.size()) < count) {
                auto m = co_await ch.async_receive(asio::use_awaitable);
                const std::int64_t arrived = now_ns();
                if (m.bytes.size() != latency_size)
                    throw std::runtime_error("channel delivered a message of the wrong size");
                samples.push_back(us_since_stamp(m.bytes.data(), arrived));
            }
        },
        asio::detached);
    io.run();
    writer.join("channel writer");
    latency_channel_wake = bench::report_wake(io, "");
    return samples;
}

std::vector<double> latency_message_queue(long count, std::int64_t gap) {
    bench_queue q(latency_size, 64);
    bench::child writer([&]() -> int {
        boost::interprocess::message_queue peer(boost::interprocess::open_only, q.name());
        paced_stamps stamps(gap);
        for (long i = 0; i < count; ++i) {
            const auto message = stamps.next(i);
            peer.send(message.data(), message.size(), 0);
        }
        return 0;
    });
    std::vector<double> samples;
    std::vector<std::byte> buffer(latency_size);
    for (long i = 0; i < count; ++i) {
        boost::interprocess::message_queue::size_type length = 0;
        unsigned priority = 0;
        q.queue().receive(buffer.data(), buffer.size(), length, priority);
        const std::int64_t arrived = now_ns();
        if (length != latency_size)
            throw std::runtime_error("message_queue delivered a message of the wrong size");
        samples.push_back(us_since_stamp(buffer.data(), arrived));
    }
    writer.join("message_queue writer");
    return samples;
}

std::vector<double> latency_socket(long count, std::int64_t gap) {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == -1)
        throw std::runtime_error("socketpair failed");
    bench::child writer([&]() -> int {
        ::close(fds[0]);
        asio::io_context io;
        asio::local::stream_protocol::socket s(io, asio::local::stream_protocol(), fds[1]);
        asio::co_spawn(
            io,
            [&]() -> asio::awaitable<void> {
                paced_stamps stamps(gap);
                for (long i = 0; i < count; ++i)
                    co_await asio::async_write(s, stamps.next(i), asio::use_awaitable);
            },
            asio::detached);
        io.run();
        return 0;
    });
    ::close(fds[1]);
    asio::io_context io;
    asio::local::stream_protocol::socket s(io, asio::local::stream_protocol(), fds[0]);
    std::vector<double> samples;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            std::vector<std::byte> buffer(latency_size);
            while (static_cast<long>(samples.size()) < count) {
                co_await asio::async_read(s, asio::buffer(buffer), asio::use_awaitable);
                const std::int64_t arrived = now_ns();
                samples.push_back(us_since_stamp(buffer.data(), arrived));
            }
        },
        asio::detached);
    io.run();
    writer.join("socket writer");
    return samples;
}

void run_latency(bench::context& ctx, int runs) {
    const auto& opt = ctx.opt;
    const long count = opt.rounds_or(2000, 300);
    const std::int64_t gap = 200'000; // 200 us between messages
    struct row {
        std::string id, label;
        std::vector<double> (*run)(long, std::int64_t);
    };
    const std::vector<row> rows{
        {"latency_message_queue", "boost::interprocess::message_queue send / receive [baseline]",
         &latency_message_queue},
        {"latency_channel", "sysv::channel async_send / async_receive", &latency_channel},
        {"latency_socket", "Asio local::stream_protocol async_write / async_read", &latency_socket},
    };
    std::vector<std::vector<double>> samples(rows.size()), run_p50(rows.size());
    std::vector<std::vector<bench::wake_report>> ran_with(rows.size());
    for (int run = 0; run < runs; ++run)
        for (std::size_t k = 0; k < rows.size(); ++k) {
            const std::size_t i = (k + static_cast<std::size_t>(run)) % rows.size();
            if (!opt.wants(rows[i].id))
                continue;
            ctx.progress(rows[i].id + " run " + std::to_string(run + 1));
            bench::watchdog(120, rows[i].id.c_str());
            auto s = rows[i].run(count, gap);
            if (rows[i].run == &latency_channel)
                bench::merge(ran_with[i], latency_channel_wake);
            run_p50[i].push_back(bench::median(s));
            samples[i].insert(samples[i].end(), s.begin(), s.end());
        }
    bench::watchdog(0, nullptr);
    bench::table t({"transport", "p50 (us)", "p99 (us)", "max (us)", "p50 / message_queue",
                    "p99 / message_queue", "samples", "ran with"});
    const auto base = bench::summarize(samples[0]);
    for (std::size_t i = 0; i < rows.size(); ++i) {
        if (samples[i].empty())
            continue;
        const auto s = bench::summarize(samples[i]);
        const double r50 = samples[0].empty() ? NAN : s.p50 / base.p50;
        const double r99 = samples[0].empty() ? NAN : s.p99 / base.p99;
        ctx.record(rows[i].id, "latency_p50", s.p50, "us");
        ctx.record(rows[i].id, "latency_p99", s.p99, "us");
        t.add({rows[i].label, bench::fmt(s.p50), bench::fmt(s.p99), bench::fmt(s.max),
               bench::ratio_text(r50), bench::ratio_text(r99), std::to_string(s.count),
               bench::describe(ran_with[i])});
    }
    if (!samples[0].empty() && !samples[1].empty()) {
        const auto channel = bench::summarize(samples[1]);
        ctx.target("lone 64-byte channel message: p50 <= 1x and p99 <= 2x message_queue's",
                   "p50 " + bench::fmt(channel.p50) + " us (" +
                       bench::ratio_text(channel.p50 / base.p50) + "), p99 " +
                       bench::fmt(channel.p99) + " us (" +
                       bench::ratio_text(channel.p99 / base.p99) + ")",
                   channel.p50 <= base.p50 && channel.p99 <= 2.0 * base.p99);
    }
    if (!t.empty())
        ctx.print("One-way latency of a lone 64-byte message between two processes", t,
                  std::to_string(runs) + " runs x " + std::to_string(count) +
                      " messages per row, one every 200 us (each travels alone: the reader "
                      "is idle when it comes); rows interleaved run by run. The writer puts "
                      "CLOCK_MONOTONIC in the message right before sending; the reader "
                      "subtracts it when the message is in its hands.");
}

void run_channel_section(bench::context& ctx) {
    const auto& opt = ctx.opt;
    const int runs = opt.runs_or(3, 1);
    struct size_row {
        std::size_t size;
        long count;
    };
    const std::vector<size_row> sizes{{64, opt.rounds_or(1000000, 20000)},
                                      {4096, opt.rounds_or(100000, 5000)},
                                      {65536, opt.rounds_or(20000, 500)}};
    // The first row is the baseline of the "ratio to socket" column, the second that of the
    // "ratio to message_queue" column.
    const std::vector<transport> transports{
        {"socket", "Asio local::stream_protocol, one async_write per message [baseline]",
         kind::socket, 1},
        {"message_queue", "boost::interprocess::message_queue, one send / receive per message",
         kind::message_queue, 1},
        {"channel", "sysv::channel, one async_send / async_receive per message", kind::channel, 1},
        {"channel_immediate",
         "sysv::channel, one async_send / async_receive per message, immediate executor bound",
         kind::channel, 1, true},
        {"socket_batch64", "Asio local::stream_protocol, 64 messages per gather write",
         kind::socket, 64},
        {"post_ceiling", "(ceiling) one co_await asio::post per message, one process, no IPC",
         kind::post, 1},
        {"channel_batch64", "sysv::channel, async_send_batch of 64 / async_receive_batch",
         kind::channel, 64},
        {"channel_batch64_reused",
         "sysv::channel, async_send_batch of 64 / async_receive_batch into a reused channel_batch",
         kind::channel, 64, false, true},
        {"copy_ceiling",
         "(ceiling) memcpy in and out of a shared ring of the same size, spinning, no syscall",
         kind::copy, 1},
    };
    bench::table t({"message size", "transport", "messages/s", "GB/s", "ratio to socket",
                    "ratio to message_queue", "ratio to copy ceiling"});
    const std::size_t copy_ceiling = transports.size() - 1;
    for (const auto& sz : sizes) {
        std::vector<std::vector<result>> results(transports.size());
        std::vector<std::vector<int>> run_of(transports.size());
        for (int run = 0; run < runs; ++run)
            for (std::size_t k = 0; k < transports.size(); ++k) {
                const std::size_t i = (k + static_cast<std::size_t>(run)) % transports.size();
                const auto& tr = transports[i];
                const std::string row = tr.id + "_" + std::to_string(sz.size);
                if (!opt.wants(row))
                    continue;
                ctx.progress(row + " run " + std::to_string(run + 1));
                bench::watchdog(300, row.c_str());
                results[i].push_back(
                    tr.how == kind::channel
                        ? run_channel(sz.size, sz.count, tr.batch, tr.immediate, tr.reused)
                    : tr.how == kind::socket ? run_socket(sz.size, sz.count, tr.batch)
                    : tr.how == kind::post   ? run_post_ceiling(sz.size, sz.count)
                    : tr.how == kind::copy   ? run_copy_ceiling(sz.size, sz.count)
                                             : run_message_queue(sz.size, sz.count));
                run_of[i].push_back(run);
                ctx.record(row, "messages_per_second", results[i].back().messages_per_second, "1/s",
                           std::to_string(run + 1));
            }
        bench::watchdog(0, nullptr);
        // Ratios are taken within a run: row / baseline of the same run.
        const auto ratios_to = [&](std::size_t i, std::size_t base) {
            std::vector<double> ratios;
            for (std::size_t a = 0; a < results[i].size(); ++a)
                for (std::size_t b = 0; b < results[base].size(); ++b)
                    if (run_of[i][a] == run_of[base][b])
                        ratios.push_back(results[i][a].messages_per_second /
                                         results[base][b].messages_per_second);
            return ratios.empty() ? NAN : bench::median(ratios);
        };
        for (std::size_t i = 0; i < transports.size(); ++i) {
            if (results[i].empty())
                continue;
            std::vector<double> rates, bytes;
            for (const auto& r : results[i]) {
                rates.push_back(r.messages_per_second);
                bytes.push_back(r.bytes_per_second);
            }
            const std::string row = transports[i].id + "_" + std::to_string(sz.size);
            const double rate = bench::median(rates), gbps = bench::median(bytes) / 1e9;
            const double to_socket = ratios_to(i, 0), to_queue = ratios_to(i, 1),
                         to_ceiling = ratios_to(i, copy_ceiling);
            ctx.record(row, "messages_per_second", rate, "1/s");
            ctx.record(row, "gigabytes_per_second", gbps, "GB/s");
            ctx.record(row, "ratio_to_baseline", to_socket, "x");
            ctx.record(row, "ratio_to_message_queue", to_queue, "x");
            ctx.record(row, "ratio_to_copy_ceiling", to_ceiling, "x");
            t.add({std::to_string(sz.size) + " B", transports[i].label, bench::fmt(rate, 0),
                   bench::fmt(gbps, 3), bench::ratio_text(to_socket), bench::ratio_text(to_queue),
                   bench::ratio_text(to_ceiling)});
            const bool single = transports[i].id == "channel";
            const bool immediate = transports[i].id == "channel_immediate";
            const bool batched = transports[i].id == "channel_batch64" ||
                                 transports[i].id == "channel_batch64_reused";
            const std::string size_text = sz.size == 65536  ? "64 KiB"
                                          : sz.size == 4096 ? "4 KiB"
                                                            : std::to_string(sz.size) + " B";
            if ((single || immediate) && sz.size == 64) {
                const std::string what =
                    std::string("channel, one async_send per message at 64 B") +
                    (immediate ? ", immediate executor bound" : "");
                if (!std::isnan(to_queue))
                    ctx.target(what + ": >= 1x the message_queue's rate",
                               bench::ratio_text(to_queue), to_queue >= 1.0);
                if (!std::isnan(to_socket))
                    ctx.target(what + ": >= 10x the Unix-socket rate", bench::ratio_text(to_socket),
                               to_socket >= 10.0);
            }
            if (single && sz.size == 65536) {
                if (!std::isnan(to_queue))
                    ctx.target("channel, one async_send per message at 64 KiB: >= 1.5x the "
                               "message_queue's GB/s",
                               bench::ratio_text(to_queue), to_queue >= 1.5);
                if (!std::isnan(to_socket))
                    ctx.target("channel, one async_send per message at 64 KiB: >= 1.5x the "
                               "Unix-socket GB/s",
                               bench::ratio_text(to_socket), to_socket >= 1.5);
            }
            if (batched && !std::isnan(to_queue)) {
                // What two copies through shared memory allow in the same runs, for context.
                const double ceiling_to_queue = ratios_to(copy_ceiling, 1);
                ctx.target(
                    "channel, async_send_batch / async_receive_batch" +
                        std::string(transports[i].reused ? " into a channel_batch" : "") + " at " +
                        size_text + ": >= 3x the message_queue's rate",
                    bench::ratio_text(to_queue) +
                        (std::isnan(ceiling_to_queue)
                             ? std::string()
                             : " (copy ceiling " + bench::ratio_text(ceiling_to_queue) + ")"),
                    to_queue >= 3.0);
            }
        }
    }
    if (!t.empty())
        ctx.print("Channel throughput between two processes", t,
                  "Median of " + std::to_string(runs) +
                      " runs; the writer is a forked process, the reader copies every message "
                      "out (a channel_message, a std::vector per socket frame, one reused "
                      "buffer for the queue); ratios = row / that row of the same run (median over "
                      "runs). "
                      "The message_queue holds 256 KiB of messages (at least 4), like the "
                      "channel's ring. The post ceiling row bounds any API with one posted "
                      "completion per message on an io_context: Asio 1.81's scheduler makes an "
                      "epoll_wait (zero timeout) between two handlers. The immediate executor "
                      "row binds both sides' tokens with sysv::bind_immediate_executor: a "
                      "completion known at once runs inline (one in 64 is posted). The copy "
                      "ceiling row bounds any transport that copies each message into shared "
                      "memory and out again: the two memcpys alone, synchronised by spinning on "
                      "two counters (one store each per message).");
    run_latency(ctx, runs);
}

const bench::registrar channel_section{
    {"channel", 50, "6. Channel throughput", &run_channel_section}};

} // namespace
