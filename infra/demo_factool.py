"""`alto demo`: the FacTool pipeline end to end on the embedded defaults, in the foreground.

Brings the stack up (`alto.infra.stack.Stack`: embedded broker, Faust workers with the scheduler,
one LM worker with the packaged SmolLM2 on vLLM), asks a few questions drawn from WordNet,
shows each request's partial outputs as they stream between stages (the answer, each claim,
each search query, each claim's evidence and verdict) with a progress line per request,
then prints the final results, latency per mode and time per stage from the traces, and
stops everything.
"""

from __future__ import annotations

import collections
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alto.agents.factool import pipeline as factool
from alto.agents.factool.corpus import load_corpus, questions
from alto.agents.factool.settings import factool_settings
from alto.config import AltoConfig, load_config
from alto.infra.broker import free_port
from alto.infra.client import Submitter, TopicReader, new_request, stage_windows
from alto.infra.stack import Stack
from alto.schemas.messages import Mode, PipelineRequest, PipelineResult, Quantum, QuantumKind
from alto.streams import Topology
from alto.streams.critical_path import breakdown_table

# Which stage input shows which partial output (the topic a stage reads is what the stage
# before it produced).
_SHOWN = {  # stage whose input topic we read -> (producing stage, what it shows)
    "claims": ("answer", "answer"),
    "queries": ("claims", "claim"),
    "encode": ("queries", "query"),
    "judged": ("claim_search", "evidence"),  # a claim with its evidence ("verify" is chained)
    "report": ("judged", "verdict"),  # a claim's verdict
}


@dataclass
class _Progress:
    label: str
    request: PipelineRequest
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    result: PipelineResult | None = None

    def line(self) -> str:
        c = self.counts
        state = (
            f"done in {self.result.latency_ms / 1000:.1f} s"
            if self.result
            else f"{(time.time() * 1000 - self.request.submitted_at_ms) / 1000:.0f} s"
        )
        return (
            f"{self.label}: claims {c['claim']}, queries {c['query']}, evidence {c['evidence']}, "
            f"verdicts {c['verdict']} ({state})"
        )


def _brief(kind: str, value: Any) -> str:
    if kind == "evidence":
        titles = [p["title"].split(", ")[0] for p in value["evidence"]]
        return f"{value['claim'][:60]!r} <- {titles}"
    if kind == "verdict":
        return f"{value['verdict'].upper()}: {value['claim'][:70]!r}"
    return repr(str(value)[:100])


def run_factool_demo(
    *, n_questions: int, engine: str, mode: str, workers: int, timeout_s: float
) -> int:
    modes = [Mode.STREAMING, Mode.BASELINE] if mode == "both" else [Mode.parse(mode)]
    base = load_config()
    workdir = Path(tempfile.mkdtemp(prefix="alto-demo-"))
    print(
        f"alto demo: the FacTool pipeline on the embedded defaults ({engine} LM engine"
        f"{', SIMULATED' if engine == 'sim' else ', SmolLM2-135M-Instruct on CPU'}); logs in {workdir}",
        flush=True,
    )
    topology = factool.build()
    print("  stages: " + " -> ".join(topology.order), flush=True)
    # A few minutes: one generation of the internal topics (the partial outputs shown are
    # read from its stage topics), unless ALTO_GENERATIONS__ROTATE_S says otherwise.
    if base.generations.rotate_s is None:
        base = base.with_overrides(
            generations={"rotate_s": 0.0},
        )
    stack = Stack(
        base,
        workers=workers,
        lm_instances=1,
        engine=engine,  # type: ignore[arg-type]
        listen=f"127.0.0.1:{free_port()}",
        workdir=workdir,
    )
    try:
        t0 = time.monotonic()
        stack.start()
        stack.wait_ready(600)
        print(f"  stack ready in {time.monotonic() - t0:.1f} s\n{stack.summary()}\n", flush=True)
        config = stack.config
        asked = questions(
            load_corpus(factool_settings(config).corpus), n_questions, seed=int(time.time())
        )
        requests = [new_request(factool.NAME, q, mode=m) for q in asked for m in modes]
        progress = {
            r.request_id: _Progress(
                f"q{i // len(modes) + 1}/{modes[i % len(modes)].value.lower()}", r
            )
            for i, r in enumerate(requests)
        }
        for i, q in enumerate(asked, 1):
            print(f"q{i}: {q}")
        print(
            f"\nsubmitting {len(requests)} requests; partial outputs as they stream:\n", flush=True
        )
        results = _watch(config, requests, progress, timeout_s)
    finally:
        stack.stop()
    ok = _report(requests, progress, results, topology)
    print("\nstopped the stack.", flush=True)
    return 0 if ok else 1


