"""slowtrace's demo web app: a plain WSGI app with fast, slow, failing and CPU-heavy endpoints.

Run: gunicorn --workers 4 --bind 127.0.0.1:8765 app:app
"""
import hashlib
import json
import os
import random
import re
import time
from urllib.parse import parse_qs

try:
    import redis
except ImportError:  # the demo runs without Redis too; /profile then answers 503
    redis = None

REDIS_PORT = os.environ.get("REDIS_PORT")
_redis = None


def cache():
    global _redis
    if _redis is None and redis is not None and REDIS_PORT:
        _redis = redis.Redis(host="127.0.0.1", port=int(REDIS_PORT))
    return _redis

EVIL = re.compile(r"^(a+)+$")


def respond(start_response, status, body, ctype="application/json"):
    data = body if isinstance(body, bytes) else body.encode()
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(data)))])
    return [data]


def fetch_report(seconds):
    # Stands in for a slow downstream call.
    time.sleep(seconds)
    return {"rows": 42}


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/":
        return respond(start_response, "200 OK", "<h1>demo</h1>", "text/html")
    if path.startswith("/api/users/"):
        uid = path.rsplit("/", 1)[-1]
        return respond(start_response, "200 OK", json.dumps({"id": uid, "name": "user" + uid}))
    if path == "/report":
        return respond(start_response, "200 OK", json.dumps(fetch_report(random.uniform(0.2, 0.6))))
    if path == "/search":
        # An "evil regex" on a short input: noticeable CPU, not a hang.
        n = int(query.get("n", ["18"])[0])
        EVIL.match("a" * n + "!")
        return respond(start_response, "200 OK", "[]")
    if path == "/hash":
        hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", 20000)
        return respond(start_response, "200 OK", "ok", "text/plain")
    if path.startswith("/profile/"):
        # A "repeated cache key" hotspot: every helper re-reads the session instead of passing it.
        r = cache()
        if r is None:
            return respond(start_response, "503 Service Unavailable", "no redis", "text/plain")
        key = "session:" + path.rsplit("/", 1)[-1]
        r.set(key, "{}")
        for _ in range(20):
            r.get(key)
        return respond(start_response, "200 OK", "{}")
    if path == "/flaky":
        if random.random() < 0.3:
            return respond(start_response, "500 Internal Server Error", "boom", "text/plain")
        return respond(start_response, "200 OK", "fine", "text/plain")
    return respond(start_response, "404 Not Found", "not found", "text/plain")
