"""The registry of pipelines a worker serves, by name: ours, and the user's.

A user serves a pipeline of their own without editing this repository, in one of two ways:

- **A module on the path.** `ALTO_PIPELINE_MODULES=mypipes` (comma-separated; `module` or
  `module:callable`, the callable defaulting to `build`) names a callable that takes no
  arguments and returns the pipeline (a `Pipeline` or its built `Topology`). Every process
  of a stack reads the same variable (`alto up` passes it to its children), so the module
  must be importable in each: install it, or put its folder on `PYTHONPATH`.
- **A distribution with an entry point** in the group `alto.pipelines`, for a package of
  pipelines installed next to ours (`pip install my-pipelines`):

  ```toml
  [project.entry-points."alto.pipelines"]
  sentiment = "my_pipelines.sentiment:build"
  ```

A pipeline is known by its own name (`Pipeline(name)`). Two sources giving one name is a
configuration error, as is a source that does not import or does not return a pipeline: a
worker must not start serving a different set of pipelines than its peers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from alto.config import AltoConfig
from alto.errors import ConfigError
from alto.streams import Pipeline, Topology

ENTRY_POINT_GROUP = "alto.pipelines"

M = TypeVar("M", bound=BaseModel)

Builder = Callable[[], Any]


@dataclass(frozen=True)
class Registered:
    """One pipeline of the registry and where it came from (for `alto pipelines`)."""

    topology: Topology
    source: str  # "built-in", "module mypipes:build", "entry point sentiment (dist 1.0)"
    module: str | None = None  # the `config.pipeline_modules` entry it came from


# Our own pipelines, named like a user's (`module:callable`) and loaded by the same code: the
# stream runtime imports no pipeline, so the layering holds (pipelines sit above it).
BUILT_IN: tuple[str, ...] = (
    "alto.agents.example:build",
    "alto.agents.hop:build",
    "alto.agents.claims:build",
    "alto.agents.factool.pipeline:build",
)


def _topology(built: Any, source: str) -> Topology:
    if isinstance(built, Pipeline):
        built = built.build()
    if not isinstance(built, Topology):
        raise ConfigError(
            f"pipeline source {source} returned {type(built).__name__}, not a Pipeline or Topology"
        )
    return built


def _call(builder: Any, source: str) -> Topology:
    if not callable(builder):
        raise ConfigError(f"pipeline source {source} is not callable")
    try:
        built = builder()
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"pipeline source {source} raised {type(exc).__name__}: {exc}") from exc
    return _topology(built, source)


def _from_module(spec: str, source: str | None = None) -> tuple[Any, str]:
    module_name, _, attr = spec.partition(":")
    attr = attr or "build"
    source = source or f"module {module_name}:{attr}"
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(
            f"{source}: the module {module_name!r} does not import: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        return getattr(module, attr), source
    except AttributeError:
        raise ConfigError(f"{source}: the module has no {attr!r}") from None


def _sources(modules: Iterable[str]) -> Iterable[tuple[Any, str, str | None]]:
    """(builder, where it came from, the `pipeline_modules` entry that named it)."""
    for spec in BUILT_IN:
        yield (*_from_module(spec, "built-in"), None)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "?"
        source = f"entry point {ep.name} = {ep.value} ({dist})"
        try:
            yield ep.load(), source, None
        except Exception as exc:
            raise ConfigError(f"{source} does not load: {type(exc).__name__}: {exc}") from exc
    for spec in modules:
        yield (*_from_module(spec), spec)


def registry(config: AltoConfig | None = None) -> dict[str, Registered]:
    """Every pipeline this process can serve, by name: built-in ones, those of installed
    `alto.pipelines` entry points, and those `config.pipeline_modules` names."""
    modules = config.pipeline_modules if config is not None else ()
    out: dict[str, Registered] = {}
    for builder, source, module in _sources(modules):
        topology = _call(builder, source)
        if config is not None and not config.chaining:
            topology = topology.unchained()
        if (known := out.get(topology.pipeline)) is not None:
            raise ConfigError(
                f"two pipelines named {topology.pipeline!r}: from {known.source} and {source}"
            )
        out[topology.pipeline] = Registered(topology, source, module)
    if config is not None:
        for name in config.pipeline_settings:
            if name not in out:
                raise ConfigError(f"pipeline_settings name {name!r}, which is no pipeline here")
            pipeline_settings(config, out[name].topology)
    return out


def pipeline_settings(config: AltoConfig, topology: Topology) -> Any:
    """`topology`'s own settings from `config.pipeline_settings`, validated by its model
    (None: a pipeline without settings)."""
    if topology.settings is None:
        if raw := config.settings_of(topology.pipeline):
            raise ConfigError(f"pipeline {topology.pipeline!r} takes no settings, got {dict(raw)}")
        return None
    return own_settings(config, topology.pipeline, topology.settings)


def own_settings(config: AltoConfig, pipeline: str, model: type[M]) -> M:
    """`pipeline`'s own settings in `config`, validated by `model` (what a pipeline's
    stage code calls; the registry has checked them once when the process loaded it)."""
    try:
        return model.model_validate(config.settings_of(pipeline))
    except ValidationError as exc:
        raise ConfigError(f"settings of pipeline {pipeline!r}: {exc}") from exc


def all_topologies(config: AltoConfig | None = None) -> list[Topology]:
    """Every registered pipeline's topology (see `registry`)."""
    return [r.topology for r in registry(config).values()]
