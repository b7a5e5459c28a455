"""The shoal agent as a library: `Agent(config)` serves controllers inside any asyncio program.

Names are loaded on first use so importing a submodule stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Agent": "agent.server",
    "AgentConfig": "agent.config",
    "Limits": "agent.config",
    "KeyPolicy": "agent.config",
    "load_config": "agent.config",
    "load_key_file": "agent.keyfile",
    "write_key_file": "agent.keyfile",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agent' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
