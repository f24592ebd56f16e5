"""The hub tests' fixtures. They live in hubkit.py, which tests import by that name:
``from conftest import ...`` would find whichever conftest.py pytest loaded first."""

from hubkit import auth, clock, fast_argon2, hub, storage

__all__ = ["auth", "clock", "fast_argon2", "hub", "storage"]
