"""Generations of the internal topics: how a deployment frees what its broker stored.

Tansu's memory engine (the embedded broker) keeps every batch it was ever sent, and each
fetch lists all the batches of its partition (README, "Steady state"); it has no retention
and DeleteRecords crashes it. DeleteTopics works. So the internal topics (stage topics,
the sink, the LM topics, the tables' changelogs) come in generations: generation N's are
named `<prefix>gN.<name>` and read by consumer groups `<app id>-gN` (`AltoConfig.generation`).
A request lives wholly inside the generation that ingested it, so a generation holds no
state the next one needs: once it has no request in flight, its workers stop and its
topics are deleted whole.

A rotation, driven by the operator (`alto up`):
1. `create(new, after=old)`: the new generation's topics, and its group's offsets on the
   requests topic set to where the old one's are (it need not read the history);
2. start the new generation's workers with `ALTO_GENERATIONS__HANDOFF_FILE` (they serve, but do not
   ingest yet: `alto.agents.handover`);
3. `hand_over(old_workers, old, new)`: the old workers close their ingest (SIGUSR1) and
   commit; their group's committed offsets on the requests topic are then exactly what
   they handled, and become the new generation's handoff file;
4. `drained(old_workers)`: no request the old generation admitted is still without a result
   (as their admission control counts; the caller gives up after `ALTO_ADMISSION__TTL_S`,
   when admission forgets a request anyway);
5. stop the old workers, then `delete(old)`.
Contract topics (requests, results, dead letters) are never generational.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from alto.config import AltoConfig
from alto.errors import AltoError
from alto.files import write_json
from alto.infra.processes import WorkerProcess
from alto.kafka import client_settings, ensure_topics

if TYPE_CHECKING:
    from alto.agents.runtime import AltoApp

log = logging.getLogger(__name__)

POLL_S = 0.2
# The topic Faust's partition assignor creates for each app (its group): `<app id>-` this.
FAUST_LEADER_TOPIC = "__assignor-__leader"


def app_of(config: AltoConfig) -> AltoApp:
    """The Faust app `config`'s workers run (built, not started): what topics it uses."""
    from alto.agents.runtime import create_app
    from alto.streams.registry import all_topologies

    return create_app(config, all_topologies(config))


def assigned_topics(app: AltoApp) -> list[str]:
    """The topics whose partitions `app`'s workers must own to serve (readiness)."""
    config = app.config
    return [
        *(
            topic
            for name in app.served
            for topic in app.topologies[name].topics(config.internal_prefix)
        ),
        config.sink_topic,
        config.requests_topic,
        config.lm_requests_topic,
    ]


def internal_topics(config: AltoConfig) -> list[str]:
    """The topics that belong to `config`'s generation alone (deleted with it)."""
    contract = {config.requests_topic, config.results_topic, config.dlq_topic}
    return sorted(set(app_of(config).topic_partitions()) - contract)


def _group(config: AltoConfig) -> Consumer:
    return Consumer(
        {**client_settings(config), "group.id": config.group_id, "enable.auto.commit": False}
    )


def committed(config: AltoConfig, topic: str) -> dict[int, int]:
    """The offsets `config`'s generation has committed on `topic`, by partition (a
    partition never committed is absent)."""
    group = _group(config)
    try:
        parts = [TopicPartition(topic, p) for p in range(config.kafka.partitions)]
        return {
            tp.partition: tp.offset for tp in group.committed(parts, timeout=10) if tp.offset >= 0
        }
    finally:
        group.close()


def create(config: AltoConfig, after: AltoConfig | None = None) -> AltoApp:
    """Create `config`'s generation: its topics and, when it follows generation `after`, its
    group's start on the requests topic where `after`'s group has committed (everything
    before was handled there; the handoff then skips the rest of what `after` handles). Not
    the topic's end: Tansu's end offsets can read short (`alto.agents.transport`). Returns
    the generation's app (built, not started), for its topics."""
    app = app_of(config)
    counts = ensure_topics(config, app.topic_partitions())
    if after is not None and (starts := committed(after, after.requests_topic)):
        group = _group(config)
        try:
            group.commit(
                offsets=[TopicPartition(config.requests_topic, p, o) for p, o in starts.items()],
                asynchronous=False,
            )
        finally:
            group.close()
    log.info("generation %d created (%d topics)", config.generation, len(counts))
    return app


def close_ingest(workers: list[WorkerProcess], timeout_s: float = 60.0) -> None:
    """SIGUSR1 to each live worker, then wait until each reports its ingest closed and
    committed."""
    live = [w for w in workers if w.alive()]
    for w in live:
        os.kill(w.pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout_s
    while True:
        states = {w.worker_id: (w.status() or {}).get("ingest") for w in live if w.alive()}
        if all(s == "closed" for s in states.values()):
            return
        if time.monotonic() > deadline:
            raise AltoError(f"ingest not closed after {timeout_s:.0f} s: {states}")
        time.sleep(POLL_S)


def hand_over(
    old_workers: list[WorkerProcess],
    old: AltoConfig,
    new: AltoConfig,
    timeout_s: float = 60.0,
) -> dict[int, int]:
    """Move ingest from `old`'s generation to `new`'s (see the module docstring); returns
    the offsets on the requests topic where `new` starts."""
    if new.generations.handoff_file is None:
        raise AltoError(f"generation {new.generation} has no handoff file to start from")
    close_ingest(old_workers, timeout_s)
    starts = committed(old, old.requests_topic)
    write_json(new.generations.handoff_file, {str(p): o for p, o in sorted(starts.items())})
    log.info("ingest handed from generation %d to %d at %s", old.generation, new.generation, starts)
    return starts


def drained(workers: list[WorkerProcess]) -> bool:
    """No request this generation's live workers admitted is still without a result (as
    their admission control counts; a worker without it counts as drained only by the
    deadline, which the caller applies)."""
    for w in workers:
        if not w.alive():
            continue
        if (w.status() or {}).get("in_flight") != 0:
            return False
    return True


def delete(config: AltoConfig, timeout_s: float = 30.0) -> list[str]:
    """Delete `config`'s generation (its workers must have stopped): its topics, Faust's
    own topic of its group (the assignor's leader topic) and its consumer groups (the
    broker keeps their committed offsets otherwise)."""
    names = [*internal_topics(config), f"{config.group_id}-{FAUST_LEADER_TOPIC}"]
    admin = AdminClient(client_settings(config))
    existing = set(admin.list_topics(timeout=10).topics)
    doomed = [n for n in names if n in existing]
    if doomed:
        for name, future in admin.delete_topics(doomed, operation_timeout=timeout_s).items():
            try:
                future.result(timeout=timeout_s)
            except KafkaException as exc:
                raise AltoError(f"cannot delete topic {name}: {exc}") from exc
    listed = admin.list_consumer_groups(request_timeout=timeout_s).result(timeout=timeout_s)
    groups = [
        g.group_id
        for g in listed.valid
        if g.group_id == config.group_id or g.group_id.startswith(f"{config.group_id}-lm-")
    ]
    if groups:
        for group, future in admin.delete_consumer_groups(
            groups, request_timeout=timeout_s
        ).items():
            try:
                future.result(timeout=timeout_s)
            except KafkaException as exc:  # offsets only: the generation is gone either way
                log.warning("consumer group %s not deleted: %s", group, exc)
    log.info(
        "generation %d deleted (%d topics, %d consumer groups)",
        config.generation,
        len(doomed),
        len(groups),
    )
    return doomed


def handoff_file(workdir: Path, generation: int) -> Path:
    return workdir / f"handoff-g{generation}.json"
