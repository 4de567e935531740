#!/usr/bin/env bash
# Builds projects outside this repository that use the library the ways a user would. ctest runs
# each scenario as its own test (tests/CMakeLists.txt):
#
#   run.sh find_package    <source-dir> <work-dir> <clang++> <ninja> [<stdlib-flag>]
#       configures the library alone, installs it to a prefix, then builds a consumer that calls
#       find_package(asio_sysv) in another build type (Release; the library's build is Debug)
#       at -j2, runs it, checks that the BMIs were compiled with the consumer's flags and that
#       no project warning flag reached the consumer, checks that `import sysv;` makes no
#       sysv::detail name visible (internals_hidden.cpp), then edits an installed module interface
#       and checks that one build recompiles the consumer and leaves nothing to do.
#   run.sh fetchcontent    <source-dir> <work-dir> <clang++> <ninja> [<stdlib-flag>]
#       builds a FetchContent consumer that sets no C++ standard at -j2 and runs it.
#   run.sh wrong_toolchain <source-dir> <work-dir> <clang++> <ninja> [<stdlib-flag>]
#       configures the find_package consumer with g++, and (when installed) with clang++-16 on
#       libstdc++: both must stop at configure time with the message that names the
#       requirement and what was found.
#
# <stdlib-flag>: "-stdlib=libc++" for a libc++ build, empty for the compiler's default
# (libstdc++ on Debian); the consumers are built with the same.
set -euo pipefail
mode=$1 source=$2 work=$3 cxx=$4 ninja=$5 stdlib=${6--stdlib=libc++}
here="$source/tests/package"

rm -rf "$work"
mkdir -p "$work"
generator=(-G Ninja "-DCMAKE_MAKE_PROGRAM=$ninja")
libcxx=("-DCMAKE_CXX_COMPILER=$cxx" "-DCMAKE_CXX_FLAGS=$stdlib"
        "-DCMAKE_EXE_LINKER_FLAGS=$stdlib")

step() { echo "== $*"; }
fail() {
    echo "FAILED: $*" >&2
    exit 1
}

# compile_flags <build-dir> <file-suffix>: the compile command of the source ending in suffix.
compile_flags() {
    python3 - "$1/compile_commands.json" "$2" <<'PY'
import json, sys
entries = [e for e in json.load(open(sys.argv[1])) if e["file"].endswith(sys.argv[2])]
if not entries:
    sys.exit("no compile command for " + sys.argv[2])
print(entries[0]["command"])
PY
}

# The project's own warning flags must never reach a consumer's compiles.
check_no_project_warnings() {
    local build=$1
    python3 - "$build/compile_commands.json" <<'PY'
import json, sys
project_flags = ["-Wconversion", "-Wshadow", "-Wpedantic", "-Werror", "-Wno-sign-conversion"]
bad = [(e["file"], f) for e in json.load(open(sys.argv[1]))
       for f in project_flags if f in e["command"].split()]
for file, flag in bad:
    print(f"{file}: compiled with the project's warning flag {flag}")
sys.exit(1 if bad else 0)
PY
}

run_consumer() {
    local output
    output=$("$1/consumer") || fail "the consumer exited non-zero: $output"
    echo "$output"
    [ "$output" = "consumer: acquired the semaphore" ] || fail "unexpected output: $output"
}

