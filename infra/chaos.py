"""`alto chaos`: serve a stream of requests while processes are SIGKILLed and restarted, then
check that every request has exactly one result and that every result is correct.

The deployment: the broker, `faust_workers` Faust workers (ingest, stages, sink), one
scheduler process (a Faust worker with only the scheduler role) and `lm_workers` LM workers
on the SIMULATED engine. Requests (the `claims` pipeline, which calls the LM, and the
`example` pipeline, which only aggregates; both modes) arrive as a Poisson stream. At random
moments inside the arrival window (seeded), one process of each kind in `faults` is SIGKILLed
and started again (same id, same LM instance) a few seconds later; one process of each kind
in `pauses` is SIGSTOPped for longer than its session (or heartbeat) timeout and then
continued with SIGCONT: a zombie that wakes up believing it still owns its partitions, and
produces.

Checking: the simulated engine's text is a function of the call's id, so the correct output
of every request is known in advance (`expected_output`). After the run the results topic is
read from the start: a request with no result is *lost*, one with two is *duplicated*, one
whose output differs from the expected output (or that did not finish OK) is *wrong*.

Recovery, per fault: the requests in flight when the process was killed (submitted, no
result yet) and the time until the last of them had its result (`cleared_s`); the longest
pause in the stream of results after the kill (`longest_gap_s`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from alto.agents import claims, example
from alto.agents.faust_settings import state_changelogs
from alto.config import AltoConfig
from alto.errors import BadInputError
from alto.infra import lifetime
from alto.infra.chaos_workload import workload, wrong_reason
from alto.infra.client import TopicReader, trail, wait_lm_reporting
from alto.infra.openloop import OpenLoop
from alto.infra.processes import WorkerProcess, lm_worker_command, wait_assigned
from alto.schemas.messages import DeadLetter, PipelineRequest, PipelineResult

log = logging.getLogger(__name__)

Target = Literal["faust", "lm", "scheduler"]
TARGETS: tuple[Target, ...] = ("faust", "lm", "scheduler")
Action = Literal["SIGKILL", "SIGSTOP"]
# A paused process stays stopped this much longer than the session timeout, at least.
PAUSE_MARGIN_S = 3.0

# Faust workers serve everything but the scheduler, which runs alone so it can be killed alone.
STAGE_ROLES = "ingest,stages,sink"
SCHEDULER_ROLES = "scheduler"
# What an ingest worker logs when it replays a request that has no result (agents/runtime.py).
REPLAY_LOG = "replaying it from its root"


@dataclass
class Fault:
    target: Target
    process: str
    at_s: float  # since the first arrival
    restart_after_s: float  # SIGKILL: restarted after; SIGSTOP: continued after
    action: Action = "SIGKILL"
    killed_at: float = 0.0  # wall clock (time.time())
    restarted_at: float = 0.0
    in_flight: list[str] = field(default_factory=list)
    cleared_s: float | None = None
    longest_gap_s: float = 0.0


@dataclass
class ChaosReport:
    seed: int
    requests: int
    faults: list[Fault]
    results_seen: int
    lost: list[str]
    duplicated: dict[str, int]
    wrong: dict[str, str]
    dead_letters: int
    replayed: int  # requests ingest replayed for want of a result (ALTO_ADMISSION__RETRY_S)
    duration_s: float
    latency_p50_s: float
    latency_max_s: float
    trail_file: Path | None = None  # the records of lost requests, when there are any

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.wrong)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for fault in out["faults"]:
            fault["in_flight"] = len(fault["in_flight"])
        out["trail_file"] = None if self.trail_file is None else str(self.trail_file)
        out["ok"] = self.ok
        return out

    def markdown(self) -> str:
        lines = [
            f"## Chaos run (seed {self.seed}; LM engines SIMULATED)",
            "",
            f"- requests sent: {self.requests}; results read: {self.results_seen}; "
            f"run time {self.duration_s:.0f} s",
            f"- **lost: {len(self.lost)}, duplicated: {len(self.duplicated)}, "
            f"wrong: {len(self.wrong)}**, dead letters: {self.dead_letters}, "
            f"replayed after no result for ALTO_ADMISSION__RETRY_S: {self.replayed}",
            f"- latency: median {self.latency_p50_s:.2f} s, max {self.latency_max_s:.2f} s",
            "",
            "| fault | process | at (s) | down (s) | in flight | all cleared after (s)"
            " | longest result gap (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for f in self.faults:
            cleared = "-" if f.cleared_s is None else f"{f.cleared_s:.1f}"
            lines.append(
                f"| {f.action} {f.target} | {f.process} | {f.at_s:.1f} | {f.restart_after_s:.1f} "
                f"| {len(f.in_flight)} | {cleared} | {f.longest_gap_s:.1f} |"
            )
        if self.lost:
            lines += ["", f"lost: {self.lost[:20]}; their records: {self.trail_file}"]
        if self.duplicated:
            lines += ["", f"duplicated: {dict(list(self.duplicated.items())[:20])}"]
        if self.wrong:
            lines += ["", f"wrong: {dict(list(self.wrong.items())[:5])}"]
        return "\n".join(lines)


def plan_faults(
    seed: int, window_s: float, targets: tuple[Any, ...], *, min_gap_s: float = 8.0
) -> list[tuple[Any, float, float]]:
    """(target, at_s, restart_after_s) per target, at random moments of the arrival window,
    in random order, at least `min_gap_s` apart (so that each recovery can be told apart)."""
    rng = random.Random(seed)
    order = list(targets)
    rng.shuffle(order)
    lo, hi = 0.1 * window_s, 0.8 * window_s
    for _ in range(1000):
        moments = sorted(rng.uniform(lo, hi) for _ in order)
        if all(b - a >= min_gap_s for a, b in zip(moments, moments[1:], strict=False)):
            break
    else:
        step = (hi - lo) / max(1, len(order))
        moments = [lo + i * step for i in range(len(order))]
    return [(t, at, rng.uniform(1.0, 4.0)) for t, at in zip(order, moments, strict=True)]


class _Deployment:
    """The processes of a chaos run, restartable by name."""

    def __init__(
        self, config: AltoConfig, workdir: Path, faust_workers: int, lm_workers: int
    ) -> None:
        self.config = config
        self.workdir = workdir
        self.incarnation: Counter[str] = Counter()
        self.specs: dict[str, tuple[list[str] | None, dict[str, str]]] = {}
        for i in range(faust_workers):
            self.specs[f"f{i + 1}"] = (None, {"ALTO_ROLES": STAGE_ROLES})
        self.specs["sched"] = (None, {"ALTO_ROLES": SCHEDULER_ROLES})
        for i in range(lm_workers):
            self.specs[f"lm{i}"] = (lm_worker_command(i, "sim"), {})
        self.procs: dict[str, WorkerProcess] = {}
        for name in self.specs:
            self.start(name)

    def start(self, name: str) -> None:
        command, env = self.specs[name]
        self.incarnation[name] += 1
        # Each incarnation logs to its own folder: a restart must not overwrite the log of
        # the process it replaces.
        where = self.workdir / f"run{self.incarnation[name]}"
        self.procs[name] = WorkerProcess(
            self.config, name, where, command=command, env=env, own_group=True
        )

    def names(self, target: Target) -> list[str]:
        prefix = {"faust": "f", "lm": "lm", "scheduler": "sched"}[target]
        return [n for n in self.specs if n.startswith(prefix)]

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if not p.alive()]

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            proc.stop(timeout_s=30)


def _results_on_topic(config: AltoConfig, quiet_s: float = 3.0) -> list[PipelineResult]:
    """Every result on the results topic, read from the start until `quiet_s` pass with none."""
    reader = TopicReader(config, config.results_topic)
    out: list[PipelineResult] = []
    try:
        for _, value in reader.drain(quiet_s):
            with contextlib.suppress(BadInputError):
                out.append(PipelineResult.decode(value))
        return out
    finally:
        reader.close()


def _count_dead_letters(config: AltoConfig) -> int:
    reader = TopicReader(config, config.dlq_topic)
    try:
        n = 0
        for _, value in reader.poll(2.0):
            with contextlib.suppress(BadInputError):
                DeadLetter.decode(value)
            n += 1
        return n
    finally:
        reader.close()


def run_chaos(
    config: AltoConfig,
    workdir: Path,
    *,
    requests: int = 500,
    rate: float = 5.0,
    seed: int = 7,
    faults: tuple[Target, ...] = TARGETS,
    pauses: tuple[Target, ...] = (),
    faust_workers: int = 2,
    lm_workers: int = 3,
    drain_timeout_s: float = 240.0,
    ready_timeout_s: float = 180.0,
) -> ChaosReport:
    """Run the chaos experiment on the broker `config` names (topics are created by the
    workers) and return its report. Processes are stopped whatever happens."""
    started = time.monotonic()
    work = workload(requests, seed)
    arrivals_rng = random.Random(seed + 1)
    offsets, t = [], 0.0
    for _ in work:
        offsets.append(t)
        t += arrivals_rng.expovariate(rate)
    window_s = offsets[-1]
    kinds: list[tuple[Target, Action]] = [(t, "SIGKILL") for t in faults]
    kinds += [(t, "SIGSTOP") for t in pauses]
    plan = plan_faults(seed, window_s, tuple(kinds))
    pick = random.Random(seed + 2)
    # A pause outlasts what would declare the process dead: its group session, or (an LM
    # worker) the scheduler's heartbeat timeout.
    pause_s = max(config.kafka.session_timeout_s, 5 * config.lm.status_interval_s, 5.0)
    deployment = _Deployment(config, workdir, faust_workers, lm_workers)
    try:
        _wait_ready(config, deployment, ready_timeout_s)
        chosen = [
            Fault(
                target,
                pick.choice(deployment.names(target)),
                at,
                down if action == "SIGKILL" else pause_s + PAUSE_MARGIN_S + down,
                action,
            )
            for (target, action), at, down in plan
        ]
        report = _drive(config, deployment, work, offsets, chosen, drain_timeout_s)
        if report.lost:
            # Where the lost requests stopped, for whoever reads the report.
            topics: list[str] = []
            for topology in (claims.build(), example.build()):
                topics += topology.topics(config.internal_prefix)
                topics += state_changelogs(config, topology)
            report.trail_file = workdir.resolve() / "lost_trail.txt"
            report.trail_file.write_text(trail(config, topics, report.lost[:50]))
    finally:
        deployment.stop()
    report.replayed = sum(
        log_file.read_text(errors="replace").count(REPLAY_LOG)
        for log_file in workdir.glob("run*/f*.log")
    )
    report.seed = seed
    report.duration_s = time.monotonic() - started
    return report


def _wait_ready(config: AltoConfig, deployment: _Deployment, timeout_s: float) -> None:
    stage_workers = [deployment.procs[n] for n in deployment.names("faust")]
    topics = [config.sink_topic, config.requests_topic]
    for topology in (claims.build(), example.build()):
        topics += topology.topics(config.internal_prefix)
    wait_assigned(stage_workers, topics, config.kafka.partitions, timeout_s=timeout_s)
    wait_assigned(
        [deployment.procs["sched"]], [config.lm_requests_topic], config.kafka.partitions, timeout_s
    )
    lm_instances = [int(n[2:]) for n in deployment.names("lm")]

    def check() -> None:
        if dead := deployment.dead():
            raise RuntimeError(f"processes exited before the run: {dead}")

    wait_lm_reporting(config, lm_instances, timeout_s, check=check)


def _drive(
    config: AltoConfig,
    deployment: _Deployment,
    work: list[PipelineRequest],
    offsets: list[float],
    faults: list[Fault],
    drain_timeout_s: float,
) -> ChaosReport:
    pending_kills = sorted(faults, key=lambda f: f.at_s)
    pending_restarts: list[Fault] = []
    with OpenLoop(config) as loop:
        t0 = time.time()

        def inject(_: float = 0.0) -> None:
            """Kill or pause what is due (noting the requests in flight), restart or continue
            what is due."""
            now = time.time()
            if pending_kills and pending_kills[0].at_s <= now - t0:
                fault = pending_kills.pop(0)
                fault.in_flight = [
                    o.request_id for o in loop.outcomes.values() if o.finished is None
                ]
                fault.killed_at = now
                proc = deployment.procs[fault.process]
                if fault.action == "SIGKILL":
                    proc.kill()
                else:
                    proc.pause()
                log.info("chaos: %s %s at %.1f s", fault.action, fault.process, now - t0)
                pending_restarts.append(fault)
            for fault in [f for f in pending_restarts if now - f.killed_at >= f.restart_after_s]:
                if fault.action == "SIGKILL":
                    deployment.start(fault.process)
                else:
                    deployment.procs[fault.process].resume()
                fault.restarted_at = time.time()
                pending_restarts.remove(fault)
                log.info("chaos: %s back", fault.process)

        loop.run(work, offsets, tick=inject)
        while pending_kills or pending_restarts:  # faults due after the last submission
            inject()
            loop.poll(0.05)
        loop.wait(list(loop.outcomes.values()), drain_timeout_s)
    submitted = {o.request_id: o.submitted for o in loop.outcomes.values()}
    done = {o.request_id: o.finished for o in loop.outcomes.values() if o.finished is not None}
    _measure_recovery(faults, done)
    return _check(config, work, submitted, done, faults)


def _measure_recovery(faults: list[Fault], done: dict[str, float]) -> None:
    times = sorted(done.values())
    for fault in faults:
        waits = [done[r] for r in fault.in_flight if r in done]
        if fault.in_flight and len(waits) == len(fault.in_flight):
            fault.cleared_s = max(waits) - fault.killed_at
        after = [fault.killed_at, *(t for t in times if t >= fault.killed_at)]
        fault.longest_gap_s = max(
            (b - a for a, b in zip(after, after[1:], strict=False)), default=0.0
        )


def _check(
    config: AltoConfig,
    work: list[PipelineRequest],
    submitted: dict[str, float],
    done: dict[str, float],
    faults: list[Fault],
) -> ChaosReport:
    results = _results_on_topic(config)
    by_id: dict[str, list[PipelineResult]] = {}
    for result in results:
        by_id.setdefault(result.request_id, []).append(result)
    wrong: dict[str, str] = {}
    latencies = []
    for request in work:
        got = by_id.get(request.request_id)
        if not got:
            continue
        first = got[0]
        latencies.append(done.get(request.request_id, 0.0) - submitted[request.request_id])
        if (why := wrong_reason(request, first)) is not None:
            wrong[request.request_id] = why
    latencies.sort()
    return ChaosReport(
        seed=0,
        requests=len(work),
        faults=faults,
        results_seen=len(results),
        lost=[r.request_id for r in work if r.request_id not in by_id],
        duplicated={rid: len(rs) for rid, rs in by_id.items() if len(rs) > 1},
        wrong=wrong,
        dead_letters=_count_dead_letters(config),
        replayed=0,
        duration_s=0.0,
        latency_p50_s=latencies[len(latencies) // 2] if latencies else 0.0,
        latency_max_s=latencies[-1] if latencies else 0.0,
    )


@contextlib.contextmanager
def _busy(n: int) -> Iterator[None]:
    """`n` processes that spin on a CPU each until the block ends (they end with us too)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", "while True: pass"],
            preexec_fn=lifetime.preexec(signal.SIGKILL),
        )
        for _ in range(n)
    ]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _broker(config: AltoConfig) -> Iterator[AltoConfig]:
    """The embedded broker on a free port unless the configuration names one."""
    if config.names_a_broker:
        yield config
        return
    from alto.infra.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield config.with_overrides(
            kafka={"bootstrap_servers": broker.bootstrap_servers},
        )


def run_chaos_command(
    config: AltoConfig,
    *,
    requests: int,
    rate: float,
    seed: int,
    json_path: Path | None,
    faults: tuple[Target, ...] = TARGETS,
    pauses: tuple[Target, ...] = (),
    busy: int = 0,
) -> int:
    """`alto chaos`: the experiment with short group timeouts, its report on stdout. `busy`
    CPU-bound processes run beside the stack for the whole run (a machine starved by other
    work: slow rebalances, events still in hand when partitions move)."""
    tuned = config.with_overrides(
        kafka={"session_timeout_s": 6.0}, lm={"status_interval_s": 0.5}, warmup=False
    )
    with _broker(config) as brokered, _busy(busy):
        run_config = tuned.with_overrides(
            kafka={"bootstrap_servers": brokered.kafka.bootstrap_servers},
        )
        report = run_chaos(
            run_config,
            config.data_dir / "chaos",
            requests=requests,
            rate=rate,
            seed=seed,
            faults=faults,
            pauses=pauses,
        )
    print(report.markdown())
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report.to_json(), indent=2))
    return 0 if report.ok else 1
