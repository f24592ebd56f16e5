"""Audit events from agents: ingest over the tunnel, per-node quotas, refusal budgets."""
