"""Kafka security settings reach every client and every child process."""

from __future__ import annotations

import ssl

from alto.config import config_env, load_config
from alto.kafka import aiokafka_settings, client_settings

SECURE = {
    "ALTO_BOOTSTRAP_SERVERS": "kafka-1:9093",
    "ALTO_SECURITY_PROTOCOL": "SASL_SSL",
    "ALTO_SASL_MECHANISM": "SCRAM-SHA-512",
    "ALTO_SASL_USERNAME": "alto",
    "ALTO_SASL_PASSWORD": "s3cret-pw",
}


def test_children_load_the_same_security_settings() -> None:
    config = load_config(environ=SECURE)
    child = load_config(environ=config_env(config))
    assert child.security == config.security
    assert child.security.sasl_password is not None
    assert child.security.sasl_password.get_secret_value() == "s3cret-pw"


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


def test_a_child_process_loads_every_field_of_its_parents_configuration() -> None:
    """`config_env` carries every field (issue 14 found three silently dropped)."""
    from pathlib import Path

    from alto.config import AltoConfig

    parent = AltoConfig(
        heartbeat_interval_s=2.5,
        max_message_bytes=2_000_000,
        extra={"fetch_max_bytes": 1234},
        pipeline_modules=("a", "b:c"),
        pipelines=("example",),
        sim_params=Path("/tmp/params.json"),
    )
    child = load_config(environ=config_env(parent))
    # The relative data folder reaches the child as the same place, made absolute by the
    # parent (a child may start elsewhere).
    assert parent.data_dir == Path(".alto-data")
    assert child.data_dir == Path.cwd() / ".alto-data"
    assert child == parent.with_overrides(worker_id=child.worker_id, data_dir=child.data_dir)
