// sysv.core: the synchronous System V IPC layer (keys, shared memory, semaphore sets, errors).
//
// Conventions used throughout:
//  * every operation comes as a pair: `f(args..., error_code&)` which never throws, and
//  `f(args...)`
//    which throws boost::system::system_error whose what() names the operation, the object (key and
//    id) and the cause, and for kernel limits which limit and where it is set;
//  * errno values keep boost::system::system_category(); conditions of our own are sysv::errc;
//    EIDRM and EINVAL on an id that no longer exists both become sysv::errc::removed;
//  * handles are move-only; destroying a handle never removes the kernel object (call remove(),
//    or hold a sysv::scoped_remover);
//  * default permissions are 0600; wider modes only when asked for.
module;

#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/types.h>

#include <boost/system/error_code.hpp>
#include <boost/system/system_error.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

export module sysv.core;

export namespace sysv {

using error_code = boost::system::error_code;
using system_error = boost::system::system_error;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Conditions detected by this library (kernel errno values stay in system_category()).
enum class errc {
    /// The object was removed (IPC_RMID by anyone, `ipcrm`, systemd's RemoveIPC) while in use.
    removed = 1,
    /// An object exists at the key but is not the one asked for: other owner, other mode, too
    /// small, other number of semaphores, or (for library formats) a wrong magic number.
    foreign_object,
    /// An object could not be brought to a usable state in time: open_or_create found a set
    /// whose creator has not published its initial values (or died before doing so), a
    /// shared_memory::open_or_create kept losing its race with a remover, a channel could not
    /// take its initialisation lock within open_options::initialisation_timeout.
    not_initialised,
    /// A request exceeds a kernel limit (SEMMSL, SEMOPM, SHMMAX, ...), detected before the call.
    limit_exceeded,
    /// An argument is invalid (empty operation group, mode with bits outside 0777, ...).
    invalid_argument,
    /// A semaphore index is not below the size of the set.
    index_out_of_range,
    /// A semaphore value or operation count is outside 0..32767 (SEMVMX).
    value_out_of_range,
    /// A typed view of an attachment does not fit in the segment or is misaligned.
    bad_layout,
    /// Shared data written by another process failed validation (untrusted input).
    corrupt_segment,
    /// The handle is not open (default-constructed, moved from, or after remove()).
    not_open,
    /// A channel reader did not keep up: messages were dropped before it read them (the count
    /// comes with the result). The reader continues with the oldest message still available.
    messages_missed,
    /// A channel has no free reader slot.
    no_free_slot,
    /// A robust_mutex was taken from a holder that died holding it (the lock is held now): the
    /// data it protects may be half-updated. Repair it, then guard::mark_consistent().
    owner_dead,
};

/// The category of sysv::errc; its name is "sysv".
const boost::system::error_category& error_category() noexcept;

inline error_code make_error_code(errc e) noexcept {
    return error_code(static_cast<int>(e), error_category());
}

// ---------------------------------------------------------------------------------------------
// Kernel limits
// ---------------------------------------------------------------------------------------------

/// Limits of the running kernel (of this process's IPC namespace), from semctl/shmctl(IPC_INFO).
/// Semaphore limits are set in /proc/sys/kernel/sem ("SEMMSL SEMMNS SEMOPM SEMMNI"); shared memory
/// limits in /proc/sys/kernel/shmmax, shmall and shmmni.
struct kernel_limits {
    int max_semaphores_per_set;   ///< SEMMSL
    int max_semaphores;           ///< SEMMNS (system-wide)
    int max_operations_per_call;  ///< SEMOPM
    int max_semaphore_sets;       ///< SEMMNI
    int max_semaphore_value;      ///< SEMVMX (32767 on Linux)
    std::size_t max_segment_size; ///< SHMMAX
    std::size_t min_segment_size; ///< SHMMIN
    std::size_t max_segments;     ///< SHMMNI
    std::size_t max_total_pages;  ///< SHMALL (pages of shared memory, system-wide)
};

/// The limits now: read from the kernel on every call (two syscalls), since an administrator
/// may change them while programs run. Creating objects and composing error messages use the
/// current values; the per-operation check of SEMOPM uses a copy refreshed when it refuses.
kernel_limits limits();

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

/// A System V IPC key: from ftok(3), IPC_PRIVATE, or a raw value agreed between programs.
class key {
public:
    /// IPC_PRIVATE.
    constexpr key() noexcept = default;
    /// A key with a raw value (e.g. one agreed on by the programs that share the object).
    constexpr explicit key(key_t raw) noexcept : value_(raw) {}

