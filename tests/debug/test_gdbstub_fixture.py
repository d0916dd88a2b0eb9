"""Debian's gdb against the built-in hypervisor's gdb stub, on fixture-gdb (a 64-bit bzImage built
from fixtures/gdb/main.c, symbols from its ELF). Each test boots it with `harness boot --gdb` and
drives gdb in batch mode (or interactively through a pty for Ctrl-C). About 2-4 s each here.

This host is kvm_pvm (software emulation): INT3 breakpoints arrive as emulation failures and DR0-DR3
data breakpoints never fire (test_host_debug_features shows both); the stub takes the first for its
breakpoint and serves write watchpoints by single-stepping. On VT-x/SVM the same tests use
KVM_EXIT_DEBUG for both.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from debug_support import GDB, KVM_OK, LAB_REMOTE_TIMEOUT_S, QEMU_X86, REPO, Boot, gdb_batch

pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(not KVM_OK, reason="/dev/kvm absent or not accessible: built-in backend cannot run"),
              pytest.mark.skipif(GDB is None, reason="gdb is not installed (apt-get install gdb)")]


@pytest.fixture(scope="module")
def fixture_gdb() -> tuple[Path, Path]:
    from harness.assets.fixtures import build_fixture, fixture_symbols
    return build_fixture("fixture-gdb"), fixture_symbols("fixture-gdb")


# The same sessions on this machine's KVM and, slow, in the lab (the VMM child runs on the lab's
# nested kvm_amd; gdb stays here and reaches its stub over the lab's harness.gdb port).
LAB = pytest.param("lab", id="lab", marks=[pytest.mark.slow, pytest.mark.qemu,
                                 pytest.mark.skipif(QEMU_X86 is None, reason="qemu-system-x86_64 absent")])
ON_HOSTS = pytest.mark.parametrize("host", ["native", LAB])
LAB_TIMEOUT_S = 600       # a TCG lab on a loaded 2-core machine; idle, the whole test takes about a minute


def boot(tmp_path: Path, kernel: Path, *extra: str, expect: str = "fixture login: ", host: str = "native") -> Boot:
    where = ["--host", "lab", "--timeout", str(LAB_TIMEOUT_S)] if host == "lab" else ["--timeout", "20"]
    b = Boot(str(kernel), "--cmdline", "console=ttyS0", "--family", "fixture", "--expect", expect,
             "--report-dir", str(tmp_path / "run"), *where, *extra, cwd=tmp_path)
    return b


def gdb_on(host: str, *commands: str, symbols: Path | None = None) -> str:
    if host == "lab":
        return gdb_batch(*commands, symbols=symbols, timeout=LAB_TIMEOUT_S, remote_timeout=LAB_REMOTE_TIMEOUT_S)
    return gdb_batch(*commands, symbols=symbols)


def port_of(b: Boot, host: str = "native") -> str:
    return b.wait_for(r"gdb stub on (\S+):", timeout=LAB_TIMEOUT_S if host == "lab" else 30).group(1)


def console_value(console: str, pattern: str) -> int:
    m = re.search(pattern, console)
    assert m, console
    return int(m.group(1), 16)


@ON_HOSTS
def test_gdb_breaks_at_a_symbol_reads_steps_watches_and_continues_to_the_last_milestone(tmp_path, fixture_gdb, host):
    kernel, symbols = fixture_gdb
    b = boot(tmp_path, kernel, "--vcpus", "2", "--gdb", "127.0.0.1:0", "--gdb-wait", host=host)
    where = port_of(b, host)
    out = gdb_on(host, f"target remote {where}", "info threads", "break gdb_probe", "continue",
                    "printf \"RDI=%lx RSI=%lx\\n\", $rdi, $rsi", "x/gx &gdb_magic", "printf \"CR0=%lx\\n\", $cr0",
                    "x/2i $pc", "stepi", "printf \"PC=%lx\\n\", $pc",
                    "watch *(unsigned long *)&gdb_watched", "continue", "delete",
                    "hbreak milestone_login_and_halt", "continue", "delete", "continue", symbols=symbols)
    code, console, err = b.finish(timeout=LAB_TIMEOUT_S if host == "lab" else 30)
    assert code == 0, err + out               # the boot passed: every milestone after the debugging
    # one thread per vCPU, held at the first instruction of the 64-bit entry
    assert re.search(r"\* 1 +Thread 1 \(vCPU 0\) 0x0+100200 in startup_64", out), out
    assert re.search(r"2 +Thread 2 \(vCPU 1\)", out), out
    # the breakpoint at a symbol, and the registers hold what the fixture then prints
    assert "hit Breakpoint 1, 0x" in out and "in gdb_probe ()" in out, out
    rdi, rsi = (int(x, 16) for x in re.search(r"RDI=([0-9a-f]+) RSI=([0-9a-f]+)", out).groups())
    assert (rdi, rsi) == (console_value(console, r"probe a=0x([0-9a-f]+)"), console_value(console, r"b=0x([0-9a-f]+)"))
    # memory at the symbol is what the fixture printed it to be, at the address it printed
    addr, value = re.search(r"0x([0-9a-f]+) <gdb_magic>:\s+0x([0-9a-f]+)", out).groups()
    assert int(addr, 16) == console_value(console, r"magic at 0x([0-9a-f]+)")
    assert int(value, 16) == console_value(console, r"magic at 0x[0-9a-f]+ = 0x([0-9a-f]+)")
    assert int(re.search(r"CR0=([0-9a-f]+)", out).group(1), 16) & 0x80000001 == 0x80000001   # PE and PG
    # stepi: RIP advances by the length of the instruction it executed (the next one's address)
    second = re.search(r"=> 0x[0-9a-f]+ <gdb_probe>:.*\n\s+0x([0-9a-f]+) <gdb_probe\+\d+>", out)
    assert second, out
    assert int(re.search(r"PC=([0-9a-f]+)", out).group(1), 16) == int(second.group(1), 16)
    # the watchpoint fires on the fixture's write, with the value the fixture prints next
    assert "hit Hardware watchpoint 2: *(unsigned long *)&gdb_watched" in out, out
    new = int(re.search(r"New value = (\d+)", out).group(1))
    assert new == console_value(console, r"watched = 0x([0-9a-f]+)")
    # a hardware (debug register) breakpoint, then on to the login milestone: the VM ends, gdb sees it
    assert "hit Breakpoint 3, 0x" in out and "milestone_login_and_halt" in out, out
    assert "exited normally" in out, out
    assert "fixture login: " in console


def test_trap_breakpoints_where_int3_never_exits_stop_resume_and_leave_the_guest_unharmed(tmp_path, fixture_gdb):
    """The lab's software breakpoint (`in al, TRAP_PORT`, forced here on this host): gdb stops at
    the symbol with the registers the fixture then prints, memory reads show the original bytes,
    and after the stop the guest runs on (the port read KVM meant to complete is dropped: AL and
    RIP are the guest's own) through a second breakpoint to its last milestone."""
    kernel, symbols = fixture_gdb
    b = Boot(str(kernel), "--cmdline", "console=ttyS0", "--family", "fixture", "--expect", "fixture login: ",
             "--timeout", "20", "--report-dir", str(tmp_path / "run"), "--gdb", "127.0.0.1:0", "--gdb-wait",
             cwd=tmp_path, env={"HARNESS_GDB_BREAKPOINTS": "trap"})
    out = gdb_batch(f"target remote {port_of(b)}", "monitor info", "break gdb_probe", "x/2xb gdb_probe", "continue",
                    "printf \"RDI=%lx RSI=%lx\\n\", $rdi, $rsi", "printf \"PC=%lx\\n\", $pc",
                    "break milestone_login_and_halt", "continue", "delete", "continue", symbols=symbols)
    code, console, err = b.finish()
    assert code == 0, err + out
    assert "as: in al, TRAP_PORT" in out, out
    assert "Breakpoint 1, 0x" in out and "in gdb_probe ()" in out, out
    assert int(re.search(r"PC=([0-9a-f]+)", out).group(1), 16) == elf_symbol(symbols, "gdb_probe")
    rdi, rsi = (int(x, 16) for x in re.search(r"RDI=([0-9a-f]+) RSI=([0-9a-f]+)", out).groups())
    assert (rdi, rsi) == (console_value(console, r"probe a=0x([0-9a-f]+)"), console_value(console, r"b=0x([0-9a-f]+)"))
    first = re.search(r"<gdb_probe>:\s+0x([0-9a-f]{2})\s+0x([0-9a-f]{2})", out)
    assert first and bytes(int(x, 16) for x in first.groups()) == elf_bytes(symbols, "gdb_probe", 2), out
    assert "Breakpoint 2, 0x" in out and "milestone_login_and_halt" in out, out
    assert "fixture login: " in console and "exited normally" in out, out


def test_a_register_written_in_gdb_is_what_the_guest_uses(tmp_path, fixture_gdb):
    kernel, symbols = fixture_gdb
    b = boot(tmp_path, kernel, "--gdb", "127.0.0.1:0", "--gdb-wait")
    out = gdb_batch(f"target remote {port_of(b)}", "break gdb_probe", "continue", "set $rsi = 0x77",
                    "set var *(unsigned long *)&gdb_watched = 5", "delete", "continue", symbols=symbols)
    code, console, err = b.finish()
    assert code == 0, err + out
    assert "probe a=0xfeedfacecafe0001 b=0x77" in console, console


def test_physical_memory_mode_and_unmapped_virtual_addresses(tmp_path, fixture_gdb):
    kernel, symbols = fixture_gdb
    b = boot(tmp_path, kernel, "--gdb", "127.0.0.1:0", "--gdb-wait")
    out = gdb_batch(f"target remote {port_of(b)}", "break gdb_probe", "continue",
                    "x/gx 0xffff800000000000", "maint packet Qqemu.PhyMemMode:1", "x/gx &gdb_magic",
                    "monitor info", "maint packet Qqemu.PhyMemMode:0", "delete", "continue", symbols=symbols)
    code, console, err = b.finish()
    assert code == 0, err + out
    assert "Cannot access memory at address 0xffff800000000000" in out, out   # not mapped by the guest
    assert re.search(r"<gdb_magic>:\s+0x1122334455667788", out), out          # identity map: same bytes
    assert "memory: guest-physical" in out, out


@ON_HOSTS
def test_ctrl_c_in_gdb_stops_a_running_guest(tmp_path, fixture_gdb, host):
    import pexpect
    kernel, symbols = fixture_gdb
    # The guest runs from the start (no --gdb-wait) toward a milestone it never prints: its timeout must
    # outlast gdb's start on a loaded machine, or the boot ends before the Ctrl-C (gdb kills it sooner).
    b = boot(tmp_path, kernel, "--gdb", "127.0.0.1:0", *(["--timeout", "120"] if host == "native" else []),
             expect="never printed", host=host)
    where = port_of(b, host)
    gdb = pexpect.spawn(GDB, ["-nx", "-q", "-ex", "set confirm off", "-ex", "set pagination off",
                              "-ex", f"set remotetimeout {LAB_REMOTE_TIMEOUT_S if host == 'lab' else 2}", str(symbols)],
                        encoding="utf-8", timeout=LAB_TIMEOUT_S if host == "lab" else 20)
    try:
        gdb.expect(r"\(gdb\) ")
        gdb.sendline(f"target remote {where}")
        gdb.expect(r"\(gdb\) ")
        gdb.sendline("continue")
        gdb.expect("Continuing.")
        gdb.sendcontrol("c")
        gdb.expect("received signal SIGINT")
        gdb.expect(r"\(gdb\) ")
        gdb.sendline("info symbol $pc")
        gdb.expect(r"(halt_forever|milestone_login_and_halt)( \+ \d+)? in section \.text")
        gdb.sendline("kill")
        gdb.expect(r"\(gdb\) ")
        gdb.sendline("quit")
        gdb.expect(pexpect.EOF)
    finally:
        gdb.close(force=True)
    code, console, err = b.finish(timeout=LAB_TIMEOUT_S if host == "lab" else 30)
    assert "fixture login: " in console
    assert code != 0                      # killed from gdb before its (never printed) expectation


@pytest.mark.parametrize("guest, signal, hold, host", [
    ("fixture-triple-fault", "SIGSEGV", "triple fault at rip", "native"),
    ("fixture-panic", "SIGABRT", "panic: fixture deliberate panic", "native"),
    ("fixture-hang", "SIGABRT", "no console output for 2 s", "native"),
    pytest.param("fixture-panic", "SIGABRT", "panic: fixture deliberate panic", "lab", marks=LAB.marks,
                 id="fixture-panic-lab")])
# The triple fault is held by the vCPU itself (KVM_EXIT_SHUTDOWN); the panic is a console pattern the
# runner matched, which then stops the guest's vCPUs in the child (SIGUSR2; in the lab, the agent
# sends it on the runner's `hold`) for the debugger.
def test_gdb_on_failure_keeps_the_failed_guest_for_the_debugger(tmp_path, guest, signal, hold, host):
    from harness.assets.fixtures import build_fixture
    kernel = build_fixture(guest)
    args = ["--boot", "pvh", "--gdb-on-failure"]
    if guest == "fixture-panic":
        args += ["--failure", "panic=(?m)^panic: fixture deliberate panic"]
    if guest == "fixture-hang":
        args += ["--hang-timeout", "2"]
    b = boot(tmp_path, kernel, *args, host=host)
    wait = LAB_TIMEOUT_S if host == "lab" else 30
    b.wait_for(hold, timeout=wait)
    where = b.wait_for(r"guest kept for the debugger: gdb -ex 'target remote (\S+)'", timeout=wait).group(1)
    out = gdb_on(host, f"target remote {where}", "printf \"RIP=%lx\\n\", $rip", "info program", "kill")
    code, console, err = b.finish(timeout=wait)
    assert f"It stopped with signal {signal}" in out, out
    assert "killed" in out, out
    assert code == 1 and ("TIMEOUT: " if guest == "fixture-hang" else "FAIL: ") in err, err
    if guest == "fixture-triple-fault":
        rip = re.search(r"triple fault at rip (0x[0-9a-f]+)", err).group(1)
        assert int(re.search(r"RIP=([0-9a-f]+)", out).group(1), 16) == int(rip, 16)


def elf_bytes(elf: Path, name: str, n: int) -> bytes:
    """The first `n` bytes the ELF holds at symbol `name` (what memory reads must show under a breakpoint)."""
    from elftools.elf.elffile import ELFFile
    addr = elf_symbol(elf, name)
    with open(elf, "rb") as f:
        for section in ELFFile(f).iter_sections():
            start = section["sh_addr"]
            if section["sh_type"] == "SHT_PROGBITS" and start <= addr < start + section["sh_size"]:
                return section.data()[addr - start:addr - start + n]
    raise AssertionError(f"{name} is in no section of {elf}")


def elf_symbol(elf: Path, name: str) -> int:
    from elftools.elf.elffile import ELFFile
    with open(elf, "rb") as f:
        (sym,) = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)
        return int(sym["st_value"])


