"""The target of the fault tests (tests/tests/faults.rs): a thread-per-request HTTP/1.0 server
(each request its own connection and its own thread, which exits after the response). Prints
"PORT <n>" once listening on 127.0.0.1.

    python fault_app.py [--churn]

  /hello, /users/N  "hello from <pid>": the same answer before and after any fault
  /sleep?ms=N     sleeps N ms
  /churn?ms=N     recurses to a random depth and back, over and over, for N ms: frames are
                  created and freed thousands of times a second under the Python reader
  /exec           answers, then os.execv's this same program (same pid, a new image): the
                  listening socket is inherited and serving goes on
  /gen            how many times the process exec'd itself

With --churn a background thread churns frames the same way all the time.
"""
import os
import random
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

GEN = int(os.environ.get("FAULT_APP_GEN", "0"))


def dive(n):
    if n == 0:
        return 0
    return dive(n - 1) + 1  # MARK:dive


def churn(seconds):
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += dive(random.randint(1, 150))  # MARK:churn
    return n


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def _reply(self, code, body):
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self):
        url = urlsplit(self.path)
        ms = int(parse_qs(url.query).get("ms", ["100"])[0])
        if url.path == "/hello" or url.path.startswith("/users/"):
            self._reply(200, b"hello from %d\n" % os.getpid())
        elif url.path == "/sleep":
            time.sleep(ms / 1000)
            self._reply(200, b"slept\n")
        elif url.path == "/churn":
            churn(ms / 1000)
            self._reply(200, b"churned\n")
        elif url.path == "/gen":
            self._reply(200, b"%d\n" % GEN)
        elif url.path == "/exec":
            self._reply(200, b"exec\n")
            # The response is out; this connection's socket is close-on-exec, the listener is
            # handed over.
            self.connection.shutdown(socket.SHUT_RDWR)
            fd = self.server.socket.fileno()
            os.set_inheritable(fd, True)
            env = dict(os.environ, FAULT_APP_LISTEN_FD=str(fd), FAULT_APP_GEN=str(GEN + 1))
            os.execve(sys.executable, [sys.executable] + sys.argv, env)
        else:
            self._reply(404, b"not found\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512


def main():
    if "--churn" in sys.argv:
        threading.Thread(target=lambda: churn(1e9), daemon=True).start()
    inherited = os.environ.get("FAULT_APP_LISTEN_FD")
    if inherited:
        srv = Server(("127.0.0.1", 0), Handler, bind_and_activate=False)
        srv.socket.close()
        srv.socket = socket.socket(fileno=int(inherited))
    else:
        srv = Server(("127.0.0.1", 0), Handler)
    print("PORT", srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
