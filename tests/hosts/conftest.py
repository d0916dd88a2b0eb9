"""Every lab a test in this folder started is closed after it (warm labs live in harness.hosts.pool)."""
import pytest

from harness.hosts import pool


@pytest.fixture(autouse=True)
def _no_lab_left_behind():
    yield
    pool.close_all()
