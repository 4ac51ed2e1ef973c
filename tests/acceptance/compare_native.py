"""Acceptance check of a slow-request capture's frames against `py-spy dump --native`, on the
same stuck thread: tests/servers/pyserver.py serving /native, a ctypes call into three C frames
built without frame pointers (tests/servers/native_chain.c) that sleeps in nanosleep. While it
sleeps, py-spy dumps the thread and slowtrace captures it (threshold 300 ms, resample 1 s).

Prints both stacks innermost first and exits non-zero unless py-spy's native frames below the
first Python frame appear, in order, among the capture's native frames, and the Python frames
agree. Run it through `cargo xtask compare-pyspy` (root; it installs py-spy into the venv first).
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SERVERS = os.path.join(HERE, "..", "servers")


def norm(name):
    """libc's internal aliases (`__GI___clock_nanosleep`) under their public names."""
    return re.sub(r"^(__GI_)?_*", "", name)


def pyspy_thread(dump, marker):
    """Frames (name, location) of the thread whose stack holds `marker`, innermost first."""
    threads, cur = [], None
    for line in dump.splitlines():
        if line.startswith("Thread "):
            cur = []
            threads.append(cur)
        elif cur is not None and line.startswith("    "):
            m = re.match(r"\s+(\S+) \((.*)\)$", line)
            if m:
                cur.append((m.group(1), m.group(2)))
    for t in threads:
        if any(n == marker for n, _ in t):
            return t
    sys.exit(f"py-spy shows no thread in {marker}:\n{dump}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--slowtrace", required=True)
    ap.add_argument("--python", required=True)
    ap.add_argument("--py-spy", required=True)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="compare-native-")
    lib = os.path.join(tmp, "libchain.so")
    subprocess.run(["gcc", "-O2", "-g", "-fomit-frame-pointer", "-shared", "-fPIC", "-o", lib,
                    os.path.join(SERVERS, "native_chain.c")], check=True)
    env = dict(os.environ, SLOWTRACE_NATIVE_CHAIN=lib)
    server = subprocess.Popen([a.python, os.path.join(SERVERS, "pyserver.py"), "threading"],
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        port = int(server.stdout.readline().split()[1])
        out = os.path.join(tmp, "trace")
        tracer = subprocess.Popen([a.slowtrace, "record", "--pid", str(server.pid), "--threshold", "300ms",
                                   "--resample", "1s", "-o", out], stderr=subprocess.PIPE, text=True)
        time.sleep(3)  # attached
        t = threading.Thread(target=lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/native?ms=3000").read())
        t.start()
        time.sleep(1.3)  # the capture at 300 ms and the one at 1.3 s are taken; py-spy now
        dump = subprocess.run([a.py_spy, "dump", "--native", "--pid", str(server.pid)],
                              capture_output=True, text=True, check=True).stdout
        t.join()
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)
        slow = [json.loads(l) for l in open(os.path.join(out, "slow.jsonl"))]
    finally:
        server.kill()
    spy = pyspy_thread(dump, "chain_inner")
    caps = [s for s in slow if s["endpoint"] == "GET /native"][0]["captures"]
    cap = min(caps, key=lambda c: abs(c["offset_ms"] - 1300))
    native = [f["function"] for f in cap["native"]]
    python = [f["function"] for f in cap["python"]]
    # py-spy: native frames until the first Python one (a frame located in a .py file).
    is_py = lambda loc: ".py:" in loc
    first_py = next(i for i, (_, loc) in enumerate(spy) if is_py(loc))
    spy_native = [norm(n) for n, _ in spy[:first_py] if not n.startswith("0x")]
    spy_python = [n for n, loc in spy if is_py(loc)]
    print(f"py-spy dump --native (thread in chain_inner), innermost first:")
    for n, loc in spy:
        print(f"    {n} ({loc})")
    print(f"slowtrace capture at {cap['offset_ms']} ms ({cap['native_source']}), native then Python, innermost first:")
    for f in cap["native"]:
        print(f"    {f['function']} ({f.get('module', '')})")
    for f in cap["python"]:
        print(f"    {f['function']} ({os.path.basename(f.get('file', ''))}:{f.get('line')})")
    ours = [norm(n) for n in native if not n.startswith("0x")]
    common = set(ours) & set(spy_native)
    in_spy = [n for n in spy_native if n in common]
    in_ours = []
    for n in ours:
        if n in common and n not in in_ours:
            in_ours.append(n)
    ok = True
    if in_spy != in_ours:
        print(f"MISMATCH: the frames both show are in another order:\n  py-spy    {in_spy}\n  slowtrace {in_ours}")
        ok = False
    required = ["clock_nanosleep", "chain_inner", "chain_middle", "chain_outer"]
    if [n for n in ours if n in required] != required:
        print(f"MISMATCH: slowtrace's native frames miss the leaf or the C chain: {ours}")
        ok = False
    print(f"native: {len(in_spy)} frames in both, in the same order: {in_spy}")
    # py-spy reads DWARF inline records (a function inlined into its caller is a frame of its
    # own) and hides the interpreter's C frames; slowtrace names the function an inlined one
    # sits in, and keeps the interpreter's frames (Python frames are listed apart).
    print(f"  only py-spy: {[n for n in spy_native if n not in common]}")
    print(f"  only slowtrace (the first 12): {[n for n in ours if n not in common][:12]}")
    if spy_python != python[: len(spy_python)]:
        print(f"MISMATCH: Python frames differ:\n  py-spy    {spy_python}\n  slowtrace {python}")
        ok = False
    else:
        print(f"python: the {len(spy_python)} Python frames agree")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
