"""The arm64 cffi declarations match arm64's <linux/kvm.h> / <asm/kvm.h>: every struct size, field
offset, ioctl number, register id and constant used, checked at compile time (_Static_assert) by
the aarch64 cross compiler against Debian's linux-libc-dev:arm64 headers (downloaded through a
private apt state into the asset cache). Nothing is run, so no arm64 host or emulator is needed."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.kvm.arch.aarch64 import ffi as a
from harness.kvm.arch.aarch64.ffi import ffi

CROSS_GCC = shutil.which("aarch64-linux-gnu-gcc")
pytestmark = pytest.mark.skipif(CROSS_GCC is None, reason="needs gcc-aarch64-linux-gnu")

STRUCTS = ["kvm_userspace_memory_region", "kvm_coalesced_mmio_zone", "kvm_vcpu_init", "kvm_one_reg", "kvm_create_device",
           "kvm_device_attr", "kvm_irq_level", "kvm_mp_state", "kvm_run"]
FIELDS = [("kvm_run", "immediate_exit"), ("kvm_run", "exit_reason"), ("kvm_run", "mmio.phys_addr"),
          ("kvm_run", "mmio.data"), ("kvm_run", "mmio.len"), ("kvm_run", "mmio.is_write"),
          ("kvm_run", "hypercall.nr"), ("kvm_run", "hypercall.args"), ("kvm_run", "hypercall.ret"),
          ("kvm_run", "internal.suberror"), ("kvm_run", "internal.data"), ("kvm_run", "system_event.type"),
          ("kvm_run", "system_event.ndata"), ("kvm_run", "system_event.data"), ("kvm_run", "arm_nisv.esr_iss"),
          ("kvm_run", "arm_nisv.fault_ipa"), ("kvm_run", "fail_entry.hardware_entry_failure_reason"),
          ("kvm_run", "s"), ("kvm_vcpu_init", "features"), ("kvm_one_reg", "addr"),
          ("kvm_create_device", "fd"), ("kvm_create_device", "flags"), ("kvm_device_attr", "group"),
          ("kvm_device_attr", "attr"), ("kvm_device_attr", "addr")]
CONSTANTS = ["KVM_CAP_ARM_PSCI", "KVM_CAP_ARM_PSCI_0_2", "KVM_CAP_ARM_VM_IPA_SIZE", "KVM_CAP_ARM_NISV_TO_USER",
             "KVM_CAP_IRQCHIP", "KVM_CAP_NR_VCPUS", "KVM_CAP_COALESCED_MMIO", "KVM_CAP_MAX_VCPUS", "KVM_VM_TYPE_ARM_IPA_SIZE_MASK",
             "KVM_ARM_VCPU_POWER_OFF", "KVM_ARM_VCPU_EL1_32BIT", "KVM_ARM_VCPU_PSCI_0_2", "KVM_ARM_VCPU_PMU_V3",
             "KVM_DEV_TYPE_ARM_VGIC_V2", "KVM_DEV_TYPE_ARM_VGIC_V3", "KVM_DEV_ARM_VGIC_GRP_ADDR",
             "KVM_DEV_ARM_VGIC_GRP_NR_IRQS", "KVM_DEV_ARM_VGIC_GRP_CTRL", "KVM_DEV_ARM_VGIC_CTRL_INIT",
             "KVM_VGIC_V3_ADDR_TYPE_DIST", "KVM_VGIC_V3_ADDR_TYPE_REDIST", "KVM_ARM_IRQ_TYPE_SHIFT",
             "KVM_ARM_IRQ_VCPU_SHIFT", "KVM_ARM_IRQ_TYPE_CPU", "KVM_ARM_IRQ_TYPE_SPI", "KVM_ARM_IRQ_TYPE_PPI",
             "KVM_EXIT_HYPERCALL", "KVM_EXIT_MMIO", "KVM_EXIT_FAIL_ENTRY", "KVM_EXIT_INTR", "KVM_EXIT_INTERNAL_ERROR",
             "KVM_EXIT_SYSTEM_EVENT", "KVM_EXIT_ARM_NISV", "KVM_SYSTEM_EVENT_SHUTDOWN", "KVM_SYSTEM_EVENT_RESET",
             "KVM_SYSTEM_EVENT_CRASH", "KVM_MP_STATE_RUNNABLE", "KVM_MP_STATE_STOPPED", "KVM_REG_ARM64",
             "KVM_REG_SIZE_U64", "KVM_REG_ARM_CORE", "KVM_REG_ARM64_SYSREG"]


@pytest.fixture(scope="module")
def arm64_include(tmp_path_factory) -> Path:
    """usr/include of linux-libc-dev:arm64 (asm/kvm.h for arm64), fetched once into the asset cache."""
    from harness.assets.cache import AssetCache
    from harness.assets.debian import extract
    from harness.assets.recipes import BuildContext, fetch_deb
    from harness.errors import AssetError
    try:
        deb = fetch_deb(BuildContext(AssetCache(), False), "aarch64", "linux-libc-dev")
    except AssetError as exc:
        pytest.skip(f"linux-libc-dev:arm64 not obtainable here: {exc.problem}")
    root = extract(deb, tmp_path_factory.mktemp("libc-dev-arm64"))
    include = root / "usr" / "include"
    if not (include / "asm" / "kvm.h").exists():   # Debian puts asm/ under the multiarch triplet
        (include / "asm").symlink_to(include / "aarch64-linux-gnu" / "asm")
    return include


def _asserts() -> list[str]:
    out = []
    for s in STRUCTS:
        out.append(f"_Static_assert(sizeof(struct {s}) == {ffi.sizeof(f'struct {s}')}, \"size {s}\");")
    for s, path in FIELDS:
        off = ffi.offsetof(f"struct {s}", *path.split("."))
        out.append(f"_Static_assert(offsetof(struct {s}, {path}) == {off}, \"offset {s}.{path}\");")
    for name, value in a.IOCTLS.items():
        out.append(f"_Static_assert((unsigned long)({name}) == {value}UL, \"ioctl {name}\");")
    for name in CONSTANTS:
        out.append(f"_Static_assert((unsigned long long)({name}) == {getattr(a, name)}ULL, \"const {name}\");")
    regs = {"a.REG_PC": (a.REG_PC, "regs.pc"), "a.REG_SP": (a.REG_SP, "regs.sp"),
            "a.REG_PSTATE": (a.REG_PSTATE, "regs.pstate"), "x0": (a.x_reg(0), "regs.regs[0]"),
            "x3": (a.x_reg(3), "regs.regs[3]"), "x30": (a.x_reg(30), "regs.regs[30]")}
    for label, (value, member) in regs.items():
        out.append(f"_Static_assert((unsigned long long)(KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE"
                   f" | KVM_REG_ARM_CORE_REG({member})) == {value}ULL, \"reg {label}\");")
    sysregs = {"MPIDR_EL1": (a.REG_MPIDR_EL1, (3, 0, 0, 0, 5)), "ESR_EL1": (a.REG_ESR_EL1, (3, 0, 5, 2, 0)),
               "FAR_EL1": (a.REG_FAR_EL1, (3, 0, 6, 0, 0)), "VBAR_EL1": (a.REG_VBAR_EL1, (3, 0, 12, 0, 0)),
               "SCTLR_EL1": (a.REG_SCTLR_EL1, (3, 0, 1, 0, 0))}
    for label, (value, enc) in sysregs.items():
        out.append(f"_Static_assert((unsigned long long)ARM64_SYS_REG({', '.join(map(str, enc))}) == {value}ULL,"
                   f" \"sysreg {label}\");")
    return out


def test_layouts_and_numbers_match_the_arm64_headers(arm64_include, tmp_path):
    src = tmp_path / "abi.c"
    src.write_text("\n".join(["#include <stddef.h>", "#include <linux/kvm.h>", *_asserts(), ""]))
    proc = subprocess.run([CROSS_GCC, "-std=c11", "-fsyntax-only", "-isystem", str(arm64_include), str(src)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_the_check_catches_a_wrong_number(arm64_include, tmp_path):
    """The static asserts really compare: a deliberately wrong ioctl number fails to compile."""
    src = tmp_path / "wrong.c"
    src.write_text("#include <linux/kvm.h>\n"
                   f"_Static_assert((unsigned long)(KVM_ARM_VCPU_INIT) == {a.KVM_ARM_VCPU_INIT + 1}UL, \"x\");\n")
    proc = subprocess.run([CROSS_GCC, "-std=c11", "-fsyntax-only", "-isystem", str(arm64_include), str(src)],
                          capture_output=True, text=True)
    assert proc.returncode != 0


def test_core_register_ids_are_word_offsets():
    assert a.x_reg(1) - a.x_reg(0) == 2 and a.REG_PC == a.core_reg(256)
    with pytest.raises(ValueError):
        a.x_reg(31)
