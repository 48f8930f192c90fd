"""Children that end with the process that started them, however it ends.

`alto up`, `alto demo`, the benchmarks and the tests start a broker, Faust workers and LM
workers (whose vLLM engine core is a process of its own). A parent that exits normally stops
them; one killed with SIGKILL, or whose terminal went away, or that pytest-timeout ended,
runs no cleanup, and its children would live on: a broker holding its port, an engine core
holding gigabytes. Two mechanisms, both set up in the child:

- `preexec(signum)`, for any command (the broker): the kernel sends `signum` to the child
  when its parent dies (Linux `PR_SET_PDEATHSIG`). Set between fork and exec, so it covers
  an executable we do not control. Only for children forked by the main thread (the
  kernel's trigger is the forking thread's end).
- `watch_parent()`, for our own Python children, which start processes of their own: a
  daemon thread that, once the process that started us is gone, kills our whole process
  group with SIGKILL (the child runs in a group of its own, so that group is it and what it
  started, vLLM's engine core included). No graceful shutdown: the stack is going down, and
  an embedded broker's data is gone with it.

The parent's pid travels in `ALTO_PARENT_PID` (set by `WorkerProcess`). Not on Linux,
`preexec` does nothing and `watch_parent` still works (by polling the parent pid).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

PARENT_ENV = "ALTO_PARENT_PID"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_S = 0.5  # how often the watcher looks for its parent (a getppid() call, nothing more)


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


# Resolved here, in the parent: a child between fork and exec must not load libraries.
_PRCTL = _load_prctl()


def _set_pdeathsig(signum: int) -> bool:
    return _PRCTL is not None and _PRCTL(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0


def preexec(signum: int = signal.SIGKILL) -> Callable[[], None]:
    """A `preexec_fn` for `subprocess.Popen`: the child gets `signum` when the process
    calling Popen dies. A parent that died between fork and prctl is caught too."""
    parent = os.getpid()
    # The kernel signals the child when the *thread* that forked it ends: only a child of
    # the main thread may be armed, or a short-lived thread's end would kill it early.
    main = threading.current_thread() is threading.main_thread()

    def arm() -> None:
        if main:
            _set_pdeathsig(signum)
        if os.getppid() != parent:
            os.kill(os.getpid(), signum)

    return arm


def _end_group() -> None:
    with contextlib.suppress(OSError):
        if os.getpgrp() == os.getpid():  # our own group: us and what we started
            os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def watch_parent(parent: int | None = None) -> threading.Thread | None:
    """Kill this process (and its group, if it leads one) once `parent` is gone. `parent`
    defaults to `ALTO_PARENT_PID`; without either, nothing is watched (a process started by
    hand). Returns the watching thread."""
    if parent is None:
        raw = os.environ.get(PARENT_ENV, "")
        if not raw.isdigit():
            return None
        parent = int(raw)
    if os.getppid() != parent:  # already orphaned: the stack is gone
        _end_group()

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(POLL_S):
            if os.getppid() != parent:
                log.warning("parent process %d is gone: ending this process group", parent)
                _end_group()

    thread = threading.Thread(target=watch, name="alto-watch-parent", daemon=True)
    thread.start()
    return thread
