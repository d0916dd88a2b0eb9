"""Shared fixture for the KVM core tests; the helpers live in kvm_guests.py (a unique module name, so
`pytest tests/` with other directories' conftest modules does not shadow them)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kvm_guests import HAVE_AS, HAVE_KVM, host_label, run_guest  # noqa: E402


@pytest.fixture
def guest():
    if not HAVE_KVM:
        pytest.skip("needs a usable /dev/kvm (absent or no permission)")
    if not HAVE_AS:
        pytest.skip("needs GNU as/ld (binutils) to assemble test guests")
    return run_guest


@pytest.fixture(autouse=True)
def _record_kvm_host(record_property):
    """Results here depend on the host's KVM (kvm_pvm's emulator differs between machines of one kind):
    every test's JUnit entry names the host it ran on."""
    if HAVE_KVM:
        record_property("kvm_host", host_label())
