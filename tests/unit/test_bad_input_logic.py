"""Bad input never crashes a worker and is never silently dropped (DESIGN.md's contract),
broker-free: the codec, the stage processors, the sink, dead letters, the LM serving code
and the scheduler's intake fed generated garbage (hypothesis); FacTool and the claims
pipeline on an engine whose every output is garbage (the SIMULATED engine's `garbage_rate`
fault); secrets in the configuration are never rendered. The same contract through the
real broker: `tests/reliability/test_bad_input.py`."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alto.agents import claims
from alto.agents.factool import pipeline as factool
from alto.agents.factool.verdict import REFUTED, SUPPORTED, UNVERIFIABLE
from alto.config import load_config
from alto.errors import BadInputError
from alto.lm_service.quanta import split_all
from alto.lm_service.serving import serve_call
from alto.lm_service.sim import (
    GARBAGE_KINDS,
    SimEngine,
    SimParams,
    garbage,
    garbage_kind,
    sim_output,
    sim_text,
)
from alto.scheduler.agent import SchedulerCore
from alto.schemas.messages import (
    ChatMessage,
    DeadLetter,
    LMAssignment,
    LMRequest,
    LMStatus,
    Mode,
    PathEntry,
    PipelineRequest,
    PipelineResult,
    Quantum,
    QuantumKind,
    QuantumRule,
    ResultStatus,
    TraceSpan,
)
from alto.streams.ancestry import node_key
from alto.streams.completion import CompletionTracker
from alto.streams.local import LocalRunner, make_request
from alto.streams.processor import (
    CallLM,
    DeadLetterOut,
    Ingest,
    Routing,
    Send,
    Sink,
    StageProcessor,
    now_ms,
)

PIPELINE = claims.NAME
CLAIM_STAGES = ("claims", "words", "claim_stats", "answer")
PRODUCER = {"claims": "request", "words": "claims", "claim_stats": "words", "answer": "claim_stats"}
SIM_KW = {"time_scale": 0.001}
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1

# -- broker-free ---------------------------------------------------------------------


def _routing() -> Routing:
    return Routing(claims.build(), "t.", "t.sink", "t.lm.requests")


def _q(request_id: str = "r", **kw: object) -> Quantum:
    now = now_ms()
    values: dict[str, object] = {
        "request_id": request_id,
        "pipeline": PIPELINE,
        "mode": Mode.STREAMING,
        "stage": "request",
        "path": (),
        "seq": 0,
        "kind": QuantumKind.DATA,
        "submitted_at_ms": now,
        "created_at_ms": now,
        "payload": '"x"',
    }
    values.update(kw)
    return Quantum(**values)  # type: ignore[arg-type]


_names = st.sampled_from(["request", *CLAIM_STAGES, "nope", "", "claims|x", "ü"])
_quanta = st.builds(
    Quantum,
    request_id=st.text(min_size=1, max_size=8),
    pipeline=st.sampled_from([PIPELINE, "example", "nope", ""]),
    mode=st.sampled_from(list(Mode)),
    stage=_names,
    path=st.lists(
        st.builds(PathEntry, _names, st.integers(-3, 2**31 - 1) | st.integers(0, 3)), max_size=4
    ).map(tuple),
    seq=st.integers(LONG_MIN, LONG_MAX),
    kind=st.sampled_from(list(QuantumKind)),
    submitted_at_ms=st.integers(LONG_MIN, LONG_MAX),
    created_at_ms=st.integers(0, 2**45),
    count=st.none() | st.integers(-(2**31), 2**31 - 1) | st.integers(0, 3),
    payload=st.none()
    | st.sampled_from(['"a b c"', "42", "[1,2]", "{}", "null", "{not json", '"\\u0000"'])
    | st.text(max_size=20).map(json.dumps)
    | st.text(max_size=10),
    error=st.none() | st.text(max_size=10),
    trace=st.lists(
        st.builds(TraceSpan, _names, st.text(max_size=5), st.text(max_size=5),
                  st.integers(0, 2**45), st.integers(0, 2**45)),
        max_size=2,
    ).map(tuple),
)  # fmt: skip


def _drain(processor: StageProcessor, q: Quantum, store: dict[str, object]) -> list[object]:
    async def run() -> list[object]:
        return [out async for out in processor.process(q, store)]  # type: ignore[arg-type]

    return asyncio.run(run())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stage=st.sampled_from(CLAIM_STAGES), batch=st.lists(_quanta, min_size=1, max_size=4))
def test_any_quantum_gives_outputs_or_a_dead_letter_and_a_failed_request(
    stage: str, batch: list[Quantum]
) -> None:
    """Whatever well-formed quantum a stage receives, it raises nothing; every dead letter
    comes with a FAILED marker for its request; every output encodes (or is refused as
    bad input, which the worker turns into a dead letter too) and the sink makes exactly
    one result of it that encodes."""
    routing = _routing()
    processor = StageProcessor(routing, stage, "w")
    store: dict[str, object] = {}
    sink = Sink({PIPELINE: routing.topology})
    emitted: dict[str, PipelineResult] = {}
    for q in batch:
        outs = _drain(processor, q, store)
        letters = [o for o in outs if isinstance(o, DeadLetterOut)]
        failed = {
            o.quantum.request_id
            for o in outs
            if isinstance(o, Send) and o.quantum.kind is QuantumKind.FAILED
        }
        for letter in letters:
            assert letter.reason and letter.error
            assert letter.request_id in failed, (letter, outs)
        for out in outs:
            if isinstance(out, CallLM):
                try:
                    out.request.encode()
                except BadInputError:
                    pass
            elif isinstance(out, Send):
                try:
                    out.quantum.encode()
                except BadInputError:
                    continue
                if out.topic == routing.sink_topic:
                    sink.reject(out.quantum)
                    result = sink.handle(out.quantum, emitted)
                    if result is not None:
                        PipelineResult.decode(result.encode())


@settings(max_examples=300, deadline=None)
@given(q=_quanta)
def test_the_sink_makes_one_encodable_result_of_anything(q: Quantum) -> None:
    sink = Sink({PIPELINE: claims.build()})
    emitted: dict[str, PipelineResult] = {}
    letter = sink.reject(q)
    result = sink.handle(q, emitted)
    assert result is not None and sink.handle(q, emitted) is None  # one result per id
    assert PipelineResult.decode(result.encode()) == result  # any submitted_at_ms fits
    final = q.kind is QuantumKind.DATA and q.path == () and q.stage == "answer"
    final = final and q.pipeline == PIPELINE
    assert (letter is None) == (final or q.kind is QuantumKind.FAILED)
    if letter is not None:
        assert letter.reason == "not_final" and result.status is ResultStatus.FAILED


def test_extreme_submit_times_still_give_a_result() -> None:
    """Regression: a latency outside the Avro long range crashed the sink agent (OverflowError
    on writing the result); the record was then skipped with no result."""
    sink = Sink({PIPELINE: claims.build()})
    for at in (LONG_MIN, LONG_MAX):
        q = _q(f"t{at}", stage="answer", submitted_at_ms=at, payload="{}")
        result = sink.handle(q, {})
        assert result is not None and result.status is ResultStatus.OK
        assert PipelineResult.decode(result.encode()) == result


@settings(max_examples=200, deadline=None)
@given(
    key_size=st.none() | st.integers(0, 8) | st.integers(0, 700_000),
    value_size=st.none() | st.integers(0, 8) | st.integers(0, 2_000_000),
    limit=st.sampled_from([1_000_000, 64_000, 10_000]),
)
def test_a_dead_letter_always_fits_the_producer_limit(
    key_size: int | None, value_size: int | None, limit: int
) -> None:
    """Regression: a dead letter carried the whole input, so an input near the size limit
    made a letter the producer refused; the agent crashed and the input was lost."""
    key = None if key_size is None else b"k" * key_size
    value = None if value_size is None else b"v" * value_size
    out = DeadLetterOut("undecodable", "broken", "r", "request")
    letter = out.letter("alto.requests", 0, 7, key, value, "w1", limit)
    record = len(letter.encode()) + len(letter.key or b"")
    assert record <= limit - 1024
    if len(key or b"") * 2 + len(value or b"") < limit - 8192:  # fits: unchanged
        assert (letter.key, letter.value, letter.error) == (key, value, "broken")
    elif letter.error != "broken":  # cut, and says so; what is kept is the beginning
        assert "cut to" in letter.error
        assert (value or b"").startswith(letter.value or b"")
        assert (key or b"").startswith(letter.key or b"")
    assert DeadLetter.decode(letter.encode()).reason == "undecodable"


def test_decode_errors_never_quote_the_message() -> None:
    """Regression: an invalid UTF-8 string's error quoted the whole string (a request's input,
    a prompt) into the log line and the dead letter."""
    secret = "SECRET-INPUT-7 Ωμέγα"
    raw = PipelineRequest("r1", PIPELINE, secret, 1, None).encode()
    broken = raw.replace("Ω".encode(), b"\xff\xfe")
    with pytest.raises(BadInputError) as info:
        PipelineRequest.decode(broken)
    assert "SECRET-INPUT" not in str(info.value) and "not valid UTF-8" in str(info.value)
    with pytest.raises(BadInputError) as info:
        PipelineRequest("r1", PIPELINE, secret + "\ud800", 1, None).encode()
    assert info.value.reason == "unencodable" and "SECRET" not in str(info.value)


def test_an_empty_request_id_is_dead_lettered() -> None:
    ingest = Ingest({PIPELINE: _routing()}, "w", Mode.STREAMING, 100, "t.sink")
    (out,) = ingest.handle(PipelineRequest("", PIPELINE, "x", 1, None))
    assert isinstance(out, DeadLetterOut) and out.reason == "bad_request_id"


def test_completion_refuses_negative_indices_and_children_past_the_end() -> None:
    """Regression: a child at index -1, or at 7 under an END of 2 arriving after it, was
    counted as one of the node's children (the node "completed" with the wrong ones)."""
    tracker = CompletionTracker(1)
    with pytest.raises(BadInputError):
        tracker.add_leaf((-1,))
    tracker.add_leaf((0,))
    tracker.add_leaf((7,))
    with pytest.raises(BadInputError, match="below children"):
        tracker.add_end((), 2)
    assert not tracker.complete
    again = CompletionTracker.from_json(json.loads(json.dumps(tracker.to_json())))
    with pytest.raises(BadInputError):
        again.add_end((), 2)
    with pytest.raises(BadInputError):
        CompletionTracker(2).add_end((-1,), 1)


