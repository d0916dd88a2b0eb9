"""Guest physical layout of the built-in hypervisor: every fixed address lives here.

x86-64 layout, close to Firecracker's (facts from its arch/x86_64 and the Linux boot
protocol). Loaders and the VM core import these names; nothing else hard-codes an address.
"""
from __future__ import annotations

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# --- low memory -------------------------------------------------------------
REAL_MODE_IVT = 0x0000
GDT_ADDR = 0x0500            # boot GDT (flat code/data, 32- and 64-bit code, TSS)
GDT_MAX_SIZE = 0x100
IDT_ADDR = 0x0600            # empty IDT loaded at entry (limit 0)
BOOT_INFO_ADDR = 0x2000      # OpenBSD bootargs page / generic "boot info" page (vmd uses 0x2000)
PVH_START_INFO_ADDR = 0x6000 # hvm_start_info, then the module list and memmap right after it
PVH_INFO_MAX = 0x1000
ZERO_PAGE_ADDR = 0x7000      # Linux boot_params (4 KiB)
BOOT_STACK_TOP = 0x8FF0      # initial stack for direct boot
PML4_ADDR = 0x9000           # identity-map page tables for 64-bit entry
PDPT_ADDR = 0xA000
PD_ADDR = 0xB000             # 4 page directories (0xB000-0xEFFF): identity map of the first 4 GiB
PD_COUNT = 4
BOOT_TABLES_ADDR = 0x10000   # protocol tables that need room: multiboot info, NetBSD bootinfo, memmaps
BOOT_TABLES_SIZE = 0x10000
CMDLINE_ADDR = 0x20000
CMDLINE_MAX = 0x10000        # 64 KiB incl. terminating NUL
EBDA_START = 0x9FC00         # RAM below 1 MiB ends here (MP table / EBDA above)
LOW_RAM_END = EBDA_START
BIOS_AREA_START = 0xA0000    # VGA + option ROM + BIOS: reserved in every memory map
HIGH_RAM_START = 0x100000    # 1 MiB
KERNEL_LOAD_ADDR = 0x100000  # default physical load address of a protected-mode kernel
# boot method "raw" (tiny test/benchmark guests; no boot tables, so it may share their room)
RAW_IMAGE_LOAD = 0x10000     # above the IVT/BDA, real-mode reachable with CS=0x1000
RAW_IMAGE_MAX = 0x80000      # the image must end below the EBDA
RAW_REAL_STACK = 0xFFF0      # SS=0, SP: top of the first 64 KiB segment

# --- the MMIO hole below 4 GiB -------------------------------------------------
MMIO_HOLE_START = 0xC000_0000
MMIO_HOLE_END = 0x1_0000_0000
PCI_MMIO_START = 0xC000_0000        # 32-bit PCI BARs (virtio-pci when present)
PCI_MMIO_SIZE = 0x1000_0000
VIRTIO_MMIO_START = 0xD000_0000     # virtio-mmio slots, 4 KiB apart
VIRTIO_MMIO_SLOT = 0x1000
IOAPIC_ADDR = 0xFEC0_0000
LAPIC_ADDR = 0xFEE0_0000
KVM_TSS_ADDR = 0xFFFB_D000          # KVM_SET_TSS_ADDR: three pages, inside the hole
KVM_IDENTITY_MAP_ADDR = 0xFFFB_C000 # KVM_SET_IDENTITY_MAP_ADDR: one page, just below the TSS
RAM_ABOVE_4G_START = 0x1_0000_0000

# --- I/O ports ---------------------------------------------------------------------
COM1_PORT, COM1_IRQ = 0x3F8, 4
COM2_PORT, COM2_IRQ = 0x2F8, 3
RTC_PORT, RTC_IRQ = 0x70, 8          # index 0x70, data 0x71
I8042_DATA_PORT, I8042_CMD_PORT = 0x60, 0x64
POST_PORT = 0x80                     # POST codes: timestamped, like cloud-hypervisor
BOOT_TIMER_PORT = 0x440              # the guest writes a byte here to mark a moment (Firecracker-style)
PCI_CONFIG_ADDRESS = 0xCF8
PCI_CONFIG_DATA = 0xCFC

# fixture-msr-gate's required MSR: unknown to KVM and to the built-in policy tables (it exits to
# user space), so gap policy gp refuses it and the fixture panics; emulate/zero answer 0.
# (Architectural MSR indices are in harness/arch/x86_64/regs.py.)
FIXTURE_GATE_MSR = 0x4B564DFE


def ram_regions(memory_bytes: int) -> list[tuple[int, int]]:
    """Guest-physical (start, size) of RAM for a VM of `memory_bytes`: below the hole, then above 4 GiB."""
    below = min(memory_bytes, MMIO_HOLE_START)
    regions = [(0, below)]
    if memory_bytes > below:
        regions.append((RAM_ABOVE_4G_START, memory_bytes - below))
    return regions


E820_RAM, E820_RESERVED, E820_ACPI, E820_NVS = 1, 2, 3, 4


def e820_map(memory_bytes: int) -> list[tuple[int, int, int]]:
    """(addr, size, type) entries every loader hands to its guest, sorted, non-overlapping."""
    regions = ram_regions(memory_bytes)
    low_size = regions[0][1]
    entries = [(0, min(low_size, LOW_RAM_END), E820_RAM),
               (LOW_RAM_END, HIGH_RAM_START - LOW_RAM_END, E820_RESERVED)]
    if low_size > HIGH_RAM_START:
        entries.append((HIGH_RAM_START, low_size - HIGH_RAM_START, E820_RAM))
    entries.extend((start, size, E820_RAM) for start, size in regions[1:])
    return entries