    /// IPC_PRIVATE: every create() makes a new object, reachable only through its id (and by
    /// processes forked after the creation).
    static constexpr key private_key() noexcept { return key(IPC_PRIVATE); }

    /// ftok(path, project_id). The file must exist and stay in place (ftok uses its inode);
    /// project_id must be in 1..255 (ftok uses only the low 8 bits, and 0 is reserved here).
    static key from_path(const std::filesystem::path& path, int project_id, error_code& ec);
    static key from_path(const std::filesystem::path& path, int project_id);

    constexpr key_t value() const noexcept { return value_; }
    constexpr bool is_private() const noexcept { return value_ == IPC_PRIVATE; }
    friend constexpr bool operator==(key, key) noexcept = default;

private:
    key_t value_ = IPC_PRIVATE;
};

/// "0x0000beef", or "IPC_PRIVATE".
std::string to_string(key k);

// ---------------------------------------------------------------------------------------------
// Ownership and status
// ---------------------------------------------------------------------------------------------

/// Owner and access bits of an object, as set by set_permissions() (IPC_SET).
struct permissions {
    uid_t owner_uid;
    gid_t owner_gid;
    mode_t mode; ///< the low 9 bits (rw for user, group, other) are used
};

using time_point = std::chrono::system_clock::time_point;

/// The result of shared_memory::stat() (IPC_STAT).
struct shared_memory_status {
    key ipc_key;
    permissions owner;
    uid_t creator_uid;
    gid_t creator_gid;
    std::size_t size;
    std::size_t attach_count;
    pid_t creator_pid;
    pid_t last_pid;                        ///< last shmat/shmdt
    std::optional<time_point> last_attach; ///< empty when never attached
    std::optional<time_point> last_detach;
    time_point last_change;
    bool marked_for_removal; ///< removed while still attached (SHM_DEST)
};

/// The result of semaphore_set::stat() (IPC_STAT).
struct semaphore_set_status {
    key ipc_key;
    permissions owner;
    uid_t creator_uid;
    gid_t creator_gid;
    std::size_t size;                         ///< number of semaphores
    std::optional<time_point> last_operation; ///< empty until the first semop (see open_or_create)
    time_point last_change;
};

// ---------------------------------------------------------------------------------------------
// Shared memory
// ---------------------------------------------------------------------------------------------

namespace detail {
[[noreturn]] void throw_layout_error(const error_code& ec, std::size_t offset, std::size_t count,
                                     std::size_t size, std::size_t align, std::size_t segment_size);
} // namespace detail

/// Tags selecting how a segment is attached; they decide the attachment's type.
namespace access {
struct read_write_t {
    explicit read_write_t() = default;
};
struct read_only_t {
    explicit read_only_t() = default;
};
inline constexpr read_write_t read_write{};
inline constexpr read_only_t read_only{};
} // namespace access

/// A segment mapped into this process (shmat). Move-only; detaches (shmdt) on destruction.
/// `Byte` is std::byte for a read-write attachment and const std::byte for a read-only one, so
/// writing through a read-only attachment does not compile.
///
/// The contents may be written by other processes at any time: treat them as untrusted input.
template <class Byte>
class basic_attachment {
public:
    using byte_type = Byte;

    basic_attachment() noexcept = default;
    basic_attachment(basic_attachment&& other) noexcept
        : address_(std::exchange(other.address_, nullptr)), size_(std::exchange(other.size_, 0)) {}
    basic_attachment& operator=(basic_attachment&& other) noexcept {
        if (this != &other) {
            detach();
            address_ = std::exchange(other.address_, nullptr);
            size_ = std::exchange(other.size_, 0);
        }
        return *this;
    }
    ~basic_attachment() { detach(); }

