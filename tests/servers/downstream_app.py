"""A one-file Django app whose views talk to PostgreSQL, Redis and memcached in known patterns,
for slowtrace's downstream-call tests. Served by gunicorn sync workers.

Environment: PGPORT, REDIS_PORT, MEMCACHED_PORT (servers on 127.0.0.1), SLOWTRACE_LOCK (a path).
`python downstream_app.py init` creates the tables and 100 books by 100 authors.
"""
import fcntl
import os
import sys
import time

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="slowtrace-test-only",
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["*"],
    MIDDLEWARE=[],
    # Models need an installed app to belong to; contenttypes is one with no views of its own.
    INSTALLED_APPS=["django.contrib.contenttypes"],
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "slowtrace",
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": os.environ.get("PGPORT", "5432"),
        }
    },
    CACHES={
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "redis": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:%s" % os.environ.get("REDIS_PORT", "6379"),
        },
        "memcached": {
            "BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache",
            "LOCATION": "127.0.0.1:%s" % os.environ.get("MEMCACHED_PORT", "11211"),
        },
    },
    USE_TZ=True,
)
django.setup()

from django.core.cache import caches  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.db import connection, models  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

LOCK_PATH = os.environ.get("SLOWTRACE_LOCK", "/tmp/slowtrace-downstream.lock")


class Author(models.Model):
    name = models.CharField(max_length=50)

    class Meta:
        app_label = "contenttypes"
        db_table = "st_author"


class Book(models.Model):
    title = models.CharField(max_length=50)
    author = models.ForeignKey(Author, on_delete=models.CASCADE)

    class Meta:
        app_label = "contenttypes"
        db_table = "st_book"


def books_n_plus_one(request):
    # One query for the books, then one per book for its author: the N+1.
    names = [b.author.name for b in Book.objects.order_by("id")[:100]]  # MARK:n1
    return HttpResponse("%d\n" % len(names))


def books_n_plus_one_slow(request):
    # The same N+1, slow enough (5 ms per book) to be captured while it runs.
    names = []
    for b in Book.objects.order_by("id")[:100]:
        names.append(b.author.name)  # MARK:n1slow
        time.sleep(0.005)
    return HttpResponse("%d\n" % len(names))


def books_joined(request):
    names = [b.author.name for b in Book.objects.select_related("author").order_by("id")[:100]]
    return HttpResponse("%d\n" % len(names))


def cache_view(request, backend):
    cache = caches[backend]
    cache.set("user:42:profile", "x" * 10)
    hits = sum(1 for _ in range(50) if cache.get("user:42:profile") is not None)  # MARK:cache
    return HttpResponse("%d\n" % hits)


def lock_view(request):
    hold = float(request.GET.get("hold", "0"))
    with open(LOCK_PATH, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # MARK:lock
        time.sleep(hold)
        fcntl.flock(f, fcntl.LOCK_UN)
    return HttpResponse("locked\n")


def cpu_view(request):
    deadline = time.monotonic() + float(request.GET.get("s", "0.4"))
    n = 0
    while time.monotonic() < deadline:
        n += sum(i * i for i in range(1000))
    return HttpResponse("%d\n" % n)


urlpatterns = [
    path("books/n1", books_n_plus_one),
    path("books/n1slow", books_n_plus_one_slow),
    path("books/joined", books_joined),
    path("cache/<str:backend>", cache_view),
    path("lock", lock_view),
    path("cpu", cpu_view),
]

application = get_wsgi_application()


def init():
    with connection.schema_editor() as editor:
        for model in (Author, Book):
            editor.execute('DROP TABLE IF EXISTS "%s" CASCADE' % model._meta.db_table)
            editor.create_model(model)
    authors = Author.objects.bulk_create([Author(name="author %d" % i) for i in range(100)])
    Book.objects.bulk_create(
        [Book(title="book %d" % i, author=a) for i, a in enumerate(authors)]
    )


if __name__ == "__main__" and sys.argv[1:] == ["init"]:
    init()
