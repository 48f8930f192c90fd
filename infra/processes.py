"""Launching our own processes (Faust workers, LM workers, the broker) and waiting until
they own their partitions.

Used by `alto up` (infra/stack.py), `alto demo`, the benchmarks and the integration tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alto.config import AltoConfig, child_env, without_settings
from alto.infra import lifetime

# The repository checkout this package runs from (tests and demos use its files); a child
# process never depends on it: it starts in our own working folder, with absolute paths.
REPO = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """One of our processes (by default `alto worker`) with its own id, status file and log.

    `own_group` starts it in a new session (its own process group): a terminal's Ctrl-C then
    reaches only our process, which decides the order of shutdown, and `stop`/`kill` also end
    whatever the child left behind in its group (vLLM's engine core process, for one).
    `env` adds variables to the child's environment.

    The child ends with this process however it ends (SIGKILL included): our own Python
    children watch their parent (`ALTO_PARENT_PID`) and take their process group with them;
    any other command (the broker) gets SIGKILL from the kernel (`alto.infra.lifetime`).
    """

    def __init__(
        self,
        config: AltoConfig,
        worker_id: str,
        workdir: Path,
        *,
        loglevel: str = "warning",
        command: list[str] | None = None,
        env: Mapping[str, str] | None = None,
        own_group: bool = False,
    ) -> None:
        workdir = workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        self.worker_id = worker_id
        self.own_group = own_group
        self.status_file = workdir / f"{worker_id}.status.json"
        self.log_file = workdir / f"{worker_id}.log"
        environment = {
            **without_settings(os.environ),
            **child_env(config),
            "ALTO_WORKER_ID": worker_id,
            "ALTO_STATUS_FILE": str(self.status_file),
            "PYTHONUNBUFFERED": "1",
            lifetime.PARENT_ENV: str(os.getpid()),
            **(env or {}),
        }
        argv = command or [sys.executable, "-m", "alto", "worker", "--loglevel", loglevel]
        ours = argv[0] == sys.executable
        self._log = self.log_file.open("wb")
        self.proc = subprocess.Popen(
            argv,
            env=environment,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=own_group,
            # Ours get SIGTERM (then their watcher ends their group); others SIGKILL.
            preexec_fn=lifetime.preexec(signal.SIGTERM if ours else signal.SIGKILL),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.status_file.read_text()))
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final commit (a crash)."""
        if self.own_group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        with contextlib.suppress(OSError):
            self.status_file.unlink()

    def pause(self) -> None:
        """SIGSTOP (its whole group if it has one): frozen, sockets open, heartbeats gone."""
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause`: it wakes up with its old view of the world."""
        self._signal_all(signal.SIGCONT)

    def _signal_all(self, signum: signal.Signals) -> None:
        if self.proc.poll() is not None:
            return
        if self.own_group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signum)
        else:
            self.proc.send_signal(signum)

    def terminate(self) -> None:
        """SIGTERM without waiting: `stop` then waits (several processes stop in parallel)."""
        if self.proc.poll() is None:
            self._signal_all(signal.SIGCONT)  # a paused process handles nothing until then
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self._signal_all(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.own_group:
            self._end_group()
        self._log.close()

    def _end_group(self, grace_s: float = 5.0) -> None:
        """End what the child left in its process group: SIGTERM, then SIGKILL."""
        pgid = self.proc.pid
        for signum in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, signum)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + grace_s
            while _group_running(pgid):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            else:
                return

    def log_tail(self, n: int = 40) -> str:
        lines = self.log_file.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


def _group_running(pgid: int) -> bool:
    """Whether process group `pgid` has a member that is not a zombie. Zombies count as gone:
    an orphan's zombie waits for PID 1 to reap it, which some containers' PID 1 does late."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    proc = Path("/proc")
    if not proc.is_dir():  # no procfs: cannot tell zombies apart
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses
            state, _ppid, pgrp = stat.read_text().rpartition(")")[2].split()[:3]
        except (OSError, ValueError):
            continue
        if int(pgrp) == pgid and state != "Z":
            return True
    return False


def tree_usage(pid: int) -> tuple[int, float] | None:
    """(RSS bytes, CPU seconds: user + system) of process `pid` and every live descendant;
    None when `pid` itself is gone. A descendant that exits meanwhile is left out."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    rss, cpu = 0, 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            rss += proc.memory_info().rss
            times = proc.cpu_times()
            cpu += times.user + times.system
    return rss, cpu


class Assignment:
    """Whether workers own every partition of some topics, each exactly once, and have kept
    it so for `stable_s` (no rebalance under way), one look at their status files at a time:
    `check()` is for callers with other work between looks, `wait_assigned` for the rest."""

    def __init__(
        self,
        workers: list[WorkerProcess],
        topics: list[str],
        partitions: int,
        stable_s: float = 2.0,
    ) -> None:
        self.workers = workers
        self.topics = topics
        self.partitions = partitions
        self.stable_s = stable_s
        self.owners: dict[tuple[str, int], str] = {}
        self._since: float | None = None

    def check(self) -> bool:
        """One look; True once complete and unchanged for `stable_s`. Raises RuntimeError
        when a worker died."""
        owners: dict[tuple[str, int], list[str]] = {}
        settled = True
        for w in self.workers:
            if not w.alive():
                raise RuntimeError(f"worker {w.worker_id} died:\n{w.log_tail()}")
            st = w.status()
            if st is None or st["rebalancing"] or st["recovering"] or time.time() - st["at"] > 3:
                settled = False
                continue
            for topic, p in st["assigned"]:
                if topic in self.topics:
                    owners.setdefault((topic, p), []).append(w.worker_id)
        complete = settled and all(
            len(owners.get((t, p), [])) == 1 for t in self.topics for p in range(self.partitions)
        )
        current = {tp: ws[0] for tp, ws in owners.items()}
        if complete and current == self.owners:
            self._since = self._since or time.monotonic()
        else:
            self._since = None
        self.owners = current
        return self._since is not None and time.monotonic() - self._since > self.stable_s


def wait_assigned(
    workers: list[WorkerProcess], topics: list[str], partitions: int, timeout_s: float = 90.0
) -> dict[tuple[str, int], str]:
    """Wait until the live workers own every partition of `topics`, each exactly once, and
    keep it so for two seconds (no rebalance under way). Returns (topic, partition) -> worker."""
    deadline = time.monotonic() + timeout_s
    assignment = Assignment(workers, topics, partitions)
    while time.monotonic() < deadline:
        if assignment.check():
            return assignment.owners
        time.sleep(0.25)
    raise TimeoutError(f"partitions not assigned within {timeout_s:.0f} s: {assignment.owners}")


def lm_worker_command(instance: int, engine: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "alto",
        "lm-worker",
        "--instance",
        str(instance),
        "--engine",
        engine,
    ]
