#!/usr/bin/env python3
"""Load-tests shared_stats_server with wrk: GET /hit/x with the counter in the shared table under
the cross-process sysv::mutex, against the same server counting in each worker's own memory
(--per-process-counters), with 1 and 2 workers, side by side in one run. The shared rows also
come with one lock acquisition per request (--lock-per-request) instead of one per batch of the
hits that arrive together, and without spinning before co_await (--lock-spin 0), with the
default and the latency-tuned backoff.

    benchmarks/server_bench.py [--binary build/release/examples/shared_stats_server]
                               [--rounds 10] [--duration 3] [--connections 64] [--quick]

Every configuration's server is started once (each with its own key file in a temporary
directory) and warmed up; then each round runs `wrk -t1 -c<connections> -d<duration> --latency`
against every server in turn, in a rotating order. Ratios are taken within a round (shared /
per-process at the same worker count, 2 workers / 1 worker), so a change of machine load between
rounds affects both sides, and the table shows their median over rounds: throughput (target:
shared >= 0.85 of per-process) and p99 latency (target: within 2x). Each run also records how
much CPU processes other than the servers and wrk used meanwhile, and is repeated (after 2 s, up
to 5 times) while that is above --max-others percent of a core: a busy machine makes every
number noisier.

The servers measure their lock themselves (/stats): how many acquisitions found it held by the
other worker, how many of those had to co_await it after spinning, how long they waited, how
long it was held. At the end every shared server's counter must equal the responses wrk got
(up to the requests wrk cut off at the end of each run, at most one per connection), and every
server must stop cleanly on SIGTERM and remove its System V objects.

Needs wrk (Debian: wrk) and a release build: cmake --preset release && cmake --build --preset
release --target shared_stats_server.
"""
import argparse
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

CONFIGS = [
    # (key, label, workers, extra options)
    ("pp1", "per-process counters, 1 worker", 1, ["--per-process-counters"]),
    ("sh1", "shared counter, 1 worker", 1, []),
    ("sh1-req", "shared counter, 1 worker, a lock per request", 1, ["--lock-per-request"]),
    ("pp2", "per-process counters, 2 workers", 2, ["--per-process-counters"]),
    ("sh2", "shared counter, 2 workers", 2, []),
    ("sh2-req", "shared counter, 2 workers, a lock per request", 2, ["--lock-per-request"]),
    ("sh2-req-nospin", "... and no spinning (co_await at once)", 2,
     ["--lock-per-request", "--lock-spin", "0"]),
    ("sh2-req-nospin-lat", "... and backoff::latency_tuned()", 2,
     ["--lock-per-request", "--lock-spin", "0", "--lock-backoff", "latency"]),
]
# Each shared row's baseline (per-process, same workers), and the rows compared across workers.
BASELINE = {"sh1": "pp1", "sh1-req": "pp1", "sh2": "pp2", "sh2-req": "pp2",
            "sh2-req-nospin": "pp2", "sh2-req-nospin-lat": "pp2"}
SCALING = {"pp2": "pp1", "sh2": "sh1", "sh2-req": "sh1-req"}


def to_ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(text):
    latency = {p: to_ms(v, u)
               for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)}
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
            "total": int(re.search(r"(\d+) requests in", text).group(1)),
            "p50": latency["50"], "p99": latency["99"],
            "errors": sum(int(g) for g in errors.groups()) if errors else 0,
            "non2xx": int(non2xx.group(1)) if non2xx else 0}


