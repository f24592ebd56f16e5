"""The hub's web console, health checks and metrics (docs/web.md)."""
