"""A metrics snapshot, asked for and answered in one request."""

from __future__ import annotations

from typing import Any

from shoal.protocol.messageclass import field, message
from shoal.protocol.messages.core import Message, MessageType

__all__ = ["MetricsRequest", "MetricsReply"]


@message
class MetricsRequest(Message):
    """Ask for a metrics snapshot."""

    TYPE = MessageType.METRICS_REQUEST


@message
class MetricsReply(Message):
    """A metrics snapshot (schema in shoal.agent.metrics)."""

    TYPE = MessageType.METRICS_REPLY
    metrics: dict[str, Any] = field(default_factory=dict)
