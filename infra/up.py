"""`alto up` in the foreground: the whole stack (`alto.infra.stack.Stack`) until Ctrl-C or
SIGTERM, started again on an empty broker if the embedded one dies."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from types import FrameType

from alto.config import AltoConfig, EngineName
from alto.errors import AltoError, BrokerLost
from alto.infra.stack import Stack

log = logging.getLogger(__name__)


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    # Raised where the main thread is (a wait, a sleep), so startup stops at once too.
    raise _Interrupted(signum)


def run_up(
    config: AltoConfig,
    *,
    workers: int,
    lm_instances: int,
    engine: EngineName | None,
    listen: str | None,
    workdir: Path | None,
    ready_timeout_s: float,
) -> int:
    """`alto up` in the foreground until SIGINT, SIGTERM or SIGHUP; returns the exit code
    (0 after a signal, 1 when the stack failed)."""
    stack = Stack(
        config,
        workers=workers,
        lm_instances=lm_instances,
        engine=engine,
        listen=listen,
        workdir=workdir,
    )
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, _interrupt) for s in handled}
    code = 0
    try:
        where = f"embedded broker on {listen}" if listen else f"broker {stack.bootstrap_servers}"
        print(
            f"alto up: starting ({where}; Faust workers: {workers}; LM workers: {lm_instances}, "
            f"engine {stack.engine}); logs in {stack.workdir}",
            flush=True,
        )
        t0 = time.monotonic()
        stack.start()
        stack.wait_ready(ready_timeout_s)
        print(stack.ready_line(), flush=True)
        print(f"  ready in {time.monotonic() - t0:.1f} s\n{stack.summary()}", flush=True)
        broker_restarts = 0
        while True:
            time.sleep(1.0)
            try:
                stack.supervise()
            except BrokerLost as exc:
                if broker_restarts >= stack.max_restarts:
                    raise
                broker_restarts += 1
                print(
                    f"alto up: {exc}. Starting the whole stack again on an empty broker "
                    f"(restart {broker_restarts} of at most {stack.max_restarts}); clients "
                    "must send again the requests that had no result",
                    flush=True,
                )
                t0 = time.monotonic()
                stack.restart_after_broker_loss(ready_timeout_s)
                print(stack.ready_line(), flush=True)
                print(f"  ready again in {time.monotonic() - t0:.1f} s", flush=True)
    except _Interrupted as exc:
        log.info("%s received: stopping", exc)
    except AltoError as exc:
        log.error("alto up: %s", exc)
        code = 1
    finally:
        # A second Ctrl-C must not cut the shutdown short (and leave children behind).
        for s in handled:
            signal.signal(s, signal.SIG_IGN)
        try:
            stack.stop()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        print("alto up: stopped", flush=True)
    return code
