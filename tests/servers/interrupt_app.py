"""WSGI app for the --interrupt-after test: SIGALRM raises in the running view (interruptingcow's
idea), so a runaway request fails with a 500 instead of waiting for the server's hard kill."""
import faulthandler
import os
import signal
import time


class Interrupted(Exception):
    pass


def _raise(signum, frame):
    raise Interrupted(f"interrupted by signal {signum}")


signal.signal(signal.SIGALRM, _raise)

# For --dump-signal: the app's own traceback dump, the cooperative way.
if os.environ.get("DUMP_FILE"):
    faulthandler.register(signal.SIGUSR2, file=open(os.environ["DUMP_FILE"], "w"), all_threads=True)


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/slow":
        began = time.monotonic()
        try:
            time.sleep(5)  # MARK:slow
        except Interrupted:
            # When the signal arrived, for the test of its timing (the view starts ~1 ms after
            # the request's first bytes, which is where slowtrace's deadline counts from).
            body = f"interrupted after {time.monotonic() - began:.4f} s\n".encode()
            start_response("500 Internal Server Error", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
            return [body]
    body = b"done\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
