"""Which asyncio event loop a worker process runs on.

libuv's loop (uvloop) runs the same asyncio code with its scheduling, timers and socket I/O
in C. A worker's time outside our stages is mostly that: Faust's consumer thread handing
records to the app's loop (`call_soon_threadsafe`), aiokafka's produce and fetch requests
(socket writes), tasks and futures. The long-poll front already ran on it (10-15% less CPU
there, `alto.infra.longpoll`); the Faust and LM workers now do too (README, "Which event
loop"). `AltoConfig.event_loop = "asyncio"` keeps the standard library's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from alto.config import AltoConfig

log = logging.getLogger(__name__)
T = TypeVar("T")


def install(config: AltoConfig) -> str:
    """Make the loops this process creates from now on (Faust's, its consumer thread's,
    `asyncio.run`'s) the configured kind; returns the kind in effect. Call it before any
    loop is made. uvloop asked for but not importable falls back to asyncio's, with a warning."""
    if config.event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("event_loop=uvloop but uvloop is not installed: asyncio's loop instead")
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            log.info("event loop: uvloop")
            return "uvloop"
    asyncio.set_event_loop_policy(None)  # the standard library's default
    log.info("event loop: asyncio")
    return "asyncio"


def run(main: Coroutine[Any, Any, T], config: AltoConfig) -> T:
    """`asyncio.run(main)` on the configured kind of loop."""
    install(config)
    return asyncio.run(main)
