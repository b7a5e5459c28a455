"""The shoal controller as a library: connect to agents, run commands, gather results.

Levels, each a few lines over the one below: `AgentClient` (one connection) →
`RemoteProcess` (one command: stream its output, feed its stdin, wait for its
Result) → `Fleet` (many hosts, bounded fan-out, events to a handler). Names are
loaded on first use so `shoal run` does not import what it does not need.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AgentClient": "controller.client",
    "Command": "controller.client",
    "RemoteProcess": "controller.client",
    "OutputEvent": "controller.client",
    "Fleet": "controller.fleet",
    "FleetResult": "controller.fleet",
    "ConnectOptions": "controller.fleet",
    "Result": "controller.result",
    "Target": "controller.targets",
    "parse_targets": "controller.targets",
    "NodeSet": "controller.nodeset",
    "load_inventory": "controller.inventory",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'controller' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
