"""Fixtures for tests/runner live in runner_repo.py (a unique module name: test files import helpers from it)."""
from runner_repo import *  # noqa: F401,F403
