"""Message handlers beyond a session's own (file transfer...): registered per agent, built per session."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, TypeVar, cast

from shoal.protocol.messages import Message

if TYPE_CHECKING:
    from shoal.agent.session import AgentSession

__all__ = ["Handler", "HandlerFactory", "HandlerRegistry", "HandlerTable"]

M = TypeVar("M", bound=Message)
Handler = Callable[[Message], None]


class HandlerTable:
    """Handlers by message type, each checked to take the type it is filed under."""

    def __init__(self) -> None:
        self._by_type: dict[type[Message], Handler] = {}

    def add(self, kind: type[M], handler: Callable[[M], None]) -> None:
        # Sessions look handlers up by the message's exact type, so a handler filed
        # under `kind` is only ever given a `kind`: the cast cannot lie.
        self._by_type[kind] = cast(Handler, handler)

    def get(self, kind: type[Message]) -> Handler | None:
        return self._by_type.get(kind)

    def update(self, other: HandlerTable) -> None:
        """Add `other`'s handlers; where both have one for a type, `other`'s wins."""
        self._by_type.update(other._by_type)


HandlerFactory = Callable[["AgentSession"], HandlerTable]


class HandlerRegistry:
    """Factories that give each new session its extra handlers."""

    def __init__(self) -> None:
        self._factories: list[HandlerFactory] = []

    def add(self, factory: HandlerFactory) -> None:
        """Register extra message handlers (file transfer...) for new sessions."""
        self._factories.append(factory)

    def for_session(self, session: AgentSession) -> HandlerTable:
        """Build the handlers of every factory for `session`; a later factory wins a type."""
        table = HandlerTable()
        for factory in self._factories:
            table.update(factory(session))
        return table