def test_an_lm_call_with_a_bad_parent_fails_its_request() -> None:
    """Regression: an LM call whose parent quantum did not decode (or that named an unknown
    pipeline) was dead-lettered, but its request never got a result."""
    routings = {PIPELINE: _routing()}
    base = LMRequest(
        "c1", "r1", PIPELINE, "claims", "claims", (ChatMessage("user", "hi"),), 8,
        QuantumRule.ITEM, b"junk", 0,
    )  # fmt: skip
    parent = _q("r2").encode()
    for call in (base, replace(base, request_id="r2", pipeline="nope", parent=parent)):

        async def run(call: LMRequest = call) -> list[object]:
            engine = SimEngine(SimParams(**SIM_KW))
            return [o async for o in serve_call(call, engine, routings, "lm")]

        letter, failed = asyncio.run(run())
        assert isinstance(letter, DeadLetterOut) and letter.request_id == call.request_id
        assert isinstance(failed, Send) and failed.quantum.kind is QuantumKind.FAILED
        assert failed.quantum.request_id == call.request_id and failed.topic == "t.sink"


def test_the_scheduler_refuses_status_and_table_entries_it_cannot_use() -> None:
    """Regression: a status for instance 999 (or -1) made the scheduler place calls on a
    partition that does not exist (the call was lost) and hung its liveness loop draining
    it; one dated in the future kept an instance "live" until then."""
    config = load_config(
        environ={},
        lm={"max_instances": 4},
    )
    sent: list[tuple[str, bytes, bytes]] = []

    async def send(topic: str, key: bytes, value: bytes, partition: int | None) -> None:
        sent.append((topic, key, value))

    def status(instance: int, at_ms: int) -> bytes:
        return LMStatus(instance, "w", "sim", True, 0, 0, 0, 0, 0.0, 0.0, 0.0, at_ms).encode()

    async def run() -> SchedulerCore:
        core = SchedulerCore(config, send)
        now = now_ms()
        for bad in (status(999, now), status(-1, now), status(1, now + 3_600_000), b"\x00"):
            with pytest.raises(BadInputError):
                await core._on_status(bad)
        with pytest.raises(BadInputError):
            await core._on_assignment(LMAssignment("p", (0, 4), "x", "other", now).encode())
        await core._on_assignment(None)  # a deletion on the compacted topic: nothing to do
        await core._on_status(status(1, now))
        return core

    core = asyncio.run(run())
    assert core.state.live(now_ms()) == [1]


