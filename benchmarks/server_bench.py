#!/usr/bin/env python3
"""Load-tests shared_stats_server with wrk: GET /hit/x with the counter in the shared table under
the cross-process sysv::mutex, against the same server counting in each worker's own memory
(--per-process-counters), with 1 and 2 workers, side by side in one run.

    benchmarks/server_bench.py [--binary build/release/examples/shared_stats_server]
                               [--rounds 5] [--duration 10] [--connections 64] [--quick]

Each round starts a fresh server per configuration (in a rotating order, so no configuration
always runs first or last), warms it up for 1 s, then runs `wrk -t1 -c<connections> -d<duration>
--latency`. It reports per configuration the median over rounds of requests/s, p50 and p99
latency, and the ratios the targets are about: shared / per-process throughput (target >= 0.85)
and p99 (target <= 2x) at the same worker count, and 2 workers / 1 worker. It also reports what
the servers measured themselves in /stats: how many lock acquisitions had to wait, how long they
waited and how long the lock was held. Every shared run is checked: the counter must equal the
responses wrk received, up to the requests wrk cut off at the end of a run (at most one per
connection per wrk run). Every server gets its own key file in a temporary directory and is
stopped with SIGTERM, which must remove its System V objects (checked).

Needs wrk (Debian: wrk) and a release build: cmake --preset release && cmake --build --preset
release --target shared_stats_server.
"""
import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

CONFIGS = [
    # (label, workers, extra options)
    ("per-process counters, 1 worker", 1, ["--per-process-counters"]),
    ("shared counter, 1 worker", 1, []),
    ("per-process counters, 2 workers", 2, ["--per-process-counters"]),
    ("shared counter, 2 workers", 2, []),
    ("shared counter, 2 workers, no spinning (co_await at once)", 2, ["--lock-spin", "0"]),
    ("shared counter, 2 workers, no spinning, latency_tuned backoff", 2,
     ["--lock-spin", "0", "--lock-backoff", "latency"]),
]
# The 1-worker row each 2-worker row is compared with.
SCALING = {CONFIGS[2][0]: CONFIGS[0][0], CONFIGS[3][0]: CONFIGS[1][0]}


def ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(text):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    total = int(re.search(r"(\d+) requests in", text).group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    lat = {p: ms(v, u) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", text,
                                                    re.M)}
    return {"rps": rps, "total": total, "p50": lat["50"], "p99": lat["99"],
            "errors": sum(int(g) for g in errors.groups()) if errors else 0,
            "non2xx": int(non2xx.group(1)) if non2xx else 0}


