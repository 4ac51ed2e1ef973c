"""A WSGI app with two CPU-bound endpoints for the pprof root test (gunicorn sync workers).

  GET /heavy  spins three times as long as
  GET /light
"""

UNIT = 40_000


def spin(n):
    # The same cost per iteration whatever n (no growing integers).
    x = 0
    for i in range(n):
        x ^= i & 255
    return x


def heavy():
    return spin(3 * UNIT)


def light():
    return spin(UNIT)


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/heavy":
        heavy()
    elif path == "/light":
        light()
    body = b"ok\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
