"""The Faust application module: `faust -A alto.agents.app worker` (or `alto worker`) runs it.

Configuration comes from `ALTO_*` environment variables (see `alto.config`).
"""

from __future__ import annotations

from alto.agents.runtime import create_app
from alto.config import load_config
from alto.streams.registry import all_topologies

config = load_config()
alto_app = create_app(config, all_topologies(config))
app = alto_app.app