class Server:
    def __init__(self, binary, workers, extra, key_file):
        self.key_file = key_file
        self.proc = subprocess.Popen(
            [binary, "--workers", str(workers), "--key-file", key_file] + extra,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
        if not match:
            self.proc.kill()
            sys.exit("server did not start: " + line + self.proc.stdout.read())
        self.port = int(match.group(1))
        self.url = "http://127.0.0.1:%d" % self.port

    def stats(self):
        with urllib.request.urlopen(self.url + "/stats", timeout=10) as r:
            return json.load(r)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        if self.proc.returncode != 0 or "removed shared memory id" not in out:
            sys.exit("server did not stop cleanly (status %s):\n%s" % (self.proc.returncode, out))
        if "restarting" in out:
            sys.exit("a worker died during the run:\n" + out)


def wrk(url, connections, duration):
    out = subprocess.run(["wrk", "-t1", "-c%d" % connections, "-d%ds" % duration, "--latency",
                          url + "/hit/x"], check=True, capture_output=True, text=True).stdout
    return parse_wrk(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default="build/release/examples/shared_stats_server")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s (smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 2
    if not os.access(args.binary, os.X_OK):
        sys.exit("%s not found: cmake --preset release && cmake --build --preset release "
                 "--target shared_stats_server" % args.binary)

    results = {label: [] for label, _, _ in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            order = CONFIGS[round_index % len(CONFIGS):] + CONFIGS[:round_index % len(CONFIGS)]
            for label, workers, extra in order:
                key_file = os.path.join(tmp, "key-%d-%d" % (round_index, workers))
                open(key_file, "w").close()
                server = Server(args.binary, workers, extra, key_file)
                warm = wrk(server.url, args.connections, 1)
                with open("/proc/loadavg") as f:
                    load_before = f.read().split()[0]
                run = wrk(server.url, args.connections, args.duration)
                stats = server.stats()
                server.stop()
                run["load"] = load_before
                if run["errors"] or run["non2xx"]:
                    sys.exit("%s: wrk saw %d socket errors and %d non-2xx responses" %
                             (label, run["errors"], run["non2xx"]))
                locks = [w["lock"] for w in stats["workers"]]
                acquired = sum(l["acquired"] for l in locks)
                contended = sum(l["contended"] for l in locks)
                awaited = sum(l["awaited"] for l in locks)
                run["awaited_pct"] = 100.0 * awaited / acquired if acquired else 0.0
                run["acquired"] = acquired
                run["contended_pct"] = 100.0 * contended / acquired if acquired else 0.0
                run["wait_us"] = (sum(l["wait_ns_total"] for l in locks) / contended / 1000
                                  if contended else 0.0)
                run["wait_max_ms"] = max(l["wait_ns_max"] for l in locks) / 1e6
                run["hold_us"] = (sum(l["hold_ns_total"] for l in locks) / acquired / 1000
                                  if acquired else 0.0)
                run["share"] = "/".join(str(w["requests"]) for w in stats["workers"])
                if stats["mode"] == "shared":
                    counted = stats["counters"]["x"]
                    answered = warm["total"] + run["total"]
                    cut_off = counted - answered
                    if not 0 <= cut_off <= 2 * args.connections:
                        sys.exit("%s: the counter is %d but wrk got %d responses" %
                                 (label, counted, answered))
                results[label].append(run)
                print("round %d %-62s %7.0f req/s  p50 %5.2f ms  p99 %6.2f ms  busy %5.2f%%"
                      "  co_await %5.2f%%  wait %7.1f us  hold %5.2f us  per worker %s  load %s" %
                      (round_index + 1, label, run["rps"], run["p50"], run["p99"],
                       run["contended_pct"], run["awaited_pct"], run["wait_us"], run["hold_us"],
                       run["share"], run["load"]), file=sys.stderr, flush=True)

    med = {label: {k: statistics.median(r[k] for r in runs)
                   for k in ("rps", "p50", "p99", "contended_pct", "awaited_pct", "wait_us",
                             "hold_us", "wait_max_ms")}
           for label, runs in results.items()}
    baseline = {1: med[CONFIGS[0][0]], 2: med[CONFIGS[2][0]]}

    print("| configuration | requests/s | p50 (ms) | p99 (ms) | throughput / per-process "
          "| p99 / per-process | 2 workers / 1 worker | lock busy | co_await | mean wait (us) "
          "| max wait (ms) | mean hold (us) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, workers, extra in CONFIGS:
        m = med[label]
        shared = "--per-process-counters" not in extra
        b = baseline[workers]
        scaling = ("%.2fx" % (m["rps"] / med[SCALING[label]]["rps"])
                   if label in SCALING else "")
        print("| %s | %.0f | %.2f | %.2f | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            label, m["rps"], m["p50"], m["p99"],
            "%.3f" % (m["rps"] / b["rps"]) if shared else "1 (baseline)",
            "%.2fx" % (m["p99"] / b["p99"]) if shared else "1 (baseline)",
            scaling,
            "%.2f%%" % m["contended_pct"] if shared else "-",
            "%.2f%%" % m["awaited_pct"] if shared else "-",
            "%.0f" % m["wait_us"] if shared else "-",
            "%.1f" % m["wait_max_ms"] if shared else "-",
            "%.2f" % m["hold_us"] if shared else "-"))
    print()
    print("%d rounds x %d s of wrk -t1 -c%d per configuration (after 1 s of warm-up), "
          "configurations interleaved; medians over rounds. Lock columns: what the workers "
          "measured (/stats): the share of acquisitions whose first try_lock failed (busy), "
          "the share that had to co_await after spinning, the mean and longest wait of the busy "
          "ones, and the mean time from acquisition to unlock." %
          (args.rounds, args.duration, args.connections))


if __name__ == "__main__":
    main()
