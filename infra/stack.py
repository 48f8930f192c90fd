"""`alto up`: the whole stack (broker, Faust workers, LM workers) as child processes.

`Stack` starts the embedded broker (unless the configuration names a broker), creates the
topics, starts the Faust workers (which also run the scheduler) and the LM workers, waits
until they serve, and stops them all again: workers first, the broker last. `run_up` is the
foreground command around it.

Supervision: a Faust or LM worker that exits on its own is logged with the tail of its log
and **restarted** (same id, same LM instance), at most `max_restarts` times each; after that
it stays down and the rest keep running. The embedded broker keeps everything in memory, so
when it exits every topic, table and request in flight is gone. `alto up` says so, ends the
workers (they hold nothing worth saving: their offsets and state were on the broker) and
starts the whole stack again on an empty broker at the same address, at most `max_restarts`
times; then it exits 1. Clients see their connections drop and must send again the requests
that had no result; the end-to-end retry cannot help, its requests were on the broker too.

Every child runs in its own process group: a terminal's Ctrl-C reaches only `alto up`, which
then stops the children in order, and whatever a child leaves behind in its group (vLLM's
engine core) is ended with it. Only a SIGKILL of `alto up` itself can leave children running.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from alto.config import AltoConfig, EngineName
from alto.errors import AltoError, BrokerError, BrokerLost, ConfigError
from alto.infra.generations import assigned_topics
from alto.infra.processes import WorkerProcess, lm_worker_command, wait_assigned
from alto.infra.rotation import DEFAULT_GENERATION_S, FIRST, Rotation

log = logging.getLogger(__name__)


DEFAULT_LISTEN = "127.0.0.1:9092"
BROKER = "broker"
STATE_FILE = "stack.json"
# Prometheus file-based service discovery: one target per child with a metrics endpoint.
TARGETS_FILE = "prometheus_targets.json"


class Stack:
    """One deployment's processes, children of this one.

    `listen` (HOST:PORT) starts the embedded broker there; None uses
    `config.kafka.bootstrap_servers` and starts no broker. Logs, status files, `stack.json` (the
    children's pids and metrics ports) and `prometheus_targets.json` (the same ports as
    Prometheus file-based service discovery) go to `workdir` (default: a new temporary
    directory).
    """

    def __init__(
        self,
        config: AltoConfig,
        *,
        workers: int = 2,
        lm_instances: int = 1,
        engine: EngineName | None = None,
        listen: str | None = DEFAULT_LISTEN,
        workdir: Path | None = None,
        max_restarts: int = 3,
    ) -> None:
        if workers < 1:
            raise ConfigError(f"at least one Faust worker is needed, got {workers}")
        if not 0 <= lm_instances <= config.lm.max_instances:
            raise ConfigError(
                f"LM instances must be between 0 and {config.lm.max_instances} "
                f"(ALTO_LM__MAX_INSTANCES), got {lm_instances}"
            )
        self.workers = workers
        self.lm_instances = lm_instances
        self.engine: EngineName = engine or config.lm.engine
        self.listen = listen
        self.max_restarts = max_restarts
        self.workdir = (workdir or Path(tempfile.mkdtemp(prefix="alto-up-"))).resolve()
        # Children get this configuration whole, its paths made absolute (`child_env`).
        self.config = config.with_overrides(lm={"engine": self.engine})
        self.owners: dict[tuple[str, int], str] = {}
        self.topics: dict[str, int] = {}
        self._assigned_topics: list[str] = []
        self._procs: dict[str, WorkerProcess] = {}
        self._spawners: dict[str, Callable[[], WorkerProcess]] = {}
        self._restarts: collections.Counter[str] = collections.Counter()
        self._given_up: set[str] = set()
        self._metrics_ports: dict[str, int] = {}  # as last written to stack.json
        self._current: list[str] = []  # the Faust workers of the generation that ingests
        # Generations of the internal topics, on the embedded broker only (an external
        # broker has retention): `alto.infra.rotation`.
        every = self.config.generations.rotate_s
        if every is None:
            every = DEFAULT_GENERATION_S if listen is not None else 0.0
        self.rotation = Rotation(self, every) if every > 0 and listen is not None else None

    @property
    def bootstrap_servers(self) -> str:
        return self.config.kafka.bootstrap_servers

    def pids(self) -> dict[str, int]:
        """Name -> pid of each child (its latest process, after restarts)."""
        return {name: p.pid for name, p in self._procs.items()}

    def faust_workers(self) -> list[WorkerProcess]:
        """The Faust workers of the generation that ingests (the only one without
        rotation)."""
        return [self._procs[name] for name in self._current if name in self._procs]

    def faust_worker_names(self) -> list[str]:
        return list(self._current)

    def process(self, name: str) -> WorkerProcess:
        return self._procs[name]

    def has_process(self, name: str) -> bool:
        return name in self._procs

    def remove_process(self, name: str) -> None:
        """Stop a child for good (a retired generation's worker)."""
        proc = self._procs.pop(name, None)
        self._spawners.pop(name, None)
        if proc is not None:
            proc.stop()
        self._write_state()

    def spawn_faust_worker(self, index: int, config: AltoConfig) -> str:
        """Start Faust worker `index` of `config`'s generation; returns its name. Later
        generations' workers take a free metrics port (a fixed one is the first
        generation's)."""
        first = self.rotation is None or config.generation == FIRST
        name = f"worker-{index + 1}" if first else f"worker-{index + 1}.g{config.generation}"
        metrics = self._metrics_env(index) if first else {"ALTO_METRICS__PORT": "0"}
        self._spawn(name, self._faust_spawner(name, config, metrics))
        return name

    def respawn_without_ingest(self, name: str, config: AltoConfig) -> None:
        """From now on, a restart of `name` runs without the ingest role."""
        roles = tuple(r for r in config.roles if r != "ingest")
        metrics = {"ALTO_METRICS__PORT": "0"} if self.config.metrics.port > 0 else {}
        self._spawners[name] = self._faust_spawner(
            name, config.with_overrides(roles=roles), metrics
        )

    def _faust_spawner(
        self, name: str, config: AltoConfig, env: dict[str, str]
    ) -> Callable[[], WorkerProcess]:
        loglevel = config.log_level.lower()
        env = {**env, **self._compute_env()}
        return functools.partial(
            WorkerProcess, config, name, self.workdir, loglevel=loglevel, env=env, own_group=True
        )

    def use_generation(self, config: AltoConfig, names: list[str], topics: list[str]) -> None:
        """`config`'s generation ingests from now on, with workers `names` owning `topics`."""
        self.config = config
        self._current = names
        self._assigned_topics = topics
        self._write_state()

    def metrics_ports(self) -> dict[str, int]:
        """Name -> the port of each child's `/metrics`, as its status file says (children
        that have not bound theirs yet, or run without one, are left out)."""
        ports = {}
        for name, proc in self._procs.items():
            port = (proc.status() or {}).get("metrics_port") if name != BROKER else None
            if isinstance(port, int):
                ports[name] = port
        return ports

    def _compute_env(self) -> dict[str, str]:
        """The Faust workers split this host's cores (`AltoConfig.compute_threads`), unless
        the configuration fixes a number."""
        if self.config.compute_threads > 0:
            return {}
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        threads = max(1, (cores or os.cpu_count() or 1) // max(1, self.workers))
        return {"ALTO_COMPUTE_THREADS": str(threads)}

    def _metrics_env(self, index: int) -> dict[str, str]:
        """A fixed ALTO_METRICS__PORT (> 0) is the first of consecutive ports, one per
        child in start order; 0 (a free port each) and negative (none) pass unchanged."""
        base = self.config.metrics.port
        return {"ALTO_METRICS__PORT": str(base + index)} if base > 0 else {}

    # -- start -------------------------------------------------------------------------

    def start(self) -> Stack:
        """Start the broker (if embedded), create the topics, start every worker.
        On any failure, everything started so far is stopped before the error propagates."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from alto.agents.runtime import create_app
        from alto.kafka import ensure_topics
        from alto.streams.registry import all_topologies

        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.rotation is not None:
            self.config = self.rotation.first_config(self.config)
        if self.listen is not None:
            self._start_broker(self.listen)
        app = create_app(self.config, all_topologies(self.config))
        self.topics = ensure_topics(self.config, app.topic_partitions())
        self._assigned_topics = assigned_topics(app)
        self._current = [self.spawn_faust_worker(i, self.config) for i in range(self.workers)]
        for i in range(self.lm_instances):
            self._spawn(
                f"lm-{i}",
                functools.partial(
                    WorkerProcess,
                    self.config,
                    f"lm-{i}",
                    self.workdir,
                    command=lm_worker_command(i, self.engine),
                    env=self._metrics_env(self.workers + i),
                    own_group=True,
                ),
            )
        self._write_state()

    def _start_broker(self, listen: str) -> None:
        # EmbeddedBroker gives the command line and the address; the process itself runs as
        # a WorkerProcess, for its log file and its own process group (EmbeddedBroker.start
        # would leave it in ours, where a terminal's Ctrl-C would stop it before the workers).
        from alto.infra.broker import (
            EmbeddedBroker,
            connect_host,
            parse_listen,
            tansu_log_env,
            wait_for_port,
        )

        host, port = parse_listen(listen)
        connect = connect_host(host)
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            # As the broker's own listener does: a previous broker's closed connections
            # (TIME_WAIT) must not make a restart on the same port look taken.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise BrokerError(
                    f"cannot listen on {listen} ({exc.strerror}); to use the broker already "
                    "there, set ALTO_KAFKA__BOOTSTRAP_SERVERS"
                ) from exc
        broker = EmbeddedBroker(host, port, long_poll=self.config.kafka.long_poll)
        self.config = self.config.with_overrides(
            kafka={"bootstrap_servers": f"{connect}:{port}"},
        )
        self._spawn(
            BROKER,
            functools.partial(
                WorkerProcess,
                self.config,
                BROKER,
                self.workdir,
                command=broker.command(),
                env=tansu_log_env(),
                own_group=True,
            ),
        )
        wait_for_port(connect, port, 20.0, self._procs[BROKER].proc)

    def _spawn(self, name: str, spawner: Callable[[], WorkerProcess]) -> None:
        for old in self.workdir.glob(f"{name}.log.*"):  # restart logs of an earlier run
            old.unlink()
        self._spawners[name] = spawner
        self._procs[name] = spawner()

    def _write_state(self) -> None:
        self._metrics_ports = self.metrics_ports()
        state = {
            "pid": os.getpid(),
            "bootstrap_servers": self.bootstrap_servers,
            "engine": self.engine,
            "children": self.pids(),
            "metrics_ports": self._metrics_ports,
        }
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        host = self._metrics_host()
        targets = [
            {"targets": [f"{host}:{port}"], "labels": {"alto_process": name}}
            for name, port in self._metrics_ports.items()
        ]
        (self.workdir / TARGETS_FILE).write_text(json.dumps(targets, indent=2) + "\n")

    def _metrics_host(self) -> str:
        host = self.config.metrics.host
        return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # noqa: S104

    # -- ready -------------------------------------------------------------------------

    def wait_ready(self, timeout_s: float = 600.0) -> None:
        """Wait until the Faust workers own every partition of the pipelines' topics (and the
        sink, requests and LM requests topics) and every LM instance reports its status.
        A child that exits meanwhile fails this at once (with the tail of its log)."""
        deadline = time.monotonic() + timeout_s
        try:
            self._check_alive()
            self.owners = wait_assigned(
                self.faust_workers(), self._assigned_topics, self.config.kafka.partitions, timeout_s
            )
            if self.lm_instances:
                from alto.infra.client import wait_lm_reporting

                wait_lm_reporting(
                    self.config,
                    range(self.lm_instances),
                    max(1.0, deadline - time.monotonic()),
                    check=self._check_alive,
                )
        except (TimeoutError, RuntimeError) as exc:
            raise AltoError(f"the stack did not become ready: {exc}") from exc
        self._write_state()  # every child has written its status: the metrics ports too

    def _check_alive(self) -> None:
        for name, proc in self._procs.items():
            if not proc.alive():
                raise AltoError(
                    f"{name} exited with code {proc.proc.returncode} during startup; "
                    f"the end of {proc.log_file}:\n{proc.log_tail(20)}"
                )

    def ready_line(self) -> str:
        """The one machine-readable line `alto up` prints once ready (workdir last: a path)."""
        return (
            f"alto up: ready bootstrap={self.bootstrap_servers} workers={self.workers} "
            f"lm_instances={self.lm_instances} engine={self.engine} workdir={self.workdir}"
        )

    def summary(self) -> str:
        """A few lines for people: what runs where."""
        per_worker = collections.Counter(self.owners.values())
        broker = (
            f"embedded Tansu on {self.bootstrap_servers}, pid {self._procs[BROKER].pid} "
            "(memory storage: its data is gone when it stops)"
            if BROKER in self._procs
            else f"external, {self.bootstrap_servers}"
        )
        lines = [
            f"  broker: {broker}",
            f"  topics: {len(self.topics)} (prefix {self.config.kafka.topic_prefix!r})"
            + (
                f"; internal ones rotate every {self.rotation.every_s:g} s (generations)"
                if self.rotation is not None
                else ""
            ),
            "  Faust workers (stages and scheduler): "
            + ", ".join(
                f"{w.worker_id} (pid {w.pid}, {per_worker[w.worker_id]} partitions)"
                for w in self.faust_workers()
            ),
        ]
        if self.lm_instances:
            lms = [self._procs[f"lm-{i}"] for i in range(self.lm_instances)]
            lines.append(
                f"  LM workers ({self.engine}): "
                + ", ".join(f"{p.worker_id} (pid {p.pid})" for p in lms)
            )
        if self._metrics_ports:
            host = self._metrics_host()
            lines.append(
                "  metrics: "
                + ", ".join(
                    f"{n} http://{host}:{p}/metrics" for n, p in self._metrics_ports.items()
                )
                + f" (Prometheus targets: {TARGETS_FILE})"
            )
        lines.append(f"  logs and {STATE_FILE}: {self.workdir}")
        env = (
            f"ALTO_KAFKA__BOOTSTRAP_SERVERS={self.bootstrap_servers} "
            if self.bootstrap_servers != DEFAULT_LISTEN
            else ""
        )
        lines.append(
            f'  try: {env}alto submit --pipeline claims "the Moon"; '
            f"{env}alto results --follow   (Ctrl-C here stops everything)"
        )
        return "\n".join(lines)

    # -- supervise ---------------------------------------------------------------------

    def supervise(self) -> None:
        """Check the children once. A worker that exited is logged and restarted (at most
        `max_restarts` times); raises BrokerError when the embedded broker exited.
        A child's new metrics port (after a restart) is written to `stack.json`."""
        if self.metrics_ports() != self._metrics_ports:
            self._write_state()
        for name, proc in list(self._procs.items()):
            if proc.alive() or name in self._given_up:
                continue
            log.warning(
                "%s (pid %d) exited with code %s; the end of %s:\n%s",
                name,
                proc.pid,
                proc.proc.returncode,
                proc.log_file,
                proc.log_tail(20),
            )
            proc.stop()  # closes its log, ends what it left in its process group
            if name == BROKER:
                raise BrokerLost(
                    f"the embedded broker exited with code {proc.proc.returncode}; it kept "
                    "every topic in memory, so all topics, tables and requests in flight "
                    "are gone"
                )
            if self._restarts[name] >= self.max_restarts:
                log.error("%s exited %d times: not restarting it", name, self.max_restarts + 1)
                self._given_up.add(name)
                continue
            self._restarts[name] += 1
            proc.log_file.replace(proc.log_file.with_name(f"{name}.log.{self._restarts[name]}"))
            self._procs[name] = self._spawners[name]()
            log.warning(
                "restarted %s as pid %d (restart %d of at most %d)",
                name,
                self._procs[name].pid,
                self._restarts[name],
                self.max_restarts,
            )
            self._write_state()
        if self.rotation is not None:
            self.rotation.step()

    def restart_after_broker_loss(self, ready_timeout_s: float) -> None:
        """Start the stack again from nothing after the embedded broker exited: end the
        workers at once (SIGKILL; what they hold was on the broker), then start and wait as
        `start` and `wait_ready` do, on the same address."""
        for name, proc in list(self._procs.items()):
            if name != BROKER and proc.alive():
                proc.kill()
        self.stop(timeout_s=5.0)
        self._procs.clear()
        self._spawners.clear()
        self._restarts.clear()
        self._given_up.clear()
        self.start()
        self.wait_ready(ready_timeout_s)

    # -- stop --------------------------------------------------------------------------

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop every child: the workers together (SIGTERM; SIGKILL for any still running
        after `timeout_s`), then the broker. Idempotent; one child's failure to stop does
        not keep the others running."""
        workers = [name for name in self._procs if name != BROKER]
        for name in workers:
            self._procs[name].terminate()
        deadline = time.monotonic() + timeout_s
        for name in [*workers, BROKER]:
            proc = self._procs.get(name)
            if proc is None:
                continue
            try:
                proc.stop(max(0.1, deadline - time.monotonic()) if name != BROKER else 10.0)
            except Exception:
                log.exception("could not stop %s (pid %d)", name, proc.pid)
            del self._procs[name]
        for name in (STATE_FILE, TARGETS_FILE):
            with contextlib.suppress(OSError):
                (self.workdir / name).unlink()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
