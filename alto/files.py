"""Files our processes share with their operator (status files, handoff and generation
files): written whole, so a reader never sees half of one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: Path, value: Any) -> None:
    """Write `value` as JSON to `path` atomically (see `write_text`)."""
    write_text(path, json.dumps(value))


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (a temporary file beside it, renamed)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
