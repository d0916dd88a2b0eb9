"""Fixtures for tests/kvm live in kvm_support.py (a unique module name: test files import helpers from it)."""
from kvm_support import *  # noqa: F401,F403
