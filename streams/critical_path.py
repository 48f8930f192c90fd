"""Where a request's time went: its critical path through the ancestry tree, from its trace.

Every result carries the spans of the work done for it (`TraceSpan`: a stage's work on one
node, from start to the output it emitted). Walking back from the final stage's span, each
step takes the input that made the stage's output possible: for a stage with one input
quantum, the upstream span that emitted exactly that quantum (the k-th child of a fan-out
or LM call, by emission order, for the child at index k); for an aggregation, the input
that arrived last (the latest upstream end inside its node). The path from submission to
completion is then cut into segments of these kinds:

- `ingest`: submitted (client clock) until ingest took the request;
- `transit`: an upstream span's end until the next stage's worker received the input
  (produced, on the broker, fetched, handed to the stream by Faust's consumer). Where the
  span did not record when it was received, this includes `waiting`;
- `waiting`: received until the stage's work started: queued behind other events in the
  worker. For an aggregation, from receiving its last input until it emitted (its fold is
  included: a few ms);
- `lm_dispatch`: an LM call's trip to its engine: the LM stage's topic, the scheduler, the
  LM worker's work topic and its queue, until the engine started the call;
- `lm`: the engine, from the call's start until the quantum on the path was emitted;
- `compute`: a stage's own work (map, fan-out);
- `delivery`: the final output's emission until the sink wrote the result;
- `unattributed`: what the walk could not follow (spans capped by
  `state.max_trace_spans`, or a trace cut short), so the segments always add up to the
  request's latency.

Clock: every span is stamped by the host of the worker that did the
work; on one host (`alto up`) they share a clock.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from alto.schemas.messages import PipelineResult, TraceSpan
from alto.streams.ancestry import LEVEL_SEPARATOR
from alto.streams.pipeline import REQUEST, StageKind, Topology

KINDS = ("ingest", "transit", "waiting", "lm_dispatch", "lm", "compute", "delivery", "unattributed")
_LM = (StageKind.LM, StageKind.LM_WORDS)
_LEVEL_MAKERS = (StageKind.FAN_OUT, StageKind.LM, StageKind.LM_WORDS)


@dataclass(frozen=True)
class Segment:
    kind: str
    stage: str  # the stage the time is charged to (the one waited for, or working)
    start_ms: int
    end_ms: int

    @property
    def ms(self) -> int:
        return max(0, self.end_ms - self.start_ms)


def _parent(path: str) -> tuple[str, str | None, int | None]:
    """`path` less its last level, and that level's stage and index ('a:0/b:3' -> 'a:0',
    'b', 3)."""
    if not path:
        return "", None, None
    head, _, last = path.rpartition(LEVEL_SEPARATOR)
    stage, _, index = last.rpartition(":")
    return head, stage, int(index) if index.isdigit() else None


def _within(path: str, node: str) -> bool:
    """Whether `path` is `node` or lies below it."""
    return not node or path == node or path.startswith(node + LEVEL_SEPARATOR)


class _Trace:
    def __init__(self, topology: Topology, spans: Iterable[TraceSpan]) -> None:
        self.topology = topology
        self.by_stage: dict[str, list[TraceSpan]] = {}
        for span in spans:
            self.by_stage.setdefault(span.stage, []).append(span)

    def _calls(self, upstream: str, parent: str, emitted: int | None) -> list[TraceSpan]:
        """The spans of a level-making stage's work on node `parent`, by emission. An
        aggregation keeps one span per (stage, node), the first to reach it, so a call's
        later children usually have none of their own: the call's span stands for them."""
        calls = sorted(
            (s for s in self.by_stage.get(upstream, ()) if s.path == parent),
            key=lambda s: s.end_ms,
        )
        if emitted:
            calls = [s for s in calls if s.start_ms <= emitted]
        return calls

    def input_of(self, span: TraceSpan) -> TraceSpan | None:
        """The upstream span whose output `span`'s work waited on last."""
        topology = self.topology
        stage = topology.stages[span.stage]
        emitted = span.input_ms or None
        if stage.kind is StageKind.AGGREGATE:
            found = [
                s
                for u in stage.after
                for s in self.by_stage.get(u, ())
                if _within(s.path, span.path) and s.start_ms <= (emitted or span.end_ms)
            ]
            exact = [s for s in found if s.end_ms == emitted]
            if exact:
                return exact[0]
            if emitted:  # a level-maker's later child, or a span that did not fit
                makers = [s for s in found if topology.stages[s.stage].kind in _LEVEL_MAKERS]
                found = makers or found
                return max(found, key=lambda s: s.start_ms, default=None)
            return max((s for s in found if s.end_ms <= span.end_ms), key=_end, default=None)
        for upstream in stage.after:
            if upstream == REQUEST:
                return next(iter(self.by_stage.get(REQUEST, ())), None)
            if topology.stages[upstream].kind in _LEVEL_MAKERS:
                parent, level, index = _parent(span.path)
                if level != upstream or index is None:
                    continue
                calls = self._calls(upstream, parent, emitted)
                if emitted and calls:
                    return calls[-1]
                if index < len(calls):  # every child's span kept: child k ended k-th
                    return calls[index]
                if calls:
                    return calls[-1]
            else:
                same = [s for s in self.by_stage.get(upstream, ()) if s.path == span.path]
                if same:
                    return max(same, key=_end)
        return None


