"""Helpers for tests/repro live in repro_support.py (a unique module name: test files import from it)."""
from repro_support import *  # noqa: F401,F403
