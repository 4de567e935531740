#!/usr/bin/env bash
# Measures candidate sysv::backoff settings with sysv_bench --backoff (the "custom" rows) and
# prints one markdown table: ping-pong RTT with the two processes pinned to two CPUs and to one
# CPU, idle CPU of 1 and 10000 pending waits, wake latency after 1, 10 and 100 ms idle.
#
#   benchmarks/backoff_sweep.sh [Y,F,G,M ...]     (default: a built-in list of candidates)
#
# Each candidate takes about 40 s. Uses build/release (run ./dev bench or build it first).
set -euo pipefail
cd "$(dirname "$0")/.."
bench=build/release/benchmarks/sysv_bench
[ -x "$bench" ] || { echo "build the release preset first (./dev build release)" >&2; exit 1; }
candidates=("$@")
[ ${#candidates[@]} -gt 0 ] || candidates=(16,50,2,1000 64,50,2,1000 64,20,2,1000 128,50,2,1000
                                           64,50,2,2000 64,50,2,2500 64,50,2,3000 64,50,2,5000)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# value <csv> <run> <row> <metric>
value() { awk -F, -v run="$2" -v row="$3" -v m="$4" \
    '$2 == run && $3 == row && $4 == m { printf "%.1f", $5 }' "$1"; }

echo "| backoff (yields, first us, growth, max us) | ping-pong median / p99 RTT, two CPUs (us) | ping-pong median RTT, one CPU (us) | idle CPU, 1 wait (%) | idle CPU, 10000 waits (%) | wake p50 / p99 after 1 ms (us) | after 10 ms (us) | after 100 ms (us) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for b in "${candidates[@]}"; do
    "$bench" --backoff "$b" --section pingpong --placement two --row async_custom --runs 3 \
        --rounds 10000 --csv "$tmp/pp2.csv" >/dev/null 2>&1
    "$bench" --backoff "$b" --section pingpong --placement one --row async_custom --runs 2 \
        --rounds 1000 --csv "$tmp/pp1.csv" >/dev/null 2>&1
    "$bench" --backoff "$b" --section idle --row waits_1_custom --row waits_10000_custom \
        --runs 2 --csv "$tmp/idle.csv" >/dev/null 2>&1
    "$bench" --backoff "$b" --section wake --row async_custom --rounds 60 \
        --csv "$tmp/wake.csv" >/dev/null 2>&1
    echo "| $b | $(value "$tmp/pp2.csv" all async_custom@2cpus rtt_p50) /" \
         "$(value "$tmp/pp2.csv" all async_custom@2cpus rtt_p99) |" \
         "$(value "$tmp/pp1.csv" all async_custom@1cpu rtt_p50) |" \
         "$(value "$tmp/idle.csv" all waits_1_custom cpu_percent_of_core) |" \
         "$(value "$tmp/idle.csv" all waits_10000_custom cpu_percent_of_core) |" \
         "$(value "$tmp/wake.csv" all async_custom_idle_1ms wake_p50) /" \
         "$(value "$tmp/wake.csv" all async_custom_idle_1ms wake_p99) |" \
         "$(value "$tmp/wake.csv" all async_custom_idle_10ms wake_p50) /" \
         "$(value "$tmp/wake.csv" all async_custom_idle_10ms wake_p99) |" \
         "$(value "$tmp/wake.csv" all async_custom_idle_100ms wake_p50) /" \
         "$(value "$tmp/wake.csv" all async_custom_idle_100ms wake_p99) |"
done