def cpu_jiffies(pid):
    """utime + stime of a process, in clock ticks."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def busy_jiffies():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:8]]
    return sum(fields) - fields[3] - fields[4]  # all but idle and iowait


class Server:
    def __init__(self, binary, workers, extra, key_file):
        self.proc = subprocess.Popen(
            [binary, "--workers", str(workers), "--key-file", key_file] + extra,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
        if not match:
            self.proc.kill()
            sys.exit("server did not start: " + line + self.proc.stdout.read())
        self.url = "http://127.0.0.1:%s" % match.group(1)
        self.answered = 0  # responses wrk received
        self.runs = 0

    def stats(self):
        with urllib.request.urlopen(self.url + "/stats", timeout=10) as r:
            return json.load(r)

    def pids(self):
        return [self.proc.pid] + [w["pid"] for w in self.stats()["workers"]]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        if self.proc.returncode != 0 or "removed shared memory id" not in out:
            sys.exit("server did not stop cleanly (status %s):\n%s" % (self.proc.returncode, out))
        if "restarting" in out:
            sys.exit("a worker died during the run:\n" + out)


def wrk(server, connections, duration):
    """One wrk run; also measures the CPU that everything else on the machine used meanwhile."""
    pids = server.pids()
    ours_before = sum(cpu_jiffies(p) for p in pids)
    busy_before = busy_jiffies()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_proc = subprocess.run(["wrk", "-t1", "-c%d" % connections, "-d%ds" % duration,
                               "--latency", server.url + "/hit/x"],
                              check=True, capture_output=True, text=True)
    busy = busy_jiffies() - busy_before
    ours = sum(cpu_jiffies(p) for p in pids) - ours_before
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, reaped by now
    wrk_seconds = (children.ru_utime + children.ru_stime - children_before.ru_utime -
                   children_before.ru_stime)
    run = parse_wrk(wrk_proc.stdout)
    if run["errors"] or run["non2xx"]:
        sys.exit("wrk saw %d socket errors and %d non-2xx responses:\n%s" %
                 (run["errors"], run["non2xx"], wrk_proc.stdout))
    hz = os.sysconf("SC_CLK_TCK")
    run["server_cpu"] = 100.0 * ours / hz / duration
    run["wrk_cpu"] = 100.0 * wrk_seconds / duration
    run["others_cpu"] = max(0.0, 100.0 * busy / hz / duration - run["server_cpu"] -
                            run["wrk_cpu"])
    server.answered += run["total"]
    server.runs += 1
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default="build/release/examples/shared_stats_server")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--max-others", type=float, default=25.0,
                        help="repeat a run (up to 5 times) while processes other than the "
                             "servers and wrk use more than this %% of a core")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 s (smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration = 2, 1
    if not os.access(args.binary, os.X_OK):
        sys.exit("%s not found: cmake --preset release && cmake --build --preset release "
                 "--target shared_stats_server" % args.binary)
    subprocess.run(["wrk", "--version"], capture_output=True)  # fails early if missing

    runs = {key: [] for key, _, _, _ in CONFIGS}
    repeated = 0
    with tempfile.TemporaryDirectory() as tmp:
        servers = {}
        try:
            for key, _, workers, extra in CONFIGS:
                key_file = os.path.join(tmp, key)
                open(key_file, "w").close()
                servers[key] = Server(args.binary, workers, extra, key_file)
            for key in servers:
                wrk(servers[key], args.connections, 1)  # warm-up
            for r in range(args.rounds):
                order = CONFIGS[r % len(CONFIGS):] + CONFIGS[:r % len(CONFIGS)]
                for key, label, _, _ in order:
                    for attempt in range(6):
                        run = wrk(servers[key], args.connections, args.duration)
                        if run["others_cpu"] <= args.max_others or attempt == 5:
                            break
                        repeated += 1
                        print("round %2d %-50s repeated: other processes used %.0f%% of a core"
                              % (r + 1, label, run["others_cpu"]), file=sys.stderr, flush=True)
                        time.sleep(2)
                    runs[key].append(run)
                    print("round %2d %-50s %7.0f req/s  p50 %5.2f ms  p99 %6.2f ms  "
                          "CPU: servers %3.0f%%, wrk %3.0f%%, others %3.0f%%" %
                          (r + 1, label, run["rps"], run["p50"], run["p99"], run["server_cpu"],
                           run["wrk_cpu"], run["others_cpu"]),
                          file=sys.stderr, flush=True)
            stats = {key: s.stats() for key, s in servers.items()}
        finally:
            for s in servers.values():
                if s.proc.poll() is None:
                    s.stop()
        for key, s in servers.items():
            if stats[key]["mode"] == "shared":
                counted = stats[key]["counters"]["x"]
                cut_off = counted - s.answered
                if not 0 <= cut_off <= s.runs * args.connections:
                    sys.exit("%s: the counter is %d but wrk got %d responses" %
                             (key, counted, s.answered))

    # Runs still disturbed after the repeats are left out when enough quiet ones remain.
    def quiet(run):
        return run["others_cpu"] <= args.max_others

    def median_of(key, field):
        chosen = [r for r in runs[key] if quiet(r)]
        return statistics.median(r[field] for r in (chosen if len(chosen) >= 3 else runs[key]))

    def median_ratio(key, base, field):
        pairs = list(zip(runs[key], runs[base]))
        chosen = [(a, b) for a, b in pairs if quiet(a) and quiet(b)]
        return statistics.median(a[field] / b[field]
                                 for a, b in (chosen if len(chosen) >= 3 else pairs))

    print("| configuration | requests/s | p50 (ms) | p99 (ms) | throughput / per-process "
          "| p99 / per-process | 2 workers / 1 worker | lock busy | co_await | mean wait (us) "
          "| max wait (ms) | mean hold (us) | hits per lock | lock semops per hit (us) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key, label, _, _ in CONFIGS:
        med = {f: median_of(key, f) for f in ("rps", "p50", "p99")}
        locks = [w["lock"] for w in stats[key]["workers"]]
        acquired = sum(l["acquired"] for l in locks)
        busy = sum(l["contended"] for l in locks)
        awaited = sum(l["awaited"] for l in locks)
        hits = sum(l["hits"] for l in locks)
        shared = key in BASELINE
        cells = [label, "%.0f" % med["rps"], "%.2f" % med["p50"], "%.2f" % med["p99"],
                 "%.3f" % median_ratio(key, BASELINE[key], "rps") if shared else "1 (baseline)",
                 "%.2fx" % median_ratio(key, BASELINE[key], "p99") if shared else "1 (baseline)",
                 "%.2fx" % median_ratio(key, SCALING[key], "rps") if key in SCALING else ""]
        if shared:
            cells += ["%.2f%%" % (100.0 * busy / acquired), "%.2f%%" % (100.0 * awaited / acquired),
                      "%.0f" % (sum(l["wait_ns_total"] for l in locks) / busy / 1000
                                if busy else 0.0),
                      "%.1f" % (max(l["wait_ns_max"] for l in locks) / 1e6),
                      "%.2f" % (sum(l["hold_ns_total"] for l in locks) / acquired / 1000),
                      "%.1f" % (hits / acquired),
                      "%.2f" % (sum(l["semop_ns_total"] for l in locks) / hits / 1000)]
        else:
            cells += ["-"] * 7
        print("| " + " | ".join(cells) + " |")
    others = [r["others_cpu"] for rs in runs.values() for r in rs]
    left_out = sum(1 for rs in runs.values() for r in rs if not quiet(r))
    print()
    print("%d rounds x %d s of wrk -t1 -c%d per configuration, configurations interleaved; "
          "requests/s and latencies: median over rounds; ratios: median over rounds of the ratio "
          "within the round. Lock columns, as the workers measured them over the whole run "
          "(/stats): the share of acquisitions whose first try_lock found the lock held, the "
          "share that then had to co_await it, the mean and longest wait of those, the mean time "
          "from acquisition to unlock, how many hits were applied per acquisition, and the time "
          "spent in the two semops that took and released the lock, per hit. Meanwhile processes other than the servers and wrk used "
          "%.0f%% of a core on average (at most %.0f%% during one run); %d runs were repeated "
          "because they used more than %.0f%%, and %d runs that stayed above it are left out "
          "of the medians and ratios (when at least 3 quiet ones remain)." %
          (args.rounds, args.duration, args.connections, statistics.mean(others), max(others),
           repeated, args.max_others, left_out))


if __name__ == "__main__":
    main()
