"""Guards against rot in the deployment files no test here can run (no Docker engine):
infra/docker-compose.yml's commands are `alto` subcommands the CLI accepts, its ALTO_*
variables are settings `alto.config` knows (with values it accepts), infra/prometheus.yml
scrapes every service that serves metrics, and the README documents every setting."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from alto.cli import build_parser
from alto.config import env_variables, load_config

INFRA = Path(__file__).resolve().parents[2] / "infra"
README = INFRA.parent / "README.md"

_DEFAULT = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}")


def _interpolate(value: Any) -> str:
    """What compose makes of `value` with nothing set in the environment: `${X:-d}` -> d."""
    return _DEFAULT.sub(lambda m: m.group(1) or "", str(value))


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((INFRA / "docker-compose.yml").read_text()))


def _alto_services() -> dict[str, dict[str, Any]]:
    """Services built from our image (its entrypoint is `alto`)."""
    services = _compose()["services"]
    ours = {
        name: spec
        for name, spec in services.items()
        if isinstance(spec.get("build"), dict)
        and spec["build"].get("dockerfile") == "infra/Dockerfile"
    }
    assert ours, "no service is built from infra/Dockerfile"
    return ours


def test_the_image_runs_the_alto_cli() -> None:
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["alto"]' in dockerfile


def test_every_service_command_is_an_alto_subcommand_the_cli_accepts() -> None:
    parser = build_parser()
    for name, spec in _alto_services().items():
        command = [_interpolate(part) for part in spec["command"]]
        try:  # an unknown subcommand or option exits with usage (code 2)
            args = parser.parse_args(command)
        except SystemExit as exc:
            pytest.fail(f"{name}: `alto {' '.join(command)}` is rejected by the CLI ({exc})")
        assert args.command == command[0] and callable(args.func)


def test_every_alto_variable_is_a_known_setting_with_a_valid_value() -> None:
    known = env_variables()
    for name, spec in _alto_services().items():
        env = {k: _interpolate(v) for k, v in (spec.get("environment") or {}).items()}
        unknown = sorted(k for k in env if k.startswith("ALTO_") and k not in known)
        assert not unknown, f"{name}: unknown settings {unknown}"
        load_config(environ=env)  # raises ConfigError for a value the config refuses


def test_lm_services_have_distinct_instances_and_every_server_has_a_fixed_metrics_port() -> None:
    services = _alto_services()
    instances = [
        spec["command"][spec["command"].index("--instance") + 1]
        for spec in services.values()
        if spec["command"][0] == "lm-worker"
    ]
    assert instances and len(instances) == len(set(instances)), instances
    for name, spec in services.items():
        config = load_config(environ={k: _interpolate(v) for k, v in spec["environment"].items()})
        long_running = spec["command"][0] in ("worker", "lm-worker")
        assert (config.metrics.port > 0) == long_running, (name, config.metrics.port)


def test_prometheus_scrapes_every_service_with_metrics() -> None:
    scrape = yaml.safe_load((INFRA / "prometheus.yml").read_text())["scrape_configs"]
    targets: set[str] = set()
    for job in scrape:
        for sd in job.get("dns_sd_configs", []):
            targets |= {f"{n}:{sd['port']}" for n in sd["names"]}
        for static in job.get("static_configs", []):
            targets |= set(static["targets"])
    assert "prometheus" in _compose()["services"]
    for name, spec in _alto_services().items():
        port = load_config(
            environ={k: _interpolate(v) for k, v in spec["environment"].items()}
        ).metrics.port
        if port > 0:
            assert f"{name}:{port}" in targets, f"{name} serves metrics nobody scrapes"


def test_the_readme_documents_every_setting() -> None:
    readme = README.read_text()
    missing = sorted(
        v
        for v in env_variables()
        if v not in readme and not v.startswith("ALTO_KAFKA__SECURITY__SASL_")
    )
    assert not missing, f"settings missing from the README's configuration table: {missing}"
    assert "ALTO_KAFKA__SECURITY__SASL_*" in readme
