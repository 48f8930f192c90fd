"""A stage's events are acknowledged only once handled (`alto.agents.events.handle_each`).

Faust's own iteration acknowledges the current event in a `finally` around its `yield`, so
an agent cancelled mid-event (a worker stopping gracefully) had that event committed
unprocessed. Ours leaves a cancelled event unacknowledged (it is read again), and fails the
request of an event whose handling raised before acknowledging it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from alto.agents.events import handle_each


@dataclass
class _Stream:
    """What `handle_each` uses of a Faust stream: `noack()`, `events()`, `ack(event)`."""

    events_: list[int]
    acked: list[int] = field(default_factory=list)

    def noack(self) -> _Stream:
        return self

    async def events(self) -> AsyncIterator[int]:
        for event in self.events_:
            yield event

    async def ack(self, event: int) -> None:
        self.acked.append(event)


def test_each_event_is_acknowledged_after_it_is_handled() -> None:
    stream, handled = _Stream([1, 2, 3]), []

    async def handle(event: Any) -> None:
        assert event not in stream.acked
        handled.append(event)

    asyncio.run(handle_each(stream, handle, _never))  # type: ignore[arg-type]
    assert handled == stream.acked == [1, 2, 3]


def test_an_event_being_handled_when_the_agent_is_cancelled_is_not_acknowledged() -> None:
    stream = _Stream([1, 2, 3])

    async def run() -> None:
        started = asyncio.Event()

        async def handle(event: Any) -> None:
            if event == 2:
                started.set()
                await asyncio.Event().wait()  # stuck on event 2 when the worker stops

        task = asyncio.ensure_future(handle_each(stream, handle, _never))  # type: ignore[arg-type]
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert stream.acked == [1]


def test_an_event_whose_handling_raises_fails_its_request_then_is_acknowledged() -> None:
    stream, failed = _Stream([1, 2, 3]), []

    async def handle(event: Any) -> None:
        if event == 2:
            raise RuntimeError("a bug of ours")

    async def on_failure(event: Any, exc: Exception) -> None:
        assert event not in stream.acked
        failed.append((event, str(exc)))

    asyncio.run(handle_each(stream, handle, on_failure))  # type: ignore[arg-type]
    assert failed == [(2, "a bug of ours")]
    assert stream.acked == [1, 2, 3]


async def _never(event: Any, exc: Exception) -> None:
    raise AssertionError(f"no failure expected, got {exc!r} on {event}")
