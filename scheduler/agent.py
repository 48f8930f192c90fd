"""The scheduler's I/O shell around a pure policy (`scheduler/policy.py`).

What it reads and writes, all on Kafka:
- `alto.lm.status` (every partition, manual assignment, no group): each LM instance's load
  reports and the calls it finished since the last one. Every scheduler replica sees every
  instance; LM calls themselves are spread over replicas by the consumer group on
  `alto.lm.requests`.
- `alto.lm.assignments` (compacted, key = prompt name): the policy's prompt -> instances
  table. A replica publishes the entries its decisions change and loads everyone's, so a
  restarted scheduler or a second replica resumes from the shared table instead of starting
  cold (and herding every prompt onto the same instance).
- `alto.lm.work`, partition N = instance N: the assignment itself.

Liveness: an instance whose reports stop for `heartbeat_timeout` is removed from the policy,
and one replica (the leader: the one holding partition 0 of `alto.lm.requests`) drains its
partition of `alto.lm.work` from that instance's committed offset: every call it had not
finished is placed again on a live instance, then the offset is committed past them. A call
the dead instance had half-streamed is served again; downstream aggregators drop the quanta
they have already folded, so results stay exact.

Admission: while every live instance has `scheduler_saturation` calls outstanding, calls wait
here, at most `scheduler_queue` of them; past that a call fails at once (OVERLOADED).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from alto import metrics
from alto.config import AltoConfig
from alto.errors import BadInputError
from alto.kafka import aiokafka_settings, follow, watch_fetch_wait_ms
from alto.scheduler.placement import place
from alto.scheduler.policy import Call, ClusterState, Completion, Load, make_policy
from alto.schemas.messages import LMAssignment, LMRequest, LMStatus
from alto.streams.processor import DeadLetterOut

log = logging.getLogger(__name__)

Sender = Callable[[str, bytes, bytes, int | None], Awaitable[None]]

# A call assigned this long ago with no completion reported is no longer counted as load
# (its completion was lost with a killed worker, or another replica's report raced it).
PENDING_TTL_MS = 300_000

HEARTBEAT_FLOOR_MS = 5_000

# A drain polls the dead instance's partition this long per round until two rounds are quiet.
DRAIN_POLL_MS = 500

# A status report dated further ahead than this is refused: it would keep its instance
# "live" (and the calls placed there waiting) until then. Bounds the clocks' disagreement.
MAX_CLOCK_SKEW_MS = 30_000


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _forever(work: Callable[[], Awaitable[None]]) -> None:
    """Run `work` again whenever it fails (a broker hiccup must not leave the scheduler blind)."""
    while True:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("scheduler task failed; restarting it in 1 s")
            await asyncio.sleep(1.0)


# Prompt names come from LM calls on the wire: bounded as metric labels.
_PROMPTS = metrics.BoundedLabel(64)


class Overloaded(Exception):
    """Every live instance is saturated and the scheduler's queue is full."""


