"""Acceptance check of slowtrace's CPU profile against py-spy on the same run.

Starts tests/servers/profile_app.py (f ≈ 70 % / g ≈ 30 % of /shares' CPU), loads it, and records
the same seconds with `slowtrace record --flamegraph` and `py-spy record --format raw` (both
sampling the one server process). Prints each tool's share of samples per function of the app,
and exits non-zero if the f share differs by more than 5 points between the tools or from 70 %.

Run it through `cargo xtask compare-pyspy` (root; it installs py-spy into the venv first).
"""
import argparse
import collections
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "..", "servers", "profile_app.py")
FUNCS = ("f", "g", "view", "spin")


def shares(folded_path, frame_fn):
    """Share of samples whose stack holds each app function (py-spy and slowtrace alike)."""
    total = 0
    hits = collections.Counter()
    with open(folded_path) as fh:
        for line in fh:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            n = int(n)
            frames = [frame_fn(fr) for fr in stack.split(";")]
            if "f" not in frames and "g" not in frames:
                continue
            total += n
            for fn in set(frames) & set(FUNCS):
                hits[fn] += n
    return total, {fn: hits[fn] / total if total else 0.0 for fn in FUNCS}


def slowtrace_fn(frame):
    # "f (/path/profile_app.py:22)"
    name, _, where = frame.partition(" (")
    return name if "profile_app.py" in where else None


def pyspy_fn(frame):
    # py-spy raw: "f (profile_app.py:22)" (short filename) or "f (/path/profile_app.py:22)"
    name, _, where = frame.partition(" (")
    return name if "profile_app.py" in where else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--slowtrace", required=True)
    ap.add_argument("--python", required=True)
    ap.add_argument("--py-spy", required=True)
    ap.add_argument("--seconds", type=int, default=10)
    a = ap.parse_args()

    app = subprocess.Popen([a.python, APP], stdout=subprocess.PIPE, text=True)
    port = int(app.stdout.readline().split()[1])
    out = tempfile.mkdtemp(prefix="slowtrace-vs-pyspy-")
    try:
        tracer = subprocess.Popen(
            [a.slowtrace, "record", "--pid", str(app.pid), "--flamegraph",
             "--duration", f"{a.seconds}s", "-o", out],
            stderr=subprocess.PIPE, text=True,
        )
        while "slowtrace: tracing" not in (tracer.stderr.readline() or "slowtrace: tracing"):
            pass
        threading.Thread(target=lambda: [_ for _ in tracer.stderr], daemon=True).start()
        pyspy_out = os.path.join(out, "pyspy.folded")
        spy = subprocess.Popen(
            [a.py_spy, "record", "--pid", str(app.pid), "--format", "raw", "--rate", "99",
             "--duration", str(a.seconds), "--nonblocking", "-o", pyspy_out],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = subprocess.Popen(
            [a.python, os.path.join(HERE, "..", "servers", "keepalive_client.py"),
             str(port), "100000", "/shares"],
            stdout=subprocess.DEVNULL,
        )
        spy.wait()
        tracer.wait()
        client.kill()
        st_total, st = shares(os.path.join(out, "cpu.folded"), slowtrace_fn)
        ps_total, ps = shares(pyspy_out, pyspy_fn)
    finally:
        app.kill()
    print(f"{'function':<10} {'slowtrace':>10} {'py-spy':>10}   (share of samples in f or g)")
    for fn in FUNCS:
        print(f"{fn:<10} {st[fn]:>9.1%} {ps[fn]:>10.1%}")
    print(f"{'samples':<10} {st_total:>10} {ps_total:>10}")
    print(f"files: {out}")
    ok = abs(st["f"] - ps["f"]) <= 0.05 and abs(st["f"] - 0.70) <= 0.05
    print("OK: shares agree within 5 points" if ok else "MISMATCH: shares differ by more than 5 points")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
