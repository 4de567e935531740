# C++20 named modules for clang >= 16 on CMake 3.25 (which has no module support for clang).
#
# How it works (see README "Building modules with CMake 3.25"):
#  * a module interface unit is compiled as an ordinary source with
#    `-x c++-module -fmodule-output=<bmi>`; clang writes the object file and the BMI in one step.
#    The BMI is declared as an OBJECT_OUTPUTS of that source, so Ninja knows which edge makes it;
#  * every source that imports a module depends on its BMI (OBJECT_DEPENDS), so Ninja compiles
#    it after the BMI exists and recompiles it whenever the BMI changes;
#  * `-fmodule-file=<name>=<bmi>` for each module is a PUBLIC compile option of the library, so
#    it reaches every consumer through target_link_libraries.
#
# Functions:
#   sysv_check_module_toolchain()
#       Fails configure early unless the compiler is clang >= 16 using libc++.
#   sysv_add_module_library(<target> MODULES <name>=<file>... [SOURCES <file>...])
#       A static library made of module interface units (in import order: a unit may import the
#       ones listed before it) and optional module implementation units or ordinary sources.
#   sysv_target_imports(<consumer> <library>...)
#       Links <consumer> to module libraries and orders all of its C++ sources after their BMIs.
#       The ordering is applied at the end of the directory, so sources added later count too.

include_guard(GLOBAL)

function(sysv_check_module_toolchain)
    set(fix "Install clang-16 and libc++ (apt-get install clang-16 libc++-16-dev libc++abi-16-dev) and configure with a preset (cmake --preset dev), which selects clang++-16 and -stdlib=libc++.")
    if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
        message(FATAL_ERROR "asio-sysv is built as C++20 modules, which need clang >= 16 with libc++; "
                            "the C++ compiler is ${CMAKE_CXX_COMPILER_ID} ${CMAKE_CXX_COMPILER_VERSION} "
                            "(${CMAKE_CXX_COMPILER}). ${fix}")
    endif()
    if(CMAKE_CXX_COMPILER_VERSION VERSION_LESS 16)
        message(FATAL_ERROR "asio-sysv needs clang >= 16 (for -fmodule-output); found clang "
                            "${CMAKE_CXX_COMPILER_VERSION} at ${CMAKE_CXX_COMPILER}. ${fix}")
    endif()
    include(CheckCXXSourceCompiles)
    set(CMAKE_REQUIRED_QUIET ON)
    check_cxx_source_compiles("#include <version>
#ifndef _LIBCPP_VERSION
#error not libc++
#endif
int main() {}" SYSV_HAVE_LIBCXX)
    if(NOT SYSV_HAVE_LIBCXX)
        message(FATAL_ERROR "asio-sysv needs libc++: with libstdc++, clang 16 cannot merge the "
                            "std/Boost declarations seen through a module and through #include. "
                            "Add -stdlib=libc++ to CMAKE_CXX_FLAGS and the linker flags. ${fix}")
    endif()
endfunction()

function(sysv_add_module_library target)
    cmake_parse_arguments(PARSE_ARGV 1 arg "" "" "MODULES;SOURCES")
    if(NOT arg_MODULES)
        message(FATAL_ERROR "sysv_add_module_library(${target}): no MODULES given")
    endif()
    set(bmi_dir "${CMAKE_CURRENT_BINARY_DIR}/${target}.bmi")
    file(MAKE_DIRECTORY "${bmi_dir}")

    set(interface_files "")
    set(bmis "")
    set(module_flags "")
    foreach(entry IN LISTS arg_MODULES)
        if(NOT entry MATCHES "^([A-Za-z0-9_.]+)=(.+)$")
            message(FATAL_ERROR "sysv_add_module_library(${target}): '${entry}' is not <module>=<file>")
        endif()
        set(name "${CMAKE_MATCH_1}")
        get_filename_component(file "${CMAKE_MATCH_2}" ABSOLUTE)
        set(bmi "${bmi_dir}/${name}.pcm")
        # Each unit sees the BMIs of the units listed before it and is ordered after them.
        set_source_files_properties("${file}" PROPERTIES
            LANGUAGE CXX
            COMPILE_OPTIONS "-xc++-module;-fmodule-output=${bmi}"
            OBJECT_OUTPUTS "${bmi}"
            OBJECT_DEPENDS "${bmis}")
        list(APPEND interface_files "${file}")
        list(APPEND bmis "${bmi}")
        list(APPEND module_flags "-fmodule-file=${name}=${bmi}")
    endforeach()

    set(other_files "")
    foreach(src IN LISTS arg_SOURCES)
        get_filename_component(file "${src}" ABSOLUTE)
        set_source_files_properties("${file}" PROPERTIES OBJECT_DEPENDS "${bmis}")
        list(APPEND other_files "${file}")
    endforeach()

    add_library(${target} STATIC ${interface_files} ${other_files})
    target_compile_options(${target} PUBLIC ${module_flags})
    set_target_properties(${target} PROPERTIES SYSV_MODULE_BMIS "${bmis}")
    set_property(TARGET ${target} APPEND PROPERTY EXPORT_PROPERTIES SYSV_MODULE_BMIS)
endfunction()

function(sysv_target_imports consumer)
    target_link_libraries(${consumer} PRIVATE ${ARGN})
    set(bmis "")
    foreach(lib IN LISTS ARGN)
        get_target_property(lib_bmis ${lib} SYSV_MODULE_BMIS)
        if(NOT lib_bmis)
            message(FATAL_ERROR "sysv_target_imports(${consumer}): ${lib} is not a module library")
        endif()
        list(APPEND bmis ${lib_bmis})
    endforeach()
    set_property(TARGET ${consumer} APPEND PROPERTY SYSV_IMPORTED_BMIS ${bmis})
    # Deferred so that sources added with target_sources() after this call are ordered too.
    get_property(scheduled TARGET ${consumer} PROPERTY SYSV_IMPORT_ORDER_SCHEDULED)
    if(NOT scheduled)
        set_property(TARGET ${consumer} PROPERTY SYSV_IMPORT_ORDER_SCHEDULED TRUE)
        # DEFER evaluates its arguments when the call runs: bake the target name in now.
        cmake_language(EVAL CODE
            "cmake_language(DEFER CALL _sysv_order_sources_after_bmis [[${consumer}]])")
    endif()
endfunction()

function(_sysv_order_sources_after_bmis consumer)
    get_target_property(bmis ${consumer} SYSV_IMPORTED_BMIS)
    get_target_property(sources ${consumer} SOURCES)
    get_target_property(source_dir ${consumer} SOURCE_DIR)
    foreach(src IN LISTS sources)
        if(src MATCHES "\\.(cpp|cc|cxx|cppm)$")
            if(NOT IS_ABSOLUTE "${src}")
                set(src "${source_dir}/${src}")
            endif()
            set_property(SOURCE "${src}" TARGET_DIRECTORY ${consumer}
                         APPEND PROPERTY OBJECT_DEPENDS ${bmis})
        endif()
    endforeach()
endfunction()