    /// The whole segment.
    /// Views into the mapping live as long as the attachment: they are only available from a
    /// named attachment (`segment.attach().bytes()` would dangle, so it does not compile).
    std::span<Byte> bytes() const& noexcept { return {address_, size_}; }
    std::span<Byte> bytes() const&& = delete;
    std::size_t size() const noexcept { return size_; }
    bool is_attached() const noexcept { return address_ != nullptr; }

    /// A T living at `offset` in the segment. T must be trivially copyable; the object must fit
    /// in the segment and be suitably aligned, else errc::bad_layout. The error_code overload
    /// returns a pointer: null on error.
    template <class T>
        requires std::is_trivially_copyable_v<T>
    auto* as(std::size_t offset, error_code& ec) const& noexcept {
        return as_array<T>(1, offset, ec).data();
    }
    template <class T>
        requires std::is_trivially_copyable_v<T>
    auto& as(std::size_t offset = 0) const& {
        return *as_array<T>(1, offset).data();
    }

    /// `count` Ts starting at `offset`; same checks as as().
    template <class T>
        requires std::is_trivially_copyable_v<T>
    auto as_array(std::size_t count, std::size_t offset, error_code& ec) const& noexcept {
        using value_type = std::conditional_t<std::is_const_v<Byte>, const T, T>;
        ec = check_layout(offset, count, sizeof(T), alignof(T));
        if (ec)
            return std::span<value_type>{};
        return std::span<value_type>(reinterpret_cast<value_type*>(address_ + offset), count);
    }
    template <class T>
        requires std::is_trivially_copyable_v<T>
    auto as_array(std::size_t count, std::size_t offset = 0) const& {
        error_code ec;
        auto result = as_array<T>(count, offset, ec);
        if (ec)
            throw_layout_error(ec, offset, count, sizeof(T), alignof(T));
        return result;
    }

    template <class T>
    void as(std::size_t = 0) const&& = delete;
    template <class T>
    void as_array(std::size_t, std::size_t = 0) const&& = delete;

    /// Detaches now (also done by the destructor). Never fails for a valid attachment.
    void detach() noexcept {
        if (address_ != nullptr)
            ::shmdt(const_cast<std::byte*>(address_));
        address_ = nullptr;
        size_ = 0;
    }

private:
    friend class shared_memory;
    basic_attachment(Byte* address, std::size_t size) noexcept : address_(address), size_(size) {}

    error_code check_layout(std::size_t offset, std::size_t count, std::size_t size,
                            std::size_t align) const noexcept {
        if (address_ == nullptr || offset > size_ || count > (size_ - offset) / size ||
            (reinterpret_cast<std::uintptr_t>(address_) + offset) % align != 0)
            return make_error_code(errc::bad_layout);
        return {};
    }
    [[noreturn]] void throw_layout_error(const error_code& ec, std::size_t offset,
                                         std::size_t count, std::size_t size,
                                         std::size_t align) const {
        detail::throw_layout_error(ec, offset, count, size, align, size_);
    }

    Byte* address_ = nullptr;
    std::size_t size_ = 0;
};

using attachment = basic_attachment<std::byte>;
using read_only_attachment = basic_attachment<const std::byte>;

/// A handle to a shared memory segment (shmget). Move-only; destruction does not remove it.
class shared_memory {
public:
    /// Creates a new segment (IPC_CREAT | IPC_EXCL); an existing object at the key is an error
    /// (EEXIST). `size` must be within the kernel's SHMMIN..SHMMAX.
    static shared_memory create(key k, std::size_t size, mode_t mode, error_code& ec);
    static shared_memory create(key k, std::size_t size, mode_t mode = 0600);
    static shared_memory create(key k, std::size_t size, error_code& ec) {
        return create(k, size, 0600, ec);
    }

    /// Opens the existing segment at `k` (opened with size 0; the real size comes from IPC_STAT).
    static shared_memory open(key k, error_code& ec);
    static shared_memory open(key k);

    /// Opens the segment with id `id` (as shown by `ipcs`, or created with IPC_PRIVATE).
    static shared_memory open_id(int id, error_code& ec);
    static shared_memory open_id(int id);

