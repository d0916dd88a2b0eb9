import shutil

import pytest


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed (Debian package acpica-tools)")
    return path


@pytest.fixture
def iasl() -> str:
    return _need("iasl")


@pytest.fixture
def acpiexec() -> str:
    return _need("acpiexec")
