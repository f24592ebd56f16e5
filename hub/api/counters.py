"""Totals the hub counts as it works, read by ``/metrics`` (hub/web/metrics.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class HubCounters:
    #: bytes relayed from users to nodes and back (SSH sessions through /v1/connect)
    relay_to_node: int = 0
    relay_to_user: int = 0
    #: audit events devices delivered and the hub stored (duplicates not counted)
    audit_ingested: int = 0

    def ingested(self, count: int) -> None:
        self.audit_ingested += count
