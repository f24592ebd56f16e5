"""The hub tests' fixtures. They live in hubkit.py, which tests import by that name:
``from conftest import ...`` would find whichever conftest.py pytest loaded first."""

from hubkit import auth, backend, clock, fast_argon2, hub

__all__ = ["auth", "backend", "clock", "fast_argon2", "hub"]