def _end(span: TraceSpan) -> int:
    return span.end_ms


def critical_path(result: PipelineResult, topology: Topology) -> list[Segment]:
    """The segments of `result`'s critical path, in time order: a partition of the time
    from submission to completion (a step that overlaps the one after it, as a word emitted
    while its line is still being written does, is cut where the later one began)."""
    trace = _Trace(topology, result.trace)
    finals = trace.by_stage.get(topology.terminal, [])
    out: list[Segment] = []
    cursor = result.completed_at_ms

    def charge(kind: str, stage: str, start: int) -> None:
        nonlocal cursor
        start = max(result.submitted_at_ms, min(start, cursor))
        out.append(Segment(kind, stage, start, cursor))
        cursor = start

    def arrived(span: TraceSpan, emitted: int) -> None:
        """The hop into `span`'s work: waiting once received (where recorded), transit before."""
        if span.received_ms:
            charge("waiting", span.stage, span.received_ms)
        charge("transit", span.stage, emitted)

    span = max(finals, key=_end, default=None)
    if span is not None:
        charge("delivery", span.stage, span.end_ms)
    while span is not None and span.stage != REQUEST:
        stage = topology.stages[span.stage]
        upstream = trace.input_of(span)
        # When the input was emitted: recorded, else the upstream span's end.
        emitted = span.input_ms or (upstream.end_ms if upstream is not None else None)
        if stage.kind is StageKind.AGGREGATE:
            if emitted is None:  # when its last input came is unknown
                break
            arrived(span, emitted)
        else:
            charge("lm" if stage.kind in _LM else "compute", span.stage, span.start_ms)
            if emitted is not None and stage.kind is StageKind.LM:
                charge("lm_dispatch", span.stage, emitted)
            elif emitted is not None:
                arrived(span, emitted)
        span = upstream
    if span is not None and span.stage == REQUEST:
        charge("ingest", REQUEST, result.submitted_at_ms)
    else:
        charge("unattributed", span.stage if span is not None else "", result.submitted_at_ms)
    return [s for s in reversed(out) if s.ms > 0]


def breakdown_ms(result: PipelineResult, topology: Topology) -> dict[str, int]:
    """Milliseconds of `result`'s critical path by kind (every kind, zeros included)."""
    totals = dict.fromkeys(KINDS, 0)
    for segment in critical_path(result, topology):
        totals[segment.kind] += segment.ms
    return totals


@dataclass(frozen=True)
class Medians:
    """Over many results' critical paths, per kind of time: the median milliseconds, and
    the median share of a request (each result's shares add up to 1; their medians need
    not)."""

    ms: dict[str, float]
    shares: dict[str, float]


def medians(results: Iterable[PipelineResult], topology: Topology) -> Medians:
    """The results' critical paths, each walked once, summarised by kind."""
    return medians_of([breakdown_ms(r, topology) for r in results])


def medians_of(parts: list[dict[str, int]]) -> Medians:
    """Critical paths already cut by kind (`breakdown_ms`, or another system's path in the
    same kinds), summarised by kind."""
    shares: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for one in parts:
        if (total := sum(one.values())) > 0:
            for kind, ms in one.items():
                shares[kind].append(ms / total)
    return Medians(
        {k: float(statistics.median(p[k] for p in parts)) for k in KINDS} if parts else {},
        {k: statistics.median(v) for k, v in shares.items() if v},
    )


def breakdown_table(columns: dict[str, list[PipelineResult]], topology: Topology) -> list[str]:
    """A Markdown table: per column (a mode, a system at a load), the median seconds and
    the median share of each kind of time on the critical path."""
    names = [name for name, results in columns.items() if results]
    found = {name: medians(columns[name], topology) for name in names}
    lines = ["| critical path | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for kind in KINDS:
        cells = [
            f"{m.ms.get(kind, 0.0) / 1000:.2f} s ({m.shares.get(kind, 0.0):.0%})"
            for m in found.values()
        ]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return lines
