#!/usr/bin/env python3
"""Counts the system calls of sysv_bench rows with `perf stat` (tracepoints; both processes of
a ping-pong are counted, children are followed).

    benchmarks/syscalls.py [--binary build/release/benchmarks/sysv_bench] [--quick]

Per round trip: (count of a run of N round trips - count of a run of N/4) / (difference in
round trips, warm-up included), so process start-up and set-up cancel out. Ping-pong is counted
with the processes pinned to two CPUs and to one CPU (sysv_bench --placement), where each row
behaves the same from run to run. Per idle second: the
difference between two idle measurements of different lengths, divided by the difference in
seconds. Per channel message: the same difference between a long and a short run, per message
(writer and reader processes together; message_queue and socket rows for comparison). Prints markdown tables. Needs perf (Debian: linux-perf) and root or
kernel.perf_event_paranoid <= -1 for the syscall tracepoints.
"""
import argparse
import csv
import os
import subprocess
import sys
import tempfile

EVENTS = [
    ("raw_syscalls:sys_enter", "all syscalls"),
    ("syscalls:sys_enter_semtimedop", "semop/semtimedop"),
    ("syscalls:sys_enter_semop", None),  # glibc issues semtimedop; counted together
    ("syscalls:sys_enter_semctl", "semctl"),
    ("syscalls:sys_enter_epoll_wait", "epoll_wait"),
    ("syscalls:sys_enter_timerfd_settime", "timerfd_settime"),
    ("syscalls:sys_enter_read", "read"),
    ("syscalls:sys_enter_write", "write"),
    ("syscalls:sys_enter_recvmsg", "recvmsg"),
    ("syscalls:sys_enter_sendmsg", "sendmsg"),
    ("syscalls:sys_enter_futex", "futex"),
    ("syscalls:sys_enter_io_uring_enter", "io_uring_enter"),
    ("context-switches", "context switches"),
]


def perf_counts(binary, args):
    """Runs sysv_bench under perf stat; returns ({event: count}, csv rows)."""
    with tempfile.TemporaryDirectory() as tmp:
        out_csv = os.path.join(tmp, "bench.csv")
        perf_out = os.path.join(tmp, "perf.txt")
        command = ["perf", "stat", "-x", ",", "-o", perf_out,
                   "-e", ",".join(e for e, _ in EVENTS), "--", binary, "--csv", out_csv] + args
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        counts = {}
        with open(perf_out) as f:
            for line in f:
                parts = line.strip().split(",")
                if len(parts) < 3 or not parts[0].replace(".", "").isdigit():
                    continue
                counts[parts[2]] = float(parts[0])
        with open(out_csv) as f:
            rows = list(csv.DictReader(f))
    counts["syscalls:sys_enter_semtimedop"] = (counts.get("syscalls:sys_enter_semtimedop", 0) +
                                               counts.pop("syscalls:sys_enter_semop", 0))
    return counts, rows


def value(rows, row, metric, run="all"):
    for r in rows:
        if r["row"] == row and r["metric"] == metric and r["run"] == run:
            return float(r["value"])
    return float("nan")


