"""gunicorn config for the root tests (`--config`): each worker, once it has loaded the app and is
about to serve, leaves an empty file named by its pid in $SLOWTRACE_READY_DIR. The tests wait for
those files instead of sleeping."""
import os


def post_worker_init(worker):
    ready = os.environ.get("SLOWTRACE_READY_DIR")
    if ready:
        open(os.path.join(ready, str(os.getpid())), "w").close()
