"""The names that settings and messages share, each defined once.

`Mode` is also a wire enum (`schemas/*.avsc`; `tests/unit/test_schemas.py` checks the
symbols), so it lives here, below both the settings and the wire format.
"""

from __future__ import annotations

import enum
from typing import Literal


class Mode(enum.StrEnum):
    """How stages hand work on: each partial output at once, or whole outputs (the paper's
    baseline)."""

    STREAMING = "STREAMING"
    BASELINE = "BASELINE"

    @classmethod
    def parse(cls, value: str) -> Mode:
        return cls(value.upper())


EngineName = Literal["vllm", "sim"]
PolicyName = Literal["round_robin", "least_loaded", "prefix_hash", "cache_aware", "prompt_aware"]
Role = Literal["ingest", "stages", "sink", "scheduler"]
# The SIMULATED engine's hardware profiles (`alto.lm_service.sim.PROFILES`): "cpu" is
# SmolLM2-135M under vLLM on this project's 2-core machines; "paper" a 7B model on an A100.
SimProfile = Literal["cpu", "paper"]
# A process's asyncio event loop (`alto.loops`): libuv's, or the standard library's.
EventLoop = Literal["uvloop", "asyncio"]
