"""An arm64 KVM VM: IPA size, RAM slot, the in-kernel vGICv3, vCPUs initialised for PSCI 0.2.

Order of setup (Documentation/virt/kvm/devices/arm-vgic-v3.rst, api.rst):
  KVM_CREATE_VM(type = IPA bits)  -> KVM_SET_USER_MEMORY_REGION  -> KVM_CREATE_DEVICE(VGIC_V3)
  -> distributor / redistributor base via KVM_SET_DEVICE_ATTR(GRP_ADDR)
  -> every KVM_CREATE_VCPU + KVM_ARM_VCPU_INIT (target from KVM_ARM_PREFERRED_TARGET,
     PSCI_0_2; secondaries also POWER_OFF so they wait for the guest's PSCI CPU_ON)
  -> GRP_NR_IRQS, then KVM_DEV_ARM_VGIC_CTRL_INIT (after all vCPUs exist, before the first run).
The architected timer needs nothing from user space: KVM emulates it and wires its PPIs to the vGIC.
"""
from __future__ import annotations

import mmap
import os
import threading
from typing import Any, Callable

from harness import layout
from harness.errors import ConfigError, KvmUnavailable
from harness.kvm.arch.aarch64 import ffi as a
from harness.kvm.arch.aarch64.ffi import ffi
from harness.kvm.ffi import ffi as generic_ffi
from harness.kvm.system import KVM_PATH, ioctl, open_kvm
from harness.kvm.vm import Vm
from harness.memory import GuestRam

NR_IRQS = 128                # INTIDs the vGIC models: 32 private + 96 SPIs (virtio slots end at SPI 47)
_VCPU_FEATURE_PSCI = 1 << a.KVM_ARM_VCPU_PSCI_0_2
_VCPU_FEATURE_OFF = 1 << a.KVM_ARM_VCPU_POWER_OFF


def irq_line(spi: int) -> int:
    """KVM_IRQ_LINE's irq field for SPI `spi`: type SPI, number = its GIC INTID."""
    if not 0 <= spi < NR_IRQS - layout.A64_SPI_BASE:
        raise ValueError(f"SPI {spi} outside the vGIC's {NR_IRQS - layout.A64_SPI_BASE} SPIs")
    return a.KVM_ARM_IRQ_TYPE_SPI << a.KVM_ARM_IRQ_TYPE_SHIFT | (layout.A64_SPI_BASE + spi)


