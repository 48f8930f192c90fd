"""Admission control at ingest: the bound on requests in flight, and OVERLOADED at once."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from alto.agents import example
from alto.schemas.messages import Mode, PipelineRequest, QuantumKind
from alto.streams.admission import Admission
from alto.streams.processor import OVERLOADED, DeadLetterOut, Ingest, Routing, Send


def test_admits_up_to_the_limit_then_refuses_until_one_finishes() -> None:
    a = Admission(limit=2, ttl_ms=60_000)
    assert a.admit("r1", 0) and a.admit("r2", 0)
    assert not a.admit("r3", 1)
    assert a.admit("r1", 2), "a request read again (a replay) is admitted again"
    a.finished("r1", 2)
    assert a.admit("r3", 3)
    assert a.in_flight == 2 and a.rejected == 1


def test_an_answered_request_read_again_is_let_through_uncounted_within_the_ttl() -> None:
    a: Admission[str] = Admission(limit=1, ttl_ms=1000, retry_ms=500)
    assert a.admit("r1", 0, "request r1")
    a.finished("r1", 100)
    # Read again (a re-read partition, a new generation's first records): it takes no place,
    # waits for no second result, and is never replayed.
    assert a.admit("r1", 200, "request r1") and a.in_flight == 0
    assert a.admit("r2", 300)  # the one place is still free
    assert a.overdue(10_000) == []
    # Past the TTL the answer is forgotten: read again, it counts as new.
    a.finished("r2", 400)
    assert a.admit("r1", 1200, "request r1") and a.in_flight == 1


def test_share_of_partitions_scales_the_capacity() -> None:
    a = Admission(limit=10, ttl_ms=60_000)
    a.share = 0.25
    assert a.capacity == 3  # ceil(2.5): the workers together may exceed the limit by < 1 each
    a.share = 0.0
    assert a.capacity == 1


def test_unfinished_requests_are_forgotten_after_the_ttl() -> None:
    a = Admission(limit=1, ttl_ms=1000)
    assert a.admit("lost", 0)
    assert not a.admit("next", 999)
    assert a.admit("next", 1000)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 30)), max_size=300))
def test_never_more_in_flight_than_the_capacity(ops: list[tuple[bool, int]]) -> None:
    a = Admission(limit=7, ttl_ms=10**9)
    for now, (is_admit, n) in enumerate(ops):
        if is_admit:
            a.admit(f"r{n}", now)
        else:
            a.finished(f"r{n}", now)
        assert a.in_flight <= a.capacity


def test_ingest_answers_overloaded_at_once_past_the_limit() -> None:
    topology = example.build()
    routing = Routing(topology, "p.", "p.sink", "p.lm.requests")
    ingest = Ingest(
        {topology.pipeline: routing}, "w1", Mode.STREAMING, 1000, "p.sink", Admission(1, 10**6)
    )
    first = ingest.handle(_request("a"))
    assert first and all(isinstance(o, Send) and o.quantum.kind is QuantumKind.DATA for o in first)
    (refused,) = ingest.handle(_request("b"))
    assert isinstance(refused, Send) and not isinstance(refused, DeadLetterOut)
    assert refused.topic == "p.sink" and refused.quantum.kind is QuantumKind.FAILED
    assert (refused.quantum.error or "").startswith(f"{OVERLOADED}:")


def _request(request_id: str) -> PipelineRequest:
    return PipelineRequest(request_id, example.NAME, "One. Two.", 0)


def test_a_request_with_no_result_is_handed_back_for_replay_once() -> None:
    a: Admission[str] = Admission(limit=10, ttl_ms=10_000, retry_ms=1000)
    assert a.admit("old", 0, "request old") and a.admit("young", 600, "request young")
    a.admit("done", 100, "request done")
    a.finished("done", 100)
    assert a.overdue(999) == []
    assert a.overdue(1000) == ["request old"]
    assert a.overdue(1700) == ["request young"]
    assert a.overdue(5000) == [], "each request is replayed at most once"
    assert a.in_flight == 2, "a replayed request still counts until its result shows"
    assert Admission(limit=1, ttl_ms=10, retry_ms=0).overdue(10**9) == []
