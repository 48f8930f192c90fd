"""The sink: a pipeline's final quantum (or a FAILED one) in, one result per request out."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from alto.schemas.messages import (
    PipelineResult,
    Quantum,
    QuantumKind,
    ResultStatus,
)
from alto.streams.ancestry import (
    path_str,
)
from alto.streams.outputs import OVERLOADED, DeadLetterOut, now_ms
from alto.streams.pipeline import Topology


class Sink:
    """Turns the final stage's output (or a FAILED marker) into the request's one result.

    `emitted` maps request id -> encoded result. In a worker it is the table whose
    changelog *is* the results topic, so writing a result and remembering it are one
    write; a replayed request finds its result there and is not emitted again.

    Only final outputs and FAILED markers are routed to the sink. Anything else there is
    bad input (a forged or misrouted quantum): `reject` says so, for the caller to
    dead-letter, and `handle` fails its request (if it has no result yet).
    """

    def __init__(self, topologies: dict[str, Topology]) -> None:
        self.terminals = {name: t.terminal for name, t in topologies.items()}

    def _final(self, q: Quantum) -> bool:
        return (
            q.kind is QuantumKind.DATA
            and q.path == ()
            and q.stage == self.terminals.get(q.pipeline)
        )

    def reject(self, q: Quantum) -> DeadLetterOut | None:
        """The dead letter for a quantum that is neither a final output nor FAILED."""
        if q.kind is QuantumKind.FAILED or self._final(q):
            return None
        return DeadLetterOut("not_final", _not_final(q), q.request_id, "sink")

    def handle(self, q: Quantum, emitted: MutableMapping[str, Any]) -> PipelineResult | None:
        if q.request_id in emitted:
            return None
        if self._final(q):
            status, output, error = ResultStatus.OK, q.payload, None
        elif q.kind is QuantumKind.FAILED:
            error = q.error or "failed"
            overloaded = error.startswith(f"{OVERLOADED}:")
            status = ResultStatus.OVERLOADED if overloaded else ResultStatus.FAILED
            output = None
        else:
            status, output, error = ResultStatus.FAILED, None, f"not_final: {_not_final(q)}"
        done = now_ms()
        result = PipelineResult(
            request_id=q.request_id,
            pipeline=q.pipeline,
            status=status,
            output=output,
            error=error,
            # Any submitted_at_ms decodes (a client's clock, or a forged quantum's); the
            # difference must still be an Avro long, or the result could not be written.
            latency_ms=min(max(done - q.submitted_at_ms, -(2**63)), 2**63 - 1),
            submitted_at_ms=q.submitted_at_ms,
            completed_at_ms=done,
            mode=q.mode,
            trace=q.trace,
            simulated=any(span.simulated for span in q.trace),
        )
        emitted[q.request_id] = result
        return result


def _not_final(q: Quantum) -> str:
    return (
        f"not a final output: {q.kind} from {q.pipeline!r} stage {q.stage!r} "
        f"at {path_str(q.path) or 'the request'}"
    )
