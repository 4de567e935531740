#!/bin/sh
# Snapshot the kernel's System V IPC tables before the suite and compare after it:
#   ipc_tables.sh save FILE    records the ids of every semaphore set, segment and queue
#   ipc_tables.sh check FILE   fails, listing them, if objects appeared that were not there
# ctest runs these as a fixture around every test (FIXTURES_SETUP / FIXTURES_CLEANUP).
set -eu
snapshot() {
    for table in sem shm msg; do
        awk -v t="$table" 'NR > 1 { print t, $1, $2 }' "/proc/sysvipc/$table"
    done | sort
}
case "$1" in
save) snapshot > "$2" ;;
check)
    now=$(mktemp)
    snapshot > "$now"
    leaked=$(comm -13 "$2" "$now")
    rm -f "$now"
    if [ -n "$leaked" ]; then
        echo "the test suite left System V IPC objects behind (table key id):"
        echo "$leaked"
        exit 1
    fi
    echo "IPC tables are as the suite found them"
    ;;
*) echo "usage: $0 save|check FILE" >&2; exit 2 ;;
esac
