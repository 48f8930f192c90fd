"""Ancestry paths and the message keys derived from them.

A quantum's path lists, from the request down, the fan-out stage that created each
level and the quantum's index in it. A stage that aggregates at level L must see every
quantum below one level-L node, so its key is the request id plus the first L entries:
equal keys hash to one partition, and one partition is owned by one worker.
"""

from __future__ import annotations

from collections.abc import Sequence

from alto.schemas.messages import PathEntry

KEY_SEPARATOR = "|"
LEVEL_SEPARATOR = "/"

Path = tuple[PathEntry, ...]


def path_str(path: Sequence[PathEntry]) -> str:
    """Human-readable, order-preserving form, e.g. ``sentences:0/words:3`` ('' for the request)."""
    return LEVEL_SEPARATOR.join(f"{p.stage}:{p.index}" for p in path)


def node_key(request_id: str, path: Sequence[PathEntry]) -> str:
    """The key of one node of a request's ancestry tree (request id, then the path)."""
    return f"{request_id}{KEY_SEPARATOR}{path_str(path)}"


def request_id_of_key(key: str | bytes) -> str:
    """Recover the request id from a node key (or from a plain request-id key)."""
    text = key.decode("utf-8") if isinstance(key, bytes) else key
    head, sep, _ = text.rpartition(KEY_SEPARATOR)
    return head if sep else text


def key_at_level(request_id: str, path: Sequence[PathEntry], level: int | None) -> str:
    """Partition key for a consumer that aggregates at `level` (None: a stateless consumer).

    A stateless consumer gets the full path, spreading work over every partition; an
    aggregating one gets the prefix of length `level`, so that every quantum that must be
    folded into one node meets at one instance. Paths shorter than the level (END markers
    of nodes above it, which such a stage only forwards) keep their full path.
    """
    if level is None or len(path) <= level:
        return node_key(request_id, path)
    return node_key(request_id, path[:level])


def relative_indices(path: Sequence[PathEntry], level: int) -> tuple[int, ...]:
    """Indices below the level-`level` ancestor: the identity of a quantum inside one node."""
    return tuple(p.index for p in path[level:])
