"""A small client: submit requests and read results, with plain Kafka clients (no Faust)."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaException,
    Producer,
    TopicPartition,
)

from alto.config import AltoConfig
from alto.errors import BadInputError, BrokerError
from alto.fetch_gaps import GapGuard
from alto.kafka import append_only, client_settings
from alto.schemas.messages import (
    LMRequest,
    LMStatus,
    Mode,
    PipelineRequest,
    PipelineResult,
    Quantum,
)
from alto.streams.ancestry import request_id_of_key

log = logging.getLogger(__name__)


def new_request(
    pipeline: str, text: str, *, mode: Mode | None = None, request_id: str | None = None
) -> PipelineRequest:
    return PipelineRequest(
        request_id=request_id or uuid.uuid4().hex,
        pipeline=pipeline,
        input=text,
        submitted_at_ms=int(time.time() * 1000),
        mode=mode,
    )


class Submitter:
    """Produces `PipelineRequest`s to the requests topic (key = request id). A message the
    broker refused (its delivery report carries an error) is kept in `refused` and makes
    `flush` raise: a request that never entered the system must not pass for one the system
    lost."""

    def __init__(self, config: AltoConfig) -> None:
        self.topic = config.requests_topic
        self.producer = Producer(
            {**client_settings(config), "linger.ms": 1, "enable.idempotence": False}
        )
        self.refused: list[tuple[bytes | None, str]] = []  # (key, error) of each refusal

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.refused.append((msg.key(), str(err)))

    def submit(self, request: PipelineRequest) -> None:
        self.submit_raw(request.request_id.encode(), request.encode())

    def submit_raw(self, key: bytes | None, value: bytes, topic: str | None = None) -> None:
        self.producer.produce(
            topic or self.topic, key=key, value=value, on_delivery=self._delivered
        )
        self.producer.poll(0)

    def flush(self, timeout_s: float = 30.0) -> None:
        if self.producer.flush(timeout_s) > 0:
            raise BrokerError("requests not delivered in time")
        if self.refused:
            key, error = self.refused[0]
            raise BrokerError(
                f"the broker refused {len(self.refused)} messages, e.g. key {key!r}: {error}"
            )

    def submit_all(self, requests: Iterable[PipelineRequest]) -> None:
        for request in requests:
            self.submit(request)
        self.flush()


class TopicReader:
    """Reads every partition of one topic (or several) by manual assignment (no group)."""

    def __init__(
        self, config: AltoConfig, topic: str | list[str], *, from_beginning: bool = True
    ) -> None:
        settings = {
            **client_settings(config),
            "group.id": f"alto-reader-{uuid.uuid4().hex}",  # required, never joined
            "enable.auto.commit": False,
            "fetch.wait.max.ms": config.kafka.fetch_max_wait_ms,
            "fetch.error.backoff.ms": 10,
        }
        self.consumer = Consumer(settings)
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        assignment = []
        for name in [topic] if isinstance(topic, str) else topic:
            try:
                meta = self.consumer.list_topics(name, timeout=10)
            except KafkaException as exc:
                raise BrokerError(f"cannot read topic {name}: {exc}") from exc
            parts = meta.topics[name].partitions
            assignment += [TopicPartition(name, p, start) for p in parts]
        self.consumer.assign(assignment)
        # A fetch may skip a record the broker does not show yet (`alto.fetch_gaps`): a
        # result read past would never be seen live.
        self._gaps = GapGuard(
            lambda tp: append_only(config, tp[0]), offset_of=lambda msg: int(msg.offset())
        )

    def messages(self, timeout_s: float) -> Iterator[Any]:
        """Yield the messages (confluent-kafka `Message`s: topic, partition, offset, key,
        value) that arrive within the next `timeout_s` seconds, each partition's in order
        and without gaps (a skipped offset is read again before the records after it)."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            # consume(n, t) waits for n messages or t seconds: drain what is there without
            # waiting, and block only in poll(), which returns on the first message.
            msgs = self.consumer.consume(500, timeout=0)
            if not msgs:
                first = self.consumer.poll(min(left, 0.2))
                msgs = [first] if first is not None else []
            yield from self._screened([m for m in msgs if m.error() is None])

    def _screened(self, msgs: list[Any]) -> list[Any]:
        by_tp: dict[tuple[str, int], list[Any]] = {}
        for msg in msgs:
            by_tp.setdefault((msg.topic(), msg.partition()), []).append(msg)
        kept, skipped = self._gaps.screen(by_tp)
        for (topic, partition), offset in skipped.items():
            try:
                self.consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:  # not fetching it yet: the next fetch will be
                log.warning("cannot seek %s[%d] back to %d: %s", topic, partition, offset, exc)
        if not skipped:
            return msgs
        handed = {id(msg) for batch in kept.values() for msg in batch}
        return [msg for msg in msgs if id(msg) in handed]

    def poll(self, timeout_s: float) -> Iterator[tuple[bytes | None, bytes | None]]:
        """Yield what arrives within the next `timeout_s` seconds, as (key, value)."""
        for msg in self.messages(timeout_s):
            yield msg.key(), msg.value()

    def poll_topics(self, timeout_s: float) -> Iterator[tuple[str, bytes | None]]:
        """Like `poll`, as (topic, value) (for a reader of several topics)."""
        for msg in self.messages(timeout_s):
            yield msg.topic() or "", msg.value()

    def poll_records(self, timeout_s: float) -> Iterator[tuple[bytes | None, bytes | None, int]]:
        """Like `poll`, with each record's timestamp (ms; producer create time)."""
        for msg in self.messages(timeout_s):
            yield msg.key(), msg.value(), msg.timestamp()[1]

    def drain(
        self, quiet_s: float = 2.0, max_s: float = 300.0
    ) -> Iterator[tuple[bytes | None, bytes | None]]:
        """Yield (key, value) until nothing has arrived for `quiet_s` (or `max_s` have
        passed): a whole topic read from the start, however large, where `poll` stops at a
        moment."""
        for msg in self.drain_messages(quiet_s, max_s):
            yield msg.key(), msg.value()

    def drain_messages(self, quiet_s: float = 2.0, max_s: float = 300.0) -> Iterator[Any]:
        """`drain`, as messages (with partition and offset)."""
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline:
            got = False
            for msg in self.messages(quiet_s):
                got = True
                yield msg
                if time.monotonic() >= deadline:
                    return
            if not got:
                return

    def close(self) -> None:
        self.consumer.close()


