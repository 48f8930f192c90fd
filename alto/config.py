"""The one frozen configuration object, and the only place environment variables are read."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from alto.errors import ConfigError

# The setting's spelling of the wire enum `alto.schemas.messages.Mode` (a literal, for pydantic).
ModeName = Literal["streaming", "baseline"]
# The names settings choose from; the code that implements them imports these.
EngineName = Literal["vllm", "sim"]
PolicyName = Literal["round_robin", "least_loaded", "prefix_hash", "cache_aware", "prompt_aware"]
Role = Literal["ingest", "stages", "sink", "scheduler"]

ENV_PREFIX = "ALTO_"


class KafkaSecurity(BaseModel):
    """Kafka security settings passed through to every client (SASL/SSL)."""

    model_config = ConfigDict(frozen=True)

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None


class AltoConfig(BaseModel):
    """Everything a process of ours needs to know, validated once at the edge."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = "alto."
    partitions: int = Field(default=8, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1)
    app_id: str = "alto"
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    mode: ModeName = "streaming"
    data_dir: Path = Path(".alto-data")
    # Short group timeouts keep rebalances (and tests) fast; see the design notes.
    session_timeout_s: float = Field(default=10.0, gt=0)
    heartbeat_interval_s: float = Field(default=1.0, gt=0)
    # How long a consumer fetch may wait for data (see agents/transport.py for why it is low).
    fetch_max_wait_ms: int = Field(default=10, ge=1, le=10_000)
    max_message_bytes: int = Field(default=1_000_000, gt=1024)
    max_input_chars: int = Field(default=20_000, gt=0)
    # Admission (streams/admission.py): requests in flight at once, over all ingest workers;
    # past it a request fails at once with OVERLOADED (0: no limit). One not finished after
    # `admission_ttl_s` no longer counts.
    max_inflight_requests: int = Field(default=1024, ge=0)
    admission_ttl_s: float = Field(default=300.0, gt=0)
    # A request admitted this long ago with no result is replayed from its root, once
    # (streams/admission.py; 0: never).
    request_retry_s: float = Field(default=120.0, ge=0)
    # Bounded state (streams/processor.py `StageProcessor.expire`, agents/runtime.py): every
    # `state_sweep_s` a worker drops done markers older than `state_retention_s` (they
    # dedupe late replays, so keep them longer than `request_retry_s`), fails a request whose
    # node has been open for `request_deadline_s` (0: never) naming the stage that holds it,
    # and forgets results older than `results_retention_s` (a replay after that would be
    # answered again). A node's trace keeps at most `max_trace_spans` spans.
    state_retention_s: float = Field(default=600.0, gt=0)
    request_deadline_s: float = Field(default=300.0, ge=0)
    results_retention_s: float = Field(default=600.0, gt=0)
    state_sweep_s: float = Field(default=10.0, gt=0)
    max_trace_spans: int = Field(default=256, ge=1)
    # Producer batching of the Faust workers (ms a produce waits to gather more records):
    # the embedded broker's fetch costs grow with every batch a partition ever stored.
    producer_linger_ms: int = Field(default=5, ge=0, le=1000)
    # Standby replicas of each table (a warm copy on another worker: fast failover, but each
    # one fetches the changelog again). None: one where it is safe (agents/runtime.py).
    standby_replicas: int | None = Field(default=None, ge=0, le=8)
    status_file: Path | None = None
    # Generations of the internal topics (`alto.infra.generations`): generation N > 0 names
    # every internal topic `<prefix>gN.<name>` and its consumer groups `<app id>-gN`, so a
    # drained generation can be deleted whole (the embedded broker cannot trim a log).
    # Contract topics (requests, results, dead letters) are never generational.
    generation: int = Field(default=0, ge=0)
    # Where this generation's ingest starts: a JSON file {partition: offset} of the requests
    # topic, written once the previous generation has stopped ingesting; ingest waits for it
    # and skips what the previous generation handled (None: ingest at once).
    ingest_handoff: Path | None = None
    # An LM worker serving every live generation reads which are live here (a JSON object
    # {"live": [N, ...]}, written by `alto up`); None: it serves `generation` alone.
    generations_file: Path | None = None
    # `alto up` on the embedded broker: how long a generation takes new requests before the
    # next replaces it (0: one generation forever; None: `alto.infra.rotation`'s default on
    # the embedded broker, never on an external one; see `alto.infra.generations`).
    generation_s: float | None = Field(default=None, ge=0)
    # Prometheus endpoint (alto/metrics.py): 0 = a free port the OS picks (several workers
    # per host), written to the status file and logged; negative = no endpoint.
    metrics_port: int = Field(default=0, le=65535)
    metrics_host: str = "0.0.0.0"  # noqa: S104 - a scrape target listens on every interface
    # LM service: the most LM instances (partitions of the work topic), status interval.
    lm_max_instances: int = Field(default=8, ge=1, le=1024)
    lm_status_interval_s: float = Field(default=1.0, gt=0)
    lm_max_inflight: int = Field(default=64, ge=1)
    # How long an LM worker's producer gathers quanta into one request: a few ms of latency
    # per quantum buys far fewer produce requests while many generations stream at once.
    lm_linger_ms: int = Field(default=5, ge=0, le=1000)
    engine: EngineName = "vllm"
    model_dir: Path | None = None
    model_cache_dir: Path = Path.home() / ".cache" / "alto" / "models"
    sim_time_scale: float = Field(default=1.0, gt=0)
    # Scheduler: policy (scheduler/policy.py), admission control.
    scheduler_policy: PolicyName = "prompt_aware"
    scheduler_saturation: int = Field(default=128, ge=1)  # calls per instance = saturated
    scheduler_queue: int = Field(default=256, ge=0)  # calls waiting at the scheduler, at most
    # Retrieval corpus: a JSONL file (id, title, text); None: WordNet (Debian's wordnet-base).
    corpus: Path | None = None
    # Load what the pipelines' stages need (index, encoder) when a worker starts, not on its
    # first request (off in most tests: every test worker would load them).
    warmup: bool = True
    # Corpus passages whose token embeddings a worker keeps for reranking (0: none; the
    # FacTool benchmark uses 0 so that no system gains from another's run of a question).
    passage_cache: int = Field(default=4096, ge=0)
    # Threads of a worker's CPU compute (MiniLM's forward passes; torch's intra-op pool).
    # 0: torch's default, every core. Workers sharing a host should split its cores: two
    # 2-thread pools on 2 cores cost 37% more CPU per forward pass than two 1-thread pools
    # (spinning, waiting on each other); `alto up` sets cores // Faust workers.
    compute_threads: int = Field(default=0, ge=0, le=1024)
    sim_params: Path | None = None  # JSON of SimParams (from `alto bench lm`); None: defaults
    # Which pipelines (empty: all registered) and which agents this worker runs.
    pipelines: tuple[str, ...] = ()
    # The user's pipelines: modules (`module` or `module:callable`) whose callable returns a
    # Pipeline, loaded by every process (streams/registry.py).
    pipeline_modules: tuple[str, ...] = ()
    roles: tuple[Role, ...] = ("ingest", "stages", "sink", "scheduler")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    security: KafkaSecurity = KafkaSecurity()
    # Extra Faust app settings, applied over ours (`ALTO_EXTRA`, a JSON object).
    extra: Mapping[str, Any] = Field(default_factory=dict)

    @field_validator("pipelines", "roles", "pipeline_modules", mode="before")
    @classmethod
    def _split_lists(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _markers_outlive_the_retry(self) -> AltoConfig:
        # A replay from the root must find the done markers (they drop replayed inputs and
        # resend the node's output) and the result (else the request is answered twice).
        if self.request_retry_s > 0:
            for name in ("state_retention_s", "results_retention_s"):
                if getattr(self, name) <= self.request_retry_s:
                    raise ValueError(
                        f"{name} ({getattr(self, name)} s) must exceed request_retry_s "
                        f"({self.request_retry_s} s): a replay must find what the first "
                        "attempt left"
                    )
        return self

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_topic_safe(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not value or not set(value) <= allowed:
            raise ValueError(f"topic prefix {value!r} may only use letters, digits, '.', '_', '-'")
        return value

    def topic(self, name: str) -> str:
        """The full name of one of our contract topics, e.g. ``topic('requests')``."""
        return f"{self.topic_prefix}{name}"

    @property
    def internal_prefix(self) -> str:
        """The prefix of this generation's internal topics (stage topics, sink, LM)."""
        return generation_prefix(self.topic_prefix, self.generation)

    @property
    def group_id(self) -> str:
        """This generation's Faust app id: its consumer group and changelog topics' prefix."""
        return self.app_id if self.generation == 0 else f"{self.app_id}-g{self.generation}"

    def internal(self, name: str) -> str:
        """The full name of one of this generation's internal topics."""
        return f"{self.internal_prefix}{name}"

    @property
    def requests_topic(self) -> str:
        return self.topic("requests")

    @property
    def results_topic(self) -> str:
        return self.topic("results")

    @property
    def dlq_topic(self) -> str:
        return self.topic("dlq")

    @property
    def sink_topic(self) -> str:
        return self.internal("sink")

    @property
    def lm_requests_topic(self) -> str:
        return self.internal("lm.requests")

    @property
    def lm_work_topic(self) -> str:
        """Partition i is LM instance i's queue."""
        return self.internal("lm.work")

    @property
    def lm_status_topic(self) -> str:
        return self.internal("lm.status")

    @property
    def lm_assignments_topic(self) -> str:
        """Compacted: the scheduler's shared prompt -> instances table."""
        return self.internal("lm.assignments")

    @property
    def compacted_topics(self) -> frozenset[str]:
        """Topics created with cleanup.policy=compact (latest value per key is what counts)."""
        return frozenset({self.lm_assignments_topic})

    def with_overrides(self, **changes: Any) -> AltoConfig:
        """A copy with some fields changed, validated again."""
        try:
            return AltoConfig.model_validate({**self.model_dump(), **changes})
        except ValidationError as exc:
            raise ConfigError(str(exc)) from exc


def generation_prefix(topic_prefix: str, generation: int) -> str:
    """Internal topics' prefix of `generation` (0: the plain prefix, for one-generation
    deployments)."""
    return topic_prefix if generation == 0 else f"{topic_prefix}g{generation}."


_ENV_FIELDS: dict[str, str] = {
    "BOOTSTRAP_SERVERS": "bootstrap_servers",
    "TOPIC_PREFIX": "topic_prefix",
    "PARTITIONS": "partitions",
    "REPLICATION_FACTOR": "replication_factor",
    "APP_ID": "app_id",
    "WORKER_ID": "worker_id",
    "MODE": "mode",
    "DATA_DIR": "data_dir",
    "SESSION_TIMEOUT_S": "session_timeout_s",
    "STATUS_FILE": "status_file",
    "GENERATION": "generation",
    "INGEST_HANDOFF": "ingest_handoff",
    "GENERATIONS_FILE": "generations_file",
    "GENERATION_S": "generation_s",
    "METRICS_PORT": "metrics_port",
    "METRICS_HOST": "metrics_host",
    "LOG_LEVEL": "log_level",
    "MAX_INPUT_CHARS": "max_input_chars",
    "MAX_INFLIGHT_REQUESTS": "max_inflight_requests",
    "ADMISSION_TTL_S": "admission_ttl_s",
    "REQUEST_RETRY_S": "request_retry_s",
    "STATE_RETENTION_S": "state_retention_s",
    "REQUEST_DEADLINE_S": "request_deadline_s",
    "RESULTS_RETENTION_S": "results_retention_s",
    "STATE_SWEEP_S": "state_sweep_s",
    "MAX_TRACE_SPANS": "max_trace_spans",
    "PRODUCER_LINGER_MS": "producer_linger_ms",
    "STANDBY_REPLICAS": "standby_replicas",
    "PIPELINES": "pipelines",
    "PIPELINE_MODULES": "pipeline_modules",
    "ROLES": "roles",
    "FETCH_MAX_WAIT_MS": "fetch_max_wait_ms",
    "LM_MAX_INSTANCES": "lm_max_instances",
    "LM_STATUS_INTERVAL_S": "lm_status_interval_s",
    "LM_MAX_INFLIGHT": "lm_max_inflight",
    "LM_LINGER_MS": "lm_linger_ms",
    "COMPUTE_THREADS": "compute_threads",
    "ENGINE": "engine",
    "MODEL_DIR": "model_dir",
    "MODEL_CACHE_DIR": "model_cache_dir",
    "SIM_TIME_SCALE": "sim_time_scale",
    "SIM_PARAMS": "sim_params",
    "CORPUS": "corpus",
    "WARMUP": "warmup",
    "PASSAGE_CACHE": "passage_cache",
    "SCHEDULER_POLICY": "scheduler_policy",
    "SCHEDULER_SATURATION": "scheduler_saturation",
    "SCHEDULER_QUEUE": "scheduler_queue",
    "HEARTBEAT_INTERVAL_S": "heartbeat_interval_s",
    "MAX_MESSAGE_BYTES": "max_message_bytes",
    "EXTRA": "extra",  # a JSON object
}

_ENV_SECURITY: dict[str, str] = {
    "SECURITY_PROTOCOL": "protocol",
    "SASL_MECHANISM": "sasl_mechanism",
    "SASL_USERNAME": "sasl_username",
    "SASL_PASSWORD": "sasl_password",
    "SSL_CAFILE": "ssl_cafile",
}


def env_variables() -> frozenset[str]:
    """Every environment variable `load_config` reads (deployment files are checked
    against it)."""
    return frozenset(ENV_PREFIX + suffix for suffix in (*_ENV_FIELDS, *_ENV_SECURITY))


def load_config(environ: Mapping[str, str] | None = None, **overrides: Any) -> AltoConfig:
    """Build the configuration from ``ALTO_*`` environment variables plus explicit overrides."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for suffix, field in _ENV_FIELDS.items():
        if (raw := env.get(ENV_PREFIX + suffix)) not in (None, ""):
            values[field] = _json_object(ENV_PREFIX + suffix, raw) if field == "extra" else raw
    security = {f: env[ENV_PREFIX + s] for s, f in _ENV_SECURITY.items() if env.get(ENV_PREFIX + s)}
    if security:
        values["security"] = security
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return AltoConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc


def _json_object(name: str, raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a JSON object: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a JSON object, got {type(value).__name__}")
    return value


def _env_value(value: Any) -> str:
    return str(value.resolve() if isinstance(value, Path) else value)


def config_env(config: AltoConfig) -> dict[str, str]:
    """The environment that makes a child process load the same configuration.

    Paths are made absolute here, in the parent: a child may start in another folder, and a
    relative data folder must name the same place for both."""
    env = {
        ENV_PREFIX + suffix: _env_value(getattr(config, field))
        for suffix, field in _ENV_FIELDS.items()
    }
    env = {k: v for k, v in env.items() if v != "None"}
    env[ENV_PREFIX + "EXTRA"] = json.dumps(dict(config.extra))
    env.pop(ENV_PREFIX + "WORKER_ID", None)
    env.pop(ENV_PREFIX + "STATUS_FILE", None)
    env[ENV_PREFIX + "PIPELINES"] = ",".join(config.pipelines)
    env[ENV_PREFIX + "PIPELINE_MODULES"] = ",".join(config.pipeline_modules)
    env[ENV_PREFIX + "ROLES"] = ",".join(config.roles)
    # Kafka security too: a child must reach the same cluster the same way (the password
    # travels in the child's environment only, as it came into ours).
    for suffix, field in _ENV_SECURITY.items():
        value = getattr(config.security, field)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is not None:
            env[ENV_PREFIX + suffix] = str(value)
    return env
