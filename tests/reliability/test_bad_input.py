"""Bad input never crashes a worker and is never silently dropped (DESIGN.md's contract).

Two tiers:
- broker-free (`unit`): the codec, the stage processors, the sink, dead letters, the LM
  serving code and the scheduler's intake fed generated garbage (hypothesis); FacTool and
  the claims pipeline on an engine whose every output is garbage (the SIMULATED engine's
  `garbage_rate` fault); secrets in the configuration are never rendered.
- through the real broker (`integration`): one storm of several hundred seeded inputs on
  every topic a worker or an LM worker reads, with valid requests before, between and
  after, against one Faust worker (default log level) and one LM worker on the SIMULATED
  engine emitting garbage for a fraction of its calls (a SIMULATED FAULT). Then every
  input is accounted for: its dead letter (with a reason) when it is bad, exactly one
  result when its request id can be read (FAILED, or OK for what is valid), nothing lost;
  both processes alive; valid requests exact; logs free of tracebacks, the SASL password,
  request inputs and prompts. `pytest -s` prints the tally.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alto.agents import claims
from alto.agents.factool import pipeline as factool
from alto.agents.factool.verdict import REFUTED, SUPPORTED, UNVERIFIABLE
from alto.config import AltoConfig, load_config
from alto.errors import BadInputError
from alto.infra.client import TopicReader
from alto.infra.processes import WorkerProcess, lm_worker_command, wait_assigned
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
from tests.harness import fresh_config

pytestmark = pytest.mark.reliability

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


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
def test_extreme_submit_times_still_give_a_result() -> None:
    """Regression: a latency outside the Avro long range crashed the sink agent (OverflowError
    on writing the result); the record was then skipped with no result."""
    sink = Sink({PIPELINE: claims.build()})
    for at in (LONG_MIN, LONG_MAX):
        q = _q(f"t{at}", stage="answer", submitted_at_ms=at, payload="{}")
        result = sink.handle(q, {})
        assert result is not None and result.status is ResultStatus.OK
        assert PipelineResult.decode(result.encode()) == result


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
def test_an_empty_request_id_is_dead_lettered() -> None:
    ingest = Ingest({PIPELINE: _routing()}, "w", Mode.STREAMING, 100, "t.sink")
    (out,) = ingest.handle(PipelineRequest("", PIPELINE, "x", 1, None))
    assert isinstance(out, DeadLetterOut) and out.reason == "bad_request_id"


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
def test_the_scheduler_refuses_status_and_table_entries_it_cannot_use() -> None:
    """Regression: a status for instance 999 (or -1) made the scheduler place calls on a
    partition that does not exist (the call was lost) and hung its liveness loop draining
    it; one dated in the future kept an instance "live" until then."""
    config = load_config(environ={}, lm_max_instances=4)
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


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
def test_secrets_are_never_rendered(caplog: pytest.LogCaptureFixture) -> None:
    password = "hunter2-Zq9!secret"  # noqa: S105 - the secret whose absence is checked
    env = {
        "ALTO_SECURITY_PROTOCOL": "SASL_SSL",
        "ALTO_SASL_MECHANISM": "PLAIN",
        "ALTO_SASL_USERNAME": "alto",
        "ALTO_SASL_PASSWORD": password,
    }
    config = load_config(environ=env)
    assert config.security.sasl_password is not None
    assert config.security.sasl_password.get_secret_value() == password
    renderings = [
        repr(config),
        str(config),
        f"{config}",
        repr(config.security),
        config.model_dump_json(),
        json.dumps(config.model_dump(), default=str),
        str(config.model_dump()),
        repr(config.with_overrides(worker_id="x")),
    ]
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("alto.test").debug("config %s %r", config, config.security)
    renderings.append(caplog.text)
    for text in renderings:
        assert password not in text


# -- through the broker --------------------------------------------------------------

SEED = 20261124
GARBAGE_RATE = 0.3  # SIMULATED FAULT: share of LM calls whose output is garbage
PASSWORD = "sasl-pw-Xq7#never-logged"  # noqa: S105 - must not appear in any log
MARK = "SECRETINPUT"  # every request input carries it: it must not appear in any log


@dataclass
class Sent:
    """One bad (or valid) input and what it must lead to."""

    label: str  # the topic, as the table shows it
    kind: str
    records: list[tuple[str, bytes | None, bytes | None, int | None]]  # topic, key, value, part.
    dead_letter: bool  # at least one dead letter with a reason
    result_id: str | None = None  # exactly one result under this id
    status: ResultStatus | None = None  # None: OK or FAILED both acceptable
    held: bool = False  # incomplete by construction: waits for quanta that never come
    expected_output: object = None  # for valid requests: the exact output


@dataclass
class Storm:
    sent: list[Sent]
    valid: list[Sent]
    letters: list[DeadLetter]
    results: dict[str, list[PipelineResult]]
    alive: dict[str, bool]
    logs: dict[str, str]
    garbage_calls: int
    seconds: dict[str, float] = field(default_factory=dict)


class _Gen:
    """Seeded generator of bad inputs for one storm."""

    def __init__(self, config: AltoConfig, seed: int) -> None:
        self.config = config
        self.rng = random.Random(seed)
        self.n = 0
        self.now = now_ms()
        self.topology = claims.build()

    def rid(self, tag: str) -> str:
        self.n += 1
        return f"bad-{tag}-{self.n}"

    def topic(self, stage: str) -> str:
        return self.topology.stage_topic(self.config.topic_prefix, stage)

    # -- values that do not decode ---------------------------------------------------

    def undecodable(
        self, good: bytes, other: bytes, cuts: int | None
    ) -> Iterator[tuple[str, bytes | None]]:
        rng = self.rng
        for _ in range(12 if cuts is not None else 40):
            yield "random_bytes", rng.randbytes(rng.randint(1, 200))
        yield "empty_value", b""
        yield "null_value", None
        yield "missing_magic", good[2:]
        yield "bad_magic", b"\xc3\x02" + good[2:]
        yield "header_only", good[:10]
        for _ in range(3):
            yield "wrong_fingerprint", good[:2] + rng.randbytes(8) + good[10:]
        yield "other_schema", other
        yield "trailing_bytes", good + rng.randbytes(rng.randint(1, 9))
        positions = (
            range(1, len(good))
            if cuts is None
            else sorted(rng.sample(range(1, len(good)), min(cuts, len(good) - 1)))
        )
        for cut in positions:
            yield "truncated", good[:cut]

    def garbage_records(
        self, label: str, topic: str, good: bytes, other: bytes, *, node: bool,
        readable: bool = True, cuts: int | None = 8, partition: int | None = None,
    ) -> list[Sent]:  # fmt: skip
        out = []
        for kind, value in self.undecodable(good, other, cuts):
            rid = self.rid(label)
            key = f"{rid}|claims:0" if node else rid
            out.append(
                Sent(label, kind, [(topic, key.encode(), value, partition)], True,
                     rid if readable else None, ResultStatus.FAILED if readable else None)
            )  # fmt: skip
        return out

    # -- the requests topic ------------------------------------------------------------

    def request(self, rid: str, text: str, **kw: object) -> PipelineRequest:
        values: dict[str, object] = {"mode": Mode.STREAMING, "pipeline": PIPELINE}
        values.update(kw)
        return PipelineRequest(rid, values["pipeline"], text, self.now, values["mode"])  # type: ignore[arg-type]

    def requests(self) -> list[Sent]:
        topic, rng = self.config.requests_topic, self.rng
        good = self.request("bad-template-0", f"the Moon {MARK}").encode()
        other = PipelineResult("x", PIPELINE, ResultStatus.OK, 0, 0, 0, Mode.STREAMING).encode()
        out = self.garbage_records("requests", topic, good, other, node=False, cuts=None)

        def valid(kind: str, req: PipelineRequest, key: bytes | None, *, dlq: bool,
                  status: ResultStatus | None, rid: str | None = "body") -> None:  # fmt: skip
            result_id = req.request_id if rid == "body" else rid
            out.append(Sent("requests", kind, [(topic, key, req.encode(), None)], dlq,
                            result_id, status))  # fmt: skip

        def raw(kind: str, key: bytes | None, value: bytes, rid: str | None) -> None:
            with pytest.raises(BadInputError):  # the case is what it claims to be
                PipelineRequest.decode(value)
            out.append(Sent("requests", kind, [(topic, key, value, None)], True, rid,
                            ResultStatus.FAILED if rid else None))  # fmt: skip

        for _ in range(20):
            name = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz_-.", k=rng.randint(1, 12)))
            name = name if name not in ("claims", "example", "hop", "factool") else name + "x"
            req = self.request(self.rid("pipeline"), f"x {MARK}", pipeline=name)
            valid("unknown_pipeline", req, req.request_id.encode(), dlq=True,
                  status=ResultStatus.FAILED)  # fmt: skip
        limit = self.config.max_input_chars
        req = self.request(self.rid("big"), MARK + "x" * limit)
        valid("input_over_max_chars", req, req.request_id.encode(), dlq=True,
              status=ResultStatus.FAILED)  # fmt: skip
        req = self.request(self.rid("huge"), MARK + "y" * 1_200_000)
        valid("input_over_max_message_bytes", req, req.request_id.encode(), dlq=True,
              status=ResultStatus.FAILED)  # fmt: skip
        rid = self.rid("hugeraw")
        raw("raw_over_max_message_bytes", rid.encode(), rng.randbytes(1_300_000), rid)
        # An id too long to carry back in a result (the key is in every record of it).
        raw("key_over_half_max_message_bytes", b"k" * 600_000, b"junk", None)
        req = self.request(self.rid("long"), ("é漢" + MARK) * (limit // 13))
        valid("prompt_too_long_for_the_engine", req, req.request_id.encode(), dlq=True,
              status=ResultStatus.FAILED)  # fmt: skip
        for field_name in ("input", "request_id", "pipeline"):
            for _ in range(4):
                rid = self.rid(f"utf8-{field_name}")
                text = f"{MARK} Ωmega {rid}"
                req = self.request(rid, text)
                target = {"input": text, "request_id": rid, "pipeline": PIPELINE}[field_name]
                cut = target.encode()
                at = rng.randrange(len(cut))  # one byte that is never valid in UTF-8
                bad = cut[:at] + rng.choice([b"\xff", b"\xfe", b"\xc0", b"\xf8"]) + cut[at + 1 :]
                value = req.encode().replace(cut, bad, 1)
                raw(f"invalid_utf8_in_{field_name}", rid.encode(), value, rid)
        for _ in range(5):
            rid = self.rid("mode")
            value = self.request(rid, f"x {MARK}").encode()
            # mode is the last field: union branch 1 (the enum), then the enum index.
            patched = value[:-2] + rng.choice([b"\x02\x0a", b"\x02\x7f", b"\x04\x00", b"\x03\x00"])
            raw("invalid_mode", rid.encode(), patched, rid)
        for kind, key in (
            ("unreadable_key", b"\xff\xfe\x00" + rng.randbytes(4)),
            ("empty_key", b""),
            ("null_key", None),
        ):
            for _ in range(4):
                out.append(Sent("requests", kind, [(topic, key, rng.randbytes(30), None)], True))
                req = self.request(self.rid(kind + "-valid"), f"a valid body {MARK}")
                valid(f"{kind}_valid_body", req, key, dlq=False, status=ResultStatus.OK)
        for _ in range(3):
            rid = self.rid("pipe") + "|claims:0|x"
            raw("key_with_separators", rid.encode(), b"\x00junk", rid)
        req = self.request("", f"x {MARK}")
        valid("empty_request_id", req, b"", dlq=True, status=None, rid=None)
        for at in (LONG_MIN, LONG_MAX, -1):
            req = replace(self.request(self.rid("time"), f"the Sun {MARK}"), submitted_at_ms=at)
            valid("extreme_submitted_at", req, req.request_id.encode(), dlq=False,
                  status=ResultStatus.OK)  # fmt: skip
        for _ in range(5):
            rid = self.rid("ctl")
            text = "".join(
                rng.choice(["\x00", "\x1b[2J", "\r", "\u2028", "\x85", "a", " "]) for _ in range(30)
            )
            req = self.request(rid, text + MARK)
            valid("control_characters_in_input", req, rid.encode(), dlq=False,
                  status=ResultStatus.OK)  # fmt: skip
        # Random byte flips in the body of a valid request: whatever decodes is judged by
        # what it decodes to (the same checks the worker makes).
        for _ in range(40):
            rid = self.rid("flip")
            # A fixed timestamp: the same bytes, so the same flips, on every run.
            flip = replace(self.request(rid, f"flip {MARK}"), submitted_at_ms=1_795_000_000_000)
            value = bytearray(flip.encode())
            at = rng.randrange(11 + len(rid), len(value))  # past the id: ids stay distinct
            value[at] = rng.randrange(256)
            out.append(self.judge_request("requests", "byte_flip", rid.encode(), bytes(value)))
        return out

    def judge_request(self, label: str, kind: str, key: bytes, value: bytes) -> Sent:
        topic = self.config.requests_topic
        try:
            req = PipelineRequest.decode(value)
        except BadInputError:
            return Sent(label, kind, [(topic, key, value, None)], True, key.decode(),
                        ResultStatus.FAILED)  # fmt: skip
        if not req.request_id:
            return Sent(label, kind, [(topic, key, value, None)], True)
        if req.pipeline != PIPELINE or len(req.input) > self.config.max_input_chars:
            return Sent(label, kind, [(topic, key, value, None)], True, req.request_id,
                        ResultStatus.FAILED)  # fmt: skip
        # Valid: it runs (its input or id may be odd; a bit flip may make the prompt too
        # long): one result, OK or FAILED.
        return Sent(label, kind, [(topic, key, value, None)], False, req.request_id, None)

    # -- stage topics, the sink ----------------------------------------------------------

    def stage(self, stage: str) -> list[Sent]:
        topic = self.topic(stage)
        label = f"{PIPELINE}.{stage}"
        producer = PRODUCER[stage]
        depth = {"request": 0, "claims": 1, "words": 2, "claim_stats": 1}[producer]
        path = tuple(PathEntry("claims" if i == 0 else "words", 0) for i in range(depth))
        other = LMStatus(0, "w", "sim", True, 0, 0, 0, 0, 0.0, 0.0, 0.0, 1).encode()
        good = _q("bad-template", stage=producer, path=path).encode()
        out = self.garbage_records(label, topic, good, other, node=True)

        def forged(kind: str, *qs: Quantum, dlq: bool = True, status: ResultStatus | None =
                   ResultStatus.FAILED, held: bool = False, expected: object = None) -> None:  # fmt: skip
            rid = qs[0].request_id
            records = [(topic, node_key(rid, q.path).encode(), q.encode(), None) for q in qs]
            out.append(Sent(label, kind, records, dlq, None if held else rid, status, held,
                            expected))  # fmt: skip

        forged("unexpected_producer", _q(self.rid(stage), stage="nope", path=path))
        forged("failed_marker", _q(self.rid(stage), stage=producer, path=path,
                                   kind=QuantumKind.FAILED, error="upstream said so"),
               dlq=False)  # fmt: skip
        forged("null_payload", _q(self.rid(stage), stage=producer, path=path, payload=None))
        forged("payload_not_json", _q(self.rid(stage), stage=producer, path=path,
                                      payload="{not json"))  # fmt: skip
        if stage == "claims":
            forged("payload_too_large_for_an_lm_call",
                   _q(self.rid(stage), payload=json.dumps("w " * 300_000)))  # fmt: skip
        if stage == "words":
            forged("payload_of_the_wrong_type", _q(self.rid(stage), stage="claims",
                                                   path=path, payload="42"))  # fmt: skip
            rid = self.rid(stage)
            claim = _q(rid, stage="claims", path=path, payload='"alpha beta gamma"', seq=-5)
            end = _q(rid, stage="claims", kind=QuantumKind.END, count=1, payload=None, seq=-9)
            forged("forged_complete_request_negative_seq", claim, end, dlq=False,
                   status=ResultStatus.OK,
                   expected=claims.expected_output(["alpha beta gamma"]))  # fmt: skip
            rid = self.rid(stage)
            nowhere = _q(rid, stage="claims", path=(PathEntry("claims", 7),), payload='"a"')
            end = _q(rid, stage="claims", kind=QuantumKind.END, count=1, payload=None)
            forged("path_pointing_past_the_end", nowhere, end)
            forged("negative_index", _q(self.rid(stage), stage="claims",
                                        path=(PathEntry("claims", -1),)))  # fmt: skip
            forged("end_without_count", _q(self.rid(stage), stage="claims", path=(),
                                           kind=QuantumKind.END, payload=None))  # fmt: skip
        if stage in ("claim_stats", "answer"):
            forged("wrong_depth", _q(self.rid(stage), stage=producer, path=path * 3))
            forged("negative_count", _q(self.rid(stage), stage=producer, path=path[:-1],
                                        kind=QuantumKind.END, count=-3, payload=None))  # fmt: skip
            forged("held_huge_count", _q(self.rid(stage), stage=producer, path=path[:-1],
                                         kind=QuantumKind.END, count=2**31 - 1, payload=None),
                   dlq=False, held=True)  # fmt: skip
        return out

    def sink(self) -> list[Sent]:
        topic, label = self.config.sink_topic, "sink"
        good = _q("bad-template", stage="answer", payload="{}").encode()
        other = self.request("x", "y").encode()
        out = self.garbage_records(label, topic, good, other, node=False)

        def forged(kind: str, q: Quantum, dlq: bool, status: ResultStatus) -> None:
            out.append(Sent(label, kind, [(topic, q.request_id.encode(), q.encode(), None)],
                            dlq, q.request_id, status))  # fmt: skip

        forged("not_final", _q(self.rid("sink"), stage="words", path=(PathEntry("claims", 0),)),
               True, ResultStatus.FAILED)  # fmt: skip
        forged("end_marker", _q(self.rid("sink"), stage="answer", kind=QuantumKind.END, count=1),
               True, ResultStatus.FAILED)  # fmt: skip
        forged("unknown_pipeline_final", _q(self.rid("sink"), pipeline="nope", stage="answer"),
               True, ResultStatus.FAILED)  # fmt: skip
        forged("failed_marker", _q(self.rid("sink"), kind=QuantumKind.FAILED, error="e"),
               False, ResultStatus.FAILED)  # fmt: skip
        for at in (LONG_MIN, LONG_MAX):
            forged("forged_final_extreme_time",
                   _q(self.rid("sink"), stage="answer", payload="{}", submitted_at_ms=at),
                   False, ResultStatus.OK)  # fmt: skip
        return out

    # -- LM topics -----------------------------------------------------------------------

    def lm_call(self, rid: str, **kw: object) -> LMRequest:
        parent = _q(rid, payload=json.dumps(f"topic {MARK}"))
        values: dict[str, object] = {
            "lm_request_id": f"{node_key(rid, ())}#claims",
            "request_id": rid,
            "pipeline": PIPELINE,
            "stage": "claims",
            "prompt_name": "claims",
            "messages": (ChatMessage("system", claims.SYSTEM), ChatMessage("user", MARK)),
            "max_tokens": 96,
            "quantum_rule": QuantumRule.ITEM,
            "parent": parent.encode(),
            "enqueued_at_ms": self.now,
            "instance": 0,
        }
        values.update(kw)
        return LMRequest(**values)  # type: ignore[arg-type]

    def lm(self, label: str, topic: str, partition: int | None) -> list[Sent]:
        good = self.lm_call("bad-template").encode()
        other = _q("x").encode()
        out = self.garbage_records(label, topic, good, other, node=False, partition=partition)

        def call(kind: str, status: ResultStatus | None, dlq: bool = True, **kw: object) -> None:
            rid = self.rid(label)
            req = self.lm_call(rid, **kw)
            out.append(Sent(label, kind, [(topic, rid.encode(), req.encode(), partition)], dlq,
                            rid, status))  # fmt: skip

        call("parent_not_a_quantum", ResultStatus.FAILED, parent=b"junk")
        call("parent_truncated", ResultStatus.FAILED, parent=_q("p").encode()[:-4])
        call("unknown_pipeline", ResultStatus.FAILED, pipeline="nope")
        call("unknown_stage", ResultStatus.FAILED, stage="nope")
        call("map_stage_as_lm_stage", ResultStatus.FAILED, stage="words")
        call("max_tokens_past_the_context", ResultStatus.FAILED, max_tokens=2**31 - 1)
        call("negative_max_tokens", None, dlq=False, max_tokens=-5)
        call("zero_max_tokens", ResultStatus.OK, dlq=False, max_tokens=0)
        call("no_messages", ResultStatus.OK, dlq=False, messages=())
        call("odd_prefix_and_temperature", ResultStatus.OK, dlq=False, prefix_chars=-(2**31),
             temperature=float("nan"), seed=LONG_MIN, attempt=-1)  # fmt: skip
        return out

    def lm_status(self) -> list[Sent]:
        topic, label = self.config.lm_status_topic, "lm.status"

        def status(instance: int, at_ms: int) -> bytes:
            return LMStatus(instance, "forged", "sim", True, 0, 0, 0, 0, 0.0, 0.0, 0.0,
                            at_ms).encode()  # fmt: skip

        good = status(0, self.now)
        out = self.garbage_records(label, topic, good, _q("x").encode(), node=False,
                                   readable=False)  # fmt: skip
        for kind, value in (
            ("instance_out_of_range", status(999, self.now)),
            ("negative_instance", status(-1, self.now)),
            ("huge_instance", status(2**31 - 1, self.now)),
            ("dated_in_the_future", status(2, self.now + 3_600_000)),
        ):
            out.append(Sent(label, kind, [(topic, b"forged", value, None)], True))
        # An instance in range that does not exist: accepted, then removed when its
        # heartbeats stop; calls placed on it meanwhile are drained to a live instance.
        out.append(Sent(label, "phantom_instance", [(topic, b"3", status(3, self.now), None)],
                        False))  # fmt: skip
        return out

    def lm_assignments(self) -> list[Sent]:
        topic, label = self.config.lm_assignments_topic, "lm.assignments"

        def entry(instances: tuple[int, ...]) -> bytes:
            return LMAssignment("claims", instances, "forged", "forger", self.now).encode()

        out = self.garbage_records(label, topic, entry((0,)), _q("x").encode(), node=False,
                                   readable=False)  # fmt: skip
        out = [s for s in out if s.kind != "null_value"]  # a deletion on a compacted topic
        out.append(Sent(label, "deletion_tombstone", [(topic, b"claims", None, None)], False))
        for kind, instances in (
            ("instance_out_of_range", (0, 77)),
            ("negative_instance", (-1,)),
        ):
            out.append(Sent(label, kind, [(topic, b"claims", entry(instances), None)], True))
        out.append(Sent(label, "phantom_instance", [(topic, b"claims", entry((3,)), None)],
                        False))  # fmt: skip
        return out


def _valid_request(gen: _Gen, i: int) -> Sent:
    mode = Mode.STREAMING if i % 2 else Mode.BASELINE
    req = gen.request(f"ok-{SEED}-{i}", f"topic {i} {MARK}", mode=mode)
    lm_id = f"{node_key(req.request_id, ())}#claims"
    text = sim_output(lm_id, "claims", 96, garbage_rate=GARBAGE_RATE)
    return Sent("requests", "valid", [(gen.config.requests_topic, req.request_id.encode(),
                req.encode(), None)], False, req.request_id, ResultStatus.OK,
                expected_output=claims.expected_output(split_all(text, "item")))  # fmt: skip


def _produce(producer: Producer, sent: list[Sent]) -> None:
    for s in sent:
        for topic, key, value, partition in s.records:
            kw = {} if partition is None else {"partition": partition}
            producer.produce(topic, key=key, value=value, **kw)
            producer.poll(0)


@pytest.fixture(scope="module")
def storm(bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory) -> Storm:
    started = time.monotonic()
    tmp = tmp_path_factory.mktemp("bad-input")
    config = fresh_config(
        bootstrap_servers, tmp, pipelines=(PIPELINE,), lm_status_interval_s=0.5,
        sim_time_scale=0.02,
    )  # fmt: skip
    params = tmp / "sim_params.json"
    params.write_text(json.dumps({"garbage_rate": GARBAGE_RATE}))  # SIMULATED FAULT
    env = {"ALTO_SASL_USERNAME": "alto", "ALTO_SASL_PASSWORD": PASSWORD}
    # The Faust worker at its default log level (no --loglevel), the LM worker likewise.
    worker = WorkerProcess(config, "w1", tmp, command=[sys.executable, "-m", "alto", "worker"],
                           env=env)  # fmt: skip
    lm = WorkerProcess(config, "lm0", tmp, command=lm_worker_command(0, "sim"),
                       env={**env, "ALTO_SIM_PARAMS": str(params)})  # fmt: skip
    processes = {"faust worker": worker, "LM worker": lm}
    try:
        topology = claims.build()
        topics = [*topology.topics(config.topic_prefix), config.sink_topic,
                  config.lm_requests_topic, config.requests_topic]  # fmt: skip
        wait_assigned([worker], topics, config.partitions)
        ready = time.monotonic()
        gen = _Gen(config, SEED)
        batches = [
            gen.requests(),
            *[gen.stage(s) for s in CLAIM_STAGES],
            gen.sink(),
            gen.lm("lm.requests", config.lm_requests_topic, None),
            gen.lm("lm.work", config.lm_work_topic, 0),
            gen.lm_status(),
            gen.lm_assignments(),
        ]
        sent = [s for batch in batches for s in batch]
        gen.rng.shuffle(sent)
        valid = [_valid_request(gen, i) for i in range(60)]
        producer = Producer({
            "bootstrap.servers": config.bootstrap_servers, "linger.ms": 5,
            "message.max.bytes": 4_000_000, "enable.idempotence": False,
        })  # fmt: skip
        _produce(producer, valid[:15])  # before the storm
        step = max(1, len(sent) // 30)
        for i in range(0, len(sent), step):  # the storm, valid requests in between
            _produce(producer, sent[i : i + step])
            _produce(producer, valid[15 + i // step : 16 + i // step])
        assert producer.flush(60) == 0
        _produce(producer, valid[46:])  # after it
        assert producer.flush(60) == 0
        stormed = time.monotonic()

        wanted = {s.result_id for s in [*sent, *valid] if s.result_id is not None}
        results: dict[str, list[PipelineResult]] = collections.defaultdict(list)
        letters: list[DeadLetter] = []
        res_reader = TopicReader(config, config.results_topic)
        dlq_reader = TopicReader(config, config.dlq_topic)
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline:
                for _, value in res_reader.poll(0.5):
                    result = PipelineResult.decode(value)
                    results[result.request_id].append(result)
                for _, value in dlq_reader.poll(0.2):
                    letters.append(DeadLetter.decode(value))
                if wanted <= results.keys() and _all_dead_lettered(sent, letters):
                    break
            # A little longer: a duplicate result or a late letter would show here.
            for _, value in res_reader.poll(3.0):
                result = PipelineResult.decode(value)
                results[result.request_id].append(result)
            letters += [DeadLetter.decode(v) for _, v in dlq_reader.poll(1.0)]
        finally:
            res_reader.close()
            dlq_reader.close()
        settled = time.monotonic()
        alive = {name: p.alive() for name, p in processes.items()}
    finally:
        for p in processes.values():
            p.stop()
    logs = {name: p.log_file.read_text(errors="replace") for name, p in processes.items()}
    lm_ids = [f"{node_key(v.result_id or '', ())}#claims" for v in valid]
    return Storm(
        sent, valid, letters, dict(results), alive, logs,
        garbage_calls=_garbage_outputs(lm_ids, GARBAGE_RATE),
        seconds={"start": ready - started, "storm": stormed - ready,
                 "settle": settled - stormed, "total": time.monotonic() - started},
    )  # fmt: skip


def _letter_of(d: DeadLetter, topic: str, key: bytes | None, value: bytes | None) -> bool:
    """Whether `d` is the dead letter of the record (`topic`, `key`, `value`): the bytes as
    read, or, for a letter cut to fit the size limit, their beginning."""
    if d.source_topic != topic:
        return False
    if "cut to" in d.error:
        return (key or b"").startswith(d.key or b"") and (value or b"").startswith(d.value or b"")
    return (d.key or None, d.value or None) == (key or None, value or None)


def _letters_for(storm: Storm | list[DeadLetter], s: Sent) -> list[DeadLetter]:
    """Dead letters of one input: of its own records as read, or (where none is) later
    ones for its request (a quantum that is bad only where it meets others downstream)."""
    letters = storm if isinstance(storm, list) else storm.letters
    direct = [
        d for d in letters
        if any(_letter_of(d, topic, key, value) for topic, key, value, _ in s.records)
    ]  # fmt: skip
    if direct or s.result_id is None:
        return direct
    return [d for d in letters if d.request_id == s.result_id]


def _all_dead_lettered(sent: list[Sent], letters: list[DeadLetter]) -> bool:
    return all(_letters_for(letters, s) for s in sent if s.dead_letter)


def _tally(storm: Storm) -> tuple[dict[tuple[str, str], collections.Counter[str]], list[str]]:
    rows: dict[tuple[str, str], collections.Counter[str]] = collections.defaultdict(
        collections.Counter
    )
    problems: list[str] = []
    for s in [*storm.sent, *storm.valid]:
        row = rows[(s.label, s.kind)]
        row["inputs"] += 1
        row["records"] += len(s.records)
        letters = _letters_for(storm, s)
        row["dead letters"] += len(letters)
        got = storm.results.get(s.result_id or "", []) if s.result_id else []
        for r in got:
            row[r.status.value] += 1
        if s.held:
            row["held"] += 1
        what = f"{s.label}/{s.kind} {s.result_id or (s.records[0][1] or b'')[:40]!r}"
        if s.dead_letter and not letters:
            problems.append(f"no dead letter: {what}")
            row["lost"] += 1
        if any(not d.reason or not d.error for d in letters):
            problems.append(f"dead letter without a reason: {what}")
        if not s.dead_letter and letters:
            problems.append(f"unexpected dead letter {letters[0].reason}: {what}")
        if s.expected_output is not None and len(got) == 1 and got[0].output is not None:
            if json.loads(got[0].output) != s.expected_output:
                problems.append(f"wrong output {got[0].output[:200]}: {what}")
        if s.result_id is not None:
            if not got:
                problems.append(f"no result: {what}")
                row["lost"] += 1
            elif len(got) > 1:
                problems.append(f"{len(got)} results: {what}")
            elif s.status is not None and got[0].status is not s.status:
                problems.append(f"{got[0].status} ({got[0].error}) not {s.status}: {what}")
    return rows, problems


def _print_tally(storm: Storm, rows: dict[tuple[str, str], collections.Counter[str]]) -> None:
    cols = ["inputs", "records", "dead letters", "FAILED", "OK", "held", "lost"]
    print(f"\nbad-input storm (seed {SEED}); SIMULATED FAULT: garbage LM output in "
          f"{storm.garbage_calls} of {len(storm.valid)} valid requests' calls (rate {GARBAGE_RATE})")  # fmt: skip
    print(f"| topic | kind | {' | '.join(cols)} |")
    print("|---|---|" + "---:|" * len(cols))
    totals: collections.Counter[str] = collections.Counter()
    per_topic: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for (label, kind), row in sorted(rows.items()):
        print(f"| {label} | {kind} | " + " | ".join(str(row[c]) for c in cols) + " |")
        totals.update(row)
        per_topic[label].update(row)
    print("\n| topic | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for label, row in sorted(per_topic.items()):
        print(f"| {label} | " + " | ".join(str(row[c]) for c in cols) + " |")
    print("| **all** | " + " | ".join(str(totals[c]) for c in cols) + " |")
    reasons = collections.Counter(d.reason for d in storm.letters)
    print(f"\ndead letters on the DLQ: {len(storm.letters)} by reason {dict(reasons)}")
    print(f"distinct request ids with a result: {len(storm.results)}; seconds: "
          f"{ {k: round(v, 1) for k, v in storm.seconds.items()} }")  # fmt: skip


@pytest.mark.integration
def test_storm_every_bad_input_is_dead_lettered_or_failed_and_nothing_is_lost(
    storm: Storm,
) -> None:
    rows, problems = _tally(storm)
    _print_tally(storm, rows)
    assert len(storm.sent) >= 500, "the storm is smaller than intended"
    assert not problems, "\n".join(problems[:40])
    assert sum(row["lost"] for row in rows.values()) == 0
    # Nothing on the DLQ that no input explains (e.g. a valid request dead-lettered).
    explained = {id(d) for s in storm.sent for d in _letters_for(storm, s)}
    stray = [d for d in storm.letters if id(d) not in explained]
    assert not stray, [(d.source_topic, d.reason, d.error[:80]) for d in stray[:10]]


@pytest.mark.integration
def test_storm_leaves_every_worker_alive(storm: Storm) -> None:
    assert all(storm.alive.values()), storm.alive


@pytest.mark.integration
def test_storm_valid_requests_before_during_and_after_are_exact(storm: Storm) -> None:
    assert storm.garbage_calls > 0  # some valid requests' LM output was (SIMULATED) garbage
    for s in storm.valid:
        (result,) = storm.results[s.result_id or ""]
        assert result.status is ResultStatus.OK, result.error
        assert json.loads(result.output or "") == s.expected_output, s.result_id
        # Labelled SIMULATED when LM output is in it (an empty output leaves no trace span).
        assert result.simulated or not s.expected_output["claims"]  # type: ignore[index]


@pytest.mark.integration
def test_storm_logs_hold_no_traceback_secret_input_or_prompt(storm: Storm) -> None:
    """At the default log level, after hundreds of bad inputs: no ERROR line and no stack
    trace (bad input is expected, and logged as a warning), and neither the SASL password,
    any request's input, nor the prompt text appears in a worker's or LM worker's log."""
    secrets = [PASSWORD, MARK, claims.SYSTEM, "List three facts about"]
    for name, text in storm.logs.items():
        assert "Traceback" not in text, f"{name} log:\n{_around(text, 'Traceback')}"
        for line in text.splitlines():
            assert "[ERROR]" not in line and " ERROR " not in line, f"{name}: {line}"
        for secret in secrets:
            assert secret not in text, f"{name} log shows {secret!r}:\n{_around(text, secret)}"
        assert "dead letter" in text or name == "LM worker"  # it did log the bad input


def _around(text: str, needle: str, width: int = 1500) -> str:
    at = text.find(needle)
    return text[max(0, at - width // 2) : at + width // 2]