    /// Creates the segment, or opens it if it exists and is ours: created by and owned by this
    /// effective uid, with exactly `mode`, and at least `size` bytes. Anything else is
    /// errc::foreign_object. The creator counts because the kernel gives it the owner's rights
    /// for as long as the object lives: a segment another user created and handed over with
    /// IPC_SET is still theirs to read, write and remove.
    static shared_memory open_or_create(key k, std::size_t size, mode_t mode, error_code& ec);
    static shared_memory open_or_create(key k, std::size_t size, mode_t mode = 0600);
    static shared_memory open_or_create(key k, std::size_t size, error_code& ec) {
        return open_or_create(k, size, 0600, ec);
    }

    shared_memory() noexcept = default;
    shared_memory(shared_memory&& other) noexcept
        : key_(other.key_), id_(std::exchange(other.id_, -1)),
          size_(std::exchange(other.size_, 0)) {}
    shared_memory& operator=(shared_memory&& other) noexcept {
        key_ = other.key_;
        id_ = std::exchange(other.id_, -1);
        size_ = std::exchange(other.size_, 0);
        return *this;
    }
    ~shared_memory() = default;

    bool is_open() const noexcept { return id_ >= 0; }
    int id() const noexcept { return id_; }
    key ipc_key() const noexcept { return key_; }
    /// Size in bytes, as read from the kernel when opened.
    std::size_t size() const noexcept { return size_; }

    /// Maps the segment (shmat). access::read_only gives a read_only_attachment.
    attachment attach(access::read_write_t, error_code& ec) const;
    attachment attach(access::read_write_t = access::read_write) const;
    attachment attach(error_code& ec) const { return attach(access::read_write, ec); }
    read_only_attachment attach(access::read_only_t, error_code& ec) const;
    read_only_attachment attach(access::read_only_t) const;

    /// IPC_STAT.
    shared_memory_status stat(error_code& ec) const;
    shared_memory_status stat() const;

    /// IPC_SET: owner, group and mode (only the creator, owner or root may do this).
    void set_permissions(const permissions& p, error_code& ec);
    void set_permissions(const permissions& p);

    /// IPC_RMID. The segment disappears when the last process detaches; new attaches fail.
    void remove(error_code& ec);
    void remove();

    /// "shared memory (key 0x..., id N)", for messages.
    std::string description() const;

private:
    shared_memory(key k, int id, std::size_t size) noexcept : key_(k), id_(id), size_(size) {}
    void* attach_raw(int flags, error_code& ec) const;

    key key_ = key::private_key();
    int id_ = -1;
    std::size_t size_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Semaphore operations
// ---------------------------------------------------------------------------------------------

/// One semop(2) operation on one semaphore of a set; made with op::acquire, op::release and
/// op::wait_zero. Several operations passed together are applied atomically (all or none).
/// Arguments are checked when the operation is applied (units must be 1..32767, the index
/// below the set's size), so an invalid operation gives an error there, never a wrong semop.
class operation {
public:
    enum class kind : unsigned char { acquire, release, wait_zero };

    /// The semaphore index in the set.
    constexpr std::size_t index() const noexcept { return index_; }
    constexpr kind type() const noexcept { return kind_; }
    /// Units taken (acquire) or given (release); 0 for wait_zero.
    constexpr int units() const noexcept { return units_; }
    /// The semop delta: negative to acquire, positive to release, zero to wait for zero.
    constexpr int delta() const noexcept { return kind_ == kind::acquire ? -units_ : units_; }
    /// Whether SEM_UNDO is set: the kernel reverts this operation when the process exits.
    /// Use it for lock-style semaphores that the same process takes and gives back, never for
    /// counters of produced/consumed items (a consumer's exit would re-credit consumed items).
    constexpr bool uses_undo() const noexcept { return undo_; }

    /// The same operation with SEM_UNDO.
    constexpr operation undo() const noexcept {
        operation copy = *this;
        copy.undo_ = true;
        return copy;
    }

    constexpr operation(kind k, std::size_t index, int units) noexcept
        : index_(index), units_(units), kind_(k) {}

