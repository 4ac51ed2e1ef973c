"""Target of the recorded-memory tests (recorded.rs): a main thread parked at a known stack.

    <module> → Handler.get → middle ×4 → inner_sleep, sleeping on the line marked SLEEP.
"""
import time


def inner_sleep():
    print("READY", flush=True)
    time.sleep(120)  # SLEEP


def middle(n):
    if n:
        return middle(n - 1)  # RECURSE
    return inner_sleep()  # CALL-INNER


class Handler:
    def get(self):
        return middle(3)  # CALL-MIDDLE


Handler().get()  # MODULE
