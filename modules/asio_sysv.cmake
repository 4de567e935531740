# The library target, shared by this project's build (modules/CMakeLists.txt) and by the installed
# package (asio_sysvConfig.cmake), which builds it inside the consumer's build with the consumer's
# flags. Needs SysvModules.cmake, Boost (headers) and Threads. Defines:
#   asio_sysv::asio_sysv  what consumers link (an alias of asio_sysv)
#   asio_sysv_units       the compiled module units (usage requirements live here)
# Module interface units are listed in import order: each may import the ones before it.
set(_asio_sysv_dir "${CMAKE_CURRENT_LIST_DIR}")
sysv_add_module_library(asio_sysv
    MODULES
        sysv.core=${_asio_sysv_dir}/core/sysv.core.cppm
        sysv.ring=${_asio_sysv_dir}/ring/sysv.ring.cppm
        sysv.immediate=${_asio_sysv_dir}/async/sysv.immediate.cppm
        sysv.async=${_asio_sysv_dir}/async/sysv.async.cppm
        sysv.mutex=${_asio_sysv_dir}/mutex/sysv.mutex.cppm
        sysv.channel=${_asio_sysv_dir}/channel/sysv.channel.cppm
        sysv=${_asio_sysv_dir}/sysv.cppm
    SOURCES
        ${_asio_sysv_dir}/core/doorbell.cpp
        ${_asio_sysv_dir}/core/errors.cpp
        ${_asio_sysv_dir}/core/key.cpp
        ${_asio_sysv_dir}/core/shared_memory.cpp
        ${_asio_sysv_dir}/core/semaphore_set.cpp
        ${_asio_sysv_dir}/core/semaphore_set_open.cpp
        ${_asio_sysv_dir}/ring/ring.cpp
        ${_asio_sysv_dir}/async/poll_service.cpp
        ${_asio_sysv_dir}/async/uring_watcher.cpp
        ${_asio_sysv_dir}/async/thread_watcher.cpp
        ${_asio_sysv_dir}/async/wake_checks.cpp
        ${_asio_sysv_dir}/channel/channel.cpp
)
unset(_asio_sysv_dir)
# Usage requirements: everything that changes what the std/Boost headers expand to must be the
# same in the BMIs and in their importers, so it is PUBLIC.
target_compile_features(asio_sysv_units PUBLIC cxx_std_20)
target_link_libraries(asio_sysv_units PUBLIC Boost::headers Threads::Threads)
# Asio without its deprecated names.
target_compile_definitions(asio_sysv_units PUBLIC BOOST_ASIO_NO_DEPRECATED)
add_library(asio_sysv::asio_sysv ALIAS asio_sysv)
