"""Faust workers on one host split its cores for their CPU compute (ALTO_COMPUTE_THREADS)."""

from __future__ import annotations

import os
from pathlib import Path

from alto.config import child_env, load_config
from alto.infra.stack import Stack


def test_alto_up_gives_each_faust_worker_its_share_of_the_cores(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    for workers in (1, 2, 3):
        stack = Stack(load_config(), workers=workers, workdir=tmp_path, listen=None)
        assert stack._compute_env() == {"ALTO_COMPUTE_THREADS": str(max(1, cores // workers))}


def test_a_configured_number_is_kept_and_reaches_child_processes(tmp_path: Path) -> None:
    config = load_config(environ={"ALTO_COMPUTE_THREADS": "3"}, data_dir=tmp_path)
    assert config.compute_threads == 3
    assert Stack(config, workers=2, workdir=tmp_path, listen=None)._compute_env() == {}
    assert load_config(environ=child_env(config)).compute_threads == 3
