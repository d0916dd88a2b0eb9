"""CPUID features and the named CPU profiles (a matrix axis): which bits each profile clears.

Pure data and table edits: the KVM side (KVM_GET_SUPPORTED_CPUID, harness.kvm.cpuid) hands the
host's table to `apply_profile`; the matrix validator reads `PROFILES` without loading KVM.

Profiles:
  default   everything KVM supports (plus the hypervisor bit)
  minimal   a conservative baseline: no AVX*, XSAVE, PCID, TSC-deadline, x2APIC, ... (old-CPU-like)
  pvm-safe  what kvm_pvm's batch emulator cannot execute, masked (see ../shared/notes/machine.md and
            tests/kvm/test_cpuid.py): CX16, XSAVE and its family, AVX*, and the features whose
            instructions reach the same emulator holes
Each masked feature that the host had is reported (summary + masked-cpuid gaps).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.errors import lookup


@dataclass(frozen=True)
class Feature:
    name: str
    leaf: int
    subleaf: int | None   # None: every subleaf
    reg: str              # eax | ebx | ecx | edx
    bit: int


F = Feature
FEATURES = {f.name: f for f in (
    F("pclmulqdq", 1, None, "ecx", 1), F("monitor", 1, None, "ecx", 3), F("vmx", 1, None, "ecx", 5),
    F("ssse3", 1, None, "ecx", 9), F("fma", 1, None, "ecx", 12), F("cx16", 1, None, "ecx", 13), F("pcid", 1, None, "ecx", 17),
    F("sse4_1", 1, None, "ecx", 19), F("sse4_2", 1, None, "ecx", 20), F("x2apic", 1, None, "ecx", 21),
    F("movbe", 1, None, "ecx", 22), F("popcnt", 1, None, "ecx", 23), F("tsc_deadline", 1, None, "ecx", 24),
    F("aes", 1, None, "ecx", 25), F("xsave", 1, None, "ecx", 26), F("osxsave", 1, None, "ecx", 27),
    F("avx", 1, None, "ecx", 28), F("f16c", 1, None, "ecx", 29), F("rdrand", 1, None, "ecx", 30),
    F("fsgsbase", 7, 0, "ebx", 0), F("bmi1", 7, 0, "ebx", 3), F("hle", 7, 0, "ebx", 4),
    F("avx2", 7, 0, "ebx", 5), F("bmi2", 7, 0, "ebx", 8), F("erms", 7, 0, "ebx", 9), F("invpcid", 7, 0, "ebx", 10),
    F("rtm", 7, 0, "ebx", 11), F("avx512f", 7, 0, "ebx", 16), F("avx512dq", 7, 0, "ebx", 17),
    F("rdseed", 7, 0, "ebx", 18), F("adx", 7, 0, "ebx", 19), F("avx512ifma", 7, 0, "ebx", 21),
    F("clflushopt", 7, 0, "ebx", 23), F("clwb", 7, 0, "ebx", 24), F("avx512cd", 7, 0, "ebx", 28),
    F("sha_ni", 7, 0, "ebx", 29), F("avx512bw", 7, 0, "ebx", 30), F("avx512vl", 7, 0, "ebx", 31),
    F("avx512vbmi", 7, 0, "ecx", 1), F("pku", 7, 0, "ecx", 3), F("waitpkg", 7, 0, "ecx", 5),
    F("avx512_vbmi2", 7, 0, "ecx", 6), F("gfni", 7, 0, "ecx", 8), F("vaes", 7, 0, "ecx", 9),
    F("vpclmulqdq", 7, 0, "ecx", 10), F("avx512_vnni", 7, 0, "ecx", 11), F("avx512_bitalg", 7, 0, "ecx", 12),
    F("avx512_vpopcntdq", 7, 0, "ecx", 14), F("la57", 7, 0, "ecx", 16), F("rdpid", 7, 0, "ecx", 22),
    F("movdiri", 7, 0, "ecx", 27), F("movdir64b", 7, 0, "ecx", 28),
    F("avx_vnni", 7, 1, "eax", 4), F("avx512_bf16", 7, 1, "eax", 5),
    F("xsaveopt", 0xD, 1, "eax", 0), F("xsavec", 0xD, 1, "eax", 1), F("xgetbv1", 0xD, 1, "eax", 2),
    F("xsaves", 0xD, 1, "eax", 3),
    F("rdtscp", 0x80000001, None, "edx", 27), F("pdpe1gb", 0x80000001, None, "edx", 26),
    F("lzcnt", 0x80000001, None, "ecx", 5), F("sse4a", 0x80000001, None, "ecx", 6),
    F("misalignsse", 0x80000001, None, "ecx", 7), F("xop", 0x80000001, None, "ecx", 11),
    F("fma4", 0x80000001, None, "ecx", 16), F("tbm", 0x80000001, None, "ecx", 21),
)}
HYPERVISOR = Feature("hypervisor", 1, None, "ecx", 31)

_AVX = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512ifma", "avx512cd", "avx512bw", "avx512vl",
        "avx512vbmi", "avx512_vbmi2", "avx512_vnni", "avx512_bitalg", "avx512_vpopcntdq", "vaes", "vpclmulqdq",
        "gfni", "avx_vnni", "avx512_bf16", "xop", "fma4")
_XSAVE = ("xsave", "osxsave", "xsaveopt", "xsavec", "xgetbv1", "xsaves")
PROFILES: dict[str, tuple[str, ...]] = {
    "default": (),
    "minimal": _AVX + _XSAVE + ("pcid", "invpcid", "x2apic", "tsc_deadline", "la57", "pku", "rdrand", "rdseed",
                                "hle", "rtm", "waitpkg", "movdiri", "movdir64b", "fsgsbase", "rdpid", "sha_ni",
                                "clwb", "clflushopt", "monitor", "vmx", "pdpe1gb"),
    # Measured on kvm_pvm (tests/kvm/test_pvm_probe.py, notes in harness/kvm/README.md): its batch emulator
    # stops with "emulation failure" on lock cmpxchg16b, xsave/xrstor/xgetbv, popcnt, crc32/pcmpestri
    # (sse4.2), pshufb (ssse3), pmulld/ptest (sse4.1), aesenc, pclmulqdq, andn (bmi1), shlx (bmi2),
    # adcx (adx), sha1rnds4, rdtscp, invpcid, monitor; movbe and rdpid raise #UD. A guest that sees these
    # bits clear takes its generic paths. (Baseline SSE2/x87 memory operands fail too: not maskable.)
    "pvm-safe": ("cx16", "vmx", "monitor", "waitpkg", "rtm", "hle", "popcnt", "sse4_2", "sse4_1", "ssse3", "aes",
                 "pclmulqdq", "bmi1", "bmi2", "adx", "sha_ni", "rdtscp", "invpcid", "movbe", "rdpid", "rdrand",
                 "rdseed") + _AVX + _XSAVE,
}


def check_profile(name: str) -> tuple[str, ...]:
    return lookup(PROFILES, name, "CPU profile")


def _matches(entry: dict[str, int], feat: Feature) -> bool:
    return entry["function"] == feat.leaf and (feat.subleaf is None or entry["index"] == feat.subleaf)


def apply_profile(entries: list[dict[str, int]], profile: str, vcpu_index: int = 0) -> tuple[list[dict[str, int]],
                                                                                              list[str]]:
    """Entries with the profile's features cleared and the hypervisor bit set; plus the masked names
    (only features the host actually offered)."""
    names = check_profile(profile)
    out = [dict(e) for e in entries]
    masked: list[str] = []
    for name in names:
        feat = FEATURES[name]
        hit = False
        for e in out:
            if _matches(e, feat) and e[feat.reg] & (1 << feat.bit):
                e[feat.reg] &= ~(1 << feat.bit)
                hit = True
        if hit:
            masked.append(name)
    for e in out:
        if _matches(e, HYPERVISOR):
            e["ecx"] |= 1 << HYPERVISOR.bit
            # Initial APIC ID (EBX[31:24]) must be this vCPU's index, or SMP guests see clones.
            e["ebx"] = (e["ebx"] & 0x00FF_FFFF) | (vcpu_index << 24)
        if e["function"] == 0xB or e["function"] == 0x1F:
            e["edx"] = vcpu_index  # x2APIC ID
    if "xsave" in masked:
        # Without XSAVE the 0xD leaf must not advertise state components.
        out = [e for e in out if e["function"] != 0xD]
    return out, masked


def offered_xcr0(entries: list[dict[str, int]]) -> int:
    """The XCR0 bits a CPUID table offers the guest: CPUID.(0xD,0) EDX:EAX, 0 without that leaf."""
    leaf = next((e for e in entries if e["function"] == 0xD and e["index"] == 0), None)
    return 0 if leaf is None else leaf["edx"] << 32 | leaf["eax"]


def describe(entries: list[dict[str, int]]) -> dict[str, Any]:
    """Which known features a CPUID table offers (for the summary / experiments)."""
    have = [name for name, feat in FEATURES.items() if any(_matches(e, feat) and e[feat.reg] >> feat.bit & 1
                                                          for e in entries)]
    return {"features": have}
