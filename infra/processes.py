"""Launching our own processes (Faust workers) and waiting until they own their partitions.

Used by `alto demo`, the benchmarks and the integration tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from alto.config import AltoConfig, config_env

REPO = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """One of our processes (by default `alto worker`) with its own id, status file and log."""

    def __init__(
        self,
        config: AltoConfig,
        worker_id: str,
        workdir: Path,
        *,
        loglevel: str = "warning",
        command: list[str] | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.worker_id = worker_id
        self.status_file = workdir / f"{worker_id}.status.json"
        self.log_file = workdir / f"{worker_id}.log"
        env = {
            **os.environ,
            **config_env(config),
            "ALTO_WORKER_ID": worker_id,
            "ALTO_STATUS_FILE": str(self.status_file),
            "PYTHONUNBUFFERED": "1",
        }
        self._log = self.log_file.open("wb")
        self.proc = subprocess.Popen(
            command or [sys.executable, "-m", "alto", "worker", "--loglevel", loglevel],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
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
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        with contextlib.suppress(OSError):
            self.status_file.unlink()

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    def log_tail(self, n: int = 40) -> str:
        lines = self.log_file.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


def wait_assigned(
    workers: list[WorkerProcess], topics: list[str], partitions: int, timeout_s: float = 90.0
) -> dict[tuple[str, int], str]:
    """Wait until the live workers own every partition of `topics`, each exactly once, and
    keep it so for two seconds (no rebalance under way). Returns (topic, partition) -> worker."""
    deadline = time.monotonic() + timeout_s
    stable_since: float | None = None
    last: dict[tuple[str, int], str] = {}
    while time.monotonic() < deadline:
        owners: dict[tuple[str, int], list[str]] = {}
        settled = True
        for w in workers:
            if not w.alive():
                raise RuntimeError(f"worker {w.worker_id} died:\n{w.log_tail()}")
            st = w.status()
            if st is None or st["rebalancing"] or st["recovering"] or time.time() - st["at"] > 3:
                settled = False
                continue
            for topic, p in st["assigned"]:
                if topic in topics:
                    owners.setdefault((topic, p), []).append(w.worker_id)
        complete = settled and all(
            len(owners.get((t, p), [])) == 1 for t in topics for p in range(partitions)
        )
        current = {tp: ws[0] for tp, ws in owners.items()}
        if complete and current == last:
            stable_since = stable_since or time.monotonic()
            if time.monotonic() - stable_since > 2.0:
                return current
        else:
            stable_since = None
        last = current
        time.sleep(0.25)
    raise TimeoutError(f"partitions not assigned within {timeout_s:.0f} s: {last}")


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
