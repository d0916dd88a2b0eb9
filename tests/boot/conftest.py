import sys
from pathlib import Path

import pytest

# builders.py sits next to the tests; make it importable without a package
sys.path.insert(0, str(Path(__file__).parent))

from harness.memory import GuestRam  # noqa: E402


@pytest.fixture
def mem():
    ram = GuestRam(64 * 1024 * 1024)
    yield ram
    ram.close()
