"""Bad input never crashes a worker and is never silently dropped (DESIGN.md's contract),
through the real broker: one storm of several hundred seeded inputs on every topic a
worker or an LM worker reads, with valid requests before, between and after, against one
Faust worker (default log level) and one LM worker on the SIMULATED engine emitting garbage
for a fraction of its calls (a SIMULATED FAULT). Then every input is accounted for: its
dead letter (with a reason) when it is bad, exactly one result when its request id can be
read (FAILED, or OK for what is valid), nothing lost; both processes alive; valid requests
exact; logs free of tracebacks, the SASL password, request inputs and prompts. `pytest -s`
prints the tally. The broker-free tier: `tests/unit/test_bad_input_logic.py`.
"""

from __future__ import annotations

import collections
import json
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import pytest
from confluent_kafka import Producer

from alto.agents import claims
from alto.config import AltoConfig
from alto.errors import BadInputError
from alto.infra.client import TopicReader
from alto.infra.processes import WorkerProcess, lm_worker_command, wait_assigned
from alto.lm_service.quanta import split_all
from alto.lm_service.sim import (
    sim_output,
)
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
)
from alto.streams.ancestry import node_key
from alto.streams.processor import (
    now_ms,
)
from tests.harness import fresh_config
from tests.unit.test_bad_input_logic import (
    CLAIM_STAGES,
    LONG_MAX,
    LONG_MIN,
    PIPELINE,
    PRODUCER,
    _garbage_outputs,
    _q,
)

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
        return self.topology.stage_topic(self.config.internal_prefix, stage)

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
        limit = self.config.admission.max_input_chars
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
        if req.pipeline != PIPELINE or len(req.input) > self.config.admission.max_input_chars:
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
        bootstrap_servers, tmp, pipelines=(PIPELINE,), lm={"status_interval_s": 0.5, "sim_time_scale": 0.02}, 
        
    )  # fmt: skip
    params = tmp / "sim_params.json"
    params.write_text(json.dumps({"garbage_rate": GARBAGE_RATE}))  # SIMULATED FAULT
    env = {
        "ALTO_KAFKA__SECURITY__SASL_USERNAME": "alto",
        "ALTO_KAFKA__SECURITY__SASL_PASSWORD": PASSWORD,
    }
    # The Faust worker at its default log level (no --loglevel), the LM worker likewise.
    worker = WorkerProcess(config, "w1", tmp, command=[sys.executable, "-m", "alto", "worker"],
                           env=env)  # fmt: skip
    lm = WorkerProcess(config, "lm0", tmp, command=lm_worker_command(0, "sim"),
                       env={**env, "ALTO_LM__SIM_PARAMS": str(params)})  # fmt: skip
    processes = {"faust worker": worker, "LM worker": lm}
    try:
        topology = claims.build()
        topics = [*topology.topics(config.internal_prefix), config.sink_topic,
                  config.lm_requests_topic, config.requests_topic]  # fmt: skip
        wait_assigned([worker], topics, config.kafka.partitions)
        ready = time.monotonic()
        gen = _Gen(config, SEED)
        batches = [
            gen.requests(),
            # Stages with a topic: a chained one ("claims", an LM stage run by ingest) has
            # none to forge into (test_bad_input_logic feeds its processor directly).
            *[gen.stage(s) for s in CLAIM_STAGES if s in topology.topic_stages],
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
            "bootstrap.servers": config.kafka.bootstrap_servers, "linger.ms": 5,
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


def test_storm_leaves_every_worker_alive(storm: Storm) -> None:
    assert all(storm.alive.values()), storm.alive


def test_storm_valid_requests_before_during_and_after_are_exact(storm: Storm) -> None:
    assert storm.garbage_calls > 0  # some valid requests' LM output was (SIMULATED) garbage
    for s in storm.valid:
        (result,) = storm.results[s.result_id or ""]
        assert result.status is ResultStatus.OK, result.error
        assert json.loads(result.output or "") == s.expected_output, s.result_id
        # Labelled SIMULATED when LM output is in it (an empty output leaves no trace span).
        assert result.simulated or not s.expected_output["claims"]  # type: ignore[index]


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