    friend constexpr bool operator==(const operation&, const operation&) noexcept = default;

private:
    std::size_t index_;
    int units_;
    kind kind_;
    bool undo_ = false;
};

namespace op {
/// P: take `n` units (1..32767) from semaphore `index`, waiting while fewer are available.
constexpr operation acquire(std::size_t index, int n = 1) noexcept {
    return operation(operation::kind::acquire, index, n);
}
/// V: give `n` units (1..32767) to semaphore `index`.
constexpr operation release(std::size_t index, int n = 1) noexcept {
    return operation(operation::kind::release, index, n);
}
/// Wait until semaphore `index` is zero.
constexpr operation wait_zero(std::size_t index) noexcept {
    return operation(operation::kind::wait_zero, index, 0);
}
} // namespace op

/// A non-owning view of operations to apply together: one operation, a braced list
/// `{op::acquire(0), op::release(1)}`, or any contiguous range of operations.
class operation_list {
public:
    operation_list(const operation& single) noexcept : ops_(&single, 1) {}
    operation_list(std::initializer_list<operation> list) noexcept
        : ops_(list.begin(), list.size()) {}
    operation_list(std::span<const operation> ops) noexcept : ops_(ops) {}
    template <class Range>
        requires std::is_convertible_v<const Range&, std::span<const operation>> &&
                 (!std::is_same_v<std::remove_cvref_t<Range>, operation_list>)
    operation_list(const Range& ops) noexcept : ops_(std::span<const operation>(ops)) {}

    std::span<const operation> span() const noexcept { return ops_; }
    std::size_t size() const noexcept { return ops_.size(); }
    auto begin() const noexcept { return ops_.begin(); }
    auto end() const noexcept { return ops_.end(); }

private:
    std::span<const operation> ops_;
};

// ---------------------------------------------------------------------------------------------
// Semaphore sets
// ---------------------------------------------------------------------------------------------

namespace detail {
class set_opener;
} // namespace detail

/// How long open_or_create waits for the creator of an existing set to publish its initial
/// values, and how often it looks.
struct open_options {
    std::chrono::milliseconds initialisation_timeout{2000};
    std::chrono::microseconds poll_interval{200};
};

/// A handle to a System V semaphore set (semget). Move-only; destruction does not remove the
/// set. Indexes run from 0 to size() - 1; values from 0 to 32767 (SEMVMX).
class semaphore_set {
public:
    /// Creates a new set (IPC_CREAT | IPC_EXCL) with one semaphore per initial value, all set
    /// with one SETALL, then published with one semop (so sem_otime becomes non-zero and
    /// open_or_create in other processes sees an initialised set).
    static semaphore_set create(key k, std::span<const int> initial_values, mode_t mode,
                                error_code& ec);
    static semaphore_set create(key k, std::span<const int> initial_values, mode_t mode = 0600);
    static semaphore_set create(key k, std::initializer_list<int> initial_values,
                                mode_t mode = 0600) {
        return create(k, std::span<const int>(initial_values.begin(), initial_values.size()), mode);
    }
    static semaphore_set create(key k, std::initializer_list<int> initial_values, mode_t mode,
                                error_code& ec) {
        return create(k, std::span<const int>(initial_values.begin(), initial_values.size()), mode,
                      ec);
    }

    /// Opens the existing set at `k`; its size is read with IPC_STAT.
    static semaphore_set open(key k, error_code& ec);
    static semaphore_set open(key k);

    /// Opens the set with id `id` (as shown by `ipcs`, or created with IPC_PRIVATE).
    static semaphore_set open_id(int id, error_code& ec);
    static semaphore_set open_id(int id);

    /// Race-free create-or-open. Exactly one of the processes racing here creates the set and
    /// initialises it (see create()); the others wait (blocking this thread, polling every
    /// options.poll_interval; the async layer has a non-blocking variant) until the creator has
    /// published, and verify the set is ours: this effective uid as owner and as creator (a
    /// creator keeps the owner's rights after handing a set over), exactly `mode`, and
    /// initial_values.size() semaphores, else errc::foreign_object. A set whose creator does not
    /// publish within options.initialisation_timeout (or is found dead) gives
    /// errc::not_initialised. A live set is never re-initialised (SETALL would discard every
    /// process's SEM_UNDO adjustments).
    static semaphore_set open_or_create(key k, std::span<const int> initial_values, mode_t mode,
                                        const open_options& options, error_code& ec);
    static semaphore_set open_or_create(key k, std::span<const int> initial_values,
                                        mode_t mode = 0600, const open_options& options = {});
    static semaphore_set open_or_create(key k, std::initializer_list<int> initial_values,
                                        mode_t mode = 0600, const open_options& options = {}) {
        return open_or_create(
            k, std::span<const int>(initial_values.begin(), initial_values.size()), mode, options);
    }