@pytest.mark.qemu
@pytest.mark.skipif(__import__("shutil").which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 not installed")
def test_the_same_flags_give_qemus_own_stub_on_qemu_tcg(tmp_path):
    """QEMU cannot enter fixture-gdb's fake bzImage (it runs the real-mode setup), so this one uses the
    PVH fixture (32-bit code): a breakpoint at a symbol's address, then on to login. ~10 s."""
    import socket
    from harness.assets.fixtures import build_fixture
    kernel = build_fixture("fixture-pvh")
    target = elf_symbol(kernel, "milestone_handoff")
    with socket.socket() as s:           # a free port: QEMU's stub needs one given
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = boot(tmp_path, kernel, "--backend", "qemu-tcg", "--boot", "pvh", "--gdb", f"127.0.0.1:{port}", "--gdb-wait")
    where = port_of(b)
    assert where == f"127.0.0.1:{port}"
    out = gdb_batch(f"target remote {where}", f"break *{target:#x}", "continue", "printf \"PC=%lx\\n\", $pc",
                    "delete", "continue")
    code, console, err = b.finish()
    assert code == 0, err + out
    assert f"PC={target:x}" in out, out
    assert "fixture: entry pvh" in console and "fixture login: " in console


def test_malformed_and_hostile_packets_get_error_replies_and_the_session_goes_on(tmp_path, fixture_gdb):
    """A raw client (not gdb): out-of-range addresses, bad numbers, oversized lengths, unknown packets."""
    import socket
    kernel, _ = fixture_gdb
    b = boot(tmp_path, kernel, "--gdb", "127.0.0.1:0", "--gdb-wait")
    host, port = port_of(b).rsplit(":", 1)

    def packet(sock: socket.socket, body: str) -> str:
        data = body.encode()
        sock.sendall(b"$" + data + b"#" + f"{sum(data) & 0xFF:02x}".encode())
        buf = b""
        while not (buf.count(b"#") and len(buf) >= buf.rindex(b"#") + 3 and b"$" in buf):
            buf += sock.recv(65536)
        reply = buf[buf.index(b"$") + 1:buf.rindex(b"#")]
        return reply.decode("latin-1")

    with socket.create_connection((host, int(port)), timeout=10) as sock:
        assert packet(sock, "?").startswith("T05")
        assert packet(sock, "m1ffffffffffffffff,10") == "E01"            # past 64 bits
        assert packet(sock, "mfffffffffffff000,10") == "E14"             # not mapped by the guest
        assert packet(sock, "m100000,zz") == "E01"
        assert len(packet(sock, "m100000,ffffffff")) == 2 * 0x2000       # capped, not 4 GiB
        assert packet(sock, "M100000,4:00") == "E01"                      # length and data disagree
        assert packet(sock, "Z0,fffffffffffff000,1") == "E01"            # nowhere to plant it
        assert packet(sock, "Z1,100000,1") == "OK" and packet(sock, "z1,100000,1") == "OK"
        assert packet(sock, "P9999=00") == "E01" and packet(sock, "p9999") == "E01"
        assert packet(sock, "Hg99") == "E01"
        assert packet(sock, "qUnknownThing") == "" and packet(sock, "vBogus") == ""
        assert packet(sock, "g").startswith(packet(sock, "p0"))           # still answering
        sock.sendall(b"$k#6b")
    code, _, err = b.finish()
    assert code != 0 and "Traceback" not in err
