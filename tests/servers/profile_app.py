"""Profiling test app: known CPU shares and a known wait. Prints "PORT <n>" once listening.

  GET /shares  view() spends ~70 % of its CPU in f() and ~30 % in g() (same loop, 7:3 iterations)
  GET /wait    wait_here() sleeps 200 ms: off CPU, so it shows in the wall-clock profile only
"""
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

UNIT = 30_000


def spin(n):
    # The same cost per iteration whatever n (no growing integers), so time follows n exactly.
    x = 0
    for i in range(n):
        x ^= i & 255
    return x


def f():
    return spin(7 * UNIT)  # MARK:f


def g():
    return spin(3 * UNIT)  # MARK:g


def view():
    return f() + g()


def wait_here():
    time.sleep(0.2)  # MARK:wait


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle and the client's delayed ACK
    # add 40 ms to every keep-alive request and the app is mostly idle.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/shares":
            view()
        elif self.path == "/wait":
            wait_here()
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    srv = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("PORT", srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
