"""How our Faust app is configured: its settings from ours, its changelog topics, and the
consumer lag it reports."""

from __future__ import annotations

import re
import ssl
from typing import Any

import faust

from alto.config import AltoConfig
from alto.streams.pipeline import StageKind, Topology


def changelog_topic(config: AltoConfig, table_name: str) -> str:
    """The changelog topic Faust gives a table of ours (`<app id>-<table>-changelog`)."""
    return f"{config.group_id}-{table_name}-changelog"


def state_changelogs(config: AltoConfig, topology: Topology) -> list[str]:
    """The changelog topics of a pipeline's aggregating stages (their tables are named
    `<pipeline>.<stage>`)."""
    return [
        changelog_topic(config, f"{topology.pipeline}.{name}")
        for name, stage in topology.stages.items()
        if stage.kind is StageKind.AGGREGATE
    ]


# Dead-letter reasons are our own tags, but a bound keeps a future free-text one harmless.
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


def defines_every_table(config: AltoConfig) -> bool:
    """Whether this worker holds every table of the app (all pipelines' stages, the sink).

    Standby replicas are only safe from such workers. Faust's group leader filters the standby
    partitions it hands out by the changelogs *it* knows, while each member checks what it got
    against the changelogs *it* knows: a leader without the tables (say, a scheduler-only
    worker) sends assignments that a stage worker rejects (an AssertionError in Faust's
    assignor, then no partitions at all). A worker with fewer tables asks for no standbys;
    since the leader's setting decides, a group with such a leader runs without them.
    """
    return {"stages", "sink"} <= set(config.roles) and not config.pipelines


def standby_replicas(config: AltoConfig) -> int:
    """The configured number where it is safe (see `_defines_every_table`), else 0; one by
    default."""
    if not defines_every_table(config):
        return 0
    return 1 if config.kafka.standby_replicas is None else config.kafka.standby_replicas


def faust_settings(config: AltoConfig) -> dict[str, Any]:
    brokers = [f"kafka://{server.strip()}" for server in config.kafka.bootstrap_servers.split(",")]
    worker_dir = re.sub(r"[^\w.-]", "_", config.worker_id)
    settings: dict[str, Any] = {
        "broker": brokers,
        "store": "memory://",
        "topic_partitions": config.kafka.partitions,
        "topic_replication_factor": config.kafka.replication_factor,
        "topic_disable_leader": True,
        "broker_session_timeout": config.kafka.session_timeout_s,
        "broker_heartbeat_interval": config.kafka.heartbeat_interval_s,
        "broker_commit_interval": 1.0,
        "consumer_auto_offset_reset": "earliest",
        "web_enabled": False,
        "datadir": str(config.data_dir / worker_dir),
        "stream_wait_empty": False,
        "producer_max_request_size": config.kafka.max_message_bytes,
        "producer_linger": config.kafka.producer_linger_ms / 1000,
        "worker_redirect_stdouts": False,
        "table_standby_replicas": standby_replicas(config),
    }
    sec = config.kafka.security
    if sec.protocol.startswith("SASL"):
        settings["broker_credentials"] = faust.SASLCredentials(
            username=sec.sasl_username,
            password=sec.sasl_password.get_secret_value() if sec.sasl_password else None,
            mechanism=sec.sasl_mechanism or "PLAIN",
            ssl_context=ssl_context(sec.ssl_cafile) if sec.protocol == "SASL_SSL" else None,
        )
    elif sec.protocol == "SSL":
        settings["broker_credentials"] = faust.SSLCredentials(ssl_context(sec.ssl_cafile))
    settings.update(config.extra)
    return settings


def ssl_context(cafile: str | None) -> Any:

    return ssl.create_default_context(cafile=cafile)
