"""Test helpers: the broker fixture's backends and Faust worker processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from alto.config import AltoConfig, load_config

REPO = Path(__file__).resolve().parent.parent


def docker_engine_available() -> bool:
    """True when a Docker engine answers (then testcontainers' Kafka is used)."""
    try:
        import docker  # testcontainers' dependency
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def kafka_container() -> Iterator[str]:
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer().with_kraft() as kafka:
        yield kafka.get_bootstrap_server()


def fresh_config(bootstrap: str, tmp: Path, **overrides: object) -> AltoConfig:
    """A config with a topic prefix and app id (consumer group) no other test uses."""
    tag = uuid.uuid4().hex[:8]
    values: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "topic_prefix": f"t{tag}.",
        "app_id": f"t{tag}",
        "partitions": 4,
        "data_dir": tmp / "data",
        "session_timeout_s": 6.0,
    }
    values.update(overrides)
    return load_config(environ={}, **values)


def config_env(config: AltoConfig) -> dict[str, str]:
    env = {
        "ALTO_BOOTSTRAP_SERVERS": config.bootstrap_servers,
        "ALTO_TOPIC_PREFIX": config.topic_prefix,
        "ALTO_APP_ID": config.app_id,
        "ALTO_PARTITIONS": str(config.partitions),
        "ALTO_DATA_DIR": str(config.data_dir),
        "ALTO_SESSION_TIMEOUT_S": str(config.session_timeout_s),
        "ALTO_MODE": config.mode,
    }
    return env


class WorkerProcess:
    """One `alto worker` process with its own id, status file and log."""

    def __init__(self, config: AltoConfig, worker_id: str, tmp: Path) -> None:
        self.worker_id = worker_id
        self.status_file = tmp / f"{worker_id}.status.json"
        self.log_file = tmp / f"{worker_id}.log"
        env = {
            **os.environ,
            **config_env(config),
            "ALTO_WORKER_ID": worker_id,
            "ALTO_STATUS_FILE": str(self.status_file),
            "PYTHONUNBUFFERED": "1",
        }
        self._log = self.log_file.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "alto", "worker", "--loglevel", "warning"],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def status(self) -> dict[str, object] | None:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        with contextlib.suppress(OSError):
            self.status_file.unlink()

    def stop(self, timeout_s: float = 20.0) -> None:
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
    """Wait until the live workers own every partition of `topics`, each exactly once,
    and stay so for a moment (no rebalance in progress). Returns (topic, p) -> worker."""
    deadline = time.monotonic() + timeout_s
    stable_since: float | None = None
    last: dict[tuple[str, int], str] = {}
    while time.monotonic() < deadline:
        owners: dict[tuple[str, int], list[str]] = {}
        settled = True
        now = time.time()
        for w in workers:
            if not w.alive():
                raise RuntimeError(f"worker {w.worker_id} died:\n{w.log_tail()}")
            st = w.status()
            if st is None or st["rebalancing"] or st["recovering"] or now - float(st["at"]) > 3:  # type: ignore[arg-type]
                settled = False
                continue
            for topic, p in st["assigned"]:  # type: ignore[union-attr]
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
    raise TimeoutError(f"partitions not assigned in {timeout_s} s: {last}")
