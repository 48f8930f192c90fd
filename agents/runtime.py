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
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from aiokafka.errors import MessageSizeTooLargeError
from faust.exceptions import ProducerSendError
from faust.types import EventT, StreamT

from alto import metrics
from alto.agents import scheduler_role, upkeep
from alto.agents.events import as_bytes, handle_each, readable_key
from alto.agents.faust_settings import changelog_topic, faust_settings
from alto.agents.handover import IngestHandover, define_handover
from alto.agents.stores import PartitionStore, ResultsStore, aggregate_table, results_table
from alto.agents.transport import FaustApp, received_ms
from alto.config import AltoConfig
from alto.errors import BadInputError, ConfigError
from alto.kafka import aiokafka_settings
from alto.legs import LegTrace
from alto.scheduler.agent import SchedulerCore
from alto.schemas import faust_codecs
from alto.schemas.messages import LMRequest, Mode, PipelineRequest, Quantum
from alto.streams.admission import Admission
from alto.streams.chain import Chains
from alto.streams.outputs import failed, now_ms
from alto.streams.pipeline import REQUEST, StageKind, Topology
from alto.streams.processor import (
    CallLM,
    DeadLetterOut,
    Ingest,
    Output,
    Routing,
    Send,
    Sink,
    StageProcessor,
)

log = logging.getLogger(__name__)


