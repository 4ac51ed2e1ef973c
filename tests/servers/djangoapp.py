"""A one-file Django app for slowtrace's slow-request tests (served by gunicorn sync workers).

Each slow view parks its thread somewhere known; the `# MARK:` comments let the tests find the
line numbers they expect in captured tracebacks.
"""
import fcntl
import os
import re
import time

from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="slowtrace-test-only",
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["*"],
    MIDDLEWARE=[],
)

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

EVIL = re.compile(r"^(a+)+$")
LOCK_PATH = os.environ.get("SLOWTRACE_LOCK", "/tmp/slowtrace-test.lock")


def nap(seconds):
    time.sleep(seconds)  # MARK:nap


def sleep_view(request):
    nap(float(request.GET.get("s", "2.5")))  # MARK:sleep_view
    return HttpResponse("slept\n")


def regex_view(request):
    deadline = time.monotonic() + float(request.GET.get("s", "2.5"))
    n = 0
    while time.monotonic() < deadline:
        EVIL.match("a" * 22 + "!")  # MARK:regex
        n += 1
    return HttpResponse(f"{n} matches\n")


def hold_lock(seconds):
    with open(LOCK_PATH, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        time.sleep(seconds)  # MARK:hold


def wait_lock():
    with open(LOCK_PATH, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # MARK:wait_lock


def lock_view(request):
    if "hold" in request.GET:
        hold_lock(float(request.GET["hold"]))
    else:
        wait_lock()  # MARK:lock_view
    return HttpResponse("locked\n")


def forever_view(request):
    nap(60)  # MARK:forever
    return HttpResponse("never\n")


def descend(n, seconds):
    if n == 0:
        time.sleep(seconds)  # MARK:deep
        return
    descend(n - 1, seconds)


def deep_view(request):
    # A deeper stack (Django's own frames plus these) for the reader benchmark.
    descend(int(request.GET.get("n", "10")), float(request.GET.get("s", "60")))
    return HttpResponse("deep\n")


def fast_view(request):
    return HttpResponse("fast\n")


urlpatterns = [
    path("sleep", sleep_view),
    path("regex", regex_view),
    path("lock", lock_view),
    path("forever", forever_view),
    path("fast", fast_view),
    path("deep", deep_view),
]

application = get_wsgi_application()
