"""`alto up` as a user runs it: the whole stack in one foreground process, used by an
external client that knows only Kafka, Avro and the two `.avsc` contract files."""

from __future__ import annotations

import io
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import fastavro
import psutil
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from fastavro.schema import fingerprint, to_parsing_canonical_form

from alto.infra.broker import free_port

REPO = Path(__file__).resolve().parents[2]
REQUESTS_TOPIC = "alto.requests"  # the contract's default names (prefix `alto.`)
RESULTS_TOPIC = "alto.results"


# -- an external client: confluent-kafka, fastavro and the .avsc files, nothing of ours ----


class SingleObjectCodec:
    """Avro single-object encoding by hand: C3 01, the writer schema's CRC-64-AVRO
    fingerprint (8 bytes, little-endian), then the schemaless Avro body."""

    def __init__(self, avsc: Path) -> None:
        raw = json.loads(avsc.read_text())
        self.schema = fastavro.parse_schema(raw)
        self.header = b"\xc3\x01" + bytes.fromhex(
            fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO")
        )

    def encode(self, record: dict[str, Any]) -> bytes:
        body = io.BytesIO()
        fastavro.schemaless_writer(body, self.schema, record)
        return self.header + body.getvalue()

    def decode(self, data: bytes) -> dict[str, Any] | None:
        """The record, or None for a message not written with this schema."""
        if not data.startswith(self.header):
            return None
        record = fastavro.schemaless_reader(io.BytesIO(data[len(self.header) :]), self.schema)
        assert isinstance(record, dict)
        return record


def submit_and_wait(
    bootstrap: str, pipeline: str, text: str, timeout_s: float
) -> tuple[str, dict[str, Any]]:
    """Produce one PipelineRequest, then read the results topic until its result arrives."""
    requests = SingleObjectCodec(REPO / "schemas" / "pipeline_request.avsc")
    results = SingleObjectCodec(REPO / "schemas" / "pipeline_result.avsc")
    request_id = uuid.uuid4().hex
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(
        REQUESTS_TOPIC,
        key=request_id.encode(),
        value=requests.encode(
            {
                "request_id": request_id,
                "pipeline": pipeline,
                "input": text,
                "submitted_at_ms": int(time.time() * 1000),
                "mode": None,
            }
        ),
    )
    assert producer.flush(30) == 0, "request not delivered"
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"external-{request_id}",  # required; manual assignment never joins it
            "enable.auto.commit": False,
        }
    )
    try:
        parts = consumer.list_topics(RESULTS_TOPIC, timeout=10).topics[RESULTS_TOPIC].partitions
        consumer.assign([TopicPartition(RESULTS_TOPIC, p, OFFSET_BEGINNING) for p in parts])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None or msg.key() != request_id.encode():
                continue
            record = results.decode(msg.value())
            if record is not None and record["request_id"] == request_id:
                return request_id, record
        raise AssertionError(f"no result for {request_id} within {timeout_s:.0f} s")
    finally:
        consumer.close()


# -- `alto up` in a subprocess ---------------------------------------------------------------


