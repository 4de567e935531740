// sysv.core: shared memory segments (shmget, shmat, shmctl).
module;

#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/types.h>

#include <cerrno>
#include <unistd.h>

#include <boost/system/error_code.hpp>
#include <boost/system/system_error.hpp>

#include <cstddef>
#include <string>
#include <vector>

module sysv.core;

namespace sysv {

// ---------------------------------------------------------------------------------------------
// Shared memory
// ---------------------------------------------------------------------------------------------

namespace {
shared_memory_status to_status(const shmid_ds& ds) {
    return shared_memory_status{
        .ipc_key = key(ds.shm_perm.__key),
        .owner = {ds.shm_perm.uid, ds.shm_perm.gid, static_cast<mode_t>(ds.shm_perm.mode & 0777)},
        .creator_uid = ds.shm_perm.cuid,
        .creator_gid = ds.shm_perm.cgid,
        .size = ds.shm_segsz,
        .attach_count = static_cast<std::size_t>(ds.shm_nattch),
        .creator_pid = ds.shm_cpid,
        .last_pid = ds.shm_lpid,
        .last_attach = optional_time(ds.shm_atime),
        .last_detach = optional_time(ds.shm_dtime),
        .last_change = from_time_t(ds.shm_ctime),
        .marked_for_removal = (ds.shm_perm.mode & SHM_DEST) != 0,
    };
}

error_code stat_segment(int id, shmid_ds& ds) noexcept {
    if (::shmctl(id, IPC_STAT, &ds) == -1)
        return detail::id_error(errno);
    return {};
}

error_code check_segment_size(std::size_t size) noexcept {
    const auto l = limits();
    if (size == 0)
        return make_error_code(errc::invalid_argument);
    if (size < l.min_segment_size || size > l.max_segment_size)
        return make_error_code(errc::limit_exceeded);
    return {};
}

std::string segment_size_detail(std::size_t size) {
    const auto l = limits();
    return "size " + std::to_string(size) + " bytes; the kernel allows " +
           std::to_string(l.min_segment_size) + ".." + std::to_string(l.max_segment_size) +
           " (SHMMIN..SHMMAX, see /proc/sys/kernel/shmmax)";
}
} // namespace

shared_memory shared_memory::create(key k, std::size_t size, mode_t mode, error_code& ec) {
    ec.clear();
    if (!valid_mode(mode)) {
        ec = make_error_code(errc::invalid_argument);
        return {};
    }
    if ((ec = check_segment_size(size)))
        return {};
    const int id = ::shmget(k.value(), size, IPC_CREAT | IPC_EXCL | static_cast<int>(mode));
    if (id == -1) {
        ec = last_error();
        return {};
    }
    return shared_memory(k, id, size);
}

shared_memory shared_memory::create(key k, std::size_t size, mode_t mode) {
    error_code ec;
    auto result = create(k, size, mode, ec);
    if (ec)
        detail::throw_error(ec, "shmget (create)", describe("shared memory", k, -1),
                            !valid_mode(mode)
                                ? "mode " + mode_string(mode) + " has bits outside 0777"
                                : segment_size_detail(size));
    return result;
}

shared_memory shared_memory::open_id(int id, error_code& ec) {
    ec.clear();
    shmid_ds ds{};
    if ((ec = stat_segment(id, ds)))
        return {};
    return shared_memory(key(ds.shm_perm.__key), id, ds.shm_segsz);
}

shared_memory shared_memory::open_id(int id) {
    error_code ec;
    auto result = open_id(id, ec);
    if (ec)
        detail::throw_error(ec, "shmctl (IPC_STAT)", "shared memory id " + std::to_string(id));
    return result;
}

shared_memory shared_memory::open(key k, error_code& ec) {
    ec.clear();
    // Size 0: an existing segment of any size matches; the real size comes from IPC_STAT.
    const int id = ::shmget(k.value(), 0, 0);
    if (id == -1) {
        ec = last_error();
        return {};
    }
    shared_memory result = open_id(id, ec);
    result.key_ = k;
    return result;
}

shared_memory shared_memory::open(key k) {
    error_code ec;
    auto result = open(k, ec);
    if (ec)
        detail::throw_error(ec, "shmget (open)", describe("shared memory", k, -1));
    return result;
}

shared_memory shared_memory::open_or_create(key k, std::size_t size, mode_t mode, error_code& ec) {
    // Bounded: each round either creates, opens, or loses a race with a remover.
    for (int attempt = 0; attempt < 100; ++attempt) {
        shared_memory created = create(k, size, mode, ec);
        if (!ec || ec != boost::system::errc::file_exists)
            return created;
        shared_memory existing = open(k, ec);
        if (ec == boost::system::errc::no_such_file_or_directory || ec == errc::removed)
            continue; // removed between our create and open: try again
        if (ec)
            return {};
        shmid_ds ds{};
        if ((ec = stat_segment(existing.id_, ds))) {
            if (ec == errc::removed)
                continue;
            return {};
        }
        // The creator too (it keeps the owner's rights: see semaphore_set::open_or_create).
        if (ds.shm_perm.uid != ::geteuid() || ds.shm_perm.cuid != ::geteuid() ||
            (ds.shm_perm.mode & 0777) != mode || ds.shm_segsz < size) {
            ec = make_error_code(errc::foreign_object);
            return {};
        }
        return existing;
    }
    ec = make_error_code(errc::not_initialised);
    return {};
}

shared_memory shared_memory::open_or_create(key k, std::size_t size, mode_t mode) {
    error_code ec;
    auto result = open_or_create(k, size, mode, ec);
    if (ec) {
        std::string detail = "wanted " + std::to_string(size) + " bytes, mode " +
                             mode_string(mode) + ", owner uid " + std::to_string(::geteuid());
        if (ec == errc::foreign_object) {
            error_code ignored;
            if (auto existing = open(k, ignored); !ignored) {
                if (auto st = existing.stat(ignored); !ignored)
                    detail += "; found " + std::to_string(st.size) + " bytes, mode " +
                              mode_string(st.owner.mode) + ", owner uid " +
                              std::to_string(st.owner.owner_uid) + ", created by uid " +
                              std::to_string(st.creator_uid) + " (id " +
                              std::to_string(existing.id()) + ")";
            }
        } else if (ec == errc::invalid_argument && !valid_mode(mode)) {
            detail = "mode " + mode_string(mode) + " has bits outside 0777";
        } else if (ec == errc::limit_exceeded || ec == errc::invalid_argument) {
            detail = segment_size_detail(size);
        }
        detail::throw_error(ec, "shmget (open or create)", describe("shared memory", k, -1),
                            detail);
    }
    return result;
}

void* shared_memory::attach_raw(int flags, error_code& ec) const {
    ec.clear();
    if (id_ < 0) {
        ec = make_error_code(errc::not_open);
        return nullptr;
    }
    void* address = ::shmat(id_, nullptr, flags);
    if (address == reinterpret_cast<void*>(-1)) {
        ec = detail::id_error(errno);
        return nullptr;
    }
    return address;
}

attachment shared_memory::attach(access::read_write_t, error_code& ec) const {
    void* address = attach_raw(0, ec);
    if (ec)
        return {};
    return attachment(static_cast<std::byte*>(address), size_);
}

attachment shared_memory::attach(access::read_write_t tag) const {
    error_code ec;
    auto result = attach(tag, ec);
    if (ec)
        detail::throw_error(ec, "shmat (read-write)", description());
    return result;
}

read_only_attachment shared_memory::attach(access::read_only_t, error_code& ec) const {
    void* address = attach_raw(SHM_RDONLY, ec);
    if (ec)
        return {};
    return read_only_attachment(static_cast<const std::byte*>(address), size_);
}

read_only_attachment shared_memory::attach(access::read_only_t tag) const {
    error_code ec;
    auto result = attach(tag, ec);
    if (ec)
        detail::throw_error(ec, "shmat (read-only)", description());
    return result;
}

shared_memory_status shared_memory::stat(error_code& ec) const {
    ec.clear();
    if (id_ < 0) {
        ec = make_error_code(errc::not_open);
        return {};
    }
    shmid_ds ds{};
    if ((ec = stat_segment(id_, ds)))
        return {};
    return to_status(ds);
}

shared_memory_status shared_memory::stat() const {
    error_code ec;
    auto result = stat(ec);
    if (ec)
        detail::throw_error(ec, "shmctl (IPC_STAT)", description());
    return result;
}

void shared_memory::set_permissions(const permissions& p, error_code& ec) {
    ec.clear();
    if (id_ < 0) {
        ec = make_error_code(errc::not_open);
        return;
    }
    if (!valid_mode(p.mode)) {
        ec = make_error_code(errc::invalid_argument);
        return;
    }
    shmid_ds ds{};
    ds.shm_perm.uid = p.owner_uid;
    ds.shm_perm.gid = p.owner_gid;
    ds.shm_perm.mode = static_cast<unsigned short>(p.mode);
    if (::shmctl(id_, IPC_SET, &ds) == -1) {
        // EINVAL also means an invalid uid/gid: "removed" only if the segment is gone.
        const int err = errno;
        shmid_ds probe{};
        ec = err == EINVAL && stat_segment(id_, probe) != errc::removed
                 ? make_error_code(errc::invalid_argument)
                 : detail::id_error(err);
    }
}

void shared_memory::set_permissions(const permissions& p) {
    error_code ec;
    set_permissions(p, ec);
    if (ec)
        detail::throw_error(ec, "shmctl (IPC_SET)", description(), permissions_detail(p));
}

void shared_memory::remove(error_code& ec) {
    ec.clear();
    if (id_ < 0) {
        ec = make_error_code(errc::not_open);
        return;
    }
    if (::shmctl(id_, IPC_RMID, nullptr) == -1) {
        ec = detail::id_error(errno);
        return;
    }
    id_ = -1;
}

void shared_memory::remove() {
    error_code ec;
    remove(ec);
    if (ec)
        detail::throw_error(ec, "shmctl (IPC_RMID)", description());
}

std::string shared_memory::description() const {
    return describe("shared memory", key_, id_);
}

} // namespace sysv
