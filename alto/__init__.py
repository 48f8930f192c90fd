"""ALTO on Kafka: a streaming serving system for compound AI pipelines."""

__version__ = "0.1.0"
