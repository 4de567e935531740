# C++20 named modules for clang >= 16 on CMake >= 3.25 (which has no module support for clang).
#
# How it works (see README "Building modules with CMake 3.25"):
#  * a module interface unit is compiled as an ordinary source with
#    `-x c++-module -fmodule-output=<bmi>`; clang writes the object file and the BMI in one step.
#    The BMI is declared as an OBJECT_OUTPUTS of that source, so Ninja knows which edge makes it;
#  * each unit is ordered after the BMIs of the modules it imports or implements (OBJECT_DEPENDS,
#    from its `import`/`module` declarations, read at configure time; editing a unit re-runs
#    configure, which takes well under a second), so independent modules compile in parallel
#    and a change rebuilds only what imports it;
#  * what consumers link is an INTERFACE target that carries `-fmodule-file=<name>=<bmi>` for
#    every module and depends on a custom target that DEPENDS on the BMIs. CMake propagates an
#    interface library's dependencies to its users, so every target that links it compiles after
#    the BMIs exist, at any -j, wherever it is defined;
#  * rebuilds: every compile that may import a module also writes the BMIs it read into its
#    depfile (`-Xclang -module-file-deps`), named as build.ninja names them (relative to the build
#    root), so editing a module interface rebuilds the BMI and then its importers in one build.
#
# The BMIs are built with the flags of the directory that creates the library: a BMI is only
# accepted by an importer compiled with the same language options (-std, extensions, NDEBUG,
# sanitizers, _LIBCPP_* / BOOST_* defines). That is why the package installs sources, not BMIs.
#
# Functions:
#   sysv_check_module_toolchain(<result-var>)
#       Sets <result-var> to an explanation if the C++ compiler cannot build these modules
#       (anything but clang >= 16 on libc++ or clang >= 18 on libstdc++), to the empty string
#       otherwise.
#   sysv_add_module_library(<target> MODULES <name>=<file>... [SOURCES <file>...])
#       <target>: an INTERFACE library to link (target_link_libraries is all a consumer does).
#       <target>_units: the STATIC library of module interface units (in import order: a unit
#       may import the ones listed before it) and implementation units (`module <name>;`, or
#       ordinary sources). Put usage requirements (PUBLIC) and private flags on <target>_units.
#       <target>_bmis: the custom target that stands for "all BMIs are built".

include_guard(GLOBAL)