class UpProcess:
    """`alto up ...` with stdout read line by line (in a thread) and stderr in a file."""

    def __init__(
        self,
        args: list[str],
        tmp: Path,
        *,
        cwd: Path = REPO,
        data_dir: str | None = None,
        env_extra: dict[str, str] | None = None,
    ) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("ALTO_KAFKA__BOOTSTRAP_SERVERS", "ALTO_KAFKA__TOPIC_PREFIX", "ALTO_APP_ID")
        }
        env["ALTO_DATA_DIR"] = data_dir or str(tmp / "data")
        env["PYTHONUNBUFFERED"] = "1"
        env.update(env_extra or {})
        self.stderr_path = tmp / "up.stderr"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "alto", "up", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="up-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_line(self, prefix: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"alto up exited ({self.proc.wait()}):\n{self.output()}")
            self.lines.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no {prefix!r} line within {timeout_s:.0f} s:\n{self.output()}")

    def output(self) -> str:
        return "\n".join(self.lines) + "\n--- stderr ---\n" + self.stderr_path.read_text()[-6000:]

    def close(self) -> None:
        """Whatever happened: stop `alto up` if it still runs, and the reader thread."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._stderr.close()


def _ready_fields(line: str) -> dict[str, str]:
    head, _, workdir = line.partition(" workdir=")
    fields = dict(kv.split("=", 1) for kv in head.removeprefix("alto up: ready ").split())
    fields["workdir"] = workdir
    return fields


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def run_up_and_submit(
    tmp: Path,
    *,
    engine: str,
    workers: int,
    lm_instances: int,
    pipeline: str = "factool",
    text: str = "Who was Marie Curie?",
    ready_timeout_s: float,
    result_timeout_s: float,
    calls_lm: bool = True,
    up_args: tuple[str, ...] = (),
    **up_options: Any,
) -> dict[str, Any]:
    """Start `alto up`, wait for its ready line, serve one request of `pipeline` through an
    external client, then SIGINT it: it must exit 0 and leave no process behind. A result is
    labelled simulated when the pipeline `calls_lm` on the sim engine.
    `up_args` are more flags of `alto up`; `up_options` go to `UpProcess` (another working
    folder, a relative data folder...).
    Returns the decoded PipelineResult."""
    port = free_port()
    t0 = time.monotonic()
    up = UpProcess(
        [
            "--engine",
            engine,
            "--workers",
            str(workers),
            "--lm-instances",
            str(lm_instances),
            "--listen",
            f"127.0.0.1:{port}",
            "--timeout",
            str(ready_timeout_s),
            *up_args,
        ],
        tmp,
        **up_options,
    )
    descendants: list[psutil.Process] = []
    try:
        ready = up.wait_line("alto up: ready", ready_timeout_s + 30)
        fields = _ready_fields(ready)
        assert fields == {
            "bootstrap": f"127.0.0.1:{port}",
            "workers": str(workers),
            "lm_instances": str(lm_instances),
            "engine": engine,
            "workdir": str(tmp / "data" / "up"),
        }
        print(f"ready after {time.monotonic() - t0:.1f} s")
        descendants = psutil.Process(up.proc.pid).children(recursive=True)
        state = json.loads((Path(fields["workdir"]) / "stack.json").read_text())
        children = state["children"]
        assert state["pid"] == up.proc.pid
        assert set(children) == {
            "broker",
            *(f"worker-{i + 1}" for i in range(workers)),
            *(f"lm-{i}" for i in range(lm_instances)),
        }
        assert set(children.values()) <= {p.pid for p in descendants}

        t1 = time.monotonic()
        request_id, result = submit_and_wait(fields["bootstrap"], pipeline, text, result_timeout_s)
        print(f"result after {time.monotonic() - t1:.1f} s: {result['status']}")
        assert result["request_id"] == request_id and result["pipeline"] == pipeline
        assert result["status"] == "OK", result["error"]
        assert result["simulated"] is (calls_lm and engine == "sim")

        t2 = time.monotonic()
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(120) == 0, up.output()
        up.wait_line("alto up: stopped", 10)
        print(f"stopped in {time.monotonic() - t2:.1f} s")
        # Every process started under `alto up` (vLLM's engine core included) is gone.
        deadline = time.monotonic() + 10
        while _alive(descendants) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _alive(descendants)
        assert not left, f"left running: {[p.cmdline() for p in left]}"
        return result
    finally:
        up.close()
        for p in _alive(descendants):  # only after a failure above
            p.kill()


def _assert_claims(result: dict[str, Any]) -> None:
    """A FacTool report: an answer, and every claim with evidence and a verdict."""
    assert result["status"] == "OK", result["error"]
    output = json.loads(result["output"])
    assert output["answer"] and output["claims"]
    for claim in output["claims"]:
        assert claim["claim"] and claim["evidence"]
        assert claim["verdict"] in ("supported", "refuted", "unverifiable")


def test_up_serves_an_external_client_on_the_sim_engine(tmp_path: Path) -> None:
    result = run_up_and_submit(
        tmp_path,
        engine="sim",
        workers=1,
        lm_instances=2,
        ready_timeout_s=180,
        result_timeout_s=120,
    )
    _assert_claims(result)


def test_an_installed_copy_serves_from_another_folder_with_a_relative_data_dir(
    tmp_path: Path,
) -> None:
    """`pip install .` puts one name, `alto`, into site-packages; that copy (not this
    checkout) runs `alto up` from a folder of its own with `ALTO_DATA_DIR=data`, and its child
    processes find the same data folder (the parent resolves paths before it starts them)."""
    wheels, site, source = tmp_path / "wheels", tmp_path / "site", tmp_path / "source"
    # A copy of the sources (symlinks as links): setuptools builds inside the tree it builds.
    shutil.copytree(
        REPO,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".*", "build", "bench-out", "*.egg-info", "__pycache__", "tests"
        ),
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("alto_kafka-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    top = {p.name for p in site.iterdir() if p.name != "bin"}  # bin: the `alto` script
    assert top == {"alto", wheel.name.split("-py3")[0] + ".dist-info"}, top
    assert not any(p.is_symlink() for p in (site / "alto").iterdir())  # real files
    assert (site / "alto" / "schemas" / "pipeline_request.avsc").is_file()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import alto.agents.app, alto; print(alto.__file__)"],
        cwd=elsewhere,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip() == str(site / "alto" / "__init__.py")
    result = run_up_and_submit(
        elsewhere,
        engine="sim",
        workers=1,
        lm_instances=1,
        pipeline="claims",
        ready_timeout_s=180,
        result_timeout_s=120,
        cwd=elsewhere,
        data_dir="data",
        env_extra=env,
    )
    assert result["status"] == "OK", result["error"]
    assert (elsewhere / "data" / "up" / "worker-1.log").is_file()


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_up_serves_an_external_client_on_vllm(tmp_path: Path) -> None:
    result = run_up_and_submit(
        tmp_path,
        engine="vllm",
        workers=1,
        lm_instances=1,
        ready_timeout_s=480,
        result_timeout_s=240,
    )
    _assert_claims(result)


@pytest.mark.parametrize(
    "engine",
    [
        "sim",
        pytest.param("vllm", marks=[pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(900)]),
    ],
)
def test_a_killed_up_leaves_no_process_behind(tmp_path: Path, engine: str) -> None:
    """SIGKILL of `alto up` runs none of its cleanup: its children must still end, within
    10 s, on their own (infra/lifetime.py). Every process of the stack counts: the broker,
    the Faust workers, the LM workers and anything they started (vLLM's engine core)."""
    port = free_port()
    up = UpProcess(
        ["--engine", engine, "--workers", "1", "--lm-instances", "1", "--listen",
         f"127.0.0.1:{port}", "--timeout", "480"],
        tmp_path,
    )  # fmt: skip
    descendants: list[psutil.Process] = []
    try:
        up.wait_line("alto up: ready", 510)
        descendants = psutil.Process(up.proc.pid).children(recursive=True)
        names = {p.pid: " ".join(p.cmdline()) for p in descendants}
        assert any("tansu" in c for c in names.values()), names
        # The broker, a Faust worker (its title is Faust's), an LM worker (and vLLM's core).
        assert len(names) >= (4 if engine == "vllm" else 3), names
        up.proc.send_signal(signal.SIGKILL)
        assert up.proc.wait(10) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while _alive(descendants) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _alive(descendants)
        assert not left, f"left running 10 s after SIGKILL: {[names[p.pid] for p in left]}"
    finally:
        up.close()
        for p in _alive(descendants):  # only after a failure above
            p.kill()


@pytest.mark.slow
def test_a_lost_broker_restarts_the_stack_on_an_empty_one(tmp_path: Path) -> None:
    """The embedded broker dies (SIGKILL): `alto up` says that everything it held is gone,
    starts the whole stack again on an empty broker at the same address, and serves."""
    port = free_port()
    up = UpProcess(
        ["--engine", "sim", "--workers", "1", "--lm-instances", "1", "--listen",
         f"127.0.0.1:{port}", "--timeout", "300"],
        tmp_path,
    )  # fmt: skip
    try:
        ready = up.wait_line("alto up: ready", 330)
        workdir = Path(_ready_fields(ready)["workdir"])
        before = json.loads((workdir / "stack.json").read_text())["children"]
        os.kill(before["broker"], signal.SIGKILL)
        lost = up.wait_line("alto up: the embedded broker exited", 30)
        assert "are gone" in lost and "restart 1 of at most" in lost, lost
        again = up.wait_line("alto up: ready", 330)
        assert _ready_fields(again)["bootstrap"] == f"127.0.0.1:{port}"
        after = json.loads((workdir / "stack.json").read_text())["children"]
        assert set(after) == set(before)
        assert not set(after.values()) & set(before.values()), "every process is new"
        _, result = submit_and_wait(f"127.0.0.1:{port}", "example", "One. Two words.", 120)
        assert result["status"] == "OK", result["error"]
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(120) == 0, up.output()
    finally:
        up.close()
