#!/bin/sh
# Runs one test command in an IPC namespace of its own and checks that it left no System V object:
#
#   isolated.sh <command> [args...]
#
# In a private namespace (unshare --ipc: root, or CAP_SYS_ADMIN) the test starts with empty IPC
# tables, cannot see or touch anyone else's objects, and nobody else can touch its objects or
# change its results; the leak check is exact: the tables must be empty again at the end. Kernel
# limits (/proc/sys/kernel/sem, shmmax, shmall, shmmni) belong to the namespace too, so a test
# may lower them for itself.
#
# Where no namespace can be made, it says so on stderr and runs in the machine's namespace; the
# leak check then compares the objects before and after the test (objects created meanwhile by
# other programs count as leaks, removed ones are ignored).
set -eu

tables() {
    for table in sem shm msg; do
        awk -v t="$table" 'NR > 1 { print t, "key", $1, "id", $2 }' "/proc/sysvipc/$table"
    done | sort
}

if [ "${SYSV_TEST_IPC_NAMESPACE:-}" = "" ]; then
    if unshare --ipc true 2>/dev/null; then
        SYSV_TEST_IPC_NAMESPACE=private exec unshare --ipc "$0" "$@"
    fi
    echo "note: cannot create an IPC namespace (unshare --ipc needs root or CAP_SYS_ADMIN):" \
        "running in the machine's IPC namespace, where other programs' objects can interfere" >&2
    SYSV_TEST_IPC_NAMESPACE=shared
fi
export SYSV_TEST_IPC_NAMESPACE

# The library's doorbell table (one segment per user, kept for reuse) lives at a key of this run,
# and is removed at the end like everything else the test made.
SYSV_DOORBELL_KEY=$(printf '0x5d5e%04x' $(($$ & 0xffff)))
export SYSV_DOORBELL_KEY

before=$(mktemp)
trap 'rm -f "$before"' EXIT
tables >"$before"
if [ "$SYSV_TEST_IPC_NAMESPACE" = private ] && [ -s "$before" ]; then
    echo "error: the private IPC namespace is not empty at the start:" >&2
    cat "$before" >&2
    exit 1
fi

status=0
"$@" || status=$?
ipcrm -M "$SYSV_DOORBELL_KEY" 2>/dev/null || true

leaked=$(tables | comm -13 "$before" -)
if [ -n "$leaked" ]; then
    echo "the test left System V IPC objects behind ($SYSV_TEST_IPC_NAMESPACE IPC namespace):"
    echo "$leaked"
    [ "$status" -ne 0 ] || status=1
fi
exit "$status"
