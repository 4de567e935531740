# Installs the package: module sources, implementation units and CMake files, no binaries.
#   <prefix>/share/asio_sysv/modules/...            the sources, as in this repository
#   <prefix>/share/asio_sysv/cmake/asio_sysvConfig.cmake (+ ConfigVersion, SysvModules.cmake)
# find_package(asio_sysv) compiles the modules inside the consumer's build with the consumer's
# flags: a BMI is only accepted by importers compiled with the same options, so prebuilt BMIs
# would fail for any consumer whose -std, NDEBUG, sanitizers or defines differ.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(ASIO_SYSV_INSTALL_DIR "${CMAKE_INSTALL_DATADIR}/asio_sysv")
install(DIRECTORY "${PROJECT_SOURCE_DIR}/modules/"
        DESTINATION "${ASIO_SYSV_INSTALL_DIR}/modules"
        FILES_MATCHING PATTERN "*.cppm" PATTERN "*.cpp" PATTERN "*.hpp" PATTERN "asio_sysv.cmake")

configure_package_config_file("${PROJECT_SOURCE_DIR}/cmake/asio_sysvConfig.cmake.in"
    "${PROJECT_BINARY_DIR}/asio_sysvConfig.cmake"
    INSTALL_DESTINATION "${ASIO_SYSV_INSTALL_DIR}/cmake"
    PATH_VARS ASIO_SYSV_INSTALL_DIR)
# Sources, so one package serves every architecture; 0.x: minor versions may break the API.
write_basic_package_version_file("${PROJECT_BINARY_DIR}/asio_sysvConfigVersion.cmake"
    COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
install(FILES "${PROJECT_BINARY_DIR}/asio_sysvConfig.cmake"
              "${PROJECT_BINARY_DIR}/asio_sysvConfigVersion.cmake"
              "${PROJECT_SOURCE_DIR}/cmake/SysvModules.cmake"
        DESTINATION "${ASIO_SYSV_INSTALL_DIR}/cmake")
