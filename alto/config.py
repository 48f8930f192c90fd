"""The one frozen, typed configuration, in sections, and the only place it is read from.

Sources, later ones winning: the defaults here; a settings file (`ALTO_CONFIG_FILE`, JSON or
TOML, the same nesting as the models); the environment; explicit overrides (the CLI's flags).
Every field has one environment name by one rule: `ALTO_<FIELD>` for the top-level fields
(what a deployment sets per process: worker id, roles, status file, ...), and
`ALTO_<SECTION>__<FIELD>` inside a section (`ALTO_KAFKA__BOOTSTRAP_SERVERS`, `ALTO_LM__ENGINE`,
`ALTO_KAFKA__SECURITY__SASL_PASSWORD`). An `ALTO_` variable naming no field is an error.

Child processes get the whole configuration as a file (`child_env`), so no field is lost on
the way, plus the variables that differ per process.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import socket
import tomllib
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

from alto.enums import EngineName, EventLoop, Mode, PolicyName, Role, SimProfile
from alto.errors import ConfigError
from alto.files import write_text

ENV_PREFIX = "ALTO_"
NESTED = "__"
# Where a child finds the whole configuration (`child_env`); the other non-field variable is
# the parent's pid (`alto.infra.lifetime`).
CONFIG_FILE_ENV = "ALTO_CONFIG_FILE"
NOT_SETTINGS = frozenset({CONFIG_FILE_ENV, "ALTO_PARENT_PID"})


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSecurity(_Section):
    """Kafka security settings passed through to every client (SASL/SSL)."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None