case "$mode" in
find_package)
    step "configure the library alone (Debug) and install it"
    cmake -S "$source" -B "$work/library" "${generator[@]}" "${libcxx[@]}" \
        -DCMAKE_BUILD_TYPE=Debug -DSYSV_BUILD_TESTS=OFF -DSYSV_BUILD_EXAMPLES=OFF \
        -DSYSV_BUILD_BENCHMARKS=OFF >/dev/null
    cmake --install "$work/library" --prefix "$work/prefix" >/dev/null
    [ -f "$work/prefix/share/asio_sysv/cmake/asio_sysvConfig.cmake" ] ||
        fail "no package config installed"
    if find "$work/prefix" -name '*.pcm' | grep -q .; then
        fail "BMIs were installed (they only fit the flags they were built with)"
    fi

    step "configure and build a Release consumer with find_package at -j2"
    start=$(date +%s%N)
    cmake -S "$here/find_package" -B "$work/consumer" "${generator[@]}" "${libcxx[@]}" \
        -DCMAKE_BUILD_TYPE=Release -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
        "-DCMAKE_PREFIX_PATH=$work/prefix" >/dev/null
    cmake --build "$work/consumer" -j 2
    echo "clean consumer build (configure + build): $((($(date +%s%N) - start) / 1000000)) ms"
    run_consumer "$work/consumer"

    step "the BMIs were compiled in the consumer's build, with its flags"
    flags=$(compile_flags "$work/consumer" "/modules/core/sysv.core.cppm")
    [[ " $flags " == *" -DNDEBUG "* ]] || fail "sysv.core was not compiled as Release: $flags"
    [[ "$flags" == *"$work/prefix/share/asio_sysv/modules/"* ]] ||
        fail "sysv.core was not compiled from the installed sources: $flags"
    check_no_project_warnings "$work/consumer" || fail "project warning flags leaked"

    step "import sysv; gives the public API and no name of sysv::detail"
    probe_compile() {
        local command
        command=$(compile_flags "$work/consumer" "/consumer.cpp")
        command=${command% -c *}
        command=$(sed -E 's/ -o [^ ]+//' <<<"$command")
        (cd "$work/consumer" && $command "$@" -o "$work/probe.o" -c "$here/internals_hidden.cpp" 2>&1)
    }
    probe_compile >"$work/probe.log" || { cat "$work/probe.log"; fail "the public names do not compile"; }
    for name in doorbell_table poll_service channel_state; do
        if probe_compile "-DSYSV_PROBE_DETAIL=$name" >"$work/probe-$name.log"; then
            fail "sysv::detail::$name is visible to an import sysv; user"
        fi
        grep -q "must be imported from module 'sysv\.[a-z]*' before it is required" \
            "$work/probe-$name.log" || { cat "$work/probe-$name.log"; fail "naming sysv::detail::$name failed for another reason"; }
        echo "sysv::detail::$name: not visible"
    done

    step "editing an installed module interface rebuilds its importer in one build"
    object=$(find "$work/consumer/CMakeFiles/consumer.dir" -name consumer.cpp.o)
    [ -f "$object" ] || fail "no object for consumer.cpp in $work/consumer"
    touch "$work/before-edit"
    sleep 0.1
    echo "// edited" >>"$work/prefix/share/asio_sysv/modules/mutex/sysv.mutex.cppm"
    cmake --build "$work/consumer" -j 2
    [ "$object" -nt "$work/before-edit" ] || fail "the consumer was not recompiled"
    remaining=$("$ninja" -C "$work/consumer" -n -d explain 2>&1 |
        grep -v -e 'VerifyGlobs' -e 'verify_globs' -e '^ninja: Entering' || true)
    [[ "$remaining" == *"no work to do"* ]] ||
        fail "a second build still has work to do: $remaining"
    run_consumer "$work/consumer"
    ;;
fetchcontent)
    step "configure and build a FetchContent consumer that sets no C++ standard, at -j2"
    start=$(date +%s%N)
    cmake -S "$here/fetchcontent" -B "$work/consumer" "${generator[@]}" "${libcxx[@]}" \
        -DCMAKE_BUILD_TYPE=Debug -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
        "-DFETCHCONTENT_SOURCE_DIR_ASIO_SYSV=$source" >/dev/null
    cmake --build "$work/consumer" -j 2
    echo "clean consumer build (configure + build): $((($(date +%s%N) - start) / 1000000)) ms"
    run_consumer "$work/consumer"
    flags=$(compile_flags "$work/consumer" "/consumer.cpp")
    [[ " $flags " == *" -std=gnu++20 "* ]] ||
        fail "the consumer did not get C++20 from the library's usage requirements: $flags"
    check_no_project_warnings "$work/consumer" || fail "project warning flags leaked"
    for target in sysv_tests sysv_program_tests chat sysv_bench; do
        if "$ninja" -C "$work/consumer" -t targets all | grep -q "^$target:"; then
            fail "the subproject builds its $target target for a consumer"
        fi
    done
    ;;
wrong_toolchain)
    expect_refusal() {
        local name=$1
        shift
        local log="$work/$name.log"
        if cmake -S "$here/find_package" -B "$work/$name" "${generator[@]}" "$@" \
            "-DCMAKE_PREFIX_PATH=$work/prefix" >"$log" 2>&1; then
            cat "$log"
            fail "configure with $name succeeded"
        fi
        if ! tr -s ' \n' ' ' <"$log" |
            grep -q "it builds with clang >= 16 on libc++, and with clang >= 18 on libstdc++"; then
            cat "$log"
            fail "configure with $name did not say what it needs"
        fi
        if ! tr -s ' \n' ' ' <"$log" | grep -q "$expected_reason"; then
            cat "$log"
            fail "configure with $name did not say why: $expected_reason"
        fi
        echo "$name: refused at configure time"
        grep -m1 -A3 "asio-sysv is a C++20 modules library" "$log" || true
    }
    cmake -S "$source" -B "$work/library" "${generator[@]}" "${libcxx[@]}" \
        -DSYSV_BUILD_TESTS=OFF -DSYSV_BUILD_EXAMPLES=OFF -DSYSV_BUILD_BENCHMARKS=OFF >/dev/null
    cmake --install "$work/library" --prefix "$work/prefix" >/dev/null
    expected_reason="g++ 12 crashes (internal compiler error) on these modules"
    expect_refusal gxx -DCMAKE_CXX_COMPILER=g++
    if command -v clang++-16 >/dev/null; then
        expected_reason="before clang 18, clang cannot merge the libstdc++ declarations"
        expect_refusal clang16_libstdcxx -DCMAKE_CXX_COMPILER=clang++-16 -DCMAKE_CXX_FLAGS=
    fi
    ;;
*)
    echo "usage: $0 find_package|fetchcontent|wrong_toolchain <source> <work> <clang++> <ninja>" >&2
    exit 2
    ;;
esac
echo "OK"
