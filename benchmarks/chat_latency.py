#!/usr/bin/env python3
"""How long a chat line takes to reach an idle participant, per wake mode.

Two chat processes (alice, bob) join a fresh room with pipes for input and output. The script
writes a line into alice's input, then reads bob's output until the line shows up; the time
between the two is one sample. Lines are --gap apart, so bob is idle (asleep in async_receive)
when each one comes. Each mode (SYSV_WAIT_MODE) gets its own pair of processes; bob's /wake
answer says what his waits actually ran with.

    benchmarks/chat_latency.py [--chat build/release/examples/chat] [--lines 40] [--gap 0.1]

Prints a markdown table; exit status 0, or 1 when a chat failed (its message is printed).
"""

import argparse
import os
import selectors
import statistics
import subprocess
import sys
import time


class Participant:
    def __init__(self, chat, room, name, mode):
        env = dict(os.environ)
        env.pop("NO_COLOR", None)
        if mode:
            env["SYSV_WAIT_MODE"] = mode
        else:
            env.pop("SYSV_WAIT_MODE", None)
        self.name = name
        self.proc = subprocess.Popen(
            [chat, "--room", room, "--name", name, "--no-color"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1, env=env)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)

    def say(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_for(self, text, timeout=10.0):
        """Reads output lines until one contains `text`; returns it (None on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.selector.select(remaining):
                return None
            line = self.proc.stdout.readline()
            if not line:
                return None
            if text in line:
                return line.rstrip("\n")

    def quit(self):
        try:
            self.say("/quit")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode, self.proc.stderr.read().strip()


def measure(chat, mode, lines, gap):
    room = "latency-%d-%s" % (os.getpid(), mode or "default")
    bob = Participant(chat, room, "bob", mode)
    if bob.wait_for("joined room") is None:
        raise RuntimeError("bob did not join: %s" % (bob.quit(),))
    alice = Participant(chat, room, "alice", mode)
    if alice.wait_for("joined room") is None or bob.wait_for("alice joined") is None:
        raise RuntimeError("alice did not join: %s %s" % (alice.quit(), bob.quit()))
    samples = []
    try:
        for i in range(lines):
            time.sleep(gap)
            text = "line-%d" % i
            start = time.monotonic_ns()
            alice.say(text)
            if bob.wait_for("alice: " + text) is None:
                raise RuntimeError("bob never saw " + text)
            samples.append((time.monotonic_ns() - start) / 1e6)
        bob.say("/wake")
        wake = bob.wait_for("woken by") or "?"
        wake = wake[wake.find("woken by") + len("woken by "):]
        wake = wake[:wake.find(" missed") + len(" missed")] if " missed" in wake else wake
    finally:
        for p in (alice, bob):
            code, err = p.quit()
            if code != 0:
                raise RuntimeError("%s exited with %s: %s" % (p.name, code, err))
    return samples, wake


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chat", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "build", "release", "examples", "chat"))
    parser.add_argument("--lines", type=int, default=40)
    parser.add_argument("--gap", type=float, default=0.1, help="seconds between lines")
    parser.add_argument("--modes", default=",thread,polling",
                        help="SYSV_WAIT_MODE values, comma-separated (empty: the default)")
    args = parser.parse_args()
    rows = []
    try:
        for mode in args.modes.split(","):
            samples, wake = measure(args.chat, mode, args.lines, args.gap)
            samples.sort()
            rows.append((mode or "(default)", wake, statistics.median(samples),
                         samples[int(0.9 * (len(samples) - 1))], samples[-1], len(samples)))
    except RuntimeError as e:
        print("chat_latency: %s" % e, file=sys.stderr)
        return 1
    print("| SYSV_WAIT_MODE | bob ran with (/wake) | median (ms) | p90 (ms) | max (ms) | lines |")
    print("|---|---|---:|---:|---:|---:|")
    for mode, wake, med, p90, worst, n in rows:
        print("| %s | %s | %.2f | %.2f | %.2f | %d |" % (mode, wake, med, p90, worst, n))
    print()
    print("A line written into alice's input pipe until it is read from bob's output pipe; "
          "%.0f ms between lines (bob is asleep when each comes); uname -r: %s."
          % (args.gap * 1000, os.uname().release))
    return 0


if __name__ == "__main__":
    sys.exit(main())