class AltoApp:
    """The Faust application serving a set of pipelines."""

    def __init__(self, config: AltoConfig, topologies: Iterable[Topology]) -> None:
        self.config = config
        faust_codecs.register()
        self.topologies = {t.pipeline: t for t in topologies}
        self.worker_id = config.worker_id
        settings = faust_settings(config)
        Path(settings["datadir"]).parent.mkdir(parents=True, exist_ok=True)
        self.app = FaustApp(
            config.group_id,
            fetch_max_wait_ms=config.kafka.fetch_max_wait_ms,
            idle_fetch_wait_ms=config.kafka.idle_fetch_wait_ms,
            idle_after_s=config.kafka.idle_after_s,
            client_settings=aiokafka_settings(config),
            legs=LegTrace.for_config(config),
            **settings,
        )
        self.routings = {
            name: Routing(t, config.internal_prefix, config.sink_topic, config.lm_requests_topic)
            for name, t in self.topologies.items()
        }
        # Admission control at ingest (None: no limit); fed by `_define_admission`.
        self.admission = (
            Admission[PipelineRequest](
                config.admission.max_inflight,
                int(config.admission.ttl_s * 1000),
                int(config.admission.retry_s * 1000),
            )
            if config.admission.max_inflight > 0 and "ingest" in config.roles
            else None
        )
        self.ingest = Ingest(
            self.routings,
            self.worker_id,
            Mode.parse(config.mode),
            config.admission.max_input_chars,
            config.sink_topic,
            self.admission,
        )
        self.sink = Sink(self.topologies)
        # Stateless stages run in memory by whichever agent produces their input (ingest
        # included, for every pipeline it admits): `alto.streams.chain`.
        self.chains = Chains(
            self.routings.values(), self.worker_id, max_spans=config.state.max_trace_spans
        )
        self._topics: dict[str, Any] = {}
        self.tables: dict[str, Any] = {}
        # Aggregators' tables with their processor and input topic, for the state sweep.
        self.aggregates: dict[str, tuple[Any, StageProcessor, str]] = {}
        self.results: ResultsStore | None = None
        self.consumed: set[str] = set()  # topics an agent of ours reads (for consumer lag)
        self.metrics_port: int | None = None  # bound once the worker starts (metrics on)
        self.scheduler: SchedulerCore | None = None  # with the scheduler role
        # Generations (`alto.infra.generations`): SIGUSR1 closes ingest; the next generation
        # takes the requests topic from the offsets this one committed.
        self.handover = IngestHandover(config.generations.handoff_file, config.requests_topic)
        unknown = set(config.pipelines) - set(self.topologies)
        if unknown:
            raise ConfigError(
                f"unknown pipelines {sorted(unknown)}; known: {sorted(self.topologies)}"
            )
        self.served = [n for n in self.topologies if not config.pipelines or n in config.pipelines]
        if "ingest" in config.roles:
            self._define_ingest()
        if self.admission is not None:
            upkeep.define_admission(self, self.admission)
        if "stages" in config.roles:
            for name in self.served:
                for stage in self.topologies[name].topic_stages:
                    self._define_stage(self.routings[name], stage)
            upkeep.define_warmup(self)
        if "sink" in config.roles:
            self._define_sink()
        if "scheduler" in config.roles:
            scheduler_role.define_scheduler(self)
        if self.aggregates or self.results is not None:
            upkeep.define_sweep(self)
        if config.metrics.port >= 0:
            upkeep.define_metrics(self)
        if config.status_file is not None:
            upkeep.define_status(self, config.status_file)

    # -- topics --------------------------------------------------------------------

    def topic_partitions(self) -> dict[str, int]:
        """Every topic this app reads or writes, with its partition count."""
        n = self.config.kafka.partitions
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
            names += self.topologies[name].topics(self.config.internal_prefix)
        names += [self.changelog_topic(t) for t in self.tables]
        counts = dict.fromkeys(names, n)
        counts[self.config.lm_work_topic] = self.config.lm.max_instances
        return counts

    def changelog_topic(self, table_name: str) -> str:
        if table_name == "results":
            return self.config.results_topic
        return changelog_topic(self.config, table_name)

    def topic(self, name: str) -> Any:
        topic = self._topics.get(name)
        if topic is None:
            topic = self.app.topic(
                name,
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
                partitions=self.config.kafka.partitions,
                internal=True,
            )
            self._topics[name] = topic
        return topic

    # -- output --------------------------------------------------------------------

    async def deliver(
        self, outs: Iterable[Output], event: EventT | None, meter: metrics.StageMeter
    ) -> None:
        """Produce `outs` of the stage `meter` counts, handling `event` (None: a replay of
        ingest's own). A Send to a chained stage runs that stage here, in memory."""
        for out in outs:
            if (chained := self.chains.get(out)) is not None:
                assert isinstance(out, Send)
                meter.out[out.quantum.kind.value].inc()
                await self._run_chained(chained, out.quantum, event)
            elif isinstance(out, CallLM):
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
                await self.dead_letter(event, out)

    async def _run_chained(
        self, processor: StageProcessor, quantum: Quantum, event: EventT | None
    ) -> None:
        started = time.perf_counter()
        meter = metrics.meter(processor.topology.pipeline, processor.name)
        meter.inputs.inc()
        async for out in processor.process(quantum, None, now_ms()):
            await self.deliver((out,), event, meter)
        meter.seconds.observe(time.perf_counter() - started)

    async def _produce(self, event: EventT | None, out: Send | CallLM) -> None:
        """Produce one output. One that does not encode, or that the producer refuses as
        larger than `max_message_bytes`, fails its request with a dead letter: raised, it
        would crash the agent, whose supervisor restarts it past the event (lost)."""
        value = out.request if isinstance(out, CallLM) else out.quantum
        try:
            if (
                isinstance(out, CallLM)
                and (instance := await self._room_for(out.request)) is not None
            ):
                assert self.scheduler is not None
                await self.scheduler.assign(out.request, instance)
            else:
                await self.app.producer.send(
                    out.topic, out.key.encode(), value.encode(), None, None, None
                )
        except (BadInputError, ProducerSendError) as exc:
            if isinstance(exc, BadInputError):
                reason, text = exc.reason, str(exc)
            elif isinstance(exc.__cause__, MessageSizeTooLargeError):
                reason = "too_large"
                text = (
                    f"an output to {out.topic} exceeds {self.config.kafka.max_message_bytes} bytes"
                )
            else:
                raise
            await self.dead_letter(
                event, DeadLetterOut(reason, text, value.request_id, value.stage)
            )
            await self.send_failed(value.request_id, value.stage, f"{reason}: {text}")

    async def _room_for(self, request: LMRequest) -> int | None:
        """The LM instance this worker's scheduler places `request` on now, with no hop
        through `lm.requests` (None: no scheduler here, direct placement off, or every
        instance saturated: then the call waits at the scheduler agent, as admission says)."""
        if self.scheduler is None or not self.config.scheduler.direct:
            return None
        return await self.scheduler.place_now(request)

    async def dead_letter(self, event: EventT | None, out: DeadLetterOut) -> None:
        """Record `out` for `event` (None, ingest's replay: the requests topic at -1, -1)."""
        if event is None:
            topic, partition, offset, key, value = self.config.requests_topic, -1, -1, None, None
        else:
            msg = event.message
            topic, partition, offset = msg.topic, msg.partition, msg.offset
            key, value = as_bytes(msg.key), as_bytes(msg.value)
        log.warning(
            "dead letter from %s[%d]@%d: %s: %s", topic, partition, offset, out.reason, out.error
        )
        metrics.DEAD_LETTERS.labels(_REASONS(out.reason), topic).inc()
        letter = out.letter(
            topic,
            partition,
            offset,
            key,
            value,
            self.worker_id,
            self.config.kafka.max_message_bytes,
        )
        await self.topic(self.config.dlq_topic).send(key=letter.key, value=letter.encode())

    async def undecodable(
        self, event: EventT, exc: BadInputError, stage: str, *, node_key: bool = False
    ) -> None:
        """Dead-letter an event that does not decode; fail its request if the key names one
        (`node_key`: the key is a node key, request id plus ancestry; else the request id)."""
        request_id = readable_key(event.message.key, node_key=node_key)
        await self.dead_letter(event, DeadLetterOut(exc.reason, str(exc), request_id, stage))
        if request_id is not None:
            await self.send_failed(request_id, stage, f"{exc.reason}: {exc}")

    async def send_failed(self, request_id: str, stage: str, error: str) -> None:
        """A FAILED marker for `request_id`, straight to the sink (its request's result)."""
        marker = failed(request_id, stage, error, mode=Mode.parse(self.config.mode))
        try:
            await self.topic(self.config.sink_topic).send(
                key=request_id.encode(), value=marker.encode()
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
        await handle_each(
            stream,
            handle,
            lambda event, exc: self._stage_failed(stage, event, exc),
            self.app.conf.alto_lease,
        )

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
        request_id = readable_key(msg.key, node_key=True)
        if request_id is not None:
            await self.send_failed(request_id, stage, f"stage_error: {exc!r}")

    def _define_ingest(self) -> None:
        async def one(event: EventT) -> None:
            msg = event.message
            if not await self.handover.ours(msg.partition, msg.offset):
                return  # the previous generation's: already handled there
            async with self.handover.handling():
                await handle(event)

        async def handle(event: EventT) -> None:
            started = time.perf_counter()
            try:
                request = PipelineRequest.decode(event.value)
            except BadInputError as exc:
                metrics.meter(metrics.UNKNOWN, "ingest").inputs.inc()
                await self.undecodable(event, exc, REQUEST)
                return
            meter = metrics.meter(self.pipeline_label(request.pipeline), "ingest")
            meter.inputs.inc()
            await self.deliver(self.ingest.handle(request), event, meter)
            meter.seconds.observe(time.perf_counter() - started)

        async def ingest(stream: StreamT) -> None:
            await self._each(stream, "ingest", one)

        self.consumed.add(self.config.requests_topic)
        self.app.agent(self.topic(self.config.requests_topic), name="alto.ingest")(ingest)
        define_handover(self)

    def _define_stage(self, routing: Routing, stage: str) -> None:
        topology = routing.topology
        spec = topology.stages[stage]
        processor = StageProcessor(
            routing, stage, self.worker_id, max_spans=self.config.state.max_trace_spans
        )
        topic_name = topology.stage_topic(self.config.internal_prefix, stage)
        topic = self.topic(topic_name)
        name = f"{topology.pipeline}.{stage}"
        meter = metrics.meter(topology.pipeline, stage)
        self.consumed.add(topic_name)

        async def handle(event: EventT, store: Any) -> None:
            started = time.perf_counter()
            meter.inputs.inc()
            try:
                quantum = Quantum.decode(event.value)
            except BadInputError as exc:
                await self.undecodable(event, exc, stage, node_key=True)
                return
            if (legs := self.app.conf.alto_legs) is not None:  # the handler's start, wall clock
                started_ms = (time.time() - (time.perf_counter() - started)) * 1000
                legs.received(event.message, quantum.request_id, quantum.created_at_ms, started_ms)
            outs = processor.process(quantum, store, received_ms(event.message))
            async for out in outs:
                await self.deliver((out,), event, meter)
            meter.seconds.observe(time.perf_counter() - started)

        if spec.kind is StageKind.AGGREGATE:
            table = aggregate_table(self.app, name, self.config)
            self.tables[name] = table
            self.aggregates[name] = (table, processor, topic_name)

            async def aggregate(stream: StreamT) -> None:
                await self._each(
                    stream,
                    stage,
                    lambda event: handle(event, PartitionStore(table, event.message.partition)),
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

                lease = self.app.conf.alto_lease
                async for event in manual.events():
                    if not await lease.admit(manual, event):
                        continue
                    await slots.acquire()
                    task = asyncio.ensure_future(one(event))
                    running.add(task)
                    task.add_done_callback(running.discard)

            self.app.agent(topic, name=name)(concurrent)

    def _define_sink(self) -> None:
        results_topic = self.topic(self.config.results_topic)
        table = results_table(self.app, results_topic, self.config)
        self.tables["results"] = table
        emitted = self.results = ResultsStore(table)
        self.consumed.add(self.config.sink_topic)

        async def one(event: EventT) -> None:
            started = time.perf_counter()
            try:
                quantum = Quantum.decode(event.value)
            except BadInputError as exc:  # its FAILED marker comes back here
                await self.undecodable(event, exc, "sink")
                return
            meter = metrics.meter(self.pipeline_label(quantum.pipeline), "sink")
            meter.inputs.inc()
            if (rejected := self.sink.reject(quantum)) is not None:
                await self.dead_letter(event, rejected)
            result = self.sink.handle(quantum, emitted)  # type: ignore[arg-type]
            if result is not None:
                log.debug(
                    "result %s %s in %d ms", result.request_id, result.status, result.latency_ms
                )
                labels = (
                    self.pipeline_label(result.pipeline),
                    result.mode.value,
                    result.status.value,
                )
                metrics.RESULTS.labels(*labels).inc()
                metrics.REQUEST_SECONDS.labels(*labels).observe(result.latency_ms / 1000)
            meter.seconds.observe(time.perf_counter() - started)

        async def sink(stream: StreamT) -> None:
            await self._each(stream, "sink", one)

        self.app.agent(self.topic(self.config.sink_topic), name="alto.sink")(sink)

    def pipeline_label(self, name: str) -> str:
        """`name` if it is one of ours, else `unknown` (a metric label from a message)."""
        return name if name in self.topologies else metrics.UNKNOWN


_REASONS = metrics.BoundedLabel(64)


def create_app(config: AltoConfig, topologies: Iterable[Topology]) -> AltoApp:
    return AltoApp(config, topologies)