def table(title, unit, results):
    shown = [(e, label) for e, label in EVENTS if label]
    used = [(e, label) for e, label in shown if any(abs(c.get(e, 0)) >= 0.05 for _, _, c in results)]
    print(f"\n### {title}\n")
    print("| row | " + " | ".join(f"{label} {unit}" for _, label in used) + " | measured at |")
    print("|---|" + "---:|" * len(used) + "---|")
    for row, note, c in results:
        print(f"| {row} | " + " | ".join(f"{c.get(e, 0):.2f}" for e, _ in used) + f" | {note} |")
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--binary",
                        default=os.path.join(here, "..", "build", "release", "benchmarks",
                                             "sysv_bench"))
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    args = parser.parse_args()
    binary = os.path.abspath(args.binary)

    # Ping-pong: per round trip, both processes; the difference of a long and a short run (the
    # busy-polling peer spins while the other process starts, so a run of 1 is no baseline).
    rounds = 4000 if args.quick else 20000
    short_rounds = rounds // 4
    results = []
    for where, suffix in (("two", "@2cpus"), ("one", "@1cpu")):
        for row in ["blocking", "busy_poll", "async_default", "async_latency", "async_cpu",
                    "socket", "doorbell_io_uring", "doorbell_thread"]:
            n, n_short = rounds, short_rounds
            if where == "one":
                if row == "busy_poll":
                    continue  # spins a whole time slice per turn
                n, n_short = rounds // 4, short_rounds // 4
            trips = (n + max(200, n // 10)) - (n_short + max(200, n_short // 10))
            a, short_rows = perf_counts(binary, ["--section", "pingpong", "--placement", where,
                                                 "--row", row, "--runs", "1", "--rounds",
                                                 str(n_short)])
            b, rows = perf_counts(binary, ["--section", "pingpong", "--placement", where, "--row",
                                           row, "--runs", "1", "--rounds", str(n)])
            per = {e: (b.get(e, 0) - a.get(e, 0)) / trips for e, _ in EVENTS}
            note = (f"median / mean RTT {value(rows, row + suffix, 'rtt_p50'):.1f} / "
                    f"{value(rows, row + suffix, 'rtt_mean'):.1f} us")
            results.append((f"{row}, {where} CPU{'s' if where == 'two' else ''}", note, per))
    table("System calls per ping-pong round trip (both processes)", "/RT", results)

    # Idle: per second of idle time, one process.
    short, long_ = (0.5, 1.5) if args.quick else (1.0, 4.0)
    results = []
    for row in ["none", "waits_1", "waits_1_latency", "waits_1_cpu", "waits_10000", "sets_1000",
                "doorbell_io_uring_waits_1", "doorbell_io_uring_waits_10000_sets_1000",
                "doorbell_thread_waits_1"]:
        a, _ = perf_counts(binary, ["--section", "idle", "--row", row, "--runs", "1",
                                    "--seconds", str(short)])
        b, rows = perf_counts(binary, ["--section", "idle", "--row", row, "--runs", "1",
                                       "--seconds", str(long_)])
        per = {e: (b.get(e, 0) - a.get(e, 0)) / (long_ - short) for e, _ in EVENTS}
        note = f"CPU {value(rows, row, 'cpu_percent_of_core'):.2f}% of a core"
        results.append((row, note, per))
    table("System calls per idle second (the io_context's process)", "/s", results)

    # Mutex, uncontended: per lock+unlock.
    n = 20000 if args.quick else 200000
    results = []
    for row in ["uncontended_blocking", "uncontended_async_lock", "uncontended_try_lock"]:
        a, _ = perf_counts(binary, ["--section", "mutex", "--row", row, "--runs", "1",
                                    "--rounds", "1000"])
        b, rows = perf_counts(binary, ["--section", "mutex", "--row", row, "--runs", "1",
                                       "--rounds", str(n + 1000)])
        per = {e: (b.get(e, 0) - a.get(e, 0)) / n for e, _ in EVENTS}
        results.append((row, f"{value(rows, row, 'ops_per_second'):.0f} ops/s", per))
    table("System calls per uncontended lock+unlock", "/op", results)

    # Channel and its peers: per message, both processes (the forked writer and the reader), one
    # message per call; the difference of a long and a short run, so set-up cancels out.
    n = 40000 if args.quick else 200000
    results = []
    for size in (64, 4096):
        for kind in ("channel", "channel_immediate", "message_queue", "socket", "channel_batch64"):
            row = f"{kind}_{size}"
            count = n if size == 64 else n // 4
            count_short = count // 4
            a, _ = perf_counts(binary, ["--section", "channel", "--row", row, "--runs", "1",
                                        "--rounds", str(count_short)])
            b, rows = perf_counts(binary, ["--section", "channel", "--row", row, "--runs", "1",
                                           "--rounds", str(count)])
            per = {e: (b.get(e, 0) - a.get(e, 0)) / (count - count_short) for e, _ in EVENTS}
            results.append((row, f"{value(rows, row, 'messages_per_second'):.0f} messages/s", per))
    table("System calls per message (writer and reader processes)", "/msg", results)


if __name__ == "__main__":
    main()
