"""A small WSGI app for gunicorn in the root tests."""
import time
from urllib.parse import parse_qs


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    q = parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/sleep":
        time.sleep(int(q.get("ms", ["100"])[0]) / 1000)
    status = "404 Not Found" if path == "/missing" else "200 OK"
    body = b"wsgi\n"
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
