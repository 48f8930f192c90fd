"""Prometheus metrics of every ALTO process: the metric families, defined once, and the HTTP
endpoint that exposes them (`serve`).

Faust workers (stages, ingest, sink, scheduler) and LM workers update the families below;
each process serves its own `/metrics` on `config.metrics.port` (0: a free port the OS
picks, negative: no endpoint). The bound port is logged once and written to the process's
status file (`metrics_port`), which is how `alto up` and the tests find it.

Hot-path cost: counters and histograms only, with label children bound once per stage or
call (`StageMeter`, `meter`), so an event costs a few lock-guarded additions, no dict of
labels and no string formatting. Label values are bounded: names from our own topologies,
enum values, LM instance numbers; values read from messages (prompt names, reasons) go
through `BoundedLabel`, which folds anything past its first `limit` distinct values into
`other`. Request ids are never labels.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

from alto.config import AltoConfig

log = logging.getLogger(__name__)

# No `*_created` series beside every counter and histogram: they double the output and
# no query of ours needs them.
disable_created_metrics()

OTHER = "other"
UNKNOWN = "unknown"

# What a stage produced, by kind: the quantum kinds, an LM call, a dead letter.
OUT_KINDS = ("DATA", "END", "FAILED", "LM_CALL", "DEAD_LETTER")

# Seconds. A stage handles one event in well under a millisecond (a relay) up to seconds
# (MiniLM encoding on 2 cores); requests and LM calls take up to minutes under load.
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
LM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)

# -- stages (Faust workers; LM stages' quanta from the LM workers) ----------------------
STAGE_IN = Counter(
    "alto_stage_events",
    "Events a stage agent consumed (ingest: requests; sink: final quanta and failures)",
    ["pipeline", "stage"],
)
STAGE_OUT = Counter(
    "alto_stage_out",
    "Messages a stage produced, by kind (DATA, END, FAILED, LM_CALL, DEAD_LETTER); an LM "
    "stage's LM_CALLs come from the Faust worker, its quanta from the LM worker",
    ["pipeline", "stage", "kind"],
)
STAGE_SECONDS = Histogram(
    "alto_stage_seconds",
    "Time a stage agent spent on one event, decode to the last output handed to the producer",
    ["pipeline", "stage"],
    buckets=STAGE_BUCKETS,
)
RESULTS = Counter("alto_results", "Results emitted by the sink", ["pipeline", "mode", "status"])
REQUEST_SECONDS = Histogram(
    "alto_request_latency_seconds",
    "End-to-end request latency at the sink: submitted_at_ms to the result",
    ["pipeline", "mode", "status"],
    buckets=REQUEST_BUCKETS,
)
DEAD_LETTERS = Counter(
    "alto_dead_letters", "Inputs sent to the dead-letter topic", ["reason", "topic"]
)
CONSUMER_LAG = Gauge(
    "alto_consumer_lag",
    "Messages behind the end of each partition this Faust worker consumes (highwater minus "
    "committed offset; refreshed every few seconds)",
    ["topic", "partition"],
)
TABLE_KEYS = Gauge(
    "alto_table_keys",
    "Keys held in each table of this Faust worker, active and standby partitions (refreshed "
    "every few seconds): aggregation state, done markers, results",
    ["table"],
)
DEADLINES = Counter(
    "alto_request_deadlines",
    "Requests failed because a node stayed open past ALTO_STATE__DEADLINE_S, by the stage "
    "that held it",
    ["pipeline", "stage"],
)
REQUESTS_REPLAYED = Counter(
    "alto_requests_replayed",
    "Requests replayed from their root after ALTO_ADMISSION__RETRY_S with no result",
)
PRODUCER_FLUSH_WAITS = Counter(
    "alto_producer_flush_waits",
    "Producer flushes (before an offset commit) that found the buffer still moving after "
    "0.1 s, where Faust's own flush returns (agents/transport.py)",
)
SKIPPED_ACKS_REFUSED = Counter(
    "alto_skipped_acks_refused",
    "Messages a Faust stream skipped unprocessed during a rebalance and then acked; not "
    "counted as processed (agents/transport.py)",
)
LEASE_HELD_EVENTS = Counter(
    "alto_lease_held_events",
    "Events held because no heartbeat had confirmed this worker's group membership within "
    "the session timeout (agents/lease.py)",
)
LEASE_DROPPED_EVENTS = Counter(
    "alto_lease_dropped_events",
    "Held events dropped unprocessed because a rebalance began: the partition's next owner "
    "reads them again (agents/lease.py)",
)
FETCH_GAPS = Counter(
    "alto_fetch_gaps",
    "Fetches that skipped a record not yet visible on the broker, read again from it at "
    "once (alto/fetch_gaps.py)",
)
PARTITION_REREADS = Counter(
    "alto_partition_rereads",
    "Partitions read again from the committed offset because that record stayed "
    "unprocessed while later ones were processed (agents/transport.py)",
)
CHANGELOG_COALESCED = Counter(
    "alto_changelog_writes_coalesced",
    "Table updates that replaced a write still pending for the same key, so that only the "
    "latest value went to the changelog (agents/stores.py)",
    ["table"],
)
CHANGELOG_WRITES = Counter(
    "alto_changelog_writes",
    "Records an aggregator's table wrote to its changelog (agents/stores.py)",
    ["table"],
)
ADMISSION_IN_FLIGHT = Gauge(
    "alto_admission_in_flight",
    "Requests this ingest worker admitted that have no result yet (streams/admission.py)",
)

# -- LM workers ---------------------------------------------------------------------------
LM_IN_FLIGHT = Gauge("alto_lm_calls_in_flight", "LM calls this worker is serving", ["instance"])
LM_CALLS = Counter(
    "alto_lm_calls",
    "LM calls finished, by outcome (OK, FAILED, BAD_INPUT, CANCELLED)",
    ["instance", "prompt", "outcome"],
)
LM_CALL_SECONDS = Histogram(
    "alto_lm_call_seconds",
    "LM call latency in the LM worker: read from the work topic to the last quantum produced",
    ["instance", "prompt"],
    buckets=LM_BUCKETS,
)
LM_TTFT_SECONDS = Histogram(
    "alto_lm_ttft_seconds",
    "Time to first token: LM call read from the work topic to the engine's first text delta",
    ["instance", "prompt"],
    buckets=LM_BUCKETS,
)
LM_TOKENS = Counter(
    "alto_lm_tokens",
    "Tokens of finished LM calls as the engine counted them (kind: prompt, cached, output)",
    ["instance", "prompt", "kind"],
)
LM_GENERATED_TOKENS = Counter(
    "alto_lm_generated_tokens",
    "Tokens the engine generated, unfinished calls included (sampled every status interval)",
    ["instance", "engine"],
)
LM_ENGINE_REQUESTS = Gauge(
    "alto_lm_engine_requests",
    "Sequences in the engine by state (running, waiting)",
    ["instance", "engine", "state"],
)
LM_QUEUED_TOKENS = Gauge(
    "alto_lm_queued_tokens", "Tokens of work queued in the engine", ["instance", "phase"]
)
LM_KV_CACHE_USAGE = Gauge("alto_lm_kv_cache_usage", "KV cache in use (0..1)", ["instance"])
LM_PREFIX_HIT_RATE = Gauge(
    "alto_lm_prefix_cache_hit_rate", "Prompt tokens served from the prefix cache", ["instance"]
)

# -- scheduler (in Faust workers with the scheduler role) -------------------------------
SCHEDULER_DECISIONS = Counter(
    "alto_scheduler_decisions",
    "LM calls placed on an instance (why: policy = the policy's choice, spill = moved off a "
    "saturated choice, same_engine = a replayed call kept on its first engine)",
    ["policy", "prompt", "instance", "why"],
)
SCHEDULER_WAITING = Gauge(
    "alto_scheduler_waiting_calls", "LM calls waiting at the scheduler for a free instance"
)
SCHEDULER_OVERLOADED = Counter(
    "alto_scheduler_overloaded",
    "LM calls refused because every instance was saturated and the queue full (OVERLOADED)",
    ["policy", "prompt"],
)
SCHEDULER_DRAINS = Counter(
    "alto_scheduler_drains", "Drains of a removed LM instance's unfinished calls"
)
SCHEDULER_REASSIGNED = Counter("alto_scheduler_reassigned_calls", "LM calls placed again by drains")
SCHEDULER_REMOVED = Counter(
    "alto_scheduler_instances_removed", "LM instances removed after their reports stopped"
)
SCHEDULER_LIVE = Gauge("alto_scheduler_live_instances", "LM instances reporting, as last checked")


class BoundedLabel:
    """Label values read from messages, at most `limit` distinct ones; later new values read
    as `other` (a producer writing junk must not grow the registry without bound)."""

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        if not value:
            return UNKNOWN
        if value in self._seen:
            return value
        if len(self._seen) >= self.limit:
            return OTHER
        self._seen.add(value)
        return value


class StageOut(dict[str, Any]):
    """One stage's `alto_stage_out_total` children by kind, each bound on first use (a
    series appears once the stage has produced that kind)."""

    def __init__(self, pipeline: str, stage: str) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.stage = stage

    def __missing__(self, kind: str) -> Any:
        if kind not in OUT_KINDS:
            raise KeyError(kind)
        child = self[kind] = STAGE_OUT.labels(self.pipeline, self.stage, kind)
        return child


class StageMeter:
    """One stage agent's metric children, bound once: `inputs`, `seconds`, `out[kind]`."""

    __slots__ = ("inputs", "out", "seconds")

    def __init__(self, pipeline: str, stage: str) -> None:
        self.inputs = STAGE_IN.labels(pipeline, stage)
        self.seconds = STAGE_SECONDS.labels(pipeline, stage)
        self.out = stage_out(pipeline, stage)


