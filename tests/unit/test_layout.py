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


def test_the_mode_setting_is_the_wire_enum() -> None:
    from alto.config import AltoConfig
    from alto.enums import Mode
    from alto.schemas import messages

    assert messages.Mode is Mode
    assert AltoConfig.model_fields["mode"].annotation is Mode
    assert AltoConfig(mode="baseline").mode is Mode.BASELINE  # type: ignore[arg-type]
