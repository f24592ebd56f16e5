"""Resumable streams under SSH (docs/resume.md)."""