class SchedulerCore:
    def __init__(
        self,
        config: AltoConfig,
        send: Sender,
        *,
        name: str = "scheduler",
        is_leader: Callable[[], bool] = lambda: True,
    ) -> None:
        self.config = config
        self.name = name
        self.send = send
        self.is_leader = is_leader
        # Five report intervals, and never under HEARTBEAT_FLOOR_MS: a removal moves every
        # unfinished call, so a busy machine's late report must not look like a death.
        timeout_ms = max(int(config.lm.status_interval_s * 5000), HEARTBEAT_FLOOR_MS)
        self.state = ClusterState(heartbeat_timeout_ms=timeout_ms)
        self.policy = make_policy(config.scheduler.policy)
        self.waiting = 0
        self.decisions = 0
        self.reassigned = 0
        self._changed = asyncio.Event()
        self.engines: dict[int, str] = {}  # instance -> its engine, as it last reported
        self._assigned_at: dict[str, tuple[int, int]] = {}  # call id -> (instance, at_ms)
        self._shared: dict[str, tuple[int, ...]] = {}  # the table as last read or written
        self._draining: dict[int, asyncio.Lock] = {}  # one drain of an instance at a time

    # -- background tasks ------------------------------------------------------------

    async def run(self) -> None:
        """Watch status and the shared table, and check liveness, until cancelled."""
        tasks = [
            asyncio.ensure_future(
                _forever(lambda: self._watch(self.config.lm_status_topic, self._on_status, 50))
            ),
            asyncio.ensure_future(
                _forever(
                    lambda: self._watch(self.config.lm_assignments_topic, self._on_assignment, None)
                )
            ),
            asyncio.ensure_future(_forever(self._liveness)),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(
        self, topic: str, handle: Callable[[bytes | None], Awaitable[None]], tail: int | None
    ) -> None:
        """Every partition of `topic`, from `tail` records before the end (None: all);
        a record `handle` refuses as bad input is rejected (`_reject`)."""
        records = follow(
            self.config, topic, tail=tail, fetch_wait_ms=watch_fetch_wait_ms(self.config)
        )
        async with contextlib.aclosing(records):
            async for record in records:
                try:
                    await handle(record.value)
                except BadInputError as exc:
                    await self._reject(record, exc)

    async def _reject(self, record: ConsumerRecord[bytes, bytes], exc: BadInputError) -> None:
        """Ignore a bad status or table record; the leader dead-letters it (every replica
        reads these topics whole, and one letter per record is enough)."""
        log.warning("%s[%d]@%d ignored: %s", record.topic, record.partition, record.offset, exc)
        if not self.is_leader():
            return
        letter = DeadLetterOut(exc.reason, str(exc), None, "scheduler").letter(
            record.topic, record.partition, record.offset, record.key, record.value, self.name
        )
        await self.send(self.config.dlq_topic, letter.key or b"", letter.encode(), None)

    def _instance_ok(self, instance: int) -> bool:
        return 0 <= instance < self.config.lm.max_instances

    async def _on_status(self, value: bytes | None) -> None:
        """Take one status report; raises BadInputError for one that cannot be trusted."""
        status = LMStatus.decode(value)
        if not self._instance_ok(status.instance):
            raise BadInputError(
                "bad_status",
                f"LM instance {status.instance} is not in [0, {self.config.lm.max_instances})",
            )
        if status.at_ms > _now_ms() + MAX_CLOCK_SKEW_MS:
            # It would keep the instance live (and its calls unplaced) until that time.
            raise BadInputError(
                "bad_status",
                f"LM instance {status.instance} reports from {status.at_ms - _now_ms()} ms "
                "in the future",
            )
        self.state.report(Load.of(status))
        self.engines[status.instance] = status.engine
        for c in status.completed:
            done = Completion(
                c.lm_request_id,
                status.instance,
                c.prompt_name,
                c.prompt_tokens,
                c.cached_tokens,
                c.output_tokens,
                c.queue_s,
                c.service_s,
                c.at_ms,
            )
            self.state.completed(done)
            self._assigned_at.pop(c.lm_request_id, None)
            self.policy.on_completion(self.state, done)
        self._expire_pending(status.at_ms)
        self._changed.set()

    async def _on_assignment(self, value: bytes | None) -> None:
        """Take one entry of the shared table; raises BadInputError for a bad one."""
        if value is None:
            return  # a deletion on the compacted topic: the entry is simply not loaded
        entry = LMAssignment.decode(value)
        if not all(self._instance_ok(i) for i in entry.instances):
            raise BadInputError(
                "bad_assignment",
                f"prompt {entry.prompt_name!r} placed on instances {list(entry.instances)}, "
                f"outside [0, {self.config.lm.max_instances})",
            )
        if entry.scheduler == self.name:
            return  # our own write, already in the policy
        self._shared[entry.prompt_name] = entry.instances
        self.policy.load_table({entry.prompt_name: entry.instances})

    async def _liveness(self) -> None:
        while True:
            await asyncio.sleep(self.config.lm.status_interval_s)
            await self.remove_dead(_now_ms())

    async def remove_dead(self, now_ms: int) -> list[int]:
        """Remove every instance with a report on file that is no longer live (also one
        that a late report revived for a moment after an earlier removal) and drain it:
        every call there, the leader; only its own calls not known to be finished, any
        other replica. Replicas remove an instance at slightly different moments, so a call
        another replica placed just after the leader's drain would otherwise stay in the
        dead instance's partition. Such a drain commits nothing (the leader's drain owns
        the partition's offset); a call both drains find is served twice, which downstream
        deduplication absorbs. Returns the removed instances."""
        live = set(self.state.live(now_ms))
        metrics.SCHEDULER_LIVE.set(len(live))
        removed = sorted(set(self.state.loads) - live)
        for instance in removed:
            log.warning("LM instance %d stopped reporting: removed", instance)
            metrics.SCHEDULER_REMOVED.inc()
            placed_there = self.state.forget(instance)
            self.policy.on_instance_removed(self.state, instance)
            if self.is_leader():
                await self.drain(instance)
            elif placed_there:
                await self.drain(instance, only=set(placed_there))
        return removed

    def _expire_pending(self, now: int) -> None:
        stale = [c for c, (_, at) in self._assigned_at.items() if now - at > PENDING_TTL_MS]
        for call_id in stale:
            instance, _ = self._assigned_at.pop(call_id)
            self.state.pending.get(instance, {}).pop(call_id, None)

    # -- placement -------------------------------------------------------------------

    def _full(self, instance: int) -> bool:
        return self.state.outstanding(instance) >= self.config.scheduler.saturation

    def saturated(self, now: int) -> bool:
        """No live instance has room (or none is live)."""
        return all(self._full(i) for i in self.state.live(now))

    async def place(self, request: LMRequest) -> int:
        """An instance for `request`. Waits while every instance is saturated (or none is
        live); raises `Overloaded` at once when `scheduler_queue` calls already wait."""
        if self.saturated(_now_ms()):
            if self.waiting >= self.config.scheduler.queue:
                metrics.SCHEDULER_OVERLOADED.labels(
                    self.policy.name, _PROMPTS(request.prompt_name)
                ).inc()
                raise Overloaded(
                    f"every LM instance is saturated and {self.waiting} calls already wait"
                )
            self.waiting += 1
            metrics.SCHEDULER_WAITING.inc()
            try:
                while self.saturated(_now_ms()):
                    await self._wait_for_change()
            finally:
                self.waiting -= 1
                metrics.SCHEDULER_WAITING.dec()
        return await self._decide(Call.of(request))

    async def place_now(self, request: LMRequest) -> int | None:
        """An instance for `request` if one has room now; None if every instance is
        saturated (or none is live), for the caller to send the call through `lm.requests`
        to the scheduler agent, which waits or refuses it (admission)."""
        if self.saturated(_now_ms()):
            return None
        call = Call.of(request)
        instance = self._try_place(call)
        if instance is not None:
            await self._publish(call.prompt)
        return instance

    async def _decide(self, call: Call, engine: str | None = None) -> int:
        """Place `call`; with `engine`, only on an instance running that engine when one
        is live (a replayed call must reproduce the output its first attempt
        streamed in part: downstream deduplication keeps the first copy of each quantum)."""
        while (instance := self._try_place(call, engine)) is None:
            await self._wait_for_change()
        await self._publish(call.prompt)
        return instance

    def _try_place(self, call: Call, engine: str | None = None) -> int | None:
        placed = place(
            self.policy,
            self.state,
            call,
            _now_ms(),
            saturation=self.config.scheduler.saturation,
            engines=self.engines,
            engine=engine,
        )
        if placed is None:
            return None
        instance, why = placed.instance, placed.why
        self._assigned_at[call.call_id] = (instance, _now_ms())
        self.decisions += 1
        metrics.SCHEDULER_DECISIONS.labels(
            self.policy.name, _PROMPTS(call.prompt), str(instance), why
        ).inc()
        return instance

    async def _wait_for_change(self) -> None:
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout=1.0)
        except TimeoutError:
            pass

    async def _publish(self, prompt: str) -> None:
        instances = self.policy.table().get(prompt)
        if instances is None or self._shared.get(prompt) == instances:
            return
        self._shared[prompt] = instances
        entry = LMAssignment(prompt, instances, self.policy.name, self.name, _now_ms())
        await self.send(self.config.lm_assignments_topic, prompt.encode(), entry.encode(), None)

    async def assign(self, request: LMRequest, instance: int) -> None:
        assigned = replace(request, instance=instance)
        await self.send(
            self.config.lm_work_topic, request.request_id.encode(), assigned.encode(), instance
        )
        if instance not in self.state.loads:
            # Removed (and drained) while this call was decided and produced: drain again,
            # or nothing would ever serve it (a replica other than the leader: this call).
            only = None if self.is_leader() else {request.lm_request_id}
            await self.drain(instance, only=only)

    # -- reassignment ----------------------------------------------------------------

    async def drain(self, instance: int, only: set[str] | None = None) -> int:
        """Place every call `instance` had not finished on live instances; returns how many.
        With `only` (LM call ids), just those, and the partition's committed offset is left
        as it is (see `remove_dead`).

        Reads the instance's partition from its committed offset until it is quiet (nothing
        more after the end offset, twice in a row), not just up to the end offset read at the
        start: that one has been seen to miss the newest record, and a call this replica
        decided for the instance just before removing it may still be on its way."""
        async with self._draining.setdefault(instance, asyncio.Lock()):
            return await self._drain(instance, only)

    async def _drain(self, instance: int, only: set[str] | None) -> int:
        tp = TopicPartition(self.config.lm_work_topic, instance)
        consumer = AIOKafkaConsumer(
            **aiokafka_settings(self.config),
            group_id=f"{self.config.group_id}-lm-{instance}",  # the LM worker's own offsets
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.config.kafka.fetch_max_wait_ms,
        )
        await consumer.start()
        moved = 0
        targets: dict[int, int] = {}
        try:
            consumer.assign([tp])
            start = await consumer.committed(tp)
            if start is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, start)
            quiet = 0
            position: int | None = None  # set when the instance is back: it serves the rest
            while quiet < 2 and position is None:
                batch = await consumer.getmany(tp, timeout_ms=DRAIN_POLL_MS)
                records = batch.get(tp, [])
                for record in records:
                    try:
                        request = LMRequest.decode(record.value)
                    except BadInputError:
                        continue  # the LM worker dead-letters these; nothing to place
                    if only is not None and request.lm_request_id not in only:
                        continue
                    target = await self._decide(Call.of(request), self.engines.get(instance))
                    if target == instance:  # it reported again while we waited for a place
                        position = record.offset
                        break
                    await self.assign(replace(request, attempt=request.attempt + 1), target)
                    log.debug("moved %s to instance %d", request.lm_request_id, target)
                    moved += 1
                    targets[target] = targets.get(target, 0) + 1
                end = (await consumer.end_offsets([tp]))[tp]
                caught_up = not records and await consumer.position(tp) >= end
                quiet = quiet + 1 if caught_up else 0
            if position is None:
                position = await consumer.position(tp)
            if only is None:
                await consumer.commit({tp: position})
        finally:
            await consumer.stop()
        self.reassigned += moved
        metrics.SCHEDULER_DRAINS.inc()
        metrics.SCHEDULER_REASSIGNED.inc(moved)
        log.warning(
            "reassigned %d unfinished LM calls of instance %d from offset %s to %d "
            "(to instance: calls %s)",
            moved,
            instance,
            start,
            position,
            targets,
        )
        return moved
