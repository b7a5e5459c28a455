"""The hub's agents by name: who holds a name, since when, and how it got there.

A name belongs to one connection at a time. Agents that dial in claim the name
they announced; the inventory targets the hub keeps warm hold theirs from the
start, even while reconnecting, so no agent can dial in under one of them.
Names compare ignoring case, as host names do everywhere else in shoal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from shoal.protocol.link import check_agent_name

from shoal.controller.client import AgentClient

__all__ = ["HubAgent", "Registry", "check_agent_name"]

DIALIN = "dialin"
DIRECT = "direct"


@dataclass(slots=True, eq=False)
class HubAgent:
    """One authenticated agent connection the hub holds.

    `kind` is "dialin" (the agent connected to us) or "direct" (an inventory
    target we connected to).
    """

    name: str
    client: AgentClient
    address: str
    kind: str
    since: float = field(default_factory=time.time)

    def describe(self) -> dict[str, object]:
        """The agent as `shoal hosts --hub` lists it (PROTOCOL.md section 7, HOSTS_REPLY)."""
        quiet = max(0.0, time.monotonic() - self.client.last_heard)
        return {"name": self.name, "address": self.address, "kind": self.kind, "since": self.since,
                "version": self.client.agent_version, "last_seen": time.time() - quiet}


class Registry:
    """Names to connected agents, and the inventory names held for warm targets."""

    def __init__(self) -> None:
        self._agents: dict[str, HubAgent] = {}
        self._reserved: dict[str, str] = {}  # casefolded -> the inventory's spelling

    def reserve(self, name: str) -> None:
        """Hold `name` for an inventory target: no dial-in agent may take it."""
        self._reserved[name.casefold()] = name

    def get(self, name: str) -> HubAgent | None:
        return self._agents.get(name.casefold())

    def holder(self, name: str) -> str | None:
        """Who holds `name` now, in words, or None when it is free for a dial-in agent."""
        key = name.casefold()
        if key in self._agents:
            held = self._agents[key]
            return f"{held.name} is connected from {held.address} since {time.strftime('%H:%M:%S', time.localtime(held.since))}"
        if key in self._reserved:
            return f"{self._reserved[key]} is an inventory target of this hub"
        return None

    def claim(self, agent: HubAgent, *, reserved_ok: bool = False) -> bool:
        """Give `agent` its name unless another connection holds it (or, for a dial-in, the inventory)."""
        key = agent.name.casefold()
        if key in self._agents or (key in self._reserved and not reserved_ok):
            return False
        self._agents[key] = agent
        return True

    def release(self, agent: HubAgent) -> None:
        """`agent`'s connection is gone: its name is free again (unless reserved)."""
        key = agent.name.casefold()
        if self._agents.get(key) is agent:
            del self._agents[key]

    def agents(self) -> list[HubAgent]:
        """Every connected agent, by name."""
        return sorted(self._agents.values(), key=lambda a: a.name.casefold())

    def __len__(self) -> int:
        return len(self._agents)
