"""End to end: the fixtures engineer's tiny kernels check each loader's handoff from inside
the guest on the built-in KVM backend and print `fixture: handoff ok` (or a FAIL per field)."""
import os
import select
import time

import pytest

KVM = os.access("/dev/kvm", os.R_OK | os.W_OK)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not KVM, reason="/dev/kvm is absent or not usable")]

CASES = [("fixture-pvh", "pvh", "console=ttyS0 a=b"),
         ("fixture-bzimage", "bzimage", "console=ttyS0"),
         ("fixture-multiboot", "multiboot", "multiboot args"),
         ("fixture-multiboot-aout", "multiboot", ""),
         ("fixture-netbsd", "netbsd", "-s root=wd0a"),
         ("fixture-openbsd", "openbsd", "-s")]


def console_until(session, marker: bytes, timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    fd = session.console_fd
    while marker not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif session.poll_exit() is not None:
            break
    return out


@pytest.mark.parametrize("fixture,method,cmdline", CASES, ids=[c[0] for c in CASES])
def test_fixture_sees_a_correct_handoff(tmp_path, fixture, method, cmdline):
    try:
        from harness.assets.fixtures import build_fixture
        from harness.model.session import BootRequest
        from harness.backends.builtin import BuiltinBackend
    except ImportError as exc:
        pytest.skip(f"fixtures or the built-in backend are not in this checkout ({exc})")
    from harness.errors import HarnessError
    try:
        kernel = build_fixture(fixture)
    except HarnessError as exc:
        pytest.skip(f"cannot build {fixture}: {exc.one_line()}")
    request = BootRequest(cell_id=fixture, guest=fixture, family="fixture", arch="x86_64", boot=method,
                          kernel=kernel, cmdline=cmdline, memory_mib=128, workdir=tmp_path / "work")
    backend = BuiltinBackend()
    backend.check(request)
    session = backend.start(request)
    try:
        out = console_until(session, b"fixture: handoff", 30)
        out += console_until(session, b"\n", 2)
    finally:
        session.stop()
    text = out.decode("utf-8", "replace")
    failures = [line for line in text.splitlines() if line.startswith("CHECK") and "FAIL" in line]
    assert not failures, "\n".join(failures)
    assert "fixture: handoff ok" in text, text[-2000:]
