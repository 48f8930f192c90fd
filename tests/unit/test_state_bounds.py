"""Bounded aggregator state: done markers expire, a node open past the deadline fails its
request (naming the stage) and frees its state, traces are capped."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import pytest

from alto.agents.stores import ResultsStore
from alto.schemas.messages import (
    Mode,
    PathEntry,
    PipelineResult,
    Quantum,
    QuantumKind,
    ResultStatus,
)
from alto.streams import REQUEST, Pipeline, collect
from alto.streams.ancestry import node_key
from alto.streams.pipeline import Topology
from alto.streams.processor import DEADLINE, Routing, Send, StageProcessor, now_ms


def _split(item: Any) -> list[str]:
    return list(item.value.split())


def _topology() -> Topology:
    return Pipeline("b").fan_out("w", _split).aggregate("all", collect(), after="w").build()


def _processor(max_spans: int = 256) -> StageProcessor:
    return StageProcessor(Routing(_topology(), "p.", "p.sink"), "all", "w", max_spans=max_spans)


def _word(request_id: str, i: int, word: str, submitted: int = 1234) -> Quantum:
    return Quantum(
        request_id, "b", Mode.BASELINE, "w", (PathEntry("w", i),), i, QuantumKind.DATA,
        submitted, submitted, payload=json.dumps(word),
    )  # fmt: skip


def _end(request_id: str, count: int) -> Quantum:
    return Quantum(request_id, "b", Mode.BASELINE, "w", (), 0, QuantumKind.END, 0, 0, count=count)


def _feed(proc: StageProcessor, store: dict[str, Any], *quanta: Quantum) -> list[Any]:
    async def run() -> list[Any]:
        out = []
        for q in quanta:
            out += [o async for o in proc.process(q, store)]
        return out

    return asyncio.run(run())


def test_a_done_marker_expires_after_the_retention_and_not_before() -> None:
    proc, store = _processor(), {}
    outs = _feed(proc, store, _word("r", 0, "a"), _end("r", 1))
    assert [o.quantum.kind for o in outs] == [QuantumKind.DATA]
    key = node_key("r", ())
    marker = store[key]
    assert marker["done"] is True
    at = marker["at"]
    assert proc.expire(key, marker, at + 999, retention_ms=1000, deadline_ms=0) is None
    expiry = proc.expire(key, marker, at + 1000, retention_ms=1000, deadline_ms=0)
    assert expiry is not None and expiry.marker is None and not expiry.outputs
    # Until it expires, the marker drops a replay of the node's inputs (its own END sends
    # the output again: tests/unit/test_replay_repair.py).
    assert _feed(proc, store, _word("r", 0, "a")) == []


def test_a_marker_without_a_time_is_old() -> None:
    expiry = _processor().expire("r|", {"done": True}, now_ms(), 60_000, 0)
    assert expiry is not None and expiry.marker is None


def test_a_node_open_past_the_deadline_fails_its_request_naming_the_stage() -> None:
    proc, store = _processor(), {}
    # A forged END promises three words; only one ever comes.
    assert _feed(proc, store, _word("r", 0, "a", submitted=777), _end("r", 3)) == []
    key = node_key("r", ())
    state = store[key]
    assert state["done"] is False
    since = state["since"]
    assert proc.expire(key, state, since + 9_999, 60_000, deadline_ms=10_000) is None
    expiry = proc.expire(key, state, since + 10_000, 60_000, deadline_ms=10_000)
    assert expiry is not None and expiry.marker is not None and expiry.marker["done"]
    [out] = expiry.outputs
    assert isinstance(out, Send) and out.topic == "p.sink"
    failed = out.quantum
    assert failed.kind is QuantumKind.FAILED and failed.request_id == "r"
    assert failed.pipeline == "b" and failed.mode is Mode.BASELINE
    assert failed.submitted_at_ms == 777
    assert failed.error is not None and failed.error.startswith(f"{DEADLINE}: stage 'all'")
    assert "'w'" in failed.error  # the input it still waited for
    # No deadline: the node is kept.
    assert proc.expire(key, state, since + 10**9, 60_000, deadline_ms=0) is None


def test_a_nodes_trace_is_capped() -> None:
    from alto.schemas.messages import TraceSpan

    proc, store = _processor(max_spans=3), {}
    spans = tuple(TraceSpan(REQUEST, f"x{i}", "w", 0, 1) for i in range(10))
    _feed(proc, store, replace(_word("r", 0, "a"), trace=spans))
    state = store[node_key("r", ())]
    assert len(state["spans"]) == 3
    assert state["spans_dropped"] == 7
    [out] = _feed(proc, store, _end("r", 1))
    assert len(out.quantum.trace) == 4  # the 3 kept, and the node's own


def test_markers_and_results_must_outlive_the_retry() -> None:
    from alto.config import AltoConfig
    from alto.errors import ConfigError

    AltoConfig(
        admission={"retry_s": 120},
        state={"retention_s": 600, "results_retention_s": 600},
    )
    AltoConfig(
        admission={"retry_s": 0},
        state={"retention_s": 1, "results_retention_s": 1},
    )
    for field in ("retention_s", "results_retention_s"):
        with pytest.raises((ConfigError, ValueError), match=rf"state\.{field} .* must exceed"):
            AltoConfig(admission={"retry_s": 120}, state={field: 60})  # type: ignore[arg-type]


class _Table:
    def __init__(self, data: dict[bytes, bytes]) -> None:
        self.data = data


def _result(request_id: str, completed_at_ms: int) -> bytes:
    return PipelineResult(
        request_id, "b", ResultStatus.OK, 5, completed_at_ms - 5, completed_at_ms, Mode.STREAMING
    ).encode()


def test_results_are_forgotten_by_their_own_age_not_when_first_seen() -> None:
    """A worker that recovered the results table from the topic (a new generation's) holds
    only the results younger than the retention, not the topic's whole history."""
    now = 10_000_000
    data = {
        b"old": _result("old", now - 3_600_000),  # an hour ago: recovered history
        b"recent": _result("recent", now - 1_000),
        b"garbled": b"\x00not a result",  # kept, aged from now
    }
    store = ResultsStore(_Table(data))
    assert store.forget_older_than(now, retention_ms=600_000) == 1
    assert set(data) == {b"recent", b"garbled"}
    assert store.forget_older_than(now + 600_000, retention_ms=600_000) == 2
    assert not data


def test_recovering_the_results_table_skips_results_older_than_the_retention() -> None:
    """Every new generation's worker recovers the results table from the whole results
    topic; what is older than the retention never enters its memory."""
    from faust.events import Event
    from faust.types import TP
    from faust.types.tuples import ConsumerMessage

    from alto.agents.stores import results_table
    from alto.agents.transport import FaustApp
    from alto.config import load_config

    config = load_config({}).with_overrides(state={"results_retention_s": 600.0})
    app = FaustApp("results", broker="kafka://127.0.0.1:9", store="memory://")
    table = results_table(app, app.topic("alto.results"), config)
    now_s = now_ms() / 1000

    def event(key: bytes, age_s: float | None) -> Event:
        stamp = None if age_s is None else now_s - age_s
        value = _result(key.decode(), 0)
        tp = TP("alto.results", 0)
        message = ConsumerMessage("alto.results", 0, 1, stamp, None, None, key, value, None, tp=tp)
        return Event(app, key, value, {}, message)

    table.apply_changelog_batch(
        [event(b"hour-old", 3600), event(b"recent", 5), event(b"unstamped", None)]
    )
    assert set(table.data) == {b"recent", b"unstamped"}
    assert table.retention_ms == 600_000
