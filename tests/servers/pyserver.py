"""Test servers for slowtrace's root tests. Prints "PORT <n>" once listening on 127.0.0.1.

Modes:
  threading  http.server.ThreadingHTTPServer, HTTP/1.1 keep-alive (reads with recvfrom)
  osread     raw sockets read with os.read and written with os.write (read(2)/write(2))
  binary     a non-HTTP protocol: reads a few bytes, answers a few bytes
  serve-n    like threading, but exits after N requests (argv[2])
"""
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    served = 0
    limit = None
    late_port = 0

    def log_message(self, *args):
        pass

    def _reply(self, code, body=b"ok\n"):
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        Handler.served += 1
        if Handler.limit and Handler.served >= Handler.limit:
            threading.Thread(target=self.server.shutdown).start()

    def do_GET(self):
        url = urlsplit(self.path)
        q = parse_qs(url.query)
        if url.path == "/sleep":
            time.sleep(int(q.get("ms", ["100"])[0]) / 1000)
            self._reply(200, b"slept\n")
        elif url.path == "/recv":
            # Blocked in recv(2) on a TCP socket whose peer answers after ms: a socket wait.
            peer = socket.create_connection(("127.0.0.1", Handler.late_port))
            peer.sendall(q.get("ms", ["100"])[0].encode() + b"\n")
            peer.recv(1)
            peer.close()
            self._reply(200, b"received\n")
        elif url.path == "/native":
            # Three C frames (no frame pointers) under this Python frame, blocked in nanosleep.
            import ctypes
            lib = ctypes.CDLL(os.environ["SLOWTRACE_NATIVE_CHAIN"])
            lib.chain_outer(int(q.get("ms", ["100"])[0]))
            self._reply(200, b"native\n")
        elif url.path.startswith("/status/"):
            self._reply(int(url.path.rsplit("/", 1)[1]))
        elif url.path in ("/", "/hello") or url.path.startswith("/users/"):
            self._reply(200, b"hello\n")
        else:
            self._reply(404, b"not found\n")

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(n)
        self._reply(201, b"created\n")


def late_answers():
    """A listener that answers one byte, N ms after it reads "N\\n": the peer of /recv."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    Handler.late_port = ls.getsockname()[1]

    def answer(c):
        ms = int(c.recv(32).split(b"\n")[0])
        time.sleep(ms / 1000)
        c.sendall(b"x")
        c.close()

    def accept():
        while True:
            c, _ = ls.accept()
            threading.Thread(target=answer, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


def serve_threading(limit=None):
    Handler.limit = limit
    late_answers()
    # SLOWTRACE_TEST_PORT: a fixed port, for servers that start after slowtrace watches it.
    srv = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("SLOWTRACE_TEST_PORT", "0"))), Handler)
    print("PORT", srv.server_address[1], flush=True)
    srv.serve_forever()


def handle_osread(conn):
    fd = conn.fileno()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = os.read(fd, 4096)
        if not chunk:
            conn.close()
            return
        data += chunk
    path = data.split(b" ", 2)[1]
    if path.startswith(b"/sleep"):
        time.sleep(0.2)
    status = b"200 OK" if path != b"/missing" else b"404 Not Found"
    body = b"os-level\n"
    os.write(fd, b"HTTP/1.0 " + status + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
    os.write(fd, body)
    conn.close()


def handle_binary(conn):
    conn.recv(64)
    conn.sendall(b"\x00\x01\x02\x03binary-reply")
    conn.close()


def serve_raw(handler):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    print("PORT", s.getsockname()[1], flush=True)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=handler, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "threading":
        serve_threading()
    elif mode == "serve-n":
        serve_threading(int(sys.argv[2]))
    elif mode == "osread":
        serve_raw(handle_osread)
    elif mode == "binary":
        serve_raw(handle_binary)
    else:
        sys.exit("unknown mode " + mode)
