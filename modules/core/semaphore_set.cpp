// sysv.core: semaphore set operations (semop) and controls (semctl).
module;

#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/types.h>

#include <cerrno>
#include <ctime>

#include <boost/system/error_code.hpp>
#include <boost/system/system_error.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

module sysv.core;

namespace sysv {

// Helpers shared with semaphore_set_open.cpp (declared in the interface, not exported).

semaphore_set_status to_status(const semid_ds& ds) {
    return semaphore_set_status{
        .ipc_key = key(ds.sem_perm.__key),
        .owner = {ds.sem_perm.uid, ds.sem_perm.gid, static_cast<mode_t>(ds.sem_perm.mode & 0777)},
        .creator_uid = ds.sem_perm.cuid,
        .creator_gid = ds.sem_perm.cgid,
        .size = static_cast<std::size_t>(ds.sem_nsems),
        .last_operation = optional_time(ds.sem_otime),
        .last_change = from_time_t(ds.sem_ctime),
    };
}

error_code stat_set(int id, semid_ds& ds) noexcept {
    semun arg{};
    arg.buf = &ds;
    if (::semctl(id, 0, IPC_STAT, arg) == -1)
        return detail::id_error(errno);
    return {};
}

error_code check_values(std::span<const int> values) noexcept {
    if (values.empty())
        return make_error_code(errc::invalid_argument);
    if (values.size() > static_cast<std::size_t>(limits().max_semaphores_per_set))
        return make_error_code(errc::limit_exceeded);
    for (int v : values)
        if (v < 0 || v > semvmx)
            return make_error_code(errc::value_out_of_range);
    return {};
}

std::string values_detail(std::span<const int> values) {
    std::string s = std::to_string(values.size()) + " semaphore(s)";
    const int semmsl = limits().max_semaphores_per_set;
    if (values.size() > static_cast<std::size_t>(semmsl))
        s += ", more than SEMMSL = " + std::to_string(semmsl) +
             " per set; raise it in /proc/sys/kernel/sem (first field)";
    for (std::size_t i = 0; i < values.size(); ++i)
        if (values[i] < 0 || values[i] > semvmx) {
            s += ", value " + std::to_string(values[i]) + " at index " + std::to_string(i) +
                 " is outside 0..32767";
            break;
        }
    return s;
}

namespace {
// SEMOPM for the check made before every semop: read once, and read again before refusing a
// group (or after the kernel refused one with E2BIG), so a changed limit is seen at once.
std::atomic<int> cached_semopm{0};
std::size_t semopm(bool refresh) noexcept {
    int v = cached_semopm.load(std::memory_order_relaxed);
    if (v <= 0 || refresh) {
        v = limits().max_operations_per_call;
        cached_semopm.store(v, std::memory_order_relaxed);
    }
    return static_cast<std::size_t>(v);
}
} // namespace

error_code semaphore_set::validate(operation_list ops) const noexcept {
    if (id_ < 0)
        return make_error_code(errc::not_open);
    if (ops.size() == 0)
        return make_error_code(errc::invalid_argument);
    if (ops.size() > semopm(false) && ops.size() > semopm(true))
        return make_error_code(errc::limit_exceeded);
    for (const operation& o : ops) {
        if (o.index() >= size_)
            return make_error_code(errc::index_out_of_range);
        if (o.type() != operation::kind::wait_zero && (o.units() < 1 || o.units() > semvmx))
            return make_error_code(errc::value_out_of_range);
    }
    return {};
}

namespace {

std::string index_detail(const semaphore_set& set, std::size_t index) {
    if (index < set.size())
        return {};
    return "semaphore index " + std::to_string(index) + ", the set has " +
           std::to_string(set.size()) + " semaphore(s)";
}

std::string ops_detail(const semaphore_set& set, operation_list ops) {
    std::string s;
    if (ops.size() == 0)
        return "empty operation group";
    if (const int limit = limits().max_operations_per_call;
        ops.size() > static_cast<std::size_t>(limit))
        return std::to_string(ops.size()) +
               " operations, more than SEMOPM = " + std::to_string(limit) +
               "; raise it in /proc/sys/kernel/sem (third field)";
    for (const operation& o : ops) {
        if (o.index() >= set.size())
            return index_detail(set, o.index());
        if (o.type() != operation::kind::wait_zero && (o.units() < 1 || o.units() > semvmx))
            return std::to_string(o.units()) + " units on semaphore " + std::to_string(o.index()) +
                   ", must be 1..32767";
    }
    return s;
}

} // namespace

bool semaphore_set::try_apply(operation_list ops, error_code& ec) {
    if ((ec = validate(ops)))
        return false;
    detail::semop_buffer raw(ops, IPC_NOWAIT);
    return detail::try_semop(id_, raw, ec) == detail::attempt_result::applied;
}

bool semaphore_set::try_apply(operation_list ops) {
    error_code ec;
    const bool applied = try_apply(ops, ec);
    if (ec)
        detail::throw_error(ec, "semop (IPC_NOWAIT)", description(), ops_detail(*this, ops));
    return applied;
}

void semaphore_set::apply(operation_list ops, error_code& ec) {
    if ((ec = validate(ops)))
        return;
    detail::semop_buffer raw(ops, 0);
    while (::semop(id_, raw.data(), raw.size()) == -1) {
        if (errno != EINTR) {
            ec = detail::id_error(errno);
            return;
        }
    }
    detail::ring_doorbells(id_, detail::doorbells_rung_by(raw.span()));
}

void semaphore_set::apply(operation_list ops) {
    error_code ec;
    apply(ops, ec);
    if (ec)
        detail::throw_error(ec, "semop", description(), ops_detail(*this, ops));
}

bool semaphore_set::try_apply_for(operation_list ops, std::chrono::nanoseconds timeout,
                                  error_code& ec) {
    if ((ec = validate(ops)))
        return false;
    detail::semop_buffer raw(ops, 0);
    const auto deadline = deadline_after(timeout);
    for (;;) {
        const auto remaining =
            std::max(std::chrono::nanoseconds(0), deadline - std::chrono::steady_clock::now());
        timespec ts{};
        ts.tv_sec = static_cast<time_t>(remaining.count() / 1'000'000'000);
        ts.tv_nsec = static_cast<long>(remaining.count() % 1'000'000'000);
        if (::semtimedop(id_, raw.data(), raw.size(), &ts) == 0) {
            detail::ring_doorbells(id_, detail::doorbells_rung_by(raw.span()));
            return true;
        }
        if (errno == EAGAIN)
            return false;
        if (errno != EINTR) {
            ec = detail::id_error(errno);
            return false;
        }
    }
}

bool semaphore_set::try_apply_for(operation_list ops, std::chrono::nanoseconds timeout) {
    error_code ec;
    const bool applied = try_apply_for(ops, timeout, ec);
    if (ec)
        detail::throw_error(ec, "semtimedop", description(), ops_detail(*this, ops));
    return applied;
}

int semaphore_set::get(int command, std::size_t index, error_code& ec) const {
    ec.clear();
    if (id_ < 0) {
        ec = make_error_code(errc::not_open);
        return -1;
    }
    if (index >= size_) {
        ec = make_error_code(errc::index_out_of_range);
        return -1;
    }
    const int result = ::semctl(id_, static_cast<int>(index), command);
    if (result == -1)
        ec = detail::id_error(errno);
    return result;
}

int semaphore_set::value(std::size_t index, error_code& ec) const {
    return get(GETVAL, index, ec);
}
int semaphore_set::value(std::size_t index) const {
    error_code ec;
    const int v = value(index, ec);
    if (ec)
        detail::throw_error(ec, "semctl (GETVAL " + std::to_string(index) + ")", description(),
                            index_detail(*this, index));
    return v;
}

pid_t semaphore_set::last_pid(std::size_t index, error_code& ec) const {
    return get(GETPID, index, ec);
}
pid_t semaphore_set::last_pid(std::size_t index) const {
    error_code ec;
    const pid_t v = last_pid(index, ec);
    if (ec)
        detail::throw_error(ec, "semctl (GETPID " + std::to_string(index) + ")", description(),
                            index_detail(*this, index));
    return v;
}

int semaphore_set::waiting_for_increase(std::size_t index, error_code& ec) const {
    return get(GETNCNT, index, ec);
}
int semaphore_set::waiting_for_increase(std::size_t index) const {
    error_code ec;
    const int v = waiting_for_increase(index, ec);
    if (ec)
        detail::throw_error(ec, "semctl (GETNCNT " + std::to_string(index) + ")", description(),
                            index_detail(*this, index));
    return v;
}

int semaphore_set::waiting_for_zero(std::size_t index, error_code& ec) const {
    return get(GETZCNT, index, ec);
}
int semaphore_set::waiting_for_zero(std::size_t index) const {
    error_code ec;
    const int v = waiting_for_zero(index, ec);
    if (ec)
        detail::throw_error(ec, "semctl (GETZCNT " + std::to_string(index) + ")", description(),
                            index_detail(*this, index));
    return v;
}

std::vector<int> semaphore_set::values(error_code& ec) const {
    ec.clear();
    if (id_ < 0) {
        ec = make_error_code(errc::not_open);
        return {};
    }
    std::vector<unsigned short> raw(size_);
    semun arg{};
    arg.array = raw.data();
    if (::semctl(id_, 0, GETALL, arg) == -1) {
        ec = detail::id_error(errno);
        return {};
    }
    return std::vector<int>(raw.begin(), raw.end());
}

std::vector<int> semaphore_set::values() const {
    error_code ec;
    auto v = values(ec);
    if (ec)
        detail::throw_error(ec, "semctl (GETALL)", description());
    return v;
}

void semaphore_set::set_value(std::size_t index, int value, error_code& ec) {
    ec.clear();
    if (id_ < 0) {
        ec = make_error_code(errc::not_open);
        return;
    }
    if (index >= size_) {
        ec = make_error_code(errc::index_out_of_range);
        return;
    }
    if (value < 0 || value > semvmx) {
        ec = make_error_code(errc::value_out_of_range);
        return;
    }
    semun arg{};
    arg.val = value;
    if (::semctl(id_, static_cast<int>(index), SETVAL, arg) == -1)
        ec = detail::id_error(errno);
    else
        detail::ring_doorbells(id_, detail::doorbell_all);
}

void semaphore_set::set_value(std::size_t index, int value) {
    error_code ec;
    set_value(index, value, ec);
    if (ec)
        detail::throw_error(ec, "semctl (SETVAL " + std::to_string(index) + ")", description(),
                            index < size_ ? "value " + std::to_string(value) +
                                                " (semaphore values are 0..32767, SEMVMX)"
                                          : index_detail(*this, index));
}

void semaphore_set::set_values(std::span<const int> values, error_code& ec) {
    ec.clear();
    if (id_ < 0) {
        ec = make_error_code(errc::not_open);
        return;
    }
    if (values.size() != size_) {
        ec = make_error_code(errc::invalid_argument);
        return;
    }
    if ((ec = check_values(values)))
        return;
    std::vector<unsigned short> raw(values.begin(), values.end());
    semun arg{};
    arg.array = raw.data();
    if (::semctl(id_, 0, SETALL, arg) == -1)
        ec = detail::id_error(errno);
    else
        detail::ring_doorbells(id_, detail::doorbell_all);
}

void semaphore_set::set_values(std::span<const int> values) {
    error_code ec;
    set_values(values, ec);
    if (ec)
        detail::throw_error(ec, "semctl (SETALL)", description(),
                            values.size() != size_
                                ? std::to_string(values.size()) + " values for a set of " +
                                      std::to_string(size_) + " semaphore(s)"
                                : values_detail(values));
}

semaphore_set_status semaphore_set::stat(error_code& ec) const {
    ec.clear();
    if (id_ < 0) {
        ec = make_error_code(errc::not_open);
        return {};
    }
    semid_ds ds{};
    if ((ec = stat_set(id_, ds)))
        return {};
    return to_status(ds);
}

semaphore_set_status semaphore_set::stat() const {
    error_code ec;
    auto result = stat(ec);
    if (ec)
        detail::throw_error(ec, "semctl (IPC_STAT)", description());
    return result;
}

void semaphore_set::set_permissions(const permissions& p, error_code& ec) {
    ec.clear();
    if (id_ < 0) {
        ec = make_error_code(errc::not_open);
        return;
    }
    if (!valid_mode(p.mode)) {
        ec = make_error_code(errc::invalid_argument);
        return;
    }
    semid_ds ds{};
    ds.sem_perm.uid = p.owner_uid;
    ds.sem_perm.gid = p.owner_gid;
    ds.sem_perm.mode = static_cast<unsigned short>(p.mode);
    semun arg{};
    arg.buf = &ds;
    if (::semctl(id_, 0, IPC_SET, arg) == -1) {
        // EINVAL also means an invalid uid/gid: "removed" only if the set is gone.
        const int err = errno;
        semid_ds probe{};
        ec = err == EINVAL && stat_set(id_, probe) != errc::removed
                 ? make_error_code(errc::invalid_argument)
                 : detail::id_error(err);
    }
}

void semaphore_set::set_permissions(const permissions& p) {
    error_code ec;
    set_permissions(p, ec);
    if (ec)
        detail::throw_error(ec, "semctl (IPC_SET)", description(), permissions_detail(p));
}

void semaphore_set::remove(error_code& ec) {
    ec.clear();
    if (id_ < 0) {
        ec = make_error_code(errc::not_open);
        return;
    }
    if (::semctl(id_, 0, IPC_RMID) == -1) {
        ec = detail::id_error(errno);
        return;
    }
    detail::ring_doorbells(id_, detail::doorbell_all); // waiters learn of the removal at once
    id_ = -1;
}

void semaphore_set::remove() {
    error_code ec;
    remove(ec);
    if (ec)
        detail::throw_error(ec, "semctl (IPC_RMID)", description());
}

std::string semaphore_set::description() const {
    return describe("semaphore set", key_, id_);
}

namespace detail {

semop_buffer::semop_buffer(operation_list ops, short extra_flags) {
    if (ops.size() > inline_.size())
        heap_.resize(ops.size());
    size_ = ops.size();
    sembuf* out = data();
    for (const operation& o : ops) {
        out->sem_num = static_cast<unsigned short>(o.index());
        out->sem_op = static_cast<short>(o.delta());
        out->sem_flg = static_cast<short>(extra_flags | (o.uses_undo() ? SEM_UNDO : 0));
        ++out;
    }
}

attempt_result try_semop(int set_id, semop_buffer& ops, error_code& ec) noexcept {
    for (;;) {
        if (::semop(set_id, ops.data(), ops.size()) == 0) {
            ring_doorbells(set_id, doorbells_rung_by(ops.span()));
            return attempt_result::applied;
        }
        if (errno == EAGAIN)
            return attempt_result::would_block;
        if (errno == E2BIG) // SEMOPM was lowered: check against the new value from now on
            cached_semopm.store(0, std::memory_order_relaxed);
        if (errno != EINTR) {
            ec = id_error(errno);
            return attempt_result::failed;
        }
    }
}

} // namespace detail

} // namespace sysv
