"""Faust wiring: one agent per stage topic, plus ingest (requests) and sink (results).

Stage logic lives in `alto.streams.processor`; this module only moves bytes: it decodes
each event (anything undecodable becomes a dead letter and, where the request id can be
read from the key, a FAILED result), runs the processor, and produces what it returns.

Correctness notes:
- Aggregating stages process their stream in order (no concurrency): per-key order and
  table updates stay consistent. Their state lives in a changelog-backed table.
- Stateless stages may declare `concurrency > 1`: events are then handled in tasks and
  acknowledged manually when done, so an offset is committed only after its outputs
  were produced (Faust commits the longest contiguous run of acked offsets and flushes
  the producer first): at-least-once, and replays are deduplicated downstream.
- The results table's changelog *is* the results topic, so emitting a result and
  remembering that it was emitted are the same write (see `alto.streams.processor.Sink`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import faust
from aiokafka.errors import MessageSizeTooLargeError
from faust.exceptions import ProducerSendError
from faust.types import EventT, StreamT

from alto import metrics
from alto.agents.transport import FaustApp
from alto.config import AltoConfig
from alto.errors import BadInputError, ConfigError
from alto.kafka import aiokafka_settings, follow
from alto.scheduler.agent import Overloaded, SchedulerCore
from alto.schemas import faust_codecs
from alto.schemas.messages import LMRequest, Mode, PipelineRequest, Quantum, QuantumKind
from alto.streams.admission import Admission
from alto.streams.ancestry import request_id_of_key
from alto.streams.pipeline import REQUEST, StageKind, Topology
from alto.streams.processor import (
    OVERLOADED,
    CallLM,
    DeadLetterOut,
    Ingest,
    Output,
    Routing,
    Send,
    Sink,
    StageProcessor,
    now_ms,
)

log = logging.getLogger(__name__)

# How often the consumer-lag gauge is refreshed (it reads cached offsets, no broker request).
LAG_INTERVAL_S = 5.0


class _PartitionStore(MutableMapping[str, Any]):
    """An aggregator's table as the processor sees it while handling one event: every state
    it writes records the partition it belongs to (`"p"`), so that a sweep, which runs
    outside any event, can write the key's tombstone to the right changelog partition."""

    def __init__(self, table: Any, partition: int) -> None:
        self.table = table
        self.partition = partition

    def __getitem__(self, key: str) -> Any:
        return self.table[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(value, dict):
            value["p"] = self.partition
        self.table[key] = value

    def __delitem__(self, key: str) -> None:
        del self.table[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.table)

    def __len__(self) -> int:
        return len(self.table)

    def __contains__(self, key: object) -> bool:
        return key in self.table


class _ResultsStore:
    """Request id -> result, over the table whose changelog is the results topic."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.first_seen: dict[bytes, int] = {}  # key -> when a sweep first saw it (ms)

    def forget_older_than(self, now: int, retention_ms: int) -> int:
        """Drop results held longer than `retention_ms` from memory (not from the results
        topic, which is the contract: no tombstone goes there). Returns how many."""
        data = self.table.data
        seen = self.first_seen
        for key in data.keys():
            seen.setdefault(key, now)
        old = [k for k, at in seen.items() if now - at >= retention_ms or k not in data]
        for key in old:
            data.pop(key, None)
            del seen[key]
        return len(old)

    def __contains__(self, request_id: object) -> bool:
        return isinstance(request_id, str) and request_id.encode() in self.table

    def __setitem__(self, request_id: str, result: Any) -> None:
        self.table[request_id.encode()] = result.encode()


class AltoApp:
    """The Faust application serving a set of pipelines."""

    def __init__(self, config: AltoConfig, topologies: Iterable[Topology]) -> None:
        self.config = config
        faust_codecs.register()
        self.topologies = {t.pipeline: t for t in topologies}
        self.worker_id = config.worker_id
        settings = _faust_settings(config)
        Path(settings["datadir"]).parent.mkdir(parents=True, exist_ok=True)
        self.app = FaustApp(
            config.app_id,
            fetch_max_wait_ms=config.fetch_max_wait_ms,
            client_settings=aiokafka_settings(config),
            **settings,
        )
        self.routings = {
            name: Routing(t, config.topic_prefix, config.sink_topic, config.lm_requests_topic)
            for name, t in self.topologies.items()
        }
        # Admission control at ingest (None: no limit); fed by `_define_admission`.
        self.admission = (
            Admission[PipelineRequest](
                config.max_inflight_requests,
                int(config.admission_ttl_s * 1000),
                int(config.request_retry_s * 1000),
            )
            if config.max_inflight_requests > 0 and "ingest" in config.roles
            else None
        )
        self.ingest = Ingest(
            self.routings,
            self.worker_id,
            Mode.parse(config.mode),
            config.max_input_chars,
            config.sink_topic,
            self.admission,
        )
        self.sink = Sink(self.topologies)
        self._topics: dict[str, Any] = {}
        self._tables: dict[str, Any] = {}
        # Aggregators' tables with their processor and input topic, for the state sweep.
        self._aggregates: dict[str, tuple[Any, StageProcessor, str]] = {}
        self._results: _ResultsStore | None = None
        self._consumed: set[str] = set()  # topics an agent of ours reads (for consumer lag)
        self.metrics_port: int | None = None  # bound once the worker starts (metrics on)
        unknown = set(config.pipelines) - set(self.topologies)
        if unknown:
            raise ConfigError(
                f"unknown pipelines {sorted(unknown)}; known: {sorted(self.topologies)}"
            )
        self.served = [n for n in self.topologies if not config.pipelines or n in config.pipelines]
        if "ingest" in config.roles:
            self._define_ingest()
        if self.admission is not None:
            self._define_admission(self.admission)
        if "stages" in config.roles:
            for name in self.served:
                for stage in self.topologies[name].topic_stages:
                    self._define_stage(self.routings[name], stage)
            self._define_warmup()
        if "sink" in config.roles:
            self._define_sink()
        if "scheduler" in config.roles:
            self._define_scheduler()
        if self._aggregates or self._results is not None:
            self._define_sweep()
        if config.metrics_port >= 0:
            self._define_metrics()
        if config.status_file is not None:
            self._define_status(config.status_file)

    # -- topics --------------------------------------------------------------------

    def topic_partitions(self) -> dict[str, int]:
        """Every topic this app reads or writes, with its partition count."""
        n = self.config.partitions
        names = [
            self.config.lm_requests_topic,
            self.config.lm_status_topic,
            self.config.lm_assignments_topic,
            self.config.requests_topic,
            self.config.results_topic,
            self.config.dlq_topic,
            self.config.sink_topic,
        ]
        for name in self.served:
            names += self.topologies[name].topics(self.config.topic_prefix)
        names += [self.changelog_topic(t) for t in self._tables]
        counts = dict.fromkeys(names, n)
        counts[self.config.lm_work_topic] = self.config.lm_max_instances
        return counts

    def changelog_topic(self, table_name: str) -> str:
        if table_name == "results":
            return self.config.results_topic
        return changelog_topic(self.config, table_name)

    def _topic(self, name: str) -> Any:
        topic = self._topics.get(name)
        if topic is None:
            topic = self.app.topic(
                name,
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
                partitions=self.config.partitions,
                internal=True,
            )
            self._topics[name] = topic
        return topic

    # -- output --------------------------------------------------------------------

    async def _deliver(
        self, outs: Iterable[Output], event: EventT, meter: metrics.StageMeter
    ) -> None:
        for out in outs:
            if isinstance(out, CallLM):
                meter.out["LM_CALL"].inc()
                await self._produce(event, out)
            elif isinstance(out, Send):
                # Straight to the producer: Faust's channel layer (futures, callbacks per
                # message) cost more than our whole stage on the hop benchmark. The consumer
                # still flushes this producer before it commits offsets (at-least-once).
                meter.out[out.quantum.kind.value].inc()
                await self._produce(event, out)
            else:
                meter.out["DEAD_LETTER"].inc()
                await self._dead_letter(event, out)

    async def _produce(self, event: EventT, out: Send | CallLM) -> None:
        """Produce one output. One that does not encode, or that the producer refuses as
        larger than `max_message_bytes`, fails its request with a dead letter: raised, it
        would crash the agent, whose supervisor restarts it past the event (lost)."""
        value = out.request if isinstance(out, CallLM) else out.quantum
        try:
            await self.app.producer.send(
                out.topic, out.key.encode(), value.encode(), None, None, None
            )
        except (BadInputError, ProducerSendError) as exc:
            if isinstance(exc, BadInputError):
                reason, text = exc.reason, str(exc)
            elif isinstance(exc.__cause__, MessageSizeTooLargeError):
                reason = "too_large"
                text = f"an output to {out.topic} exceeds {self.config.max_message_bytes} bytes"
            else:
                raise
            await self._dead_letter(
                event, DeadLetterOut(reason, text, value.request_id, value.stage)
            )
            await self._send_failed(value.request_id, value.stage, f"{reason}: {text}")

    async def _dead_letter(self, event: EventT, out: DeadLetterOut) -> None:
        msg = event.message
        log.warning(
            "dead letter from %s[%d]@%d: %s: %s",
            msg.topic,
            msg.partition,
            msg.offset,
            out.reason,
            out.error,
        )
        metrics.DEAD_LETTERS.labels(_REASONS(out.reason), msg.topic).inc()
        letter = out.letter(
            msg.topic,
            msg.partition,
            msg.offset,
            _as_bytes(msg.key),
            _as_bytes(msg.value),
            self.worker_id,
            self.config.max_message_bytes,
        )
        await self._topic(self.config.dlq_topic).send(key=letter.key, value=letter.encode())

    async def _undecodable(
        self, event: EventT, exc: BadInputError, stage: str, *, node_key: bool = False
    ) -> None:
        """Dead-letter an event that does not decode; fail its request if the key names one
        (`node_key`: the key is a node key, request id plus ancestry; else the request id)."""
        request_id = _readable_key(event.message.key, node_key=node_key)
        await self._dead_letter(event, DeadLetterOut(exc.reason, str(exc), request_id, stage))
        if request_id is not None:
            await self._send_failed(request_id, stage, f"{exc.reason}: {exc}")

    async def _send_failed(self, request_id: str, stage: str, error: str) -> None:
        """A FAILED marker for `request_id`, straight to the sink (its request's result)."""
        now = now_ms()
        failed = Quantum(
            request_id=request_id,
            pipeline="",
            mode=Mode.parse(self.config.mode),
            stage=stage,
            path=(),
            seq=0,
            kind=QuantumKind.FAILED,
            submitted_at_ms=now,
            created_at_ms=now,
            error=error,
        )
        try:
            await self._topic(self.config.sink_topic).send(
                key=request_id.encode(), value=failed.encode()
            )
        except ProducerSendError as exc:
            if not isinstance(exc.__cause__, MessageSizeTooLargeError):
                raise
            # An id too long to carry in any message: its dead letter is all there is.
            log.warning("no FAILED result for a request id of %d chars", len(request_id))

    # -- agents --------------------------------------------------------------------

    async def _each(
        self, stream: StreamT, stage: str, handle: Callable[[EventT], Awaitable[None]]
    ) -> None:
        await handle_each(stream, handle, lambda event, exc: self._stage_failed(stage, event, exc))

    async def _stage_failed(self, stage: str, event: EventT, exc: Exception) -> None:
        """An exception of ours while handling `event`: logged, and its request fails with a
        FAILED result naming it (never silently dropped)."""
        msg = event.message
        log.error(
            "stage %s failed on %s[%d]@%d",
            stage,
            msg.topic,
            msg.partition,
            msg.offset,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        request_id = _readable_key(msg.key, node_key=True)
        if request_id is not None:
            await self._send_failed(request_id, stage, f"stage_error: {exc!r}")

    def _define_ingest(self) -> None:
        async def one(event: EventT) -> None:
            started = time.perf_counter()
            try:
                request = PipelineRequest.decode(event.value)
            except BadInputError as exc:
                metrics.meter(metrics.UNKNOWN, "ingest").inputs.inc()
                await self._undecodable(event, exc, REQUEST)
                return
            meter = metrics.meter(self._pipeline_label(request.pipeline), "ingest")
            meter.inputs.inc()
            await self._deliver(self.ingest.handle(request), event, meter)
            meter.seconds.observe(time.perf_counter() - started)

        async def ingest(stream: StreamT) -> None:
            await self._each(stream, "ingest", one)

        self._consumed.add(self.config.requests_topic)
        self.app.agent(self._topic(self.config.requests_topic), name="alto.ingest")(ingest)

    def _define_stage(self, routing: Routing, stage: str) -> None:
        topology = routing.topology
        spec = topology.stages[stage]
        processor = StageProcessor(
            routing, stage, self.worker_id, max_spans=self.config.max_trace_spans
        )
        topic_name = topology.stage_topic(self.config.topic_prefix, stage)
        topic = self._topic(topic_name)
        name = f"{topology.pipeline}.{stage}"
        meter = metrics.meter(topology.pipeline, stage)
        self._consumed.add(topic_name)

        async def handle(event: EventT, store: Any) -> None:
            started = time.perf_counter()
            meter.inputs.inc()
            try:
                quantum = Quantum.decode(event.value)
            except BadInputError as exc:
                await self._undecodable(event, exc, stage, node_key=True)
                return
            outs = processor.process(quantum, store)
            async for out in outs:
                await self._deliver((out,), event, meter)
            meter.seconds.observe(time.perf_counter() - started)

        if spec.kind is StageKind.AGGREGATE:
            table = self.app.Table(
                name,
                default=None,
                partitions=self.config.partitions,
                schema=faust.Schema(key_type=str, key_serializer="json", value_serializer="json"),
            )
            self._tables[name] = table
            self._aggregates[name] = (table, processor, topic_name)

            async def aggregate(stream: StreamT) -> None:
                await self._each(
                    stream,
                    stage,
                    lambda event: handle(event, _PartitionStore(table, event.message.partition)),
                )

            self.app.agent(topic, name=name)(aggregate)
        elif spec.concurrency <= 1:

            async def inline(stream: StreamT) -> None:
                await self._each(stream, stage, lambda event: handle(event, None))

            self.app.agent(topic, name=name)(inline)
        else:
            limit = spec.concurrency

            async def concurrent(stream: StreamT) -> None:
                manual = stream.noack()  # type: ignore[attr-defined]
                slots = asyncio.Semaphore(limit)
                running: set[asyncio.Task[None]] = set()

                async def one(event: EventT) -> None:
                    try:
                        await handle(event, None)
                    except Exception as exc:
                        await self._stage_failed(stage, event, exc)
                    finally:
                        slots.release()
                    await manual.ack(event)  # not when cancelled: then it is read again

                async for event in manual.events():
                    await slots.acquire()
                    task = asyncio.ensure_future(one(event))
                    running.add(task)
                    task.add_done_callback(running.discard)

            self.app.agent(topic, name=name)(concurrent)

    def _define_sink(self) -> None:
        results_topic = self._topic(self.config.results_topic)
        table = self.app.Table(
            "results",
            default=None,
            partitions=self.config.partitions,
            schema=faust.Schema(
                key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
            ),
            changelog_topic=results_topic,
        )
        self._tables["results"] = table
        emitted = self._results = _ResultsStore(table)
        self._consumed.add(self.config.sink_topic)

        async def one(event: EventT) -> None:
            started = time.perf_counter()
            try:
                quantum = Quantum.decode(event.value)
            except BadInputError as exc:  # its FAILED marker comes back here
                await self._undecodable(event, exc, "sink")
                return
            meter = metrics.meter(self._pipeline_label(quantum.pipeline), "sink")
            meter.inputs.inc()
            if (rejected := self.sink.reject(quantum)) is not None:
                await self._dead_letter(event, rejected)
            result = self.sink.handle(quantum, emitted)  # type: ignore[arg-type]
            if result is not None:
                log.debug(
                    "result %s %s in %d ms", result.request_id, result.status, result.latency_ms
                )
                labels = (
                    self._pipeline_label(result.pipeline),
                    result.mode.value,
                    result.status.value,
                )
                metrics.RESULTS.labels(*labels).inc()
                metrics.REQUEST_SECONDS.labels(*labels).observe(result.latency_ms / 1000)
            meter.seconds.observe(time.perf_counter() - started)

        async def sink(stream: StreamT) -> None:
            await self._each(stream, "sink", one)

        self.app.agent(self._topic(self.config.sink_topic), name="alto.sink")(sink)

    def _define_sweep(self) -> None:
        """Bound the state this worker holds: every `state_sweep_s`, expire aggregators'
        done markers and fail requests past their deadline (`StageProcessor.expire`), on the
        partitions this worker owns, and forget old results. Deletions go to the changelog as
        tombstones, all of a sweep together (few produce batches)."""
        retention_ms = int(self.config.state_retention_s * 1000)
        deadline_ms = int(self.config.request_deadline_s * 1000)
        results_ms = int(self.config.results_retention_s * 1000)

        @self.app.timer(interval=self.config.state_sweep_s)
        async def sweep_state() -> None:
            now = now_ms()
            active = {(tp.topic, tp.partition) for tp in self.app.assignor.assigned_actives()}
            for name, (table, processor, topic) in self._aggregates.items():
                expired = 0
                for key, state in list(table.data.items()):
                    partition = state.get("p") if isinstance(state, dict) else None
                    if partition is None or (topic, partition) not in active:
                        continue  # a standby's copy: its owner sweeps it
                    outcome = processor.expire(key, state, now, retention_ms, deadline_ms)
                    if outcome is None:
                        continue
                    expired += 1
                    if outcome.marker is None:
                        table.data.pop(key, None)
                        table.send_changelog(partition, key, None)
                    else:
                        marker = {**outcome.marker, "p": partition}
                        table.data[key] = marker
                        table.send_changelog(partition, key, marker)
                    for out in outcome.outputs:
                        if isinstance(out, Send):
                            log.warning("%s: %s", out.quantum.request_id, out.quantum.error)
                            metrics.DEADLINES.labels(processor.topology.pipeline, name).inc()
                            await self.app.producer.send(
                                out.topic, out.key.encode(), out.quantum.encode(), None, None, None
                            )
                if expired:
                    log.debug("state sweep of %s: %d keys expired", name, expired)
            if self._results is not None:
                self._results.forget_older_than(now, results_ms)

    def _define_warmup(self) -> None:
        warmups = [(n, w) for n in self.served if (w := self.topologies[n].warmup) is not None]
        if not self.config.warmup or not warmups:
            return

        @self.app.task
        async def warm_up() -> None:
            for name, warmup in warmups:
                started = time.monotonic()
                try:
                    await asyncio.to_thread(warmup)
                except Exception:  # a stage that needs it fails its requests with the reason
                    log.exception("warm-up of pipeline %s failed", name)
                else:
                    log.info("pipeline %s warmed up in %.1f s", name, time.monotonic() - started)

    def _define_admission(self, admission: Admission[PipelineRequest]) -> None:
        """Feed admission control: follow the results topic (keys only, from its end) to see
        admitted requests finish; each second, track this worker's share of the requests
        topic and replay the requests overdue for a result."""
        requests_topic = self.config.requests_topic

        @self.app.task
        async def follow_results() -> None:
            wait_ms = max(self.config.fetch_max_wait_ms, 100)
            records = follow(self.config, self.config.results_topic, tail=0, fetch_wait_ms=wait_ms)
            async with contextlib.aclosing(records):
                async for record in records:
                    if record.key:
                        admission.finished(record.key.decode("utf-8", "replace"))

        @self.app.timer(interval=1.0)
        async def admission_upkeep() -> None:
            held = sum(
                1 for tp in self.app.assignor.assigned_actives() if tp.topic == requests_topic
            )
            admission.share = held / self.config.partitions if held else 1.0
            metrics.ADMISSION_IN_FLIGHT.set(admission.in_flight)
            for request in admission.overdue(now_ms()):
                log.warning(
                    "request %s has no result %.0f s after admission: replaying it from its root",
                    request.request_id,
                    self.config.request_retry_s,
                )
                metrics.REQUESTS_REPLAYED.inc()
                for out in self.ingest.handle(request):
                    if isinstance(out, Send):
                        await self.app.producer.send(
                            out.topic, out.key.encode(), out.quantum.encode(), None, None, None
                        )

    def _define_scheduler(self) -> None:
        """Assign LM calls to LM instances (`scheduler/agent.py`; policy: `alto.scheduler.policy`)."""

        async def send(topic: str, key: bytes, value: bytes, partition: int | None) -> None:
            await self.app.producer.send(topic, key, value, partition, None, None)

        def is_leader() -> bool:
            return any(
                tp.topic == self.config.lm_requests_topic and tp.partition == 0
                for tp in self.app.assignor.assigned_actives()
            )

        scheduler = SchedulerCore(self.config, send, name=self.worker_id, is_leader=is_leader)
        self.scheduler = scheduler

        @self.app.task
        async def run_scheduler() -> None:
            await scheduler.run()

        async def place(request: LMRequest) -> None:
            try:
                instance = await scheduler.place(request)
            except Overloaded as exc:
                await self._overloaded(request, str(exc))
                return
            await scheduler.assign(request, instance)

        async def assign(stream: StreamT) -> None:
            # Calls are placed concurrently (one may wait for capacity while the next is
            # refused); each offset is acknowledged once its call is assigned or refused.
            manual = stream.noack()  # type: ignore[attr-defined]
            running: set[asyncio.Task[None]] = set()

            async def one(event: EventT) -> None:
                try:
                    request = LMRequest.decode(event.value)
                except BadInputError as exc:
                    await self._undecodable(event, exc, "scheduler")
                else:
                    try:
                        await place(request)
                    except Exception as exc:  # a bug of ours: fail the request, never lose it
                        log.exception("placing LM call %s failed", request.lm_request_id)
                        await self._send_failed(
                            request.request_id, request.stage, f"scheduler_error: {exc!r}"
                        )
                # Not when cancelled (a worker stopping): the call is then read again.
                await manual.ack(event)

            async for event in manual.events():
                task = asyncio.ensure_future(one(event))
                running.add(task)
                task.add_done_callback(running.discard)

        self._consumed.add(self.config.lm_requests_topic)
        self.app.agent(self._topic(self.config.lm_requests_topic), name="alto.scheduler")(assign)

    async def _overloaded(self, request: LMRequest, why: str) -> None:
        """Fail a request at once (OVERLOADED): its LM call found every instance saturated."""
        now = now_ms()
        try:
            parent = Quantum.decode(request.parent)
        except BadInputError:  # still fail the request, from what the call itself says
            parent = Quantum(
                request.request_id, request.pipeline, Mode.STREAMING, request.stage, (), 0,
                QuantumKind.DATA, now, now,
            )  # fmt: skip
        failed = replace(
            parent,
            stage=request.stage,
            kind=QuantumKind.FAILED,
            payload=None,
            count=None,
            error=f"{OVERLOADED}: {why}",
            created_at_ms=now,
        )
        await self.app.producer.send(
            self.config.sink_topic, request.request_id.encode(), failed.encode(), None, None, None
        )

    def _pipeline_label(self, name: str) -> str:
        """`name` if it is one of ours, else `unknown` (a metric label from a message)."""
        return name if name in self.topologies else metrics.UNKNOWN

    def _define_metrics(self) -> None:
        """Serve `/metrics` once the worker starts (not when the app is only built, as
        `alto topics` does), and refresh the consumer-lag gauge every `LAG_INTERVAL_S`."""

        @self.app.task
        async def serve_metrics() -> None:
            server = metrics.serve(self.config, f"Faust worker {self.worker_id}")
            self.metrics_port = server.port if server else None

        held: set[tuple[str, int]] = set()

        @self.app.timer(interval=LAG_INTERVAL_S)
        async def consumer_lag() -> None:
            lags = consumer_lags(self.app, self._consumed)
            metrics.set_consumer_lag(lags, held)
            held.clear()
            held.update(lags)
            for name, table in self._tables.items():
                metrics.TABLE_KEYS.labels(name).set(len(table.data))

    def _define_status(self, path: Path) -> None:
        """Write this worker's partition assignment to `path` (a readiness probe)."""

        @self.app.timer(interval=0.5)
        async def write_status() -> None:
            assigned = sorted(
                [tp.topic, tp.partition] for tp in self.app.assignor.assigned_actives()
            )
            status = {
                "worker": self.worker_id,
                "pid": os.getpid(),
                "assigned": assigned,
                "rebalancing": bool(self.app.rebalancing),
                "recovering": bool(self.app.tables.recovery.in_recovery),  # type: ignore[attr-defined]
                "metrics_port": self.metrics_port,
                "at": time.time(),
            }
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(status))
            tmp.replace(path)


async def handle_each(
    stream: StreamT,
    handle: Callable[[EventT], Awaitable[None]],
    failed: Callable[[EventT, Exception], Awaitable[None]],
) -> None:
    """Handle a stream's events in order, acknowledging each only once it is handled.

    Faust's own iteration (`async for event in stream.events()`) acknowledges an event in a
    `finally` around its `yield` (faust/streams.py): when the loop moves on, and also when
    the loop is abandoned, so an agent cancelled mid-event (a worker stopping) had that
    event counted as processed, and committed, unprocessed. Here a cancelled `handle`
    leaves its event unacknowledged (read again), and one that raises goes to `failed`
    (which fails the request) and is then acknowledged."""
    manual = stream.noack()  # type: ignore[attr-defined]
    async for event in manual.events():
        try:
            await handle(event)
        except Exception as exc:
            await failed(event, exc)
        await manual.ack(event)


def changelog_topic(config: AltoConfig, table_name: str) -> str:
    """The changelog topic Faust gives a table of ours (`<app id>-<table>-changelog`)."""
    return f"{config.app_id}-{table_name}-changelog"


def state_changelogs(config: AltoConfig, topology: Topology) -> list[str]:
    """The changelog topics of a pipeline's aggregating stages (their tables are named
    `<pipeline>.<stage>`)."""
    return [
        changelog_topic(config, f"{topology.pipeline}.{name}")
        for name, stage in topology.stages.items()
        if stage.kind is StageKind.AGGREGATE
    ]


# Dead-letter reasons are our own tags, but a bound keeps a future free-text one harmless.
_REASONS = metrics.BoundedLabel(64)


def consumer_lags(app: Any, topics: set[str]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> messages behind the partition's end, for the active partitions
    of `topics` this worker holds. The end is the highwater aiokafka caches from fetch
    responses, the position the offset Faust last committed (else the one after the last
    it read, else 0): no broker request. Faust keeps those offsets in private attributes
    (`_committed_offset`, `_read_offset`); a Faust without them reads as lag from offset 0,
    and so does our consumer for a partition it has not committed yet (it keeps no read
    offsets: `agents/transport.py`)."""
    consumer = app.consumer
    committed = getattr(consumer, "_committed_offset", {})
    read = getattr(consumer, "_read_offset", {})
    lags: dict[tuple[str, int], int] = {}
    for tp in app.assignor.assigned_actives():
        if tp.topic not in topics:
            continue
        try:
            high = consumer.highwater(tp)
        except Exception:  # noqa: S112 - not in the fetcher's assignment (yet): no figure
            continue
        if high is None:
            continue
        done = committed.get(tp)
        if done is None:
            last = read.get(tp)
            done = last + 1 if last is not None else 0
        lags[(tp.topic, tp.partition)] = max(0, int(high) - int(done))
    return lags


def _defines_every_table(config: AltoConfig) -> bool:
    """Whether this worker holds every table of the app (all pipelines' stages, the sink).

    Standby replicas are only safe from such workers. Faust's group leader filters the standby
    partitions it hands out by the changelogs *it* knows, while each member checks what it got
    against the changelogs *it* knows: a leader without the tables (say, a scheduler-only
    worker) sends assignments that a stage worker rejects (an AssertionError in Faust's
    assignor, then no partitions at all). A worker with fewer tables asks for no standbys;
    since the leader's setting decides, a group with such a leader runs without them.
    """
    return {"stages", "sink"} <= set(config.roles) and not config.pipelines


def _standby_replicas(config: AltoConfig) -> int:
    """The configured number where it is safe (see `_defines_every_table`), else 0; one by
    default."""
    if not _defines_every_table(config):
        return 0
    return 1 if config.standby_replicas is None else config.standby_replicas


def _faust_settings(config: AltoConfig) -> dict[str, Any]:
    brokers = [f"kafka://{server.strip()}" for server in config.bootstrap_servers.split(",")]
    worker_dir = re.sub(r"[^\w.-]", "_", config.worker_id)
    settings: dict[str, Any] = {
        "broker": brokers,
        "store": "memory://",
        "topic_partitions": config.partitions,
        "topic_replication_factor": config.replication_factor,
        "topic_disable_leader": True,
        "broker_session_timeout": config.session_timeout_s,
        "broker_heartbeat_interval": config.heartbeat_interval_s,
        "broker_commit_interval": 1.0,
        "consumer_auto_offset_reset": "earliest",
        "web_enabled": False,
        "datadir": str(config.data_dir / worker_dir),
        "stream_wait_empty": False,
        "producer_max_request_size": config.max_message_bytes,
        "producer_linger": config.producer_linger_ms / 1000,
        "worker_redirect_stdouts": False,
        "table_standby_replicas": _standby_replicas(config),
    }
    sec = config.security
    if sec.protocol.startswith("SASL"):
        settings["broker_credentials"] = faust.SASLCredentials(
            username=sec.sasl_username,
            password=sec.sasl_password.get_secret_value() if sec.sasl_password else None,
            mechanism=sec.sasl_mechanism or "PLAIN",
            ssl_context=_ssl_context(sec.ssl_cafile) if sec.protocol == "SASL_SSL" else None,
        )
    elif sec.protocol == "SSL":
        settings["broker_credentials"] = faust.SSLCredentials(_ssl_context(sec.ssl_cafile))
    settings.update(config.extra)
    return settings


def _ssl_context(cafile: str | None) -> Any:
    import ssl

    return ssl.create_default_context(cafile=cafile)


def _as_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return bytes(value)


def _readable_key(key: Any, *, node_key: bool = False) -> str | None:
    """The request id a message key names, if the key is readable UTF-8 (a node key's
    request id with `node_key`; else the whole key, which may itself contain '|')."""
    raw = _as_bytes(key)
    if not raw:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return (request_id_of_key(text) if node_key else text) or None


def create_app(config: AltoConfig, topologies: Iterable[Topology]) -> AltoApp:
    return AltoApp(config, topologies)
