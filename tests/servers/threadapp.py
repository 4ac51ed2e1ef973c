"""A WSGI app for slowtrace's server tests under gunicorn's gthread worker (requests served on a
pool of threads, tid != pid) and uWSGI (harakiri). `# MARK:` comments name the lines the tests
expect in captures."""
import time


def nap(seconds):
    time.sleep(seconds)  # MARK:nap


def spin(seconds):
    deadline = time.monotonic() + seconds
    n = 0
    # One line, so that every capture of the loop names the same line.
    while time.monotonic() < deadline: n += 1  # noqa: E701  # MARK:spin
    return n


def stuck():
    while True:
        time.sleep(0.2)  # MARK:stuck


def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    query = dict(
        kv.split("=", 1) for kv in environ.get("QUERY_STRING", "").split("&") if "=" in kv
    )
    seconds = float(query.get("s", "1.5"))
    if path == "/sleep":
        nap(seconds)  # MARK:sleep_app
        body = b"slept\n"
    elif path == "/spin":
        body = f"{spin(seconds)}\n".encode()  # MARK:spin_app
    elif path == "/stuck":
        stuck()  # MARK:stuck_app
        body = b"never\n"
    else:
        body = b"fast\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
