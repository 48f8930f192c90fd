"""How an agent walks its events: each acknowledged only once handled; and reading a
record's key (bytes, or text naming a request)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from faust.types import EventT, StreamT

from alto.agents.lease import MembershipLease
from alto.streams.ancestry import request_id_of_key


async def handle_each(
    stream: StreamT,
    handle: Callable[[EventT], Awaitable[None]],
    failed: Callable[[EventT, Exception], Awaitable[None]],
    lease: MembershipLease | None = None,
) -> None:
    """Handle a stream's events in order, acknowledging each only once it is handled.

    Faust's own iteration (`async for event in stream.events()`) acknowledges an event in a
    `finally` around its `yield` (faust/streams.py): when the loop moves on, and also when
    the loop is abandoned, so an agent cancelled mid-event (a worker stopping) had that
    event counted as processed, and committed, unprocessed. Here a cancelled `handle`
    leaves its event unacknowledged (read again), and one that raises goes to `failed`
    (which fails the request) and is then acknowledged. With a `lease`, an event that comes
    while the worker's group membership may have lapsed waits for it, or is dropped for its
    partition's next owner (`alto.agents.lease`)."""
    manual = stream.noack()  # type: ignore[attr-defined]
    async for event in manual.events():
        if lease is not None and not await lease.admit(manual, event):
            continue
        try:
            await handle(event)
        except Exception as exc:
            await failed(event, exc)
        await manual.ack(event)


def as_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return bytes(value)


def readable_key(key: Any, *, node_key: bool = False) -> str | None:
    """The request id a message key names, if the key is readable UTF-8 (a node key's
    request id with `node_key`; else the whole key, which may itself contain '|')."""
    raw = as_bytes(key)
    if not raw:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return (request_id_of_key(text) if node_key else text) or None
