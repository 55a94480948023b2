"""Lilypad: a decentralized compute network for deterministic, containerized AI jobs."""

__version__ = "0.1.0"
