"""The exception hierarchy: one root, a few meaningful children."""

from __future__ import annotations


class AltoError(Exception):
    """Root of every error raised on purpose by this project."""


class ConfigError(AltoError):
    """The configuration is invalid or incomplete."""


class BadInputError(AltoError):
    """A message, request or value from outside cannot be accepted.

    `reason` is a short machine-friendly tag (e.g. ``unknown_fingerprint``); the
    message says what was wrong in words.  Bad input becomes a dead letter.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PipelineError(AltoError):
    """A pipeline declaration is inconsistent (caught when it is built)."""


class StageError(AltoError):
    """A stage's own code failed on one input; the request fails, the worker does not."""


class BrokerError(AltoError):
    """The embedded broker could not be found, started or reached."""


class BrokerLost(BrokerError):
    """The embedded broker exited while the stack ran: everything it held is gone."""


class EngineError(AltoError):
    """The inference engine refused or failed one request (the worker keeps serving)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
