"""A WSGI app for the container root tests (gunicorn inside a PID and mount namespace).

  GET /fast   answers at once
  GET /slow   stuck() sleeps 800 ms: a slow request whose capture must show stuck's line
  GET /burn   burn() spins ~150 ms of CPU: on-CPU samples with Python frames
"""
import time


def stuck():
    time.sleep(0.8)  # MARK:stuck


def slow_view():
    stuck()  # MARK:slow_view


def burn():
    x = 0
    end = time.monotonic() + 0.15
    while time.monotonic() < end:  # MARK:burn
        for i in range(2000):
            x ^= i
    return x


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/slow":
        slow_view()
    elif path == "/burn":
        burn()
    body = b"ok\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
