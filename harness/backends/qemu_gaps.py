"""Turn QEMU's text diagnostics into GapRecords.

Two sources:
- the `-d unimp,guest_errors -D qemu.log` log: one line per access QEMU does not implement or
  per guest programming error. The lines are free-form per device, so a few known shapes are
  parsed exactly (unimplemented-device accesses, rejected memory accesses) and every other line
  is keyed by its device prefix and its text with the numbers masked, so repeats fold together;
- QEMU's stderr with `-accel kvm`: "KVM internal error. Suberror: N" followed by a register dump
  is the host failing to emulate a guest instruction (see ../shared/notes/machine.md).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from harness.model.gap import (FATE_STOPPED, HOST_EMULATION_FAILURE, QEMU_GUEST_ERROR, QEMU_UNIMPLEMENTED,
                               GapRecord)

_UNIMP_DEVICE = re.compile(r"^(?P<dev>[\w.\-/ ]+?): unimplemented device (?P<rw>read|write)\s*"
                           r"\(size (?P<size>\d+), (?:offset|addr) (?P<off>0x[0-9a-fA-F]+)"
                           r"(?:, value (?P<val>0x[0-9a-fA-F]+))?")
_INVALID_ACCESS = re.compile(r"Invalid (?P<rw>read|write|access) at addr (?P<addr>0x[0-9a-fA-F]+), "
                             r"size (?P<size>\d+), region '(?P<region>[^']*)'")
_PREFIX = re.compile(r"^(?P<dev>[A-Za-z][\w.\-/]{0,40}?)\s*[:\]]\s*(?P<msg>.+)$")
_NUMBER = re.compile(r"0x[0-9a-fA-F]+|\b\d+\b")
_UNIMP_WORDS = ("unimplemented", "not implemented", "unsupported", "not supported")
_KVM_ERROR = re.compile(r"KVM internal error\. Suberror: (?P<sub>\d+)")
_RIP = re.compile(r"\bRIP=(?P<rip>[0-9a-fA-F]+)")
_PC = re.compile(r"\bPC=(?P<pc>[0-9a-fA-F]+)")
_CODE = re.compile(r"^Code=(?P<code>.*)$")
_MAX_KEY = 160
_WRITE = re.compile(r"(?:^|[\W_])write")
_READ = re.compile(r"(?:^|[\W_])read(?!y)")


def parse_log_line(line: str) -> GapRecord | None:
    """The gap one `-d unimp,guest_errors` line stands for (None for a blank line)."""
    text = line.strip()
    if not text:
        return None
    m = _UNIMP_DEVICE.search(text)
    if m:
        values = [int(m["val"], 16)] if m["val"] else []
        return GapRecord(QEMU_UNIMPLEMENTED, f"{m['dev'].strip()}+{int(m['off'], 16):#x}", values=values,
                         access=m["rw"], detail={"size": int(m["size"]), "line": text[:300]})
    m = _INVALID_ACCESS.search(text)
    if m:
        access = m["rw"] if m["rw"] != "access" else ""
        return GapRecord(QEMU_GUEST_ERROR, f"{int(m['addr'], 16):#x}", access=access,
                         detail={"size": int(m["size"]), "region": m["region"], "line": text[:300]})
    lowered = text.lower()
    kind = QEMU_UNIMPLEMENTED if any(w in lowered for w in _UNIMP_WORDS) else QEMU_GUEST_ERROR
    m = _PREFIX.match(text)
    key = f"{m['dev']}: {_mask(m['msg'])}" if m else _mask(text)
    # "pl061_write: ...", "write to ...": the word may follow an underscore, so \b is not enough
    access = "write" if _WRITE.search(lowered) else "read" if _READ.search(lowered) else ""
    return GapRecord(kind, key[:_MAX_KEY], access=access, detail={"line": text[:300]})


def _mask(text: str) -> str:
    """Numbers become N so that the same complaint about different values is one gap."""
    return _NUMBER.sub("N", text)


@dataclass
class KvmFailure:
    suberror: int
    rip: int | None = None
    code: str = ""
    registers: list[str] = field(default_factory=list)

    def event_data(self) -> dict[str, Any]:
        raw = _code_at_rip(self.code)
        return {"suberror": self.suberror, "rip": self.rip, "bytes": raw, "code": self.code,
                "registers": self.registers, "insn": decode_x86(raw)}

    def gap(self, t: float | None) -> GapRecord:
        raw = _code_at_rip(self.code)
        insn = decode_x86(raw)
        # Keyed by mnemonic (with prefixes), like the built-in backend: the same failing
        # instruction with other operands is the same gap; the operands stay in detail.
        mnemonic = insn.split(" ", 2)[0] if insn else ""
        if insn.startswith(("lock ", "rep ", "repne ", "repe ")):
            mnemonic = " ".join(insn.split(" ", 2)[:2])
        return GapRecord(HOST_EMULATION_FAILURE, mnemonic or raw or f"suberror-{self.suberror}", first_rip=self.rip,
                         fate=FATE_STOPPED, first_t=t,
                         detail={"suberror": self.suberror, "insn": insn, "bytes": raw, "code": self.code,
                                 "source": "qemu-kvm"})


def parse_kvm_failure(stderr: str) -> KvmFailure | None:
    """A "KVM internal error" and the register dump QEMU prints after it, if stderr holds one."""
    m = _KVM_ERROR.search(stderr)
    if not m:
        return None
    after = stderr[m.end():].splitlines()[:40]
    failure = KvmFailure(int(m["sub"]))
    for line in after:
        rip = _RIP.search(line) or _PC.search(line)
        if rip and failure.rip is None:
            failure.rip = int(rip.group(1), 16)
        code = _CODE.match(line.strip())
        if code:
            failure.code = code["code"].strip()
        if "=" in line and len(failure.registers) < 30:
            failure.registers.append(line.rstrip())
    return failure


def _code_at_rip(code: str) -> str:
    """The bytes at RIP from QEMU's `Code=` line (the byte at RIP is shown as <xx>)."""
    m = re.search(r"<([0-9a-fA-F]{2})>((?:\s[0-9a-fA-F]{2}){0,14})", code)
    if not m:
        return ""
    return (m.group(1) + m.group(2).replace(" ", "")).lower()


def decode_x86(hex_bytes: str) -> str:
    """The first instruction in `hex_bytes` as "mnemonic operands" (empty when undecodable)."""
    try:
        code = bytes.fromhex(hex_bytes)
    except ValueError:
        return ""
    if not code:
        return ""
    from harness.arch.x86_64.decode import describe
    text = describe(code, 64)["text"]
    return "" if text == "(bad)" else text
    try:
        import capstone
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        for insn in md.disasm(bytes.fromhex(hex_bytes), 0):
            return f"{insn.mnemonic} {insn.op_str}".strip()
    except (ImportError, ValueError):
        pass
    return ""
