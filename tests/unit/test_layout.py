"""The package's layout rules that no linter checks: every module of `alto` stays under 500
lines (a bigger one is split along its seams)."""

from __future__ import annotations

from pathlib import Path

import pytest

import alto

pytestmark = pytest.mark.unit

PACKAGE = Path(alto.__file__).parent
MAX_LINES = 500


def test_no_module_of_the_package_is_over_500_lines() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 50  # the layers' symlinks are followed
    sizes = {str(m.relative_to(PACKAGE)): len(m.read_text().splitlines()) for m in modules}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}