class KafkaSettings(_Section):
    """The cluster, the topics and the clients' timeouts."""

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = "alto."
    # The most Faust workers a stage spreads over; each idle fetch costs the embedded broker
    # in proportion to the partitions it names (README, "Four partitions and a 25 ms ...").
    partitions: int = Field(default=4, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1)
    # Short group timeouts keep rebalances (and tests) fast; see the design notes.
    session_timeout_s: float = Field(default=10.0, gt=0)
    heartbeat_interval_s: float = Field(default=1.0, gt=0)
    # How long a consumer fetch may wait for data. A broker that answers a fetch when data
    # arrives (Apache Kafka; the embedded one behind its long-poll front, `long_poll`) makes
    # it the idle polling rate only; Tansu alone holds every fetch for it (then: 25).
    fetch_max_wait_ms: int = Field(default=250, ge=1, le=10_000)
    long_poll: bool = True
    # A consumer's fetch wait doubles after each `idle_after_s` without records, up to this,
    # and drops back at the first record (`alto.kafka.FetchPacer`): the embedded broker holds
    # every fetch for its whole wait, so an idle stack otherwise fetches 1000 / wait times a
    # second per consumer. 0 (or not above `fetch_max_wait_ms`): never.
    idle_fetch_wait_ms: int = Field(default=1000, ge=0, le=10_000)
    idle_after_s: float = Field(default=10.0, gt=0)
    max_message_bytes: int = Field(default=1_000_000, gt=1024)
    # Producer batching of the Faust workers (ms each batch waits for more records): every
    # hop pays it at low load (README, "Producer linger 0 by default").
    producer_linger_ms: int = Field(default=0, ge=0, le=1000)
    # Standby replicas of each table (a warm copy on another worker: fast failover, but each
    # one fetches the changelog again). None: one where it is safe (agents/runtime.py).
    standby_replicas: int | None = Field(default=None, ge=0, le=8)
    security: KafkaSecurity = KafkaSecurity()

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_topic_safe(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not value or not set(value) <= allowed:
            raise ValueError(f"topic prefix {value!r} may only use letters, digits, '.', '_', '-'")
        return value


class AdmissionSettings(_Section):
    """What ingest lets in (streams/admission.py)."""

    max_input_chars: int = Field(default=20_000, gt=0)
    # Requests in flight at once, over all ingest workers; past it a request fails at once
    # with OVERLOADED (0: no limit). One not finished after `ttl_s` no longer counts.
    max_inflight: int = Field(default=1024, ge=0)
    ttl_s: float = Field(default=300.0, gt=0)
    # A request admitted this long ago with no result is replayed from its root, once (0: never).
    retry_s: float = Field(default=120.0, ge=0)


class StateSettings(_Section):
    """Bounded state (streams/processor.py `StageProcessor.expire`, agents/runtime.py).

    Every `sweep_s` a worker drops done markers older than `retention_s` (they dedupe late
    replays, so keep them longer than the admission's `retry_s`), fails a request whose node
    has been open for `deadline_s` (0: never) naming the stage that holds it, and forgets
    results older than `results_retention_s` (a replay after that would be answered again).
    A node's trace keeps at most `max_trace_spans` spans. With `coalesce_changelog`, an
    aggregator's table writes each changed key to its changelog once per commit (its latest
    value) instead of once per update (`alto.agents.stores.CoalescedTable`)."""

    retention_s: float = Field(default=600.0, gt=0)
    deadline_s: float = Field(default=300.0, ge=0)
    results_retention_s: float = Field(default=600.0, gt=0)
    sweep_s: float = Field(default=10.0, gt=0)
    max_trace_spans: int = Field(default=256, ge=1)
    coalesce_changelog: bool = True


class GenerationSettings(_Section):
    """Generations of the internal topics (`alto.infra.generations`).

    Generation N > 0 names every internal topic `<prefix>gN.<name>` and its consumer groups
    `<app id>-gN`, so a drained generation can be deleted whole (the embedded broker cannot
    trim a log). Contract topics (requests, results, dead letters) are never generational."""

    current: int = Field(default=0, ge=0)
    # Where this generation's ingest starts: a JSON file {partition: offset} of the requests
    # topic, written once the previous generation has stopped ingesting; ingest waits for it
    # and skips what the previous generation handled (None: ingest at once).
    handoff_file: Path | None = None
    # An LM worker serving every live generation reads which are live here (a JSON object
    # {"live": [N, ...]}, written by `alto up`); None: it serves `current` alone.
    live_file: Path | None = None
    # How long a generation takes new requests before the next replaces it (0: one forever;
    # None: `alto.infra.rotation`'s default on the embedded broker, never on an external one).
    rotate_s: float | None = Field(default=None, ge=0)


class MetricsSettings(_Section):
    """The Prometheus endpoint (alto/metrics.py), and the hop trace (alto/legs.py)."""

    # 0: a free port the OS picks (status file, log: workers share hosts); <0: no endpoint.
    port: int = Field(default=0, le=65535)
    host: str = "0.0.0.0"  # noqa: S104 - a scrape target listens on every interface
    leg_trace_dir: Path | None = None  # each hop a Faust or LM worker receives, in parts


class LMSettings(_Section):
    """The LM service: its instances, its engine and its model."""

    # The most LM instances (partitions of the work topic).
    max_instances: int = Field(default=8, ge=1, le=1024)
    status_interval_s: float = Field(default=1.0, gt=0)
    max_inflight: int = Field(default=64, ge=1)
    # How long an LM worker's producer gathers quanta into one request (as the Faust workers').
    linger_ms: int = Field(default=0, ge=0, le=1000)
    engine: EngineName = "vllm"
    model_dir: Path | None = None
    model_cache_dir: Path = Path.home() / ".cache" / "alto" / "models"
    sim_time_scale: float = Field(default=1.0, gt=0)
    # The SIMULATED engine's hardware: "cpu" (SmolLM2 here) or "paper" (a 7B model on an
    # A100, from cited measurements); `sim_params` fields override the profile's.
    sim_profile: SimProfile = "cpu"
    sim_params: Path | None = None  # JSON of SimParams (from `alto bench lm`); None: defaults


class SchedulerSettings(_Section):
    """The prompt-aware scheduler (scheduler/): its policy and admission control."""

    policy: PolicyName = "prompt_aware"
    saturation: int = Field(default=128, ge=1)  # calls per instance = saturated
    queue: int = Field(default=256, ge=0)  # calls waiting at the scheduler, at most
    # A worker with the scheduler role places the LM calls its own stages make (straight to
    # the instance's `lm.work` partition) while an instance has room; else, and with False,
    # a call goes through `lm.requests` to the scheduler agent.
    direct: bool = True


class AltoConfig(BaseModel):
    """Everything a process of ours needs to know, validated once at the edge."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # This process and its application (what a deployment sets per process).
    app_id: str = "alto"
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    mode: Mode = Mode.STREAMING
    data_dir: Path = Path(".alto-data")
    status_file: Path | None = None
    # Which pipelines (empty: all registered) and which agents this worker runs.
    pipelines: tuple[str, ...] = ()
    # The user's pipelines: `module` or `module:attribute` (streams/registry.py).
    pipeline_modules: tuple[str, ...] = ()
    roles: tuple[Role, ...] = ("ingest", "stages", "sink", "scheduler")
    # Operator chaining: stateless stages run in the agent that produces their input, with
    # no topic between (`alto.streams.chain`). False puts every stage on its own topic; every
    # process of a stack must agree.
    chaining: bool = True
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    event_loop: EventLoop = "uvloop"  # the workers' (`alto.loops`)
    # Load what the pipelines' stages need (index, encoder) when a worker starts, not on its
    # first request (off in most tests: every test worker would load them).
    warmup: bool = True
    # Threads of a worker's CPU compute (MiniLM's forward passes; torch's intra-op pool).
    # 0: torch's default, every core. Workers sharing a host should split its cores: two
    # 2-thread pools on 2 cores cost 37% more CPU per forward pass than two 1-thread pools
    # (spinning, waiting on each other); `alto up` sets cores // Faust workers.
    compute_threads: int = Field(default=0, ge=0, le=1024)
    # Extra Faust app settings, applied over ours (a JSON object).
    extra: Mapping[str, Any] = Field(default_factory=dict)
    # Each pipeline's own settings, by pipeline name; the pipeline validates its part
    # (`Pipeline(settings=Model)`, e.g. FacTool's corpus: `ALTO_PIPELINE_SETTINGS__FACTOOL__CORPUS`).
    pipeline_settings: Mapping[str, Mapping[str, Any]] = Field(default_factory=dict)

    kafka: KafkaSettings = KafkaSettings()
    admission: AdmissionSettings = AdmissionSettings()
    state: StateSettings = StateSettings()
    generations: GenerationSettings = GenerationSettings()
    metrics: MetricsSettings = MetricsSettings()
    lm: LMSettings = LMSettings()
    scheduler: SchedulerSettings = SchedulerSettings()

    @field_validator("pipelines", "roles", "pipeline_modules", mode="before")
    @classmethod
    def _split_lists(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("mode", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        return Mode.parse(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _markers_outlive_the_retry(self) -> AltoConfig:
        # A replay from the root must find the done markers (they drop replayed inputs and
        # resend the node's output) and the result (else the request is answered twice).
        retry = self.admission.retry_s
        if retry > 0:
            for name in ("retention_s", "results_retention_s"):
                if getattr(self.state, name) <= retry:
                    raise ValueError(
                        f"state.{name} ({getattr(self.state, name)} s) must exceed "
                        f"admission.retry_s ({retry} s): a replay must find what the first "
                        "attempt left"
                    )
        return self

    def topic(self, name: str) -> str:
        """The full name of one of our contract topics, e.g. ``topic('requests')``."""
        return f"{self.kafka.topic_prefix}{name}"

    @property
    def generation(self) -> int:
        return self.generations.current

    @property
    def internal_prefix(self) -> str:
        """The prefix of this generation's internal topics (stage topics, sink, LM)."""
        return generation_prefix(self.kafka.topic_prefix, self.generation)

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

    @property
    def names_a_broker(self) -> bool:
        """Whether the deployment named its Kafka cluster (else `alto up` may start one)."""
        return "bootstrap_servers" in self.kafka.model_fields_set

    def settings_of(self, pipeline: str) -> Mapping[str, Any]:
        """The raw settings of one pipeline (its own model validates them)."""
        return self.pipeline_settings.get(pipeline, {})

    def with_overrides(self, **changes: Any) -> AltoConfig:
        """A copy with some fields changed, validated again. A section takes a mapping of
        the fields to change in it: ``with_overrides(lm={"engine": "sim"}, warmup=False)``."""
        # What was never set stays unset (`names_a_broker` tells a named broker from the default).
        return _validate(merge(self.model_dump(exclude_unset=True), changes), "invalid overrides")


def generation_prefix(topic_prefix: str, generation: int) -> str:
    """Internal topics' prefix of `generation` (0: the plain prefix, for one-generation
    deployments)."""
    return topic_prefix if generation == 0 else f"{topic_prefix}g{generation}."


def merge(
    base: Mapping[str, Any], changes: Mapping[str, Any], *, none_unsets: bool = True
) -> dict[str, Any]:
    """`base` with `changes` laid over it, section by section. A None in `changes` sets the
    field to None, or leaves it as it is with `none_unsets=False` (a flag not given)."""
    out = dict(base)
    for key, value in changes.items():
        if value is None and not none_unsets:
            continue
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value, none_unsets=none_unsets)
        else:
            out[key] = value
    return out


