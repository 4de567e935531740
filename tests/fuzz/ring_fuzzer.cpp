// libFuzzer target for the channel's ring (sysv.ring): every reader of shared-memory contents
// must survive arbitrary bytes written by another process. The input builds a valid ring (so
// the fuzzer gets past the header checks), then overwrites bytes of it anywhere, then runs
// every operation a reader or writer performs under the channel's lock (and the lock word's
// own). ASan and UBSan turn any out-of-bounds access or undefined behaviour into a crash.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

import sysv.core;
import sysv.ring;

namespace {

class input {
public:
    input(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
    template <class T>
    T take() {
        T v{};
        const std::size_t n = std::min(sizeof v, size_ - used_);
        std::memcpy(&v, data_ + used_, n);
        used_ += n;
        return v;
    }
    bool empty() const { return used_ >= size_; }

private:
    const std::uint8_t* data_;
    std::size_t size_;
    std::size_t used_ = 0;
};

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    namespace ring = sysv::ring;
    input in(data, size);
    ring::layout shape;
    shape.max_readers = 1 + in.take<std::uint8_t>() % 8;
    shape.max_message_size = 1 + in.take<std::uint8_t>();
    shape.capacity =
        (2 * ring::record_size(shape.max_message_size) + 8 * (in.take<std::uint8_t>() % 64));
    std::vector<std::byte> memory(ring::segment_size(shape) + in.take<std::uint8_t>() % 16);
    ring::initialise(memory, shape);
    sysv::error_code ec;
    auto writer = ring::view::open(memory, ec);
    if (ec)
        __builtin_trap(); // a ring we just initialised must open
    for (std::size_t r = 0; r < shape.max_readers; ++r)
        writer.join(r, 1, "fuzz");
    // Some valid traffic first.
    const int messages = in.take<std::uint8_t>() % 16;
    std::vector<std::byte> payload(shape.max_message_size, std::byte{'p'});
    for (int i = 0; i < messages; ++i) {
        const std::size_t length = in.take<std::uint8_t>() % (shape.max_message_size + 1);
        if (!writer.fits(length))
            writer.drop_oldest(length, ec);
        if (writer.fits(length))
            writer.append(std::span(payload).first(length), 1, ec);
    }
    // Then another process scribbles anywhere in the segment (header, table, ring).
    while (!in.empty()) {
        const auto at = in.take<std::uint32_t>() % memory.size();
        const auto width = 1 + in.take<std::uint8_t>() % 8;
        for (std::size_t i = 0; i < width && at + i < memory.size(); ++i)
            memory[at + i] = static_cast<std::byte>(in.take<std::uint8_t>());
    }
    // The lock word is used before the header is checked (and whatever it holds): take it, take
    // it over from whoever the scribbles left there, mark a sleeper, release it.
    ring::lock_word lock(memory);
    const std::uint64_t me = ring::lock_identity(7, 42);
    const std::uint64_t found = lock.holder();
    if (!lock.try_lock(me) && !lock.steal(found, me))
        __builtin_trap(); // free, or held by `found`: one of the two takes it
    lock.mark_sleeper();
    if (lock.unlock(me) != ring::lock_word::unlock_result::released_wake_sleepers ||
        lock.holder() != 0)
        __builtin_trap();
    // A member that knows the layout accepts the segment only as open() would, with that shape.
    sysv::error_code known_error;
    const auto known = ring::view::open(memory, shape, known_error);
    // Everything a participant does with the lock held.
    auto view = ring::view::open(memory, ec);
    if (!known_error && (ec || !(known.shape() == view.shape())))
        __builtin_trap();
    if (ec)
        return 0; // refused: that is a valid outcome
    (void)view.pid_namespace();
    view.repair();
    std::vector<std::uint8_t> live(view.shape().max_readers, 1);
    view.collect(live);
    for (std::size_t r = 0; r < view.shape().max_readers + 1; ++r) {
        // Each read also runs into a message_batch on a copy of the segment: same outcome, same
        // messages, same writes to the segment.
        std::vector<std::byte> twin(memory.begin(), memory.end());
        sysv::error_code twin_ec;
        auto twin_view = ring::view::open(twin, twin_ec);
        if (twin_ec)
            __builtin_trap();
        const auto same = [&](const std::vector<ring::message>& out,
                              const ring::message_batch& batch) {
            if (out.size() != batch.size())
                __builtin_trap();
            for (std::size_t i = 0; i < out.size(); ++i) {
                const auto b = batch[i];
                if (out[i].bytes.size() > view.shape().max_message_size ||
                    !std::equal(out[i].bytes.begin(), out[i].bytes.end(), b.bytes.begin(),
                                b.bytes.end()) ||
                    out[i].sender_pid != b.sender_pid || out[i].sequence != b.sequence ||
                    reinterpret_cast<std::uintptr_t>(b.bytes.data()) % 16 != 0)
                    __builtin_trap();
            }
            if (!std::equal(memory.begin(), memory.end(), twin.begin(), twin.end()))
                __builtin_trap();
        };
        std::vector<ring::message> out;
        ring::message_batch batch;
        std::uint64_t missed = 0, batch_missed = 0;
        view.read(r, out, missed, 64, ec);
        twin_view.read(r, batch, batch_missed, 64, twin_ec);
        if (missed != batch_missed || ec != twin_ec)
            __builtin_trap();
        same(out, batch);
        std::vector<ring::message> fast;
        batch.clear();
        if (view.read_unlocked(r, fast, 64) != twin_view.read_unlocked(r, batch, 64))
            __builtin_trap();
        same(fast, batch);
        (void)view.label(r);
        (void)view.take_sleeping(r);
    }
    (void)view.any_sleeping();
    view.clear_sleeping_count();
    view.drop_oldest(view.shape().max_message_size, ec);
    if (view.fits(4)) {
        const std::byte text[4] = {};
        view.append(text, 2, ec);
    }
    return 0;
}
