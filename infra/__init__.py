"""Broker launchers, topic administration and deployment files."""