def _garbage_outputs(request_ids: list[str], rate: float) -> int:
    return sum(
        sim_output(i, "claims", 96, garbage_rate=rate) != list(sim_text(i, "claims", 96))
        for i in request_ids
    )


def test_every_garbage_kind_is_bounded_and_deterministic() -> None:
    for kind in GARBAGE_KINDS:
        for seed in range(50):
            out = garbage(kind, random.Random(seed), 16)
            assert out == garbage(kind, random.Random(seed), 16)
            assert len(out) <= 16 or kind == "cut_utf8" and len(b"".join(out)) <= 17  # type: ignore[arg-type]
    assert garbage("empty", random.Random(0), 5) == []
    assert len(garbage("endless", random.Random(0), 7)) == 7
    cut = b"".join(garbage("cut_utf8", random.Random(1), 96))  # type: ignore[arg-type]
    with pytest.raises(UnicodeDecodeError):
        cut.decode()
    ids = [f"r{i}|#claims" for i in range(400)]
    assert 80 < _garbage_outputs(ids, 0.3) < 160
    assert _garbage_outputs(ids, 0.0) == 0


@pytest.mark.parametrize("mode", [Mode.STREAMING, Mode.BASELINE])
def test_claims_pipeline_copes_with_an_engine_that_only_emits_garbage(mode: Mode) -> None:
    """SIMULATED FAULT: every LM call returns garbage (bytes, cut UTF-8, control characters,
    nothing, endless lines); every request still ends OK with exactly the claims the
    garbage splits into."""

    async def run():  # type: ignore[no-untyped-def]
        engine = SimEngine(SimParams(garbage_rate=1.0, **SIM_KW))
        await engine.start()
        runner = LocalRunner([claims.build()], shuffle=True, duplicate=0.2, seed=9)
        runner.lm = lambda req: serve_call(req, engine, runner.routings, "lm-local")
        reqs = [make_request(PIPELINE, f"topic {i}", f"g{i}", mode) for i in range(40)]
        out = await runner.run(reqs)
        await engine.stop()
        return reqs, out

    reqs, out = asyncio.run(run())
    assert not out.dead_letters
    kinds: collections.Counter[str | None] = collections.Counter()
    for req in reqs:
        lm_id = f"{node_key(req.request_id, ())}#claims"
        text = sim_output(lm_id, "claims", 96, garbage_rate=1.0)
        kinds[garbage_kind(lm_id, 1.0)] += 1
        result = out.results[req.request_id]
        assert result.status is ResultStatus.OK, result.error
        assert json.loads(result.output or "") == claims.expected_output(split_all(text, "item"))
    assert set(kinds) == set(GARBAGE_KINDS), kinds  # every kind was exercised


