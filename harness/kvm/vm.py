"""A KVM virtual machine: guest RAM slots, in-kernel irqchip + PIT, IRQ lines, coalesced PIO.

The Vm owns the fds; vCPUs (harness.kvm.vcpu) and their run loops borrow it. Everything
the guest can see at a fixed address comes from harness.layout.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable

from harness import layout
from harness.errors import KvmUnavailable
from harness.kvm import ffi as k
from harness.kvm.ffi import ffi
from harness.kvm.system import KVM_PATH, capabilities, ioctl, open_kvm
from harness.kvm.vcpu import Vcpu
from harness.memory import GuestRam


class Vm:
    def __init__(self, ram: GuestRam, *, kvm_path: str = KVM_PATH, irqchip: bool = True, pit: bool = True) -> None:
        self.ram = ram
        self.kvm_fd = open_kvm(kvm_path)
        self.caps = capabilities(self.kvm_fd)
        # SYNC_REGS is not in the CAPS table of the device probe (74); check it here once.
        self.caps["SYNC_REGS_OK"] = self._check(74)
        self.fd = ioctl(self.kvm_fd, k.KVM_CREATE_VM, 0, what="KVM_CREATE_VM")
        self.vcpu_mmap_size = ioctl(self.kvm_fd, k.KVM_GET_VCPU_MMAP_SIZE, what="KVM_GET_VCPU_MMAP_SIZE")
        self.irqchip = irqchip
        self.vcpus: list[Vcpu] = []
        self.ring: Any = None                  # kvm_coalesced_mmio_ring, mapped through vCPU 0
        self.ring_view: memoryview | None = None  # the same page, for the run loop's one-struct read
        self.ring_lock = threading.Lock()      # one drainer at a time keeps replay in guest order
        self.coalesced: list[tuple[int, int, bool]] = []
        self.ring_max = k.KVM_COALESCED_MMIO_MAX   # ring entries in one page
        self._set_memory()
        self._set_x86_addresses()
        if irqchip:
            ioctl(self.fd, k.KVM_CREATE_IRQCHIP, what="KVM_CREATE_IRQCHIP")
            if pit:
                cfg = ffi.new("struct kvm_pit_config *")
                cfg.flags = k.KVM_PIT_SPEAKER_DUMMY
                ioctl(self.fd, k.KVM_CREATE_PIT2, cfg, what="KVM_CREATE_PIT2")

    def _check(self, cap: int) -> int:
        try:
            return ioctl(self.kvm_fd, k.KVM_CHECK_EXTENSION, cap)
        except OSError:
            return 0

    def _set_memory(self) -> None:
        view = ffi.from_buffer(self.ram.mapping)
        base = int(ffi.cast("uintptr_t", view))   # fixed for the mapping's life
        ffi.release(view)
        for slot, region in enumerate(self.ram.regions()):
            mr = ffi.new("struct kvm_userspace_memory_region *")
            mr.slot, mr.flags = slot, 0
            mr.guest_phys_addr, mr.memory_size = region.guest_addr, region.size
            mr.userspace_addr = base + region.host_offset
            ioctl(self.fd, k.KVM_SET_USER_MEMORY_REGION, mr, what="KVM_SET_USER_MEMORY_REGION")

    def _set_x86_addresses(self) -> None:
        # Both live in the MMIO hole so they never shadow guest RAM (Intel real-mode/unrestricted guest needs them).
        ioctl(self.fd, k.KVM_SET_TSS_ADDR, layout.KVM_TSS_ADDR, what="KVM_SET_TSS_ADDR")
        addr = ffi.new("uint64_t *", layout.KVM_IDENTITY_MAP_ADDR)
        ioctl(self.fd, k.KVM_SET_IDENTITY_MAP_ADDR, addr, what="KVM_SET_IDENTITY_MAP_ADDR")

    # -- vCPUs ----------------------------------------------------------------------------------
    def create_vcpu(self) -> Vcpu:
        vcpu = Vcpu(self, len(self.vcpus))
        self.vcpus.append(vcpu)
        if self.ring is None and self.coalesced:
            self._map_ring(vcpu)
        return vcpu

    def _map_ring(self, vcpu: Vcpu) -> None:
        offset = k.KVM_COALESCED_MMIO_PAGE_OFFSET * k.PAGE_SIZE
        self.ring_view = vcpu.run_buffer[offset:offset + k.PAGE_SIZE]
        self.ring = ffi.from_buffer("struct kvm_coalesced_mmio_ring *", self.ring_view)

    # -- interrupts -----------------------------------------------------------------------------
    def set_irq(self, irq: int, level: int) -> None:
        """Drive GSI `irq` to `level` (in-kernel PIC + IOAPIC). Safe from any thread."""
        if not self.irqchip:
            return
        line = ffi.new("struct kvm_irq_level *")
        line.irq, line.level = irq, 1 if level else 0
        ioctl(self.fd, k.KVM_IRQ_LINE, line, what="KVM_IRQ_LINE")

    def signal_msi(self, address: int, data: int) -> bool:
        """Inject one MSI (address/data as a device writes them) through KVM_SIGNAL_MSI.
        True when delivered; False when the host lacks the ioctl or the guest masked it."""
        if not self.irqchip or not self.caps.get("SIGNAL_MSI"):
            return False
        msi = ffi.new("struct kvm_msi *")
        msi.address_lo, msi.address_hi, msi.data = address & 0xFFFF_FFFF, address >> 32, data
        try:
            return ioctl(self.fd, k.KVM_SIGNAL_MSI, msi, what="KVM_SIGNAL_MSI") > 0
        except OSError:
            return False

    # -- coalesced PIO / MMIO --------------------------------------------------------------------
    def coalesce(self, addr: int, size: int, pio: bool) -> bool:
        """Let guest writes to [addr, addr+size) go into the ring instead of exiting. False if unsupported."""
        cap = "COALESCED_PIO" if pio else "COALESCED_MMIO"
        if not self.caps.get(cap):
            return False
        zone = ffi.new("struct kvm_coalesced_mmio_zone *")
        zone.addr, zone.size, zone.pio = addr, size, 1 if pio else 0
        ioctl(self.fd, k.KVM_REGISTER_COALESCED_MMIO, zone, what="KVM_REGISTER_COALESCED_MMIO")
        self.coalesced.append((addr, size, pio))
        if self.ring is None and self.vcpus:
            self._map_ring(self.vcpus[0])
        return True

    def uncoalesce(self, addr: int, size: int, pio: bool) -> None:
        """Writes to a zone coalesce() registered exit again (ones already in the ring stay there)."""
        zone = ffi.new("struct kvm_coalesced_mmio_zone *")
        zone.addr, zone.size, zone.pio = addr, size, 1 if pio else 0
        ioctl(self.fd, k.KVM_UNREGISTER_COALESCED_MMIO, zone, what="KVM_UNREGISTER_COALESCED_MMIO")
        self.coalesced.remove((addr, size, pio))

    def drain_ring(self, pio_write: Callable[[int, int, int], Any], mmio_write: Callable[[int, int, int], Any]) -> int:
        """Replay coalesced writes in guest order. Returns how many were replayed."""
        ring = self.ring
        if ring is None or ring.first == ring.last:
            return 0
        n = 0
        with self.ring_lock:
            first, maximum = ring.first, self.ring_max
            while first != ring.last:
                ent = ring.coalesced_mmio[first]
                size = min(int(ent.len), 8)
                value = int.from_bytes(bytes(ent.data[0:size]), "little")
                (pio_write if ent.pio else mmio_write)(int(ent.phys_addr), size, value)
                first = (first + 1) % maximum
                ring.first = first  # publish each slot at once: KVM may refill it
                n += 1
        return n

    def close(self) -> None:
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus.clear()
        self.ring = None
        self.ring_view = None
        for fd in (self.fd, self.kvm_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def require_kvm(kvm_path: str = KVM_PATH) -> None:
    """Raise KvmUnavailable (one line + fix) unless a VM can be created here."""
    fd = open_kvm(kvm_path)
    try:
        vm_fd = ioctl(fd, k.KVM_CREATE_VM, 0, what="KVM_CREATE_VM")
        os.close(vm_fd)
    except OSError as exc:
        raise KvmUnavailable(f"KVM_CREATE_VM failed: {exc.strerror}", "check dmesg; run on a host with KVM") from None
    finally:
        os.close(fd)
