"""Helpers for tests/debug live in debug_support.py (a unique module name: test files import from it)."""
from debug_support import *  # noqa: F401,F403
