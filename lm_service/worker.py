"""`alto lm-worker --instance N`: one engine serving the LM calls assigned to instance N.

Instance N's queue is partition N of `alto.lm.work` (the scheduler writes there). The
worker reads it by manual assignment and commits, as consumer group `<app>-lm-N`, only
offsets whose calls are finished: a worker killed mid-generation serves its unfinished
calls again when it (or a replacement with the same instance number) starts, and their
re-emitted quanta are deduplicated downstream by ancestry. Many calls are in flight at
once (the engine batches them); each quantum is produced the moment it is complete.
Load reports go to `alto.lm.status` every interval and double as heartbeats.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from alto import loops, metrics
from alto.config import AltoConfig
from alto.errors import BadInputError
from alto.fetch_gaps import GapGuard
from alto.files import write_json
from alto.kafka import FetchPacer, aiokafka_settings
from alto.legs import LegTrace
from alto.lm_service.engine import Engine
from alto.lm_service.serving import serve_call
from alto.schemas.messages import (
    LMCompletion,
    LMRequest,
    LMStatus,
)
from alto.streams.outputs import failed, failed_call
from alto.streams.pipeline import Topology
from alto.streams.processor import DeadLetterOut, Routing, Send, now_ms

if TYPE_CHECKING:
    from alto.lm_service.generations import GenerationalLMWorker

log = logging.getLogger(__name__)

# Prompt names come from LM calls on the wire, and reasons may carry an engine's tag:
# bounded as metric labels.
_PROMPTS = metrics.BoundedLabel(64)
_REASONS = metrics.BoundedLabel(64)


class _Offsets:
    """Which offsets may be committed: everything below the oldest unfinished one."""

    def __init__(self) -> None:
        self.in_flight: set[int] = set()
        self.next_offset: int | None = None

    def started(self, offset: int) -> None:
        self.in_flight.add(offset)
        self.next_offset = offset + 1

    def finished(self, offset: int) -> None:
        self.in_flight.discard(offset)

    def committable(self) -> int | None:
        if self.in_flight:
            return min(self.in_flight)
        return self.next_offset


class LMWorker:
    def __init__(
        self,
        config: AltoConfig,
        instance: int,
        engine: Engine,
        topologies: Iterable[Topology],
        *,
        owns_engine: bool = True,
    ) -> None:
        if not 0 <= instance < config.lm.max_instances:
            raise ValueError(f"instance must be in [0, {config.lm.max_instances})")
        self.config = config
        self.instance = instance
        self.engine = engine
        self.owns_engine = owns_engine  # False: shared by the generations of one instance
        self.worker_id = f"lm-{instance}@{config.worker_id}"
        self.routings = {
            t.pipeline: Routing(
                t, config.internal_prefix, config.sink_topic, config.lm_requests_topic
            )
            for t in topologies
        }
        self.tp = TopicPartition(config.lm_work_topic, instance)
        self.offsets = _Offsets()
        self._committed: int | None = None
        self.in_flight: dict[str, int] = {}
        self.completed: list[LMCompletion] = []  # since the last status report
        self._slots = asyncio.Semaphore(config.lm.max_inflight)
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._producer: AIOKafkaProducer | None = None
        self.metrics_port: int | None = None  # written to the status file (set by the caller)
        self._label = str(instance)
        self._in_flight_gauge = metrics.LM_IN_FLIGHT.labels(self._label)
        self._legs = LegTrace.for_config(config)  # each call's hop, cut into parts (or None)

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        if self.owns_engine:
            await self.engine.start()
        self._producer = AIOKafkaProducer(
            **aiokafka_settings(self.config), linger_ms=self.config.lm.linger_ms
        )
        consumer = AIOKafkaConsumer(
            **aiokafka_settings(self.config),
            group_id=f"{self.config.group_id}-lm-{self.instance}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.config.kafka.fetch_max_wait_ms,
        )
        await self._producer.start()
        if self._legs is not None:
            self._legs.watch(consumer)
        await consumer.start()
        consumer.assign([self.tp])
        gaps = GapGuard()  # a fetch may skip a call the broker does not show yet
        gaps.expect(self.tp, await consumer.position(self.tp))
        pacer = FetchPacer.for_config(self.config, consumer)
        background = [
            asyncio.ensure_future(self._report_status()),
            asyncio.ensure_future(self._commit_loop(consumer)),
        ]
        log.info("LM worker %s (%s) serving %s", self.worker_id, self.engine.name, self.tp)
        try:
            while not self._stop.is_set():
                batch, skipped = gaps.screen(await consumer.getmany(self.tp, timeout_ms=200))
                if self._legs is not None:
                    self._legs.handed(batch)
                for tp, offset in skipped.items():  # read again from the skipped call
                    metrics.FETCH_GAPS.inc()
                    consumer.seek(tp, offset)
                pacer.saw(len(batch.get(self.tp, ())))
                for record in batch.get(self.tp, []):
                    await self._slots.acquire()
                    self.offsets.started(record.offset)
                    task = asyncio.ensure_future(self._serve(record))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        finally:
            for task in [*background, *self._tasks]:
                task.cancel()
            await asyncio.gather(*background, *self._tasks, return_exceptions=True)
            await self._commit(consumer)
            await consumer.stop()
            await self._producer.stop()
            if self._legs is not None:
                self._legs.close()
            if self.owns_engine:
                await self.engine.stop()

    async def _serve(self, record: ConsumerRecord[bytes, bytes]) -> None:
        cancelled = False
        started = time.perf_counter()
        outcome, prompt = "OK", metrics.UNKNOWN
        self._in_flight_gauge.inc()
        try:
            try:
                request = LMRequest.decode(record.value)
                if self._legs is not None:
                    at_ms = time.time() * 1000
                    self._legs.served(record, request.request_id, request.enqueued_at_ms, at_ms)
            except BadInputError as exc:
                outcome = "BAD_INPUT"
                rid = _rid(record.key)
                await self._dead_letter(record, DeadLetterOut(exc.reason, str(exc), rid, None))
                if rid is not None:
                    marker = failed(rid, "lm", f"{exc.reason}: {exc}")
                    await self._send(self.config.sink_topic, rid.encode(), marker.encode())
                return
            self.in_flight[request.lm_request_id] = record.offset
            log.debug("call %s at offset %d started", request.lm_request_id, record.offset)
            prompt = _PROMPTS(request.prompt_name)
            ttft = metrics.LM_TTFT_SECONDS.labels(self._label, prompt)
            try:
                async for out in serve_call(
                    request,
                    self.engine,
                    self.routings,
                    self.worker_id,
                    lambda: ttft.observe(time.perf_counter() - started),
                ):
                    if isinstance(out, Send):
                        q = out.quantum
                        self._outputs(request.pipeline, q.stage)[q.kind.value].inc()
                        await self._send(out.topic, out.key.encode(), q.encode())
                    else:
                        outcome = "FAILED"
                        await self._dead_letter(record, out)
                self._record_usage(request, prompt)
            except Exception as exc:  # an engine crash fails this call, not the worker
                outcome = "FAILED"
                log.exception("LM call %s failed", request.lm_request_id)
                await self._fail(record, request, f"engine failure: {type(exc).__name__}: {exc}")
            finally:
                self.in_flight.pop(request.lm_request_id, None)
        except asyncio.CancelledError:
            # Stopped mid-call: the offset stays uncommitted, so the call is served again.
            cancelled = True
            outcome = "CANCELLED"
            raise
        finally:
            if not cancelled:
                self.offsets.finished(record.offset)
            self._slots.release()
            self._in_flight_gauge.dec()
            metrics.LM_CALLS.labels(self._label, prompt, outcome).inc()
            if outcome == "OK":
                elapsed = time.perf_counter() - started
                metrics.LM_CALL_SECONDS.labels(self._label, prompt).observe(elapsed)

    def _outputs(self, pipeline: str, stage: str) -> metrics.StageOut:
        """The output counters of a call's stage (names checked: they come from the call)."""
        routing = self.routings.get(pipeline)
        if routing is None or stage not in routing.topology.stages:
            return metrics.stage_out(metrics.UNKNOWN, metrics.UNKNOWN)
        return metrics.stage_out(pipeline, stage)

    def _record_usage(self, request: LMRequest, prompt: str) -> None:
        usage = self.engine.take_usage(request.lm_request_id)
        if usage is not None:
            for kind, tokens in (
                ("prompt", usage.prompt_tokens),
                ("cached", usage.cached_tokens),
                ("output", usage.output_tokens),
            ):
                metrics.LM_TOKENS.labels(self._label, prompt, kind).inc(tokens)
            self.completed.append(
                LMCompletion(
                    request.lm_request_id,
                    request.prompt_name,
                    usage.prompt_tokens,
                    usage.cached_tokens,
                    usage.output_tokens,
                    usage.queue_s,
                    usage.service_s,
                    now_ms(),
                )
            )

    async def _send(self, topic: str, key: bytes | None, value: bytes) -> None:
        assert self._producer is not None
        await self._producer.send(topic, value, key=key)

    async def _fail(
        self, record: ConsumerRecord[bytes, bytes], request: LMRequest, text: str
    ) -> None:
        await self._dead_letter(
            record, DeadLetterOut("engine_error", text, request.request_id, request.stage)
        )
        marker = failed_call(request, f"engine_error: {text}")
        await self._send(self.config.sink_topic, request.request_id.encode(), marker.encode())

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], out: DeadLetterOut) -> None:
        log.warning("dead letter from %s@%d: %s: %s", self.tp, record.offset, out.reason, out.error)
        metrics.DEAD_LETTERS.labels(_REASONS(out.reason), record.topic).inc()
        letter = out.letter(
            record.topic, record.partition, record.offset, record.key, record.value, self.worker_id
        )
        await self._send(self.config.dlq_topic, letter.key, letter.encode())

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        # Which offsets are finished is read BEFORE the flush: a call that finishes during
        # the flush may still have its last quanta in the producer's buffer, and committing
        # past it then would lose them if the worker died before they were delivered.
        offset = self.offsets.committable()
        assert self._producer is not None
        await self._producer.flush()  # outputs before offsets: at-least-once
        if offset is not None:
            try:
                await consumer.commit({self.tp: offset})
                if offset != self._committed:
                    log.debug(
                        "committed %s@%d (in flight: %s)",
                        self.tp,
                        offset,
                        sorted(self.offsets.in_flight),
                    )
                    self._committed = offset
            except Exception as exc:  # a failed commit only means more replays
                log.warning("commit of %s@%d failed: %r", self.tp, offset, exc)

    async def _commit_loop(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            await asyncio.sleep(0.5)
            await self._commit(consumer)

    def status(self, tokens_per_s: float) -> LMStatus:
        st = self.engine.stats()
        return LMStatus(
            instance=self.instance,
            worker=self.worker_id,
            engine=self.engine.name,
            simulated=self.engine.simulated,
            running=st.running,
            waiting=st.waiting,
            queued_prefill_tokens=st.queued_prefill_tokens,
            queued_decode_tokens=st.queued_decode_tokens,
            kv_cache_usage=st.kv_cache_usage,
            prefix_cache_hit_rate=st.prefix_cache_hit_rate,
            tokens_per_s=tokens_per_s,
            at_ms=now_ms(),
            in_flight=tuple(sorted(self.in_flight)),
            completed=tuple(self.completed),
        )

    async def _report_status(self) -> None:
        last_tokens, last_t = self.engine.stats().generated_tokens, time.monotonic()
        last_generated = 0  # so the counter also holds what the engine made before this loop
        while True:
            now, tokens = time.monotonic(), self.engine.stats().generated_tokens
            rate = (tokens - last_tokens) / (now - last_t) if now > last_t else 0.0
            last_tokens, last_t = tokens, now
            status = self.status(rate)
            self.completed.clear()
            self._observe(status, tokens - last_generated)
            last_generated = tokens
            await self._send(
                self.config.lm_status_topic, str(self.instance).encode(), status.encode()
            )
            await asyncio.sleep(self.config.lm.status_interval_s)

    def _observe(self, status: LMStatus, generated: int) -> None:
        """Engine load gauges from a status report, and this process's status file."""
        engine = self.engine.name
        requests = metrics.LM_ENGINE_REQUESTS
        requests.labels(self._label, engine, "running").set(status.running)
        requests.labels(self._label, engine, "waiting").set(status.waiting)
        metrics.LM_QUEUED_TOKENS.labels(self._label, "prefill").set(status.queued_prefill_tokens)
        metrics.LM_QUEUED_TOKENS.labels(self._label, "decode").set(status.queued_decode_tokens)
        metrics.LM_KV_CACHE_USAGE.labels(self._label).set(status.kv_cache_usage)
        metrics.LM_PREFIX_HIT_RATE.labels(self._label).set(status.prefix_cache_hit_rate)
        if generated > 0:
            metrics.LM_GENERATED_TOKENS.labels(self._label, engine).inc(generated)
        if self.config.status_file is not None:
            write_status(self.config.status_file, self)


def write_status(path: Path, worker: LMWorker | GenerationalLMWorker, **extra: Any) -> None:
    """An LM worker's status file: who it is, its engine, its metrics port (and `extra`)."""
    fields = {
        "worker": worker.worker_id,
        "pid": os.getpid(),
        "instance": worker.instance,
        "engine": worker.engine.name,
        "metrics_port": worker.metrics_port,
        **extra,
        "at": time.time(),
    }
    write_json(path, fields)


def _rid(key: bytes | None) -> str | None:
    """The request id an LM call's key is (the whole key: ids may contain '|')."""
    if not key:
        return None
    try:
        return key.decode()
    except UnicodeDecodeError:
        return None


def make_engine(config: AltoConfig, name: str) -> Engine:
    if name == "sim":
        from alto.lm_service.sim import SimEngine, sim_params

        return SimEngine(sim_params(config))
    from alto.lm_service.vllm_engine import VLLMEngine

    return VLLMEngine.from_config(config)


def run_lm_worker(config: AltoConfig, instance: int, engine_name: str) -> int:
    from alto.kafka import ensure_topics
    from alto.lm_service.generations import GenerationalLMWorker
    from alto.streams.registry import all_topologies

    if config.generations.live_file is None:  # generations: the operator creates their topics
        ensure_topics(
            config,
            {
                config.lm_work_topic: config.lm.max_instances,
                config.lm_status_topic: config.kafka.partitions,
                config.sink_topic: config.kafka.partitions,
                config.dlq_topic: config.kafka.partitions,
            },
        )
    engine = make_engine(config, engine_name)
    worker: LMWorker | GenerationalLMWorker
    if config.generations.live_file is not None:
        worker = GenerationalLMWorker(config, instance, engine, all_topologies(config))
    else:
        worker = LMWorker(config, instance, engine, all_topologies(config))
    server = metrics.serve(config, f"LM worker {worker.worker_id}")
    worker.metrics_port = server.port if server else None

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, worker.request_stop)
        await worker.run()

    try:
        loops.run(main(), config.event_loop)
    finally:
        if server is not None:
            server.close()
    return 0
