"""Which asyncio event loop a process runs on.

libuv's loop (uvloop) runs the same asyncio code with its scheduling, timers and socket I/O
in C. A worker's time outside our stages is mostly that: Faust's consumer thread handing
records to the app's loop (`call_soon_threadsafe`), aiokafka's produce and fetch requests
(socket writes), tasks and futures. The Faust and LM workers run on the kind
`AltoConfig.event_loop` names (README, "Which event loop"); the long-poll front always asks
for uvloop (10-15% less CPU there, `alto.infra.longpoll`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from alto.enums import EventLoop

log = logging.getLogger(__name__)
T = TypeVar("T")


def install(kind: EventLoop) -> EventLoop:
    """Make the loops this process creates from now on (Faust's, its consumer thread's,
    `asyncio.run`'s) of `kind`; returns the kind in effect. Call it before any loop is made.
    uvloop asked for but not importable falls back to asyncio's, with a warning."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("event loop uvloop asked for but not installed: asyncio's instead")
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            log.info("event loop: uvloop")
            return "uvloop"
    asyncio.set_event_loop_policy(None)  # the standard library's default
    log.info("event loop: asyncio")
    return "asyncio"


def run(main: Coroutine[Any, Any, T], kind: EventLoop) -> T:
    """`asyncio.run(main)` on a loop of `kind`."""
    install(kind)
    return asyncio.run(main)