def _validate(values: Mapping[str, Any], what: str) -> AltoConfig:
    try:
        return AltoConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"{what}: {exc}") from exc


def _names(model: type[BaseModel], path: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """Every field's environment name -> its path in the nested settings."""
    names: dict[str, tuple[str, ...]] = {}
    for name, info in model.model_fields.items():
        inner = info.annotation
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            names.update(_names(inner, (*path, name)))
        else:
            names[ENV_PREFIX + NESTED.join((*path, name)).upper()] = (*path, name)
    return names


ENV_NAMES: dict[str, tuple[str, ...]] = _names(AltoConfig)
_MAPPINGS = frozenset({"extra", "pipeline_settings"})


def env_variables() -> frozenset[str]:
    """Every settings variable of the environment (deployment files are checked against it).
    Pipeline settings go below `ALTO_PIPELINE_SETTINGS__<PIPELINE>__<FIELD>` as well."""
    return frozenset(ENV_NAMES)


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for var, raw in env.items():
        if not var.startswith(ENV_PREFIX) or var in NOT_SETTINGS or raw == "":
            continue
        path = ENV_NAMES.get(var)
        if path is None:
            head = var.removeprefix(ENV_PREFIX).lower().split(NESTED)
            if head[0] not in _MAPPINGS or len(head) < 2:
                raise ConfigError(_unknown(var))
            path = tuple(head)  # a key inside a mapping (a pipeline's own settings)
        value: Any = _json_object(var, raw) if path[-1] in _MAPPINGS else raw
        values = merge(values, _nest(path, value))
    return values


def _nest(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    for key in reversed(path[1:]):
        value = {key: value}
    return {path[0]: value}


def _unknown(var: str) -> str:
    """The error for an `ALTO_` variable that names no setting, with the likely one."""
    flat = {name.replace(NESTED, "_"): name for name in ENV_NAMES}
    guess = flat.get(var) or next(
        (name for name in ENV_NAMES if name.endswith(NESTED + var.removeprefix(ENV_PREFIX))), None
    )
    if guess is None:
        close = difflib.get_close_matches(var, list(ENV_NAMES), n=1, cutoff=0.6)
        guess = close[0] if close else None
    hint = f"; did you mean {guess}?" if guess else ""
    return f"{var} names no setting{hint} (settings: README, 'Configuration')"


def _from_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the settings file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"the settings file {path} must hold an object of settings")
    return data


def load_config(environ: Mapping[str, str] | None = None, **overrides: Any) -> AltoConfig:
    """The configuration from the defaults, the settings file, ``ALTO_*`` variables and
    explicit overrides (sections as mappings, as in `AltoConfig.with_overrides`)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if file := env.get(CONFIG_FILE_ENV):
        values = _from_file(Path(file))
    values = merge(merge(values, _from_env(env)), overrides, none_unsets=False)
    return _validate(values, "invalid configuration")


def _json_object(name: str, raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a JSON object: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a JSON object, got {type(value).__name__}")
    return value


def _absolute(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value.resolve())
    if isinstance(value, dict):
        return {k: _absolute(v) for k, v in value.items()}
    return value


# Fields each child gets from its parent process, not from the file.
_PER_PROCESS = ("worker_id", "status_file")


def child_env(config: AltoConfig) -> dict[str, str]:
    """The environment that gives a child process this whole configuration: a settings file
    (named by its content, under the data folder) and the Kafka password, which never goes
    to disk but travels in the environment, as it came into ours. Paths are made absolute
    here, in the parent: a child may start in another folder.

    A child's own variables (`ALTO_WORKER_ID`, `ALTO_ROLES`, ...) go beside these and win;
    the parent's other `ALTO_` variables must not (`without_settings`)."""
    secret = {"kafka": {"security": {"sasl_password": True}}}
    values = _absolute(config.model_dump(exclude={**dict.fromkeys(_PER_PROCESS, True), **secret}))
    text = json.dumps(values, indent=1, sort_keys=True)
    digest = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
    path = config.data_dir.resolve() / "settings" / f"{digest}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, text)
    env = {CONFIG_FILE_ENV: str(path)}
    if (password := config.kafka.security.sasl_password) is not None:
        env["ALTO_KAFKA__SECURITY__SASL_PASSWORD"] = password.get_secret_value()
    return env


def without_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` less every settings variable (a child takes its settings from its file)."""
    return {
        k: v
        for k, v in environ.items()
        if not k.startswith(ENV_PREFIX) or k in NOT_SETTINGS - {CONFIG_FILE_ENV}
    }
