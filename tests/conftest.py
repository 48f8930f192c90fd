"""Fixtures: a real Kafka-compatible broker, fresh topic prefixes, leak checks; and each
test's tier marker, from its folder."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from alto.config import AltoConfig
from tests.harness import docker_engine_available, fresh_config, kafka_container

TESTS = Path(__file__).resolve().parent
# A test's folder is its tier (one mechanism: no test marks its own tier). `vllm` and `slow`
# stay explicit.
FOLDER_MARKERS = {
    "unit": ("unit",),
    "integration": ("integration",),
    "reliability": ("integration", "reliability"),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        folder = Path(str(item.fspath)).resolve().relative_to(TESTS).parts[0]
        for marker in FOLDER_MARKERS.get(folder, ()):
            item.add_marker(marker)


@pytest.fixture(scope="session")
def bootstrap_servers() -> Iterator[str]:
    """`ALTO_KAFKA__BOOTSTRAP_SERVERS` if set, else testcontainers' Kafka if Docker answers,
    else the embedded broker (Tansu) on a free port."""
    configured = os.environ.get("ALTO_KAFKA__BOOTSTRAP_SERVERS")
    if configured:
        yield configured
    elif docker_engine_available():
        with kafka_container() as bootstrap:
            yield bootstrap
    else:
        from alto.infra.broker import EmbeddedBroker

        with EmbeddedBroker() as broker:
            yield broker.bootstrap_servers


@pytest.fixture
def own_broker(bootstrap_servers: str) -> Iterator[str]:
    """A broker of the test's own where the suite runs on the embedded one: a test that judges
    the stack's drift must not inherit what the rest of the suite stored there (a CI run's
    soak began on 133k records in 51k batches). A configured or containerised broker is
    shared as it is (it has retention)."""
    if os.environ.get("ALTO_KAFKA__BOOTSTRAP_SERVERS") or docker_engine_available():
        yield bootstrap_servers
        return
    from alto.infra.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers


@pytest.fixture
def alto_config(bootstrap_servers: str, tmp_path: Path) -> AltoConfig:
    return fresh_config(bootstrap_servers, tmp_path)


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves child processes or threads behind."""
    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    threads_before = {t.ident for t in threading.enumerate()}
    yield
    leaked = [p for p in me.children(recursive=True) if p.pid not in children_before]
    leaked = [p for p in leaked if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in leaked:
        p.kill()
    assert not leaked, f"test left processes running: {[p.cmdline() for p in leaked]}"
    # Daemon threads of third-party clients wind down asynchronously; give them a moment.
    for _ in range(50):
        extra = [t for t in threading.enumerate() if t.ident not in threads_before and t.is_alive()]
        if not extra:
            break
        threading.Event().wait(0.1)
    assert not extra, f"test left threads running: {[t.name for t in extra]}"