function(sysv_check_module_toolchain result_var)
    # What was measured (docs/using.md, "Toolchains"): clang >= 16 with libc++ and clang >= 18
    # with libstdc++ build and import these modules; everything else fails, as said below.
    set(why "asio-sysv is a C++20 modules library whose modules include Boost.Asio: it builds "
            "with clang >= 16 on libc++, and with clang >= 18 on libstdc++.")
    set(fix "Use clang++-16 (or newer) with libc++ (apt-get install clang-16 libc++-16-dev "
            "libc++abi-16-dev; configure with -DCMAKE_CXX_COMPILER=clang++-16 "
            "-DCMAKE_CXX_FLAGS=-stdlib=libc++ -DCMAKE_EXE_LINKER_FLAGS=-stdlib=libc++), or "
            "clang++-19 with the system's libstdc++ (apt-get install clang-19; configure with "
            "-DCMAKE_CXX_COMPILER=clang++-19).")
    set(found "")
    if(NOT CMAKE_CXX_COMPILER_LOADED)
        set(found "C++ is not enabled in this project (project(<name> LANGUAGES CXX)).")
    elseif(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
        set(found "The C++ compiler is g++ ${CMAKE_CXX_COMPILER_VERSION} (${CMAKE_CXX_COMPILER}): "
                  "g++ 12 crashes (internal compiler error) on these modules, and g++ >= 15 "
                  "refuses module interfaces that expose internal-linkage entities, which the "
                  "Asio of Boost 1.81 declares (fixed in Asio 1.38.2).")
    elseif(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
        set(found "The C++ compiler is ${CMAKE_CXX_COMPILER_ID} ${CMAKE_CXX_COMPILER_VERSION} "
                  "(${CMAKE_CXX_COMPILER}).")
    elseif(CMAKE_CXX_COMPILER_VERSION VERSION_LESS 16)
        set(found "Found clang ${CMAKE_CXX_COMPILER_VERSION} (${CMAKE_CXX_COMPILER}); clang >= 16 "
                  "is needed for -fmodule-output.")
    else()
        # Cached per build tree; the flags are part of the name, so changing them checks again.
        string(MAKE_C_IDENTIFIER "SYSV_HAVE_LIBCXX_${CMAKE_CXX_FLAGS}" have_libcxx)
        include(CheckCXXSourceCompiles)
        set(CMAKE_REQUIRED_QUIET ON)
        check_cxx_source_compiles("#include <version>
#ifndef _LIBCPP_VERSION
#error not libc++
#endif
int main() {}" ${have_libcxx})
        if(NOT ${have_libcxx} AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 18)
            set(found "clang ${CMAKE_CXX_COMPILER_VERSION} is used with another standard library "
                      "than libc++ (CMAKE_CXX_FLAGS: '${CMAKE_CXX_FLAGS}'): before clang 18, "
                      "clang cannot merge the libstdc++ declarations an importer sees through a "
                      "module and through #include (clang >= 18 skips that check in the global "
                      "module fragment, -fskip-odr-check-in-gmf).")
        endif()
    endif()
    if(found)
        string(JOIN "" why ${why})
        string(JOIN "" found ${found})
        string(JOIN "" fix ${fix})
        set(message "${why} ${found} ${fix}")
        set(${result_var} "${message}" PARENT_SCOPE)
    else()
        set(${result_var} "" PARENT_SCOPE)
    endif()
endfunction()

# Path of `file` as build.ninja names it: relative to the top build directory when inside it.
function(_sysv_ninja_path file result_var)
    cmake_path(IS_PREFIX CMAKE_BINARY_DIR "${file}" NORMALIZE inside)
    if(inside AND CMAKE_GENERATOR MATCHES "Ninja")
        cmake_path(RELATIVE_PATH file BASE_DIRECTORY "${CMAKE_BINARY_DIR}" OUTPUT_VARIABLE file)
    endif()
    set(${result_var} "${file}" PARENT_SCOPE)
endfunction()

# The BMIs a unit needs first: those of the modules it imports, and of the module it implements
# (`module <name>;`). `known`: the modules listed before this unit; `all_module_names` (from the
# caller) all of the library's.
function(_sysv_bmis_imported_by file known implementable result_var)
    file(STRINGS "${file}" lines REGEX "^(export +)?(import|module) +[A-Za-z0-9_.]+ *;")
    set(depends "")
    foreach(line IN LISTS lines)
        if(NOT line MATCHES "^(export +)?(import|module) +([A-Za-z0-9_.]+)")
            continue()
        endif()
        set(keyword "${CMAKE_MATCH_2}")
        set(name "${CMAKE_MATCH_3}")
        if(keyword STREQUAL "module" AND (CMAKE_MATCH_1 OR NOT name IN_LIST implementable))
            continue() # the unit's own interface declaration, or another library's unit
        endif()
        if(name IN_LIST known)
            list(APPEND depends "${bmi_${name}}")
        elseif(name IN_LIST all_module_names)
            message(FATAL_ERROR "${file} imports ${name}, which is listed after it in MODULES "
                                "(list a module after the ones it imports)")
        endif()
    endforeach()
    set(${result_var} "${depends}" PARENT_SCOPE)
endfunction()

function(sysv_add_module_library target)
    cmake_parse_arguments(PARSE_ARGV 1 arg "" "" "MODULES;SOURCES")
    if(NOT arg_MODULES)
        message(FATAL_ERROR "sysv_add_module_library(${target}): no MODULES given")
    endif()
    set(units ${target}_units)
    set(bmi_dir "${CMAKE_CURRENT_BINARY_DIR}/${target}.bmi")
    file(MAKE_DIRECTORY "${bmi_dir}")

    # Every unit is ordered after the BMIs of the modules it imports (found by reading its
    # `import`/`module` declarations; editing a unit re-runs this scan), so independent modules
    # compile in parallel and a change rebuilds only the modules that import the changed one.
    set(all_module_names "")
    foreach(entry IN LISTS arg_MODULES)
        if(entry MATCHES "^([A-Za-z0-9_.]+)=")
            list(APPEND all_module_names "${CMAKE_MATCH_1}")
        endif()
    endforeach()
    set(interface_files "")
    set(module_names "")
    set(module_flags "")
    foreach(entry IN LISTS arg_MODULES)
        if(NOT entry MATCHES "^([A-Za-z0-9_.]+)=(.+)$")
            message(FATAL_ERROR "sysv_add_module_library(${target}): '${entry}' is not <module>=<file>")
        endif()
        set(name "${CMAKE_MATCH_1}")
        get_filename_component(file "${CMAKE_MATCH_2}" ABSOLUTE)
        set(bmi "${bmi_dir}/${name}.pcm")
        set(bmi_${name} "${bmi}")
        _sysv_ninja_path("${bmi}" bmi_arg)
        _sysv_bmis_imported_by("${file}" "${module_names}" "" depends)
        set_source_files_properties("${file}" PROPERTIES
            LANGUAGE CXX
            COMPILE_OPTIONS "-xc++-module;-fmodule-output=${bmi_arg}"
            OBJECT_OUTPUTS "${bmi}"
            OBJECT_DEPENDS "${depends}")
        list(APPEND interface_files "${file}")
        list(APPEND module_names "${name}")
        # -Xclang: the driver forwards a plain -fmodule-file=<name>=<bmi> only with -std=c++NN,
        # and silently drops it with -std=gnu++NN (CMake's default). SHELL: keeps the pair
        # together (CMake de-duplicates options).
        list(APPEND module_flags "SHELL:-Xclang -fmodule-file=${name}=${bmi_arg}")
    endforeach()
    set(bmis "")
    foreach(name IN LISTS module_names)
        list(APPEND bmis "${bmi_${name}}")
    endforeach()

    set(other_files "")
    foreach(src IN LISTS arg_SOURCES)
        get_filename_component(file "${src}" ABSOLUTE)
        _sysv_bmis_imported_by("${file}" "${module_names}" "${module_names}" depends)
        set_source_files_properties("${file}" PROPERTIES OBJECT_DEPENDS "${depends}")
        list(APPEND other_files "${file}")
    endforeach()
    set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${interface_files} ${other_files})

    add_library(${units} STATIC ${interface_files} ${other_files})
    set(depfile_flag "SHELL:-Xclang -module-file-deps")
    target_compile_options(${units} PRIVATE ${module_flags} ${depfile_flag})

    add_custom_target(${target}_bmis DEPENDS ${bmis})
    if(NOT CMAKE_GENERATOR MATCHES "Ninja")
        # Other generators only know the BMIs inside the units' own build rules.
        add_dependencies(${target}_bmis ${units})
    endif()

    add_library(${target} INTERFACE)
    target_link_libraries(${target} INTERFACE ${units})
    target_compile_options(${target} INTERFACE ${module_flags} ${depfile_flag})
    add_dependencies(${target} ${target}_bmis)
    set_target_properties(${target} PROPERTIES SYSV_MODULE_BMIS "${bmis}")
endfunction()