    semaphore_set() noexcept = default;
    semaphore_set(semaphore_set&& other) noexcept
        : key_(other.key_), id_(std::exchange(other.id_, -1)),
          size_(std::exchange(other.size_, 0)) {}
    semaphore_set& operator=(semaphore_set&& other) noexcept {
        key_ = other.key_;
        id_ = std::exchange(other.id_, -1);
        size_ = std::exchange(other.size_, 0);
        return *this;
    }
    ~semaphore_set() = default;

    bool is_open() const noexcept { return id_ >= 0; }
    int id() const noexcept { return id_; }
    key ipc_key() const noexcept { return key_; }
    /// Number of semaphores in the set.
    std::size_t size() const noexcept { return size_; }

    /// Applies all operations atomically if that can be done now (IPC_NOWAIT): returns true
    /// when applied, false when it would have to wait (nothing applied). Validated before the
    /// call: non-empty, at most SEMOPM operations, indexes in range, units in 1..32767.
    bool try_apply(operation_list ops, error_code& ec);
    bool try_apply(operation_list ops);

    /// Applies all operations atomically, blocking the calling thread until possible. Signals
    /// (EINTR) are retried transparently. Not for use on an Asio thread: see async_apply.
    void apply(operation_list ops, error_code& ec);
    void apply(operation_list ops);

    /// Like apply() but gives up after `timeout` (returns false, nothing applied). EINTR is
    /// retried with the remaining time.
    bool try_apply_for(operation_list ops, std::chrono::nanoseconds timeout, error_code& ec);
    bool try_apply_for(operation_list ops, std::chrono::nanoseconds timeout);

    /// GETVAL.
    int value(std::size_t index, error_code& ec) const;
    int value(std::size_t index) const;
    /// GETALL: all values, in index order.
    std::vector<int> values(error_code& ec) const;
    std::vector<int> values() const;
    /// SETVAL (0..32767). Discards every process's SEM_UNDO adjustment for this semaphore.
    void set_value(std::size_t index, int value, error_code& ec);
    void set_value(std::size_t index, int value);
    /// SETALL: one value per semaphore (exactly size() values, each 0..32767).
    void set_values(std::span<const int> values, error_code& ec);
    void set_values(std::span<const int> values);
    void set_values(std::initializer_list<int> values) {
        set_values(std::span<const int>(values.begin(), values.size()));
    }
    /// GETPID: pid of the last process that operated on (or set) semaphore `index`.
    pid_t last_pid(std::size_t index, error_code& ec) const;
    pid_t last_pid(std::size_t index) const;
    /// GETNCNT: number of processes waiting for semaphore `index` to increase. Async waiters
    /// of this library poll with IPC_NOWAIT and are not counted.
    int waiting_for_increase(std::size_t index, error_code& ec) const;
    int waiting_for_increase(std::size_t index) const;
    /// GETZCNT: number of processes waiting for semaphore `index` to become zero.
    int waiting_for_zero(std::size_t index, error_code& ec) const;
    int waiting_for_zero(std::size_t index) const;
    /// IPC_STAT.
    semaphore_set_status stat(error_code& ec) const;
    semaphore_set_status stat() const;
    /// IPC_SET: owner, group and mode.
    void set_permissions(const permissions& p, error_code& ec);
    void set_permissions(const permissions& p);
    /// IPC_RMID: removes the set now; every process blocked on it wakes with errc::removed.
    void remove(error_code& ec);
    void remove();

    /// "semaphore set (key 0x..., id N)", for messages.
    std::string description() const;

    /// Checks operations against this set and the kernel's limits without calling semop.
    error_code validate(operation_list ops) const noexcept;

private:
    friend class detail::set_opener;
    semaphore_set(key k, int id, std::size_t size) noexcept : key_(k), id_(id), size_(size) {}
    int get(int command, std::size_t index, error_code& ec) const;

