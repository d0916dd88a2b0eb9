"""Fixtures for tests/console live in console_scripted.py (a unique module name: test files import helpers from it)."""
from console_scripted import *  # noqa: F401,F403
