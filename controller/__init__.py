"""The shoal controller as a library: connect to agents, run commands, gather results.

Levels, each a few lines over the one below: `AgentClient` (one connection) →
`RemoteProcess` (one command: stream its output, feed its stdin, wait for its
Result) → `Fleet` (many hosts, bounded fan-out, events to a handler) → `run`
(one blocking call, every host's output back). Names are
loaded on first use so `shoal run` does not import what it does not need.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing is not imported at run time: `shoal run --hub` imports this package
if TYPE_CHECKING:
    from typing import Any

_EXPORTS = {
    "AgentClient": "shoal.controller.client",
    "Command": "shoal.controller.remote",
    "RemoteProcess": "shoal.controller.remote",
    "OutputEvent": "shoal.controller.remote",
    "Fleet": "shoal.controller.fleet",
    "FleetResult": "shoal.controller.fleet",
    "ConnectOptions": "shoal.controller.fleet",
    "Result": "shoal.controller.result",
    "Target": "shoal.controller.targets",
    "parse_targets": "shoal.controller.targets",
    "NodeSet": "shoal.controller.nodeset",
    "load_inventory": "shoal.controller.inventory",
    "run": "shoal.controller.sync",
    "run_async": "shoal.controller.sync",
    "HostOutput": "shoal.controller.sync",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'controller' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