    key key_ = key::private_key();
    int id_ = -1;
    std::size_t size_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// What a process is doing, as far as a peer can tell (/proc/<pid>/stat).
enum class process_state {
    running, ///< alive and scheduled (running, or sleeping in a call)
    stopped, ///< stopped by a signal (SIGSTOP, SIGTSTP, Ctrl-Z) or a debugger: it holds what it
             ///< holds until it is continued
    dead,    ///< gone, or a zombie
    unknown, ///< its /proc entry cannot be read (another user's process under hidepid)
};

/// The state of process `pid` now (a snapshot).
process_state state_of(pid_t pid) noexcept;

/// When process `pid` started (clock ticks after boot, /proc/<pid>/stat field 22), or nothing if
/// it is gone or unreadable. With the pid it names one process: a pid reused later comes with
/// another start time.
std::optional<std::uint64_t> start_time_of(pid_t pid) noexcept;

/// The inode of this process's PID namespace (/proc/self/ns/pid), 0 if unreadable. Processes
/// that compare pids must be in the same one.
std::uint64_t pid_namespace_id() noexcept;

/// "running", "stopped", "dead" or "unknown".
std::string_view to_string(process_state state) noexcept;

// ---------------------------------------------------------------------------------------------
// Scoped removal
// ---------------------------------------------------------------------------------------------

/// Removes an object (shared_memory or semaphore_set) when the scope ends, unless release()d.
/// For the owner of an object, e.g. a test or the last participant of a room.
template <class Object>
class scoped_remover {
public:
    explicit scoped_remover(Object& object) noexcept : object_(&object) {}
    scoped_remover(const scoped_remover&) = delete;
    scoped_remover& operator=(const scoped_remover&) = delete;
    ~scoped_remover() {
        if (object_ && object_->is_open()) {
            error_code ignored;
            object_->remove(ignored);
        }
    }
    /// Keep the object.
    void release() noexcept { object_ = nullptr; }

private:
    Object* object_;
};

} // namespace sysv

namespace boost::system {
export template <>
struct is_error_code_enum<sysv::errc> : std::true_type {};
} // namespace boost::system

#include "internals.hpp"

// ---------------------------------------------------------------------------------------------
// Helpers of the implementation units (core/*.cpp): visible to them, not exported.
// ---------------------------------------------------------------------------------------------
namespace sysv {

// semctl's fourth argument; glibc leaves its definition to the caller.
union semun {
    int val;
    semid_ds* buf;
    unsigned short* array;
    seminfo* info;
};

inline constexpr int semvmx = 32767;

error_code last_error() noexcept;
bool valid_mode(mode_t mode) noexcept;
time_point from_time_t(time_t t) noexcept;
std::optional<time_point> optional_time(time_t t) noexcept;
using detail::mode_string;
std::string permissions_detail(const permissions& p);
/// "<what> (key 0x..., id N)".
std::string describe(std::string_view what, key k, int id);

/// now + timeout, saturated: a huge timeout (duration::max() for "as long as it takes") must
/// not overflow into a deadline in the past. Compared in the timeout's own unit, which
/// converting to nanoseconds would overflow.
template <class Rep, class Period>
std::chrono::steady_clock::time_point
deadline_after(std::chrono::duration<Rep, Period> timeout) noexcept {
    using clock = std::chrono::steady_clock;
    const auto now = clock::now();
    if (timeout <= timeout.zero())
        return now;
    const auto room = std::chrono::duration_cast<std::chrono::duration<Rep, Period>>(
        clock::time_point::max() - now);
    if (timeout >= room)
        return clock::time_point::max();
    return now + std::chrono::duration_cast<clock::duration>(timeout);
}

// Semaphore sets (semaphore_set.cpp, used by semaphore_set_open.cpp too).
semaphore_set_status to_status(const semid_ds& ds);
error_code stat_set(int id, semid_ds& ds) noexcept;
error_code check_values(std::span<const int> values) noexcept;
std::string values_detail(std::span<const int> values);

} // namespace sysv