def read_results(config: AltoConfig, *, from_beginning: bool = True) -> Iterator[PipelineResult]:
    """Follow the results topic forever (decoding errors are raised)."""
    reader = TopicReader(config, config.results_topic, from_beginning=from_beginning)
    try:
        while True:
            for _, value in reader.poll(1.0):
                yield PipelineResult.decode(value)
    finally:
        reader.close()


def stage_windows(result: PipelineResult) -> dict[str, float]:
    """Per stage: the wall-clock window (ms) its trace spans for this request cover, first
    start to last end (where a request's time goes, stage by stage)."""
    windows: dict[str, list[int]] = {}
    for span in result.trace:
        lo_hi = windows.setdefault(span.stage, [span.start_ms, span.end_ms])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], span.start_ms), max(lo_hi[1], span.end_ms)
    return {stage: hi - lo for stage, (lo, hi) in windows.items()}


def collect_results(
    config: AltoConfig,
    request_ids: Iterable[str],
    timeout_s: float,
    reader: TopicReader | None = None,
) -> tuple[dict[str, PipelineResult], list[PipelineResult]]:
    """Wait for the results of `request_ids`; returns (first result by id, duplicates seen)."""
    wanted = set(request_ids)
    reader = reader or TopicReader(config, config.results_topic)
    got: dict[str, PipelineResult] = {}
    dupes: list[PipelineResult] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not wanted <= got.keys():
        for _, value in reader.poll(0.5):
            try:
                result = PipelineResult.decode(value)
            except BadInputError:
                continue
            if result.request_id in got:
                dupes.append(result)
            else:
                got[result.request_id] = result
    return got, dupes


def wait_lm_reporting(
    config: AltoConfig,
    instances: Iterable[int],
    timeout_s: float,
    *,
    check: Callable[[], object] | None = None,
) -> None:
    """Wait until each LM instance in `instances` has published a status report on
    `config.lm_status_topic` after this call began (older reports may come from a previous
    run). `check` runs between polls, e.g. to fail fast when a process died.
    Raises TimeoutError."""
    wanted = set(instances)
    seen: set[int] = set()
    reader = TopicReader(config, config.lm_status_topic, from_beginning=False)
    try:
        deadline = time.monotonic() + timeout_s
        while not wanted <= seen:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"LM instances reporting after {timeout_s:.0f} s: {sorted(seen)} "
                    f"of {sorted(wanted)}"
                )
            if check is not None:
                check()
            for _, value in reader.poll(0.5):
                try:
                    seen.add(LMStatus.decode(value).instance)
                except BadInputError:
                    continue
    finally:
        reader.close()


