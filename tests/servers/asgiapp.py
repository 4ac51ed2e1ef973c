"""A one-file Django ASGI app for slowtrace's server tests (served by uvicorn): one event-loop
thread serves every request, so several are in flight on one thread at once.

`# MARK:` comments let the tests find the line numbers they expect in captures.
"""
import asyncio
import time

from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="slowtrace-test-only",
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["*"],
    MIDDLEWARE=[],
)

from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402


async def async_nap(seconds):
    await asyncio.sleep(seconds)  # MARK:async_nap


async def sleep_view(request):
    # Awaits: the loop thread is free (idle or serving others) while this request waits.
    await async_nap(float(request.GET.get("s", "0.5")))  # MARK:sleep_view
    return HttpResponse("slept\n")


def spin(seconds):
    deadline = time.monotonic() + seconds
    n = 0
    # One line, so that every capture of the loop names the same line.
    while time.monotonic() < deadline: n += 1  # noqa: E701  # MARK:spin
    return n


async def block_view(request):
    # Never awaits: the loop thread runs this request's code the whole time.
    n = spin(float(request.GET.get("s", "1.5")))  # MARK:block_view
    return HttpResponse(f"{n}\n")


async def fast_view(request):
    return HttpResponse("fast\n")


urlpatterns = [
    path("sleep", sleep_view),
    path("block", block_view),
    path("fast", fast_view),
]

application = get_asgi_application()
