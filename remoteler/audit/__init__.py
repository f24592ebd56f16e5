"""Audit trail: the event schema and the stream codec shared by agent and hub."""

from remoteler.audit.events import HUB_NODE, AuditEvent, EventType, make_event, new_event_id
from remoteler.audit.stream import MessageReader, encode_message

__all__ = [
    "HUB_NODE",
    "AuditEvent",
    "EventType",
    "MessageReader",
    "encode_message",
    "make_event",
    "new_event_id",
]
