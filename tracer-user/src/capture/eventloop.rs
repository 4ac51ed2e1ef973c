//! Whether a capture's thread is an asyncio event loop. One loop thread serves many requests at
//! once (uvicorn, Django ASGI, FastAPI): its stack at an instant is whatever the loop runs then,
//! another request's task as often as this one's, or the loop waiting in its selector. Captures
//! of such a thread are labelled so that no report passes the loop's stack off as the request's.

use crate::model::slow::Frame;

/// The value of `Capture::stack_of` for a capture of an event-loop thread.
pub const EVENT_LOOP: &str = "event_loop";

/// Whether `python` (innermost first) is the stack of a thread running an asyncio event loop:
/// it has the loop's `_run_once` (CPython's `asyncio/base_events.py`, whichever selector or
/// proactor) below the frames of whatever it runs now.
pub fn is_event_loop(python: &[Frame]) -> bool {
    python.iter().any(|f| {
        // The reader names functions by qualified name (`BaseEventLoop._run_once`).
        let name = f.function.rsplit('.').next().unwrap_or("");
        name == "_run_once"
            && f.file.as_deref().is_some_and(|file| {
                file.ends_with("asyncio/base_events.py")
                    || file.ends_with("asyncio\\base_events.py")
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(function: &str, file: &str) -> Frame {
        Frame {
            function: function.into(),
            file: Some(file.into()),
            line: Some(1),
            module: None,
        }
    }

    #[test]
    fn the_loop_waiting_in_its_selector_is_an_event_loop() {
        let idle = [
            f("select", "/usr/lib/python3.11/selectors.py"),
            f(
                "BaseEventLoop._run_once",
                "/usr/lib/python3.11/asyncio/base_events.py",
            ),
            f(
                "BaseEventLoop.run_forever",
                "/usr/lib/python3.11/asyncio/base_events.py",
            ),
            f(
                "run",
                "/venv/lib/python3.11/site-packages/uvicorn/server.py",
            ),
        ];
        assert!(is_event_loop(&idle));
    }

    #[test]
    fn a_task_the_loop_runs_is_still_the_loop_s_stack() {
        let running = [
            f("spin", "/srv/asgiapp.py"),
            f("block_view", "/srv/asgiapp.py"),
            f(
                "__step_run_and_handle_result",
                "/usr/lib/python3.12/asyncio/tasks.py",
            ),
            f("Handle._run", "/usr/lib/python3.12/asyncio/events.py"),
            f("_run_once", "/usr/lib/python3.12/asyncio/base_events.py"),
        ];
        assert!(is_event_loop(&running));
    }

    #[test]
    fn a_thread_serving_one_request_is_not() {
        let wsgi = [
            f("nap", "/srv/djangoapp.py"),
            f(
                "handle_request",
                "/venv/site-packages/gunicorn/workers/sync.py",
            ),
            // A user function of the same name in another file is not the loop.
            f("Scheduler._run_once", "/srv/scheduler.py"),
        ];
        assert!(!is_event_loop(&wsgi));
        assert!(!is_event_loop(&[]));
    }
}
