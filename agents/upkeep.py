"""A worker's upkeep beside its agents: the state sweep (retention, deadlines), warm-up,
admission control's bookkeeping, the metrics endpoint and consumer lag, the status file."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from alto import metrics
from alto.agents.faust_settings import consumer_lags
from alto.files import write_json
from alto.kafka import follow, watch_fetch_wait_ms
from alto.schemas.messages import PipelineRequest
from alto.streams.admission import Admission
from alto.streams.processor import Send, now_ms

if TYPE_CHECKING:
    from alto.agents.runtime import AltoApp

log = logging.getLogger(__name__)

# How often the consumer-lag gauge is refreshed (it reads cached offsets, no broker request).
LAG_INTERVAL_S = 5.0


def define_sweep(rt: AltoApp) -> None:
    """Bound the state this worker holds: every `state_sweep_s`, expire aggregators'
    done markers and fail requests past their deadline (`StageProcessor.expire`), on the
    partitions this worker owns, and forget old results. Deletions go to the changelog as
    tombstones, all of a sweep together (few produce batches)."""
    retention_ms = int(rt.config.state.retention_s * 1000)
    deadline_ms = int(rt.config.state.deadline_s * 1000)
    results_ms = int(rt.config.state.results_retention_s * 1000)

    @rt.app.timer(interval=rt.config.state.sweep_s)
    async def sweep_state() -> None:
        now = now_ms()
        active = {(tp.topic, tp.partition) for tp in rt.app.assignor.assigned_actives()}
        for name, (table, processor, topic) in rt.aggregates.items():
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
                        await rt.app.producer.send(
                            out.topic, out.key.encode(), out.quantum.encode(), None, None, None
                        )
            if expired:
                log.debug("state sweep of %s: %d keys expired", name, expired)
        if rt.results is not None:
            rt.results.forget_older_than(now, results_ms)


def define_warmup(rt: AltoApp) -> None:
    warmups = [(n, w) for n in rt.served if (w := rt.topologies[n].warmup) is not None]
    if not rt.config.warmup or not warmups:
        return

    @rt.app.task
    async def warm_up() -> None:
        for name, warmup in warmups:
            started = time.monotonic()
            try:
                await asyncio.to_thread(warmup)
            except Exception:  # a stage that needs it fails its requests with the reason
                log.exception("warm-up of pipeline %s failed", name)
            else:
                log.info("pipeline %s warmed up in %.1f s", name, time.monotonic() - started)


def define_admission(rt: AltoApp, admission: Admission[PipelineRequest]) -> None:
    """Feed admission control: follow the results topic (keys only, from its end) to see
    admitted requests finish; each second, track this worker's share of the requests
    topic and replay the requests overdue for a result."""
    requests_topic = rt.config.requests_topic

    @rt.app.task
    async def follow_results() -> None:
        wait_ms = watch_fetch_wait_ms(rt.config)
        records = follow(rt.config, rt.config.results_topic, tail=0, fetch_wait_ms=wait_ms)
        async with contextlib.aclosing(records):
            async for record in records:
                if record.key:
                    admission.finished(record.key.decode("utf-8", "replace"), now_ms())

    @rt.app.timer(interval=1.0)
    async def admission_upkeep() -> None:
        held = sum(1 for tp in rt.app.assignor.assigned_actives() if tp.topic == requests_topic)
        admission.share = held / rt.config.kafka.partitions if held else 1.0
        metrics.ADMISSION_IN_FLIGHT.set(admission.in_flight)
        for request in admission.overdue(now_ms()):
            log.warning(
                "request %s has no result %.0f s after admission: replaying it from its root",
                request.request_id,
                rt.config.admission.retry_s,
            )
            metrics.REQUESTS_REPLAYED.inc()
            # Through `deliver`, as the first time: stages chained into ingest run again.
            meter = metrics.meter(rt.pipeline_label(request.pipeline), "ingest")
            await rt.deliver(rt.ingest.handle(request), None, meter)


def define_metrics(rt: AltoApp) -> None:
    """Serve `/metrics` once the worker starts (not when the app is only built, as
    `alto topics` does), and refresh the consumer-lag gauge every `LAG_INTERVAL_S`."""

    @rt.app.task
    async def serve_metrics() -> None:
        server = metrics.serve(rt.config, f"Faust worker {rt.worker_id}")
        rt.metrics_port = server.port if server else None

    held: set[tuple[str, int]] = set()

    @rt.app.timer(interval=LAG_INTERVAL_S)
    async def consumer_lag() -> None:
        lags = consumer_lags(rt.app, rt.consumed)
        metrics.set_consumer_lag(lags, held)
        held.clear()
        held.update(lags)
        for name, table in rt.tables.items():
            metrics.TABLE_KEYS.labels(name).set(len(table.data))


def define_status(rt: AltoApp, path: Path) -> None:
    """Write this worker's partition assignment to `path` (a readiness probe)."""

    @rt.app.timer(interval=0.5)
    async def write_status() -> None:
        assigned = sorted([tp.topic, tp.partition] for tp in rt.app.assignor.assigned_actives())
        status = {
            "worker": rt.worker_id,
            "pid": os.getpid(),
            "assigned": assigned,
            "rebalancing": bool(rt.app.rebalancing),
            "recovering": bool(rt.app.tables.recovery.in_recovery),  # type: ignore[attr-defined]
            "metrics_port": rt.metrics_port,
            "ingest": rt.handover.state,
            "in_flight": rt.admission.in_flight if rt.admission is not None else None,
            "at": time.time(),
        }
        write_json(path, status)
