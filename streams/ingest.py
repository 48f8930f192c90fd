"""Ingest: a pipeline request in, the root quantum of its ancestry tree out (with admission
control and the input limits)."""

from __future__ import annotations

from dataclasses import replace

from alto.schemas.messages import (
    Mode,
    PipelineRequest,
    Quantum,
    QuantumKind,
    TraceSpan,
)
from alto.streams.admission import Admission
from alto.streams.outputs import (
    DeadLetterOut,
    Output,
    Routing,
    Send,
    failed,
    now_ms,
    overloaded,
    payload_text,
)
from alto.streams.pipeline import REQUEST


class Ingest:
    """Turns a `PipelineRequest` into the root quantum of its pipeline."""

    def __init__(
        self,
        routings: dict[str, Routing],
        worker: str,
        default_mode: Mode,
        max_input_chars: int,
        sink_topic: str,
        admission: Admission[PipelineRequest] | None = None,
    ) -> None:
        self.routings = routings
        self.worker = worker
        self.default_mode = default_mode
        self.max_input_chars = max_input_chars
        self.sink_topic = sink_topic
        self.admission = admission

    def handle(self, req: PipelineRequest) -> list[Output]:
        if not req.request_id:
            # No id to send a FAILED result under (and one empty id would stand for many).
            return [DeadLetterOut("bad_request_id", "the request id is empty", None, REQUEST)]
        start = now_ms()
        mode = req.mode or self.default_mode
        root = Quantum(
            request_id=req.request_id,
            pipeline=req.pipeline,
            mode=mode,
            stage=REQUEST,
            path=(),
            seq=0,
            kind=QuantumKind.DATA,
            submitted_at_ms=req.submitted_at_ms,
            created_at_ms=start,
            payload=payload_text(req.input),
        )
        routing = self.routings.get(req.pipeline)
        error: tuple[str, str] | None = None
        if routing is None:
            known = ", ".join(sorted(self.routings)) or "none"
            error = ("unknown_pipeline", f"unknown pipeline {req.pipeline!r} (known: {known})")
        elif len(req.input) > self.max_input_chars:
            error = (
                "input_too_large",
                f"input has {len(req.input)} characters, the limit is {self.max_input_chars}",
            )
        if error is not None:
            reason, text = error
            marker = failed(req.request_id, REQUEST, f"{reason}: {text}", like=root)
            return [
                DeadLetterOut(reason, text, req.request_id, REQUEST),
                Send(self.sink_topic, req.request_id, marker),
            ]
        assert routing is not None  # narrowed above; not input validation
        if self.admission is not None and not self.admission.admit(req.request_id, start, req):
            limit = self.admission.capacity
            why = overloaded(f"{limit} requests already in flight at this ingest worker")
            return [
                Send(
                    self.sink_topic, req.request_id, failed(req.request_id, REQUEST, why, like=root)
                )
            ]
        span = TraceSpan(
            REQUEST,
            "",
            self.worker,
            req.submitted_at_ms,
            start,
            (self.worker,),
            input_ms=req.submitted_at_ms,
        )
        return list(routing.sends(REQUEST, replace(root, trace=(span,))))
