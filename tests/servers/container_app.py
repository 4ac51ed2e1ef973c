"""A WSGI app for the container root tests (gunicorn inside a PID and mount namespace).

  GET /fast   answers at once
  GET /slow   stuck() sleeps 800 ms: a slow request whose capture must show stuck's line
  GET /burn   burn() spins ~150 ms of CPU: on-CPU samples with Python frames
  GET /cache?port=N   five Redis GETs of one key to 127.0.0.1:N (raw RESP, no client library)
"""
import socket
import time
from urllib.parse import parse_qs


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


def cache(port):
    with socket.create_connection(("127.0.0.1", port)) as s:
        for _ in range(5):
            s.sendall(b"*2\r\n$3\r\nGET\r\n$12\r\nuser:1:token\r\n")
            s.recv(64)  # "$-1\r\n": no such key


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/slow":
        slow_view()
    elif path == "/burn":
        burn()
    elif path == "/cache":
        cache(int(parse_qs(environ.get("QUERY_STRING", ""))["port"][0]))
    body = b"ok\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