class Aarch64Vcpu:
    def __init__(self, vm: "Aarch64Vm", index: int) -> None:
        self.vm, self.index = vm, index
        self.fd = ioctl(vm.fd, a.KVM_CREATE_VCPU, index, what="KVM_CREATE_VCPU")
        self._map = mmap.mmap(self.fd, vm.vcpu_mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.run_buffer = memoryview(self._map)
        self.run: Any = ffi.from_buffer("struct kvm_run *", self._map)
        self.thread_ident: int | None = None
        self.sync_regs = False
        self._reg = ffi.new("struct kvm_one_reg *")
        self._val = ffi.new("uint64_t *")

    def init(self, target: int, powered_off: bool) -> None:
        init = ffi.new("struct kvm_vcpu_init *")
        init.target = target
        init.features[0] = _VCPU_FEATURE_PSCI | (_VCPU_FEATURE_OFF if powered_off else 0)
        ioctl(self.fd, a.KVM_ARM_VCPU_INIT, init, what="KVM_ARM_VCPU_INIT")

    def get_reg(self, reg_id: int) -> int:
        self._reg.id, self._reg.addr = reg_id, int(ffi.cast("uintptr_t", self._val))
        ioctl(self.fd, a.KVM_GET_ONE_REG, self._reg, what="KVM_GET_ONE_REG")
        return int(self._val[0])

    def set_reg(self, reg_id: int, value: int) -> None:
        self._val[0] = value & 0xFFFF_FFFF_FFFF_FFFF
        self._reg.id, self._reg.addr = reg_id, int(ffi.cast("uintptr_t", self._val))
        ioctl(self.fd, a.KVM_SET_ONE_REG, self._reg, what="KVM_SET_ONE_REG")

    def set_entry(self, entry: Any) -> None:
        """PC, X0-X3 and PSTATE from a loader's Arm64Entry (harness.boot.arm64)."""
        for n, value in enumerate(entry.x):
            self.set_reg(a.x_reg(n), value)
        self.set_reg(a.REG_PSTATE, entry.pstate)
        self.set_reg(a.REG_PC, entry.pc)

    def current_pc(self) -> int:
        try:
            return self.get_reg(a.REG_PC)
        except OSError:
            return 0

    def registers(self) -> dict[str, int]:
        """PC, PSTATE, SP, X0-X30 and the EL1 fault registers, for gap records and failures."""
        out: dict[str, int] = {}
        names = {"pc": a.REG_PC, "pstate": a.REG_PSTATE, "sp": a.REG_SP, "esr_el1": a.REG_ESR_EL1,
                 "far_el1": a.REG_FAR_EL1, "vbar_el1": a.REG_VBAR_EL1, "sctlr_el1": a.REG_SCTLR_EL1,
                 **{f"x{n}": a.x_reg(n) for n in range(31)}}
        for name, reg in names.items():
            try:
                out[name] = self.get_reg(reg)
            except OSError:
                continue
        return out

    def mp_state(self) -> int:
        state = ffi.new("struct kvm_mp_state *")
        ioctl(self.fd, a.KVM_GET_MP_STATE, state, what="KVM_GET_MP_STATE")
        return int(state.mp_state)

    def close(self) -> None:
        self.run = None
        self.run_buffer.release()
        self._map.close()
        os.close(self.fd)


class Aarch64Vm:
    def __init__(self, ram: GuestRam, vcpus: int, *, kvm_path: str = KVM_PATH) -> None:
        self.ram = ram
        self.kvm_fd = open_kvm(kvm_path)
        self.ipa_bits = self._ipa_bits()
        self.fd = ioctl(self.kvm_fd, a.KVM_CREATE_VM, self.ipa_bits & a.KVM_VM_TYPE_ARM_IPA_SIZE_MASK,
                        what="KVM_CREATE_VM")
        self.vcpu_mmap_size = ioctl(self.kvm_fd, a.KVM_GET_VCPU_MMAP_SIZE, what="KVM_GET_VCPU_MMAP_SIZE")
        self.max_vcpus = self._check(a.KVM_CAP_MAX_VCPUS) or self._check(a.KVM_CAP_NR_VCPUS) or 1
        if vcpus > self.max_vcpus:
            self.close()
            raise ConfigError(f"{vcpus} vCPUs asked, this KVM allows {self.max_vcpus}",
                              f"use at most {self.max_vcpus}")
        if not self._check(a.KVM_CAP_ARM_PSCI_0_2):
            self.close()
            raise KvmUnavailable("this arm64 KVM has no PSCI 0.2 (KVM_CAP_ARM_PSCI_0_2)",
                                 "run on Linux 3.18 or newer")
        self.ring: Any = None                  # kvm_coalesced_mmio_ring (arch-neutral layout), in vCPU 0's mmap
        self.ring_view: memoryview | None = None
        self.ring_lock = threading.Lock()
        self.ring_max = 0
        self._set_memory()
        self.gic_fd = self._create_vgic(vcpus)
        self.vcpus: list[Aarch64Vcpu] = []
        target = self._preferred_target()
        for i in range(vcpus):
            vcpu = Aarch64Vcpu(self, i)
            vcpu.init(target, powered_off=i > 0)
            self.vcpus.append(vcpu)
        self._init_vgic()

    def _check(self, cap: int) -> int:
        try:
            return ioctl(self.kvm_fd, a.KVM_CHECK_EXTENSION, cap, what="KVM_CHECK_EXTENSION")
        except OSError:
            return 0

    def _ipa_bits(self) -> int:
        """The IPA size the layout needs, if the host offers more than the 40-bit default (0 = default)."""
        host_max = self._check(a.KVM_CAP_ARM_VM_IPA_SIZE)    # 0: the cap is absent, 40 bits fixed
        if host_max and host_max < layout.A64_IPA_BITS_MIN:
            raise KvmUnavailable(f"this arm64 KVM offers a {host_max}-bit IPA space, the layout needs "
                                 f"{layout.A64_IPA_BITS_MIN}", "run on a host with a larger IPA size")
        return layout.A64_IPA_BITS_MIN if host_max else 0

    def _set_memory(self) -> None:
        Vm._set_memory(self)         # one KVM_SET_USER_MEMORY_REGION per RAM region: arch-neutral

    def _preferred_target(self) -> int:
        init = ffi.new("struct kvm_vcpu_init *")
        ioctl(self.fd, a.KVM_ARM_PREFERRED_TARGET, init, what="KVM_ARM_PREFERRED_TARGET")
        return int(init.target)

    def _device_attr(self, fd: int, group: int, attr: int, value: Any, what: str) -> None:
        da = ffi.new("struct kvm_device_attr *")
        da.group, da.attr = group, attr
        da.addr = int(ffi.cast("uintptr_t", value)) if value is not None else 0
        ioctl(fd, a.KVM_SET_DEVICE_ATTR, da, what=what)

    def _create_vgic(self, vcpus: int) -> int:
        dev = ffi.new("struct kvm_create_device *")
        dev.type = a.KVM_DEV_TYPE_ARM_VGIC_V3
        try:
            ioctl(self.fd, a.KVM_CREATE_DEVICE, dev, what="KVM_CREATE_DEVICE(VGIC_V3)")
        except OSError as exc:
            self.close()
            raise KvmUnavailable(f"this arm64 KVM cannot create a GICv3 ({exc.strerror})",
                                 "run on a host whose GIC supports GICv3 guests") from None
        fd = int(dev.fd)
        dist = ffi.new("uint64_t *", layout.A64_GICD_BASE)
        redist = ffi.new("uint64_t *", layout.A64_GICR_BASE)
        self._device_attr(fd, a.KVM_DEV_ARM_VGIC_GRP_ADDR, a.KVM_VGIC_V3_ADDR_TYPE_DIST, dist, "vGIC dist base")
        self._device_attr(fd, a.KVM_DEV_ARM_VGIC_GRP_ADDR, a.KVM_VGIC_V3_ADDR_TYPE_REDIST, redist,
                          "vGIC redist base")
        return fd

    def _init_vgic(self) -> None:
        nr = ffi.new("uint32_t *", NR_IRQS)
        self._device_attr(self.gic_fd, a.KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 0, nr, "vGIC NR_IRQS")
        self._device_attr(self.gic_fd, a.KVM_DEV_ARM_VGIC_GRP_CTRL, a.KVM_DEV_ARM_VGIC_CTRL_INIT, None,
                          "vGIC CTRL_INIT")

    def coalesce_mmio(self, addr: int, size: int) -> bool:
        """Guest writes to [addr, addr+size) go into KVM's coalesced ring instead of exiting (False:
        the host has no KVM_CAP_COALESCED_MMIO). The cap answers the ring's page in the vCPU mmap."""
        page = self._check(a.KVM_CAP_COALESCED_MMIO)
        if not page or not self.vcpus:
            return False
        zone = ffi.new("struct kvm_coalesced_mmio_zone *")
        zone.addr, zone.size, zone.pio = addr, size, 0
        ioctl(self.fd, a.KVM_REGISTER_COALESCED_MMIO, zone, what="KVM_REGISTER_COALESCED_MMIO")
        if self.ring is None:
            offset = page * mmap.PAGESIZE
            self.ring_view = self.vcpus[0].run_buffer[offset:offset + mmap.PAGESIZE]
            self.ring = generic_ffi.from_buffer("struct kvm_coalesced_mmio_ring *", self.ring_view)
            header, entry = (generic_ffi.sizeof(f"struct kvm_coalesced_mmio{t}") for t in ("_ring", ""))
            self.ring_max = (mmap.PAGESIZE - header) // entry
        return True

    def uncoalesce_mmio(self, addr: int, size: int) -> None:
        """Writes to a zone coalesce_mmio() registered exit again (ones already in the ring stay)."""
        zone = ffi.new("struct kvm_coalesced_mmio_zone *")
        zone.addr, zone.size, zone.pio = addr, size, 0
        ioctl(self.fd, a.KVM_UNREGISTER_COALESCED_MMIO, zone, what="KVM_UNREGISTER_COALESCED_MMIO")

    def drain_ring(self, mmio_write: Callable[[int, int, int], Any]) -> int:
        """Replay coalesced writes in guest order (the x86 VM's replay: the ring is arch-neutral)."""
        return Vm.drain_ring(self, _no_port_io, mmio_write)   # type: ignore[arg-type]

    def set_irq(self, spi: int, level: int) -> None:
        """A device's SPI line (level) into the vGIC; thread-safe (one ioctl)."""
        line = ffi.new("struct kvm_irq_level *")
        line.irq, line.level = irq_line(spi), 1 if level else 0
        ioctl(self.fd, a.KVM_IRQ_LINE, line, what="KVM_IRQ_LINE")

    def close(self) -> None:
        self.ring = self.ring_view = None      # dropped before the vCPU mmap they point into closes
        for vcpu in getattr(self, "vcpus", []):
            vcpu.close()
        self.vcpus = []
        for name in ("gic_fd", "fd", "kvm_fd"):
            fd = getattr(self, name, None)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)


def _no_port_io(port: int, size: int, value: int) -> None:
    raise AssertionError("arm64 has no port I/O: a coalesced zone here is MMIO only")
