"""The scheduler role of a Faust worker: an agent on `alto.lm.requests` that places each LM
call on an LM instance (`alto.scheduler.agent.SchedulerCore`, policy in
`alto.scheduler.policy`), or fails its request at once as OVERLOADED."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from faust.types import EventT, StreamT

from alto.errors import BadInputError
from alto.scheduler.agent import Overloaded, SchedulerCore
from alto.schemas.messages import LMRequest
from alto.streams.outputs import failed_call, overloaded

if TYPE_CHECKING:
    from alto.agents.runtime import AltoApp

log = logging.getLogger(__name__)


def define_scheduler(rt: AltoApp) -> None:
    """Assign LM calls to LM instances (`scheduler/agent.py`; policy: `alto.scheduler.policy`)."""

    async def send(topic: str, key: bytes, value: bytes, partition: int | None) -> None:
        await rt.app.producer.send(topic, key, value, partition, None, None)

    def is_leader() -> bool:
        return any(
            tp.topic == rt.config.lm_requests_topic and tp.partition == 0
            for tp in rt.app.assignor.assigned_actives()
        )

    scheduler = SchedulerCore(rt.config, send, name=rt.worker_id, is_leader=is_leader)
    rt.scheduler = scheduler

    @rt.app.task
    async def run_scheduler() -> None:
        await scheduler.run()

    async def place(request: LMRequest) -> None:
        try:
            instance = await scheduler.place(request)
        except Overloaded as exc:
            await fail_overloaded(rt, request, str(exc))
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
                await rt.undecodable(event, exc, "scheduler")
            else:
                try:
                    await place(request)
                except Exception as exc:  # a bug of ours: fail the request, never lose it
                    log.exception("placing LM call %s failed", request.lm_request_id)
                    await rt.send_failed(
                        request.request_id, request.stage, f"scheduler_error: {exc!r}"
                    )
            # Not when cancelled (a worker stopping): the call is then read again.
            await manual.ack(event)

        async for event in manual.events():
            task = asyncio.ensure_future(one(event))
            running.add(task)
            task.add_done_callback(running.discard)

    rt.consumed.add(rt.config.lm_requests_topic)
    rt.app.agent(rt.topic(rt.config.lm_requests_topic), name="alto.scheduler")(assign)


async def fail_overloaded(rt: AltoApp, request: LMRequest, why: str) -> None:
    """Fail a request at once (OVERLOADED): its LM call found every instance saturated."""
    marker = failed_call(request, overloaded(why))
    await rt.app.producer.send(
        rt.config.sink_topic, request.request_id.encode(), marker.encode(), None, None, None
    )
