"""Load generator for the demo app: a few client threads, bounded in time, loopback only."""
import argparse
import http.client
import random
import threading
import time

PATHS = [
    ("/", 30),
    ("/api/users/{id}", 40),
    ("/report", 5),
    ("/search?n=18&q=secret", 8),
    ("/hash", 8),
    ("/flaky", 8),
    ("/profile/{id}", 5),
    ("/missing", 1),
]


def worker(port, deadline, counts):
    rng = random.Random()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while time.monotonic() < deadline:
        path = rng.choices([p for p, _ in PATHS], [w for _, w in PATHS])[0]
        path = path.format(id=rng.randint(1, 5000))
        try:
            conn.request("GET", path)
            conn.getresponse().read()
            counts[0] += 1
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        time.sleep(rng.uniform(0.0, 0.02))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--threads", type=int, default=6)
    a = ap.parse_args()
    deadline = time.monotonic() + a.seconds
    counts = [0]
    threads = [threading.Thread(target=worker, args=(a.port, deadline, counts)) for _ in range(a.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
