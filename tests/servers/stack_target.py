"""A target for `slowtrace pystack` tests: threads parked in known functions at known lines.

    python stack_target.py [FAULTHANDLER_FILE] [DEPTH]

The main thread recurses DEPTH times, then sleeps in inner_sleep; a second thread ("spinner")
runs a backtracking regex in inner_spin over and over; a third ("churner") computes fib() over
and over, calling and returning millions of times a second, the hardest stack to read from
outside. Their calls are short, so they keep giving the GIL back and the main thread gets to its
sleep. Prints "READY <pid> <spinner native id> <churner native id>" once all are in place. With FAULTHANDLER_FILE, SIGUSR1 makes faulthandler dump every thread
there: the reference our reader is compared with. Lines the tests look for carry "# MARK: name".
"""

import faulthandler
import os
import re
import signal
import sys
import threading
import time

# About 2**20 backtracking steps per match: milliseconds, spent inside one C call on one line.
PATTERN = re.compile(r"^(a+)+$")
SUBJECT = "a" * 20 + "!"


def inner_sleep(ready):
    ready.set()
    time.sleep(3600)  # MARK: sleep


def middle_sleep(ready):
    inner_sleep(ready)  # MARK: call-inner-sleep


def recurse(n, ready):
    if n == 0:
        middle_sleep(ready)  # MARK: recurse-bottom
    else:
        recurse(n - 1, ready)  # MARK: recurse


def inner_spin(ready):
    ready.set()
    while True:  # MARK: spin-loop
        PATTERN.match(SUBJECT)  # MARK: spin


def spin_thread(ready):
    inner_spin(ready)  # MARK: call-inner-spin


def fib(n):
    if n < 2:  # MARK: fib-test
        return n  # MARK: fib-leaf
    return fib(n - 1) + fib(n - 2)  # MARK: fib-call


def churn_thread(ready):
    ready.set()
    while True:
        fib(18)  # MARK: churn


def main():
    fault_file = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] != "-" else None
    depth = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    if fault_file:
        # Kept open for the life of the process: faulthandler writes to its fd from the handler.
        out = open(fault_file, "w")
        faulthandler.register(signal.SIGUSR1, file=out, all_threads=True)
    spinning = threading.Event()
    spinner = threading.Thread(target=spin_thread, args=(spinning,), name="spinner", daemon=True)
    spinner.start()
    spinning.wait()
    churning = threading.Event()
    churner = threading.Thread(target=churn_thread, args=(churning,), name="churner", daemon=True)
    churner.start()
    churning.wait()
    sleeping = threading.Event()

    def announce():
        sleeping.wait()
        # Give the main thread time to get from set() into time.sleep().
        time.sleep(0.2)
        print("READY", os.getpid(), spinner.native_id, churner.native_id, flush=True)

    threading.Thread(target=announce, daemon=True).start()
    recurse(depth, sleeping)  # MARK: main


if __name__ == "__main__":
    main()
