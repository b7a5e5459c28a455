"""The shoal agent as a library: `Agent(config)` serves controllers inside any asyncio program.

Names are loaded on first use so importing a submodule stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Agent": "shoal.agent.server",
    "AgentConfig": "shoal.agent.config",
    "Limits": "shoal.agent.config",
    "KeyPolicy": "shoal.agent.config",
    "load_config": "shoal.agent.config",
    "load_key_file": "shoal.hostio.keyfile",
    "write_key_file": "shoal.hostio.keyfile",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agent' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
