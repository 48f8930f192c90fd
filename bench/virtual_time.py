"""Virtual time for asyncio: an event loop whose clock jumps to its next timer instead of
waiting for it, so code that awaits `asyncio.sleep` (the SIMULATED engine's iterations, a
modelled service time) runs minutes of simulated time in seconds of wall time, unchanged.

How: `loop.time()` returns the virtual clock, and the loop's selector, asked to wait up to
`timeout` for I/O, polls without waiting and advances the clock by `timeout` (which the loop
computed as the time until its earliest timer). Everything that runs between two timers
takes no virtual time. Callbacks due at the same instant run in the order asyncio gives
them (not necessarily the order they were scheduled in).

Limits, by design: no real I/O or threads may be awaited (`asyncio.to_thread` would let the
clock run ahead of the thread); the loop raises `Stalled` when nothing is scheduled and
nothing is ready, which in a simulation means it is waiting for something that cannot come.
`time.monotonic()` and `time.time()` still give wall time.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Stalled(RuntimeError):
    """The virtual-time loop has nothing scheduled and nothing ready."""


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self, clock: VirtualTimeLoop) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise Stalled("nothing scheduled and nothing ready: the simulation cannot go on")
        self._clock.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on a virtual clock that starts at 0 (see the module docstring)."""

    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += max(0.0, seconds)


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a fresh virtual-time loop."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        loop.close()
