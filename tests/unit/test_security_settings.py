"""Kafka security settings reach every client and every child process."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from alto.config import AltoConfig, child_env, load_config
from alto.kafka import aiokafka_settings, client_settings

SECURE = {
    "ALTO_KAFKA__BOOTSTRAP_SERVERS": "kafka-1:9093",
    "ALTO_KAFKA__SECURITY__PROTOCOL": "SASL_SSL",
    "ALTO_KAFKA__SECURITY__SASL_MECHANISM": "SCRAM-SHA-512",
    "ALTO_KAFKA__SECURITY__SASL_USERNAME": "alto",
    "ALTO_KAFKA__SECURITY__SASL_PASSWORD": "s3cret-pw",
}


def test_children_load_the_same_security_settings_and_the_password_never_goes_to_disk(
    tmp_path: Path,
) -> None:
    config = load_config(environ=SECURE, data_dir=tmp_path)
    env = child_env(config)
    child = load_config(environ=env)
    assert child.kafka.security == config.kafka.security
    assert child.kafka.security.sasl_password is not None
    assert child.kafka.security.sasl_password.get_secret_value() == "s3cret-pw"
    assert "s3cret-pw" not in Path(env["ALTO_CONFIG_FILE"]).read_text()


def test_aiokafka_clients_get_sasl_and_tls() -> None:
    settings = aiokafka_settings(load_config(environ=SECURE))
    assert settings["bootstrap_servers"] == "kafka-1:9093"
    assert settings["security_protocol"] == "SASL_SSL"
    assert settings["sasl_mechanism"] == "SCRAM-SHA-512"
    assert settings["sasl_plain_username"] == "alto"
    assert settings["sasl_plain_password"] == "s3cret-pw"
    assert isinstance(settings["ssl_context"], ssl.SSLContext)
    assert client_settings(load_config(environ=SECURE))["sasl.password"] == "s3cret-pw"


def test_plaintext_adds_nothing() -> None:
    assert aiokafka_settings(load_config(environ={})) == {"bootstrap_servers": "127.0.0.1:9092"}


def test_a_child_process_loads_every_field_of_its_parents_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`child_env` carries every field (issue 14 found three silently dropped when children
    rebuilt their configuration from a hand-kept list of variables)."""
    monkeypatch.chdir(tmp_path)
    parent = AltoConfig(
        kafka={"heartbeat_interval_s": 2.5, "max_message_bytes": 2_000_000},
        lm={"sim_params": Path("/tmp/params.json")},
        extra={"fetch_max_bytes": 1234},
        pipeline_modules=("a", "b:c"),
        pipelines=("example",),
        pipeline_settings={"factool": {"passage_cache": 7}},
        mode="baseline",
    )
    child = load_config(environ=child_env(parent))
    # The relative data folder reaches the child as the same place, made absolute by the
    # parent (a child may start elsewhere).
    assert parent.data_dir == Path(".alto-data")
    assert child.data_dir == tmp_path.resolve() / ".alto-data"
    assert child == parent.with_overrides(worker_id=child.worker_id, data_dir=child.data_dir)


def test_a_childs_own_variables_win_over_its_file_and_the_parents_do_not_leak(
    tmp_path: Path,
) -> None:
    from alto.config import without_settings

    parent = load_config(environ={}, data_dir=tmp_path, lm={"engine": "sim"})
    inherited = {"ALTO_LM__ENGINE": "vllm", "PATH": "/bin", "ALTO_PARENT_PID": "1"}
    env = {**without_settings(inherited), **child_env(parent), "ALTO_ROLES": "sink"}
    child = load_config(environ=env)
    assert child.lm.engine == "sim"  # the parent's stale variable did not reach the child
    assert child.roles == ("sink",)
    assert env["PATH"] == "/bin" and env["ALTO_PARENT_PID"] == "1"


def test_settings_come_from_a_toml_file_under_the_environment(tmp_path: Path) -> None:
    settings = tmp_path / "alto.toml"
    settings.write_text(
        '[kafka]\npartitions = 3\nbootstrap_servers = "k:9092"\n'
        '[pipeline_settings.factool]\ncorpus = "/data/corpus.jsonl"\n'
    )
    config = load_config(environ={"ALTO_CONFIG_FILE": str(settings), "ALTO_KAFKA__PARTITIONS": "5"})
    assert (config.kafka.partitions, config.kafka.bootstrap_servers) == (5, "k:9092")
    assert config.names_a_broker
    assert config.settings_of("factool") == {"corpus": "/data/corpus.jsonl"}


@pytest.mark.parametrize(
    ("variable", "hint"),
    [
        ("ALTO_PARTITIONS", "ALTO_KAFKA__PARTITIONS"),  # a name from before the sections
        ("ALTO_LM_MAX_INSTANCES", "ALTO_LM__MAX_INSTANCES"),
        ("ALTO_KAFKA__PARTITION", "ALTO_KAFKA__PARTITIONS"),  # a typo
    ],
)
def test_a_variable_that_names_no_setting_is_an_error_with_the_likely_name(
    variable: str, hint: str
) -> None:
    from alto.errors import ConfigError

    with pytest.raises(ConfigError, match=f"{variable} names no setting; did you mean {hint}"):
        load_config(environ={variable: "4"})
