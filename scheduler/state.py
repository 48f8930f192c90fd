"""What a scheduler knows and is told: calls, instances' load reports, completions, and the
cluster state built from them (pure data; see `alto.scheduler.policy`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from alto.schemas.messages import LMRequest, LMStatus

CHARS_PER_TOKEN = 4.0  # prompt-size estimate before the engine has tokenized anything


@dataclass(frozen=True, slots=True)
class Call:
    """What a policy sees of one LM call."""

    call_id: str
    prompt: str  # the prompt template's name: the unit of prompt-aware allocation
    prefix: str  # the call's shared prompt prefix (system prompt, few-shot examples)
    prompt_tokens: int  # estimated size of the whole prompt
    max_tokens: int

    @classmethod
    def of(cls, request: LMRequest) -> Call:
        text = "".join(m.content for m in request.messages)
        return cls(
            request.lm_request_id,
            request.prompt_name,
            text[: request.prefix_chars],
            max(1, round(len(text) / CHARS_PER_TOKEN)),
            request.max_tokens,
        )


@dataclass(frozen=True, slots=True)
class Load:
    """One instance's load as it last reported it."""

    instance: int
    running: int = 0
    waiting: int = 0
    queued_prefill_tokens: int = 0
    queued_decode_tokens: int = 0
    kv_cache_usage: float = 0.0
    at_ms: int = 0

    @classmethod
    def of(cls, status: LMStatus) -> Load:
        return cls(
            status.instance,
            status.running,
            status.waiting,
            status.queued_prefill_tokens,
            status.queued_decode_tokens,
            status.kv_cache_usage,
            status.at_ms,
        )


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished call, as measured by the instance that served it."""

    call_id: str
    instance: int
    prompt: str
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    queue_s: float  # assigned -> first scheduled on the engine
    service_s: float  # first scheduled -> last token
    at_ms: int


@dataclass
class ClusterState:
    """What the scheduler knows: each instance's last report and the calls it has assigned
    that have not completed yet (`pending`)."""

    heartbeat_timeout_ms: int = 5_000
    loads: dict[int, Load] = field(default_factory=dict)
    pending: dict[int, dict[str, Call]] = field(default_factory=dict)
    # Last report time of each removed instance: a report from before its removal, read
    # late, must not bring it back (a restarted instance reports anew, with a later time).
    removed: dict[int, int] = field(default_factory=dict)

    def report(self, load: Load) -> None:
        if load.at_ms <= self.removed.get(load.instance, -1):
            return
        previous = self.loads.get(load.instance)
        if previous is None or load.at_ms >= previous.at_ms:
            self.loads[load.instance] = load
            self.pending.setdefault(load.instance, {})

    def live(self, now_ms: int) -> list[int]:
        return sorted(
            i for i, ld in self.loads.items() if now_ms - ld.at_ms <= self.heartbeat_timeout_ms
        )

    def forget(self, instance: int) -> dict[str, Call]:
        """Drop a dead instance; returns its pending calls (to be reassigned)."""
        last = self.loads.pop(instance, None)
        if last is not None:
            self.removed[instance] = max(last.at_ms, self.removed.get(instance, -1))
        return self.pending.pop(instance, {})

    def assigned(self, instance: int, call: Call) -> None:
        self.pending.setdefault(instance, {})[call.call_id] = call

    def completed(self, done: Completion) -> None:
        self.pending.get(done.instance, {}).pop(done.call_id, None)

    def queued_tokens(self, instance: int) -> int:
        """Work waiting on `instance`, in tokens: the larger of its own report and what this
        scheduler has assigned to it that has not completed (reports lag; other replicas
        assign too)."""
        ld = self.loads.get(instance, Load(instance))
        reported = ld.queued_prefill_tokens + ld.queued_decode_tokens
        mine = sum(c.prompt_tokens + c.max_tokens for c in self.pending.get(instance, {}).values())
        return max(reported, mine)

    def outstanding(self, instance: int) -> int:
        """Calls on `instance` (running + waiting), by the same rule as `queued_tokens`."""
        ld = self.loads.get(instance, Load(instance))
        return max(ld.running + ld.waiting, len(self.pending.get(instance, {})))

    def kv_usage(self, instance: int) -> float:
        ld = self.loads.get(instance)
        return ld.kv_cache_usage if ld else 0.0