def test_factool_copes_with_an_engine_that_only_emits_garbage() -> None:
    """SIMULATED FAULT on every FacTool LM call (answer, claims, queries, verification):
    each request ends OK; each claim's verdict is one of the three labels, and an output
    with no label in it reads as unverifiable with `parsed` false."""

    async def run():  # type: ignore[no-untyped-def]
        engine = SimEngine(SimParams(garbage_rate=1.0, time_scale=0.0001))
        await engine.start()
        runner = LocalRunner([factool.build()], shuffle=True, seed=5)
        runner.lm = lambda req: serve_call(req, engine, runner.routings, "lm-local")
        reqs = [make_request(factool.NAME, f"Who was person {i}?", f"f{i}") for i in range(12)]
        out = await runner.run(reqs)
        await engine.stop()
        return reqs, out

    reqs, out = asyncio.run(run())
    assert not out.dead_letters
    claims_seen = 0
    for req in reqs:
        result = out.results[req.request_id]
        assert result.status is ResultStatus.OK, result.error
        report = json.loads(result.output or "")
        for claim in report["claims"]:
            claims_seen += 1
            assert claim["verdict"] in (SUPPORTED, REFUTED, UNVERIFIABLE)
            assert claim["parsed"] or claim["verdict"] == UNVERIFIABLE
    assert claims_seen > 0


def test_secrets_are_never_rendered(caplog: pytest.LogCaptureFixture) -> None:
    password = "hunter2-Zq9!secret"  # noqa: S105 - the secret whose absence is checked
    env = {
        "ALTO_KAFKA__SECURITY__PROTOCOL": "SASL_SSL",
        "ALTO_KAFKA__SECURITY__SASL_MECHANISM": "PLAIN",
        "ALTO_KAFKA__SECURITY__SASL_USERNAME": "alto",
        "ALTO_KAFKA__SECURITY__SASL_PASSWORD": password,
    }
    config = load_config(environ=env)
    assert config.kafka.security.sasl_password is not None
    assert config.kafka.security.sasl_password.get_secret_value() == password
    renderings = [
        repr(config),
        str(config),
        f"{config}",
        repr(config.kafka.security),
        config.model_dump_json(),
        json.dumps(config.model_dump(), default=str),
        str(config.model_dump()),
        repr(config.with_overrides(worker_id="x")),
    ]
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("alto.test").debug("config %s %r", config, config.kafka.security)
    renderings.append(caplog.text)
    for text in renderings:
        assert password not in text