# Faust names a table's changelog topic `<app id>-<table>-changelog`.
CHANGELOG_SUFFIX = "-changelog"


class _Whole:
    """Every record of one topic, read from the start until it is quiet
    (`TopicReader.drain`), each with its place (`topic[partition]@offset`); `gaps()` then
    names the offsets missing between the first and last record read of each partition.
    Kafka's offsets are consecutive on a topic that is neither compacted nor transactional
    (ours), so a gap is a record the broker did not serve."""

    def __init__(self, config: AltoConfig, topic: str) -> None:
        self.config, self.topic = config, topic
        self.offsets: dict[int, list[int]] = {}

    def __iter__(self) -> Iterator[tuple[str, bytes | None, bytes | None]]:
        reader = TopicReader(self.config, self.topic)
        try:
            for msg in reader.drain_messages():
                partition, offset = msg.partition(), msg.offset()
                self.offsets.setdefault(partition, []).append(offset)
                yield f"{self.topic}[{partition}]@{offset}", msg.key(), msg.value()
        finally:
            reader.close()

    def gaps(self) -> list[str]:
        out = []
        for partition, offsets in sorted(self.offsets.items()):
            seen = sorted(set(offsets))
            missing = [(a + 1, b - 1) for a, b in itertools.pairwise(seen) if b > a + 1]
            out += [
                f"{self.topic}[{partition}]: offsets {lo}-{hi} not served "
                f"(read {seen[0]}..{seen[-1]})"
                for lo, hi in missing
            ]
        return out


def _state_trail(whole: _Whole, wanted: set[str]) -> list[str]:
    """A table's changelog records for `wanted` requests: each state write, in order (keys
    are JSON strings of node keys; None is a deletion)."""
    lines = []
    for where, key, value in whole:
        try:
            node = json.loads(key or b"")
        except ValueError:
            continue
        if isinstance(node, str) and request_id_of_key(node) in wanted:
            shown = "deleted" if value is None else value.decode("utf-8", "replace")[:160]
            lines.append(f"{where}: {node} {shown}")
    return lines


def trail(config: AltoConfig, topics: Iterable[str], request_ids: Iterable[str]) -> str:
    """Every record of `request_ids` on the requests topic, on the LM topics (calls as
    stages made them and as the scheduler placed them), on `topics` (quanta; state writes
    for changelogs) and on the sink, topic by topic in offset order, each with its place
    (`topic[partition]@offset`): where a request that got no result stopped. Ends with any
    offsets a topic's partitions skipped. For diagnosing a lost request; it reads each
    topic whole, from the start."""
    wanted = set(request_ids)
    lines: list[str] = []
    read: list[_Whole] = []

    def whole(topic: str) -> _Whole:
        read.append(_Whole(config, topic))
        return read[-1]

    for where, _, value in whole(config.requests_topic):
        with contextlib.suppress(BadInputError):
            request = PipelineRequest.decode(value or b"")
            if request.request_id in wanted:
                lines.append(f"{where}: {request.request_id} {request.pipeline} {request.mode}")
    for topic in (config.lm_requests_topic, config.lm_work_topic):
        for where, _, value in whole(topic):
            with contextlib.suppress(BadInputError):
                call = LMRequest.decode(value or b"")
                if call.request_id in wanted:
                    lines.append(
                        f"{where}: instance {call.instance} attempt={call.attempt} "
                        f"{call.lm_request_id}"
                    )
    for topic in [*topics, config.sink_topic]:
        if topic.endswith(CHANGELOG_SUFFIX):
            lines += _state_trail(whole(topic), wanted)
            continue
        for where, _, value in whole(topic):
            try:
                q = Quantum.decode(value or b"")
            except BadInputError:
                continue
            if q.request_id in wanted:
                path = "/".join(f"{e.stage}{e.index}" for e in q.path)
                lines.append(
                    f"{where}: {q.request_id} {q.kind} {path} seq={q.seq} count={q.count} "
                    f"by={[s.worker for s in q.trace][-1:]} {q.payload!r:.40}"
                )
    gaps = [gap for w in read for gap in w.gaps()]
    lines.append(f"offsets not served: {len(gaps)}")
    lines += gaps
    return "\n".join(lines)
