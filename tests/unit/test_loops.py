"""Which event loop a worker runs on (`alto.loops`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from alto import loops
from alto.config import load_config


@pytest.fixture(autouse=True)
def _default_policy() -> Iterator[None]:
    yield
    asyncio.set_event_loop_policy(None)


async def _kind() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_uvloop_by_default() -> None:
    config = load_config(environ={})
    assert config.event_loop == "uvloop"
    assert loops.run(_kind(), config.event_loop) == "uvloop"


def test_asyncio_when_asked() -> None:
    config = load_config(environ={"ALTO_EVENT_LOOP": "asyncio"})
    assert loops.install(config.event_loop) == "asyncio"
    assert loops.run(_kind(), config.event_loop) == "asyncio"


def test_a_thread_of_the_process_gets_the_same_kind() -> None:
    """Faust's consumer thread makes its own loop: it must be the configured kind too."""
    import threading

    loops.install(load_config(environ={}).event_loop)
    seen: list[str] = []
    thread = threading.Thread(target=lambda: seen.append(asyncio.run(_kind())))
    thread.start()
    thread.join()
    assert seen == ["uvloop"]


def test_unknown_loop_is_refused() -> None:
    with pytest.raises(Exception, match="event_loop"):
        load_config(environ={"ALTO_EVENT_LOOP": "trio"})
