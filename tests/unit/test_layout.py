"""The package's layout rules that no linter checks: every module of `alto` stays under 500
lines (a bigger one is split along its seams)."""

from __future__ import annotations

import os
from pathlib import Path

import alto

PACKAGE = Path(alto.__file__).parent
MAX_LINES = 500


def test_no_module_of_the_package_is_over_500_lines() -> None:
    modules = [
        Path(folder, name)
        for folder, _, names in os.walk(PACKAGE, followlinks=True)  # the layers are symlinks
        for name in names
        if name.endswith(".py")
    ]
    assert len(modules) > 50
    sizes = {str(m.relative_to(PACKAGE)): len(m.read_text().splitlines()) for m in modules}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


def test_the_mode_setting_spells_the_wire_enum() -> None:
    from typing import get_args

    from alto.config import ModeName
    from alto.schemas.messages import Mode

    assert {Mode.parse(name) for name in get_args(ModeName)} == set(Mode)
