"""The hub's agents by name: who holds a name, since when, and how it got there.

A name belongs to one connection at a time. Agents that dial in claim the name
they announced; the inventory targets the hub keeps warm hold theirs from the
start, even while reconnecting, so no agent can dial in under one of them.
Names compare ignoring case, as host names do everywhere else in shoal.

A dial-in name that leaves is remembered (`Departed`), so the hub's Prometheus
scrape shows that host down (`shoal_up 0`) instead of silently dropping it, until
the agent is back, `forget_after` seconds pass, or the hub restarts. Inventory
names need no such memory: the hub holds them from the start.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

from shoal.protocol.link import check_agent_name

from shoal.controller.client import AgentClient

__all__ = ["HubAgent", "Registry", "Departed", "check_agent_name", "MAX_DEPARTED", "FORGET_AFTER"]

DIALIN = "dialin"
DIRECT = "direct"

# Departed dial-in names remembered at most, the oldest departure forgotten first:
# twice the fleet a hub is built to hold, so a whole partitioned fleet still shows
# down, while a flood of one-off names costs at most ~2 MB and a line each per scrape.
MAX_DEPARTED = 10_000
# Seconds a departed name is remembered (`--forget-after`): a day, long enough for a
# dead host's alert to be seen, short enough that a retired one clears by itself.
FORGET_AFTER = 86_400.0


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


class Departed:
    """Dial-in names that left and have not come back, oldest departure first.

    Bounded in number (`most`) and in age (`forget_after` seconds; 0 remembers
    nothing): a name beyond either is forgotten, as if never seen.
    """

    def __init__(self, most: int = MAX_DEPARTED, forget_after: float = FORGET_AFTER) -> None:
        self.most = most
        self.forget_after = forget_after
        # casefolded -> (spelling, time.monotonic() and time.time() it left), oldest first
        self._left: OrderedDict[str, tuple[str, float, float]] = OrderedDict()

    def left(self, name: str) -> None:
        key = name.casefold()
        self._left.pop(key, None)
        self._left[key] = (name, time.monotonic(), time.time())
        self._forget_old()

    def returned(self, name: str) -> None:
        self._left.pop(name.casefold(), None)

    def names(self) -> list[str]:
        """Every remembered name, as last spelled, oldest departure first."""
        self._forget_old()
        return [name for name, _, _ in self._left.values()]

    def maybe_when(self, name: str) -> float | None:
        """When `name` left (time.time()), or None if it is not remembered."""
        self._forget_old()
        entry = self._left.get(name.casefold())
        return None if entry is None else entry[2]

    def __len__(self) -> int:
        return len(self._left)

    def _forget_old(self) -> None:
        oldest = time.monotonic() - self.forget_after
        while self._left and (len(self._left) > self.most or next(iter(self._left.values()))[1] <= oldest):
            self._left.popitem(last=False)


class Registry:
    """Names to connected agents, the inventory names held for warm targets, and the
    dial-in names that left (`departed`)."""

    def __init__(self, departed: Departed | None = None) -> None:
        self._agents: dict[str, HubAgent] = {}
        self._reserved: dict[str, str] = {}  # casefolded -> the inventory's spelling
        self.departed = departed if departed is not None else Departed()

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
        self.departed.returned(agent.name)
        return True

    def release(self, agent: HubAgent) -> None:
        """`agent`'s connection is gone: its name is free again (unless reserved), and
        remembered as departed if it dialled in."""
        key = agent.name.casefold()
        if self._agents.get(key) is agent:
            del self._agents[key]
            if agent.kind == DIALIN:
                self.departed.left(agent.name)

    def agents(self) -> list[HubAgent]:
        """Every connected agent, by name."""
        return sorted(self._agents.values(), key=lambda a: a.name.casefold())

    def __len__(self) -> int:
        return len(self._agents)