_meters: dict[tuple[str, str], StageMeter] = {}
_outs: dict[tuple[str, str], StageOut] = {}
_lock = threading.Lock()


def meter(pipeline: str, stage: str) -> StageMeter:
    """The (cached) meter of the agent of `stage` of `pipeline`; bounded names only."""
    found = _meters.get((pipeline, stage))
    if found is None:
        made = StageMeter(pipeline, stage)
        with _lock:
            found = _meters.setdefault((pipeline, stage), made)
    return found


def stage_out(pipeline: str, stage: str) -> StageOut:
    """The (cached) output counters of `stage` of `pipeline` (an LM worker produces an LM
    stage's quanta without running its agent); bounded names only."""
    found = _outs.get((pipeline, stage))
    if found is None:
        made = StageOut(pipeline, stage)
        with _lock:
            found = _outs.setdefault((pipeline, stage), made)
    return found


def set_consumer_lag(lags: dict[tuple[str, int], int], previous: Iterable[tuple[str, int]]) -> None:
    """Publish `lags` ((topic, partition) -> messages) and drop partitions no longer held."""
    for topic, partition in set(previous) - lags.keys():
        try:
            CONSUMER_LAG.remove(topic, str(partition))
        except KeyError:
            pass
    for (topic, partition), lag in lags.items():
        CONSUMER_LAG.labels(topic, str(partition)).set(lag)


@dataclass
class MetricsServer:
    """A running `/metrics` endpoint; `port` is the port it is bound to."""

    host: str
    port: int
    _server: Any
    _thread: threading.Thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve(config: AltoConfig, what: str = "process") -> MetricsServer | None:
    """Start the `/metrics` endpoint of this process on `config.metrics.host` and
    `config.metrics.port` (0: a free port; negative: none, returns None). Logs the bound port
    once. A port that cannot be bound is logged as an error and returns None: a worker
    without metrics still serves."""
    if config.metrics.port < 0:
        log.info("%s: metrics endpoint off (ALTO_METRICS__PORT=%d)", what, config.metrics.port)
        return None
    try:
        server, thread = start_http_server(config.metrics.port, addr=config.metrics.host)
    except OSError as exc:
        log.error(
            "%s: cannot serve metrics on %s:%d (%s); running without a metrics endpoint",
            what,
            config.metrics.host,
            config.metrics.port,
            exc.strerror or exc,
        )
        return None
    thread.name = "alto-metrics"
    port = int(server.server_port)
    log.info("%s: metrics on http://%s:%d/metrics", what, config.metrics.host, port)
    return MetricsServer(config.metrics.host, port, server, thread)
