"""`alto demo`, the README's main-job command, as a user runs it (on the SIMULATED engine
here, for time; `make demo` runs it on vLLM): it brings the stack up, streams partial
outputs, prints the final results and per-stage table, exits 0 and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from alto.infra.processes import REPO

pytestmark = pytest.mark.slow


def test_alto_demo_runs_end_to_end_on_the_sim_engine(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTO_")}
    env["ALTO_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "alto",
            "demo",
            "--engine",
            "sim",
            "--questions",
            "2",
            "--workers",
            "1",
            "--timeout",
            "300",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, f"{out[-4000:]}\n{done.stderr[-4000:]}"
    for partial in (" claim ", " query ", " evidence ", " verdict "):
        assert partial in out, f"no streamed {partial.strip()} shown"
    assert "## results" in out and "factuality:" in out
    assert "| streaming | 2 | 2 |" in out and "| baseline | 2 | 2 |" in out
    assert "| bm25 |" in out and "every request completed OK" in out
    assert "stopped the stack." in out
