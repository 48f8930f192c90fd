"""`alto bench factool`'s report: the table per load point and system, the summary in its
JSON, the pass rule's verdict and the plot."""

from __future__ import annotations

import collections
import math
from pathlib import Path
from typing import Any

from alto.bench.common import (
    OUT_DIR,
)
from alto.bench.factool_point import (
    PASS_ACHIEVED,
    SIM_LM_INSTANCES,
    TARGET_MEDIAN_S,
    TARGETS_S,
    Point,
    SimSetup,
    passes,
)


def describe(p: Point) -> str:
    return (
        f"{p.tier} {p.system:9} offered {p.offered_rps:g}/s: {p.completed}/{p.sent} done, "
        f"p50 {p.p50_s:.1f} s, p99 {p.p99_s:.1f} s, achieved {p.achieved_rps:.2f}/s, "
        f"{p.cpu_s_per_request:.2f} CPU s/request "
        f"{'PASS' if p.passed else 'fail'}"
    )


def summarize(points: list[Point]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (tier, system), pts in _group(points).items():
        pts.sort(key=lambda p: p.offered_rps)
        at = {f"{t:g}": _sustained(pts, t) for t in TARGETS_S}
        out.setdefault(tier, {})[system] = {
            "sustained_load_rps": _sustained(pts, TARGET_MEDIAN_S),
            "sustained_at_targets_rps": at,
            "p99_low_load_s": pts[0].p99_s,
            "p50_low_load_s": pts[0].p50_s,
            "low_load_rps": pts[0].offered_rps,
            "evidence_p99_low_load_s": pts[0].evidence_p99_s,
            "evidence_p50_low_load_s": pts[0].evidence_p50_s,
        }
    return out


def _sustained(pts: list[Point], target_s: float) -> float:
    """The highest offered load (`pts` in ascending order) that passes at the median target
    `target_s`, as every lower load does. A pass above a failure is a median that happened
    to fall under the target: a full sim run failed streaming at 2 req/s (2.11 s median
    against the 2 s target) and passed it at 3 (1.69 s), and taking the highest pass read
    that as 3."""
    sustained = 0.0
    for p in pts:
        if not passes(p, target_s):
            break
        sustained = p.offered_rps
    return sustained


def _cpu(p: Point) -> str:
    """CPU per request, or "-" where the tier does not measure it (virtual time)."""
    return "-" if math.isnan(p.cpu_s_per_request) else f"{p.cpu_s_per_request:.2f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a (the divisor is 0)"


def _group(points: list[Point]) -> dict[tuple[str, str], list[Point]]:
    groups: dict[tuple[str, str], list[Point]] = collections.defaultdict(list)
    for p in points:
        groups[(p.tier, p.system)].append(p)
    return groups


def print_points(
    points: list[Point],
    summary: dict[str, dict[str, dict[str, Any]]],
    idle: dict[str, float],
    sim: SimSetup,
) -> None:
    print("## alto bench factool: streaming vs baseline vs LangGraph\n")
    print(
        f"Target: median <= {TARGET_MEDIAN_S:g} s and achieved >= {PASS_ACHIEVED:.0%} of offered. "
        f"Tier `sim`: SIMULATED LM engines ({SIM_LM_INSTANCES} instances, {sim.label()}); tier `vllm`: one real vLLM worker (SmolLM2-135M, CPU); tier `cluster`: SIMULATED, the paper's instance counts in virtual time (`bench/cluster.py`), its `langgraph` a stand-in (baseline with in-process hops).\n"
    )
    print(
        "| tier | system | sustained load (req/s) | P99 at low load (s) | median at low load (s) "
        "| evidence-ready P99 / median at low load (s) |"
    )
    print("|---|---|---|---|---|---|")
    for tier, systems in summary.items():
        for system, s in systems.items():
            print(
                f"| {tier} | {system} | {s['sustained_load_rps']:g} | {s['p99_low_load_s']:.1f} "
                f"| {s['p50_low_load_s']:.1f} | {s['evidence_p99_low_load_s']:.1f} / "
                f"{s['evidence_p50_low_load_s']:.1f} |"
            )
    print(
        "\nSustained load (req/s) at other median targets (same rule):\n\n| tier | system | "
        + " | ".join(f"{t:g} s" for t in TARGETS_S)
        + " |\n|---|---|"
        + "---|" * len(TARGETS_S)
    )
    for tier, systems in summary.items():
        for system, s in systems.items():
            at = s["sustained_at_targets_rps"]
            print(
                f"| {tier} | {system} | "
                + " | ".join(f"{at[f'{t:g}']:g}" for t in TARGETS_S)
                + " |"
            )
    for tier, systems in summary.items():
        st, lg = systems.get("streaming"), systems.get("langgraph")
        if st and lg:
            print(
                f"\n{tier}: streaming / LangGraph sustained load "
                f"{_ratio(st['sustained_load_rps'], lg['sustained_load_rps'])} (goal 1.3x); "
                f"LangGraph / streaming P99 at low load "
                f"{_ratio(lg['p99_low_load_s'], st['p99_low_load_s'])} (goal 1.3x)"
            )
    for tier, systems in summary.items():
        st, bl = systems.get("streaming"), systems.get("baseline")
        if st and bl:
            load_ratio = (
                st["sustained_load_rps"] / bl["sustained_load_rps"]
                if bl["sustained_load_rps"]
                else math.nan
            )
            p99_ratio = (
                bl["p99_low_load_s"] / st["p99_low_load_s"] if st["p99_low_load_s"] else math.nan
            )
            evidence_ratio = (
                bl["evidence_p99_low_load_s"] / st["evidence_p99_low_load_s"]
                if st["evidence_p99_low_load_s"]
                else math.nan
            )
            print(
                f"\n{tier}: streaming / baseline sustained load {load_ratio:.2f}x (goal 3x); "
                f"baseline / streaming P99 at low load {p99_ratio:.2f}x (goal 1.8x), "
                f"{evidence_ratio:.2f}x until the evidence is ready (the paper's endpoint)"
            )
    if idle:
        print(
            "\nCPU s/request: CPU time of everything under test (our stack: broker, Faust and "
            "LM workers; LangGraph: its process) over the point, per request sent. The idle "
            "stack alone uses "
            + ", ".join(f"{cores:.2f} cores ({tier})" for tier, cores in idle.items())
            + " of the machine's 2 polling the embedded broker; LangGraph has no broker."
        )
    print(
        "\nEvidence ready: from arrival until every claim has its evidence, where the paper's "
        "pipeline ended (ours goes on to verify each claim and report)."
    )
    print("\n### every point\n")
    print(
        "| tier | system | offered | done | p50 s | p99 s | evidence p50 / p99 s | achieved "
        "| CPU s/request | pass |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in points:
        print(
            f"| {p.tier} | {p.system} | {p.offered_rps:g} | {p.completed}/{p.sent} | {p.p50_s:.1f} "
            f"| {p.p99_s:.1f} | {p.evidence_p50_s:.1f} / {p.evidence_p99_s:.1f} "
            f"| {p.achieved_rps:.2f} | {_cpu(p)} | {'yes' if p.passed else 'no'} |"
        )
    if any(p.cpu_s_by_role for p in points):
        _print_cpu(points)
    if any(p.critical_ms for p in points):
        _print_critical(points, summary)
    _print_stages(points, summary)


def _print_cpu(points: list[Point]) -> None:
    """Where our CPU per request goes, by kind of process, beside LangGraph's total."""
    print(
        "\n### CPU seconds per request by process (idle use included; client: the bench's "
        "producer and result reader; LangGraph: its one process)\n"
    )
    ours = [p for p in points if p.cpu_s_by_role]
    roles = sorted({r for p in ours for r in p.cpu_s_by_role})
    print("| tier | system | offered | " + " | ".join(roles) + " | total |")
    print("|---|---|---|" + "---|" * (len(roles) + 1))
    for p in ours:
        cells = " | ".join(f"{p.cpu_s_by_role.get(r, 0.0):.2f}" for r in roles)
        print(f"| {p.tier} | {p.system} | {p.offered_rps:g} | {cells} | {_cpu(p)} |")
    for p in points:
        if p.system == "langgraph" and not math.isnan(p.cpu_s_per_request):
            blanks = " | ".join("-" for _ in roles)
            print(f"| {p.tier} | {p.system} | {p.offered_rps:g} | {blanks} | {_cpu(p)} |")


def _print_critical(points: list[Point], summary: dict[str, dict[str, dict[str, Any]]]) -> None:
    print(
        "\n### where the time went: the critical path at each load (median s, and median share "
        "of a request; transit = emitted until the stage's worker received it, waiting = "
        "received until the work started; LangGraph's from its steps' spans: its LM calls, "
        "its other steps, and the time between them as waiting)\n"
    )
    for tier in summary:
        ours = [p for p in points if p.tier == tier and p.critical_ms]
        if not ours:
            continue
        names = [f"{p.system} @{p.offered_rps:g}/s" for p in ours]
        print("| kind | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for kind in ours[0].critical_ms:
            cells = [
                f"{p.critical_ms.get(kind, 0) / 1000:.2f} ({p.critical_shares.get(kind, 0):.0%})"
                for p in ours
            ]
            print(f"| {kind} | " + " | ".join(cells) + " |")
        print()


def _print_stages(points: list[Point], summary: dict[str, dict[str, dict[str, Any]]]) -> None:
    print("\n### median time per stage at the lowest load (s, first to last span)\n")
    for tier in summary:
        low = [p for p in points if p.tier == tier and p.stages_s]
        if not low:
            continue
        first = min(p.offered_rps for p in low)
        rows = {p.system: p.stages_s for p in low if p.offered_rps == first}
        names = list(rows)
        print(f"{tier} at {first:g} req/s:\n")
        print("| stage | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for stage in dict.fromkeys(s for r in rows.values() for s in r):
            print(
                f"| {stage} | "
                + " | ".join(f"{rows[s].get(stage, math.nan):.2f}" for s in names)
                + " |"
            )
        print()


def plot_points(points: list[Point], sim: SimSetup) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    tiers = sorted({p.tier for p in points})
    fig, axes = plt.subplots(1, len(tiers), figsize=(6 * len(tiers), 4.5), squeeze=False)
    for ax, tier in zip(axes[0], tiers, strict=True):
        for (t, system), pts in sorted(_group(points).items()):
            if t != tier:
                continue
            pts.sort(key=lambda p: p.offered_rps)
            xs = [p.offered_rps for p in pts]
            (line,) = ax.plot(xs, [p.p50_s for p in pts], marker="o", label=f"{system} median")
            ax.plot(
                xs,
                [p.p99_s for p in pts],
                marker="x",
                linestyle="--",
                color=line.get_color(),
                label=f"{system} P99",
            )
        ax.axhline(TARGET_MEDIAN_S, color="grey", linewidth=0.8, linestyle=":")
        label = f" (SIMULATED LM engines, {sim.label()})" if tier == "sim" else ""
        ax.set_title(f"FacTool, {tier}{label}", fontsize=10)
        ax.set_xlabel("offered load (req/s)")
        ax.set_ylabel("latency (s)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    path = OUT_DIR / f"factool_latency{sim.suffix()}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
