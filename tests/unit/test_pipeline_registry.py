"""The pipeline registry: built-in pipelines, and the user's from a module named in
`ALTO_PIPELINE_MODULES` (entry points of the group `alto.pipelines` load the same way)."""

from __future__ import annotations

from pathlib import Path

import pytest

from alto.config import AltoConfig, child_env, load_config
from alto.errors import ConfigError
from alto.streams.registry import registry
from tests.harness import USER_PIPELINE_MODULE

USER_MODULE = (
    USER_PIPELINE_MODULE
    + """

def broken():
    return 42


def clash():
    return Pipeline("example").map("x", lambda item: item.value)
"""
)


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"userpipes_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


OURS = {"example", "hop", "claims", "factool"}


def test_built_in_pipelines_are_registered() -> None:
    assert set(registry()) == OURS
    assert all(r.source.startswith("built-in") for r in registry().values())


def test_a_users_module_adds_its_pipeline(user_module: str) -> None:
    config = AltoConfig(pipeline_modules=(user_module,))
    pipes = registry(config)
    assert pipes["letters"].source == f"module {user_module}:build"
    assert pipes["letters"].topology.terminal == "total"
    assert set(pipes) == {*OURS, "letters"}


def test_the_modules_reach_child_processes(user_module: str, tmp_path: Path) -> None:
    config = AltoConfig(pipeline_modules=(user_module, f"{user_module}:build"), data_dir=tmp_path)
    again = load_config(child_env(config))
    assert again.pipeline_modules == config.pipeline_modules


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("no_such_module_anywhere", "does not import"),
        ("{m}:missing", "has no 'missing'"),
        ("{m}:broken", "returned int, not a Pipeline"),
        ("{m}:clash", "two pipelines named 'example'"),
    ],
)
def test_a_bad_source_is_a_clear_configuration_error(
    user_module: str, spec: str, error: str
) -> None:
    config = AltoConfig(pipeline_modules=(spec.format(m=user_module),))
    with pytest.raises(ConfigError, match=error):
        registry(config)


def test_a_pipelines_own_settings_are_validated_by_its_model_when_it_loads() -> None:
    from alto.agents.factool.settings import FacToolSettings, factool_settings

    config = AltoConfig(pipeline_settings={"factool": {"passage_cache": 0}})
    registry(config)
    assert factool_settings(config) == FacToolSettings(passage_cache=0)
    assert factool_settings(AltoConfig()).passage_cache == 4096
    bad = [
        ({"factool": {"passage_cache": -1}}, "settings of pipeline 'factool'"),
        ({"factool": {"corpuss": "x"}}, "corpuss"),
        ({"example": {"x": 1}}, "pipeline 'example' takes no settings"),
        ({"nosuch": {"x": 1}}, "'nosuch', which is no pipeline here"),
    ]
    for settings, error in bad:
        with pytest.raises(ConfigError, match=error):
            registry(AltoConfig(pipeline_settings=settings))