def _watch(
    config: AltoConfig,
    requests: list[PipelineRequest],
    progress: dict[str, _Progress],
    timeout_s: float,
) -> dict[str, PipelineResult]:
    topology = factool.build()
    stage_of = {topology.stage_topic(config.internal_prefix, s): s for s in _SHOWN}
    reader = TopicReader(config, [*stage_of, config.results_topic])
    Submitter(config).submit_all(requests)
    results: dict[str, PipelineResult] = {}
    deadline = time.monotonic() + timeout_s
    last_progress = time.monotonic()
    try:
        while len(results) < len(requests) and time.monotonic() < deadline:
            for topic, value in reader.poll_topics(0.5):
                if value is None:
                    continue
                if topic == config.results_topic:
                    result = PipelineResult.decode(value)
                    p = progress.get(result.request_id)
                    if p is not None and p.result is None:
                        p.result = results[result.request_id] = result
                        print(f"  {p.line()}: {result.status.value}", flush=True)
                    continue
                q = Quantum.decode(value)
                p = progress.get(q.request_id)
                if p is None or q.kind is not QuantumKind.DATA or q.payload is None:
                    continue
                producer, kind = _SHOWN[stage_of[topic]]
                if q.stage != producer:
                    continue
                p.counts[kind] += 1
                print(f"  {p.label} {kind:8} {_brief(kind, json.loads(q.payload))}", flush=True)
            if time.monotonic() - last_progress > 5:
                last_progress = time.monotonic()
                print("  -- " + " | ".join(p.line() for p in progress.values()), flush=True)
    finally:
        reader.close()
    return results


def _report(
    requests: list[PipelineRequest],
    progress: dict[str, _Progress],
    results: dict[str, PipelineResult],
    topology: Topology,
) -> bool:
    """Final results, latency per mode, time per stage; True when every request is OK."""
    print("\n## results\n")
    for r in requests:
        p = progress[r.request_id]
        result = results.get(r.request_id)
        if result is None:
            print(f"{p.label}: NO RESULT\n")
            continue
        if result.output is None:
            print(f"{p.label}: {result.status.value} {result.error}\n")
            continue
        out = json.loads(result.output)
        print(f"{p.label} ({result.latency_ms / 1000:.1f} s): {r.input}")
        print(f"  answer: {out['answer']}")
        for c in out["claims"]:
            top = c["evidence"][0] if c["evidence"] else None
            where = f"{top['title'].split(', ')[0]}: {top['text'][:60]}" if top else "no evidence"
            queries = " | ".join(c.get("queries") or []) or "none written"
            print(f"  - [{c['verdict']}] {c['claim']}")
            print(f"      queries: {queries}\n      evidence: {where}")
        print(f"  factuality: {out['factuality']}\n")
    modes = [m for m in (Mode.STREAMING, Mode.BASELINE) if any(r.mode is m for r in requests)]
    print("| mode | requests | OK | median latency s |")
    print("|---|---|---|---|")
    stage_ms: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for m in modes:
        got = [results[r.request_id] for r in requests if r.mode is m and r.request_id in results]
        lat = sorted(g.latency_ms / 1000 for g in got)
        med = f"{lat[len(lat) // 2]:.1f}" if lat else "-"
        ok = sum(g.status.value == "OK" for g in got)
        print(f"| {m.value.lower()} | {sum(r.mode is m for r in requests)} | {ok} | {med} |")
        for g in got:
            for stage, ms in stage_windows(g).items():
                stage_ms[(m.value.lower(), stage)].append(ms)
    names = [m.value.lower() for m in modes]
    print("\n## median time per stage and request (s, first to last span, from the traces)\n")
    print("| stage | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for stage in dict.fromkeys(s for _, s in stage_ms):
        cells = []
        for name in names:
            vals = sorted(stage_ms.get((name, stage), []))
            cells.append(f"{vals[len(vals) // 2] / 1000:.2f}" if vals else "-")
        print(f"| {stage} | " + " | ".join(cells) + " |")
    print(
        "\n## where the time went: the critical path (median s and share per request; "
        "transit = emitted until the stage's worker received it, waiting = received until "
        "the work started)\n"
    )
    by_mode = {
        m.value.lower(): [
            results[r.request_id]
            for r in requests
            if r.mode is m
            and r.request_id in results
            and results[r.request_id].status.value == "OK"
        ]
        for m in modes
    }
    print("\n".join(breakdown_table(by_mode, topology)))
    all_ok = all(
        r.request_id in results and results[r.request_id].status.value == "OK" for r in requests
    )
    print("\nevery request completed OK" if all_ok else "\nSOME REQUESTS FAILED", file=sys.stdout)
    return all_ok
