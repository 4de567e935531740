// sysv.core: keys (ftok, IPC_PRIVATE, raw values).
module;

#include <sys/ipc.h>
#include <sys/types.h>

#include <cstdio>

#include <boost/system/error_code.hpp>

#include <filesystem>
#include <string>

module sysv.core;

namespace sysv {

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

key key::from_path(const std::filesystem::path& path, int project_id, error_code& ec) {
    ec.clear();
    if (project_id < 1 || project_id > 255) {
        ec = make_error_code(errc::invalid_argument);
        return private_key();
    }
    const key_t k = ::ftok(path.c_str(), project_id);
    if (k == -1) {
        ec = last_error();
        return private_key();
    }
    return key(k);
}

key key::from_path(const std::filesystem::path& path, int project_id) {
    error_code ec;
    key k = from_path(path, project_id, ec);
    if (ec)
        detail::throw_error(ec, "ftok", "path " + path.string(),
                            "project id " + std::to_string(project_id) +
                                (project_id < 1 || project_id > 255 ? " is outside 1..255" : ""));
    return k;
}

std::string to_string(key k) {
    if (k.is_private())
        return "IPC_PRIVATE";
    char buffer[16];
    std::snprintf(buffer, sizeof buffer, "0x%08x", static_cast<unsigned>(k.value()));
    return buffer;
}

} // namespace sysv
