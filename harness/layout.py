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
MPTABLE_ADDR = EBDA_START    # MP floating pointer + configuration table (searched in the EBDA's first KiB)
MPTABLE_MAX = 0x400
ACPI_RSDP_ADDR = 0xE0000     # in the BIOS area [0xE0000, 0x100000) that OSes scan for "RSD PTR "
ACPI_TABLES_ADDR = 0xE0040   # XSDT, FADT, MADT, DSDT, ... right after the RSDP
ACPI_TABLES_END = 0x100000
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
# Level-triggered lines live on IOAPIC pins 16-23, which KVM never wires to the 8259:
PCI_INTX_GSIS = (16, 17, 18, 19)    # PCI INTA#..INTD# (swizzled by slot, see harness.firmware.machine)
VIRTIO_MMIO_GSIS = (20, 21, 22, 23) # virtio-mmio slot i interrupts on VIRTIO_MMIO_GSIS[i]
VIRTIO_MMIO_SLOTS = len(VIRTIO_MMIO_GSIS)
PCI_IO_WINDOW = (0xC000, 0x4000)    # I/O BARs of PCI devices (transitional virtio-pci)
ACPI_WATCH_ADDR = 0xFE00_0000       # builtin option acpi_watch: the tables (not the RSDP) served from MMIO
ACPI_WATCH_SIZE = 0x10000
IOAPIC_ADDR = 0xFEC0_0000
IOAPIC_PINS = 24                    # KVM's in-kernel IOAPIC
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
ACPI_SLEEP_CONTROL_PORT = 0x600      # hardware-reduced ACPI sleep control (+1: status), harness.devices.acpi_sleep
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


# =====================================================================================================
# aarch64 (the built-in hypervisor on an arm64 host). Addresses follow QEMU's `virt` machine, so a
# guest that works on `qemu-system-aarch64 -M virt` finds its devices where it expects them, and the
# generated device tree (harness.boot.fdt) is the one place a guest learns them from.
# =====================================================================================================
A64_GICD_BASE = 0x0800_0000          # GICv3 distributor, 64 KiB
A64_GICD_SIZE = 0x1_0000
A64_GICR_BASE = 0x080A_0000          # GICv3 redistributors, 128 KiB (RD + SGI frames) per vCPU
A64_GICR_STRIDE = 0x2_0000
A64_GICR_MAX_SIZE = 0x00F6_0000      # room for 123 vCPUs below the UART, as on QEMU virt
A64_UART_BASE = 0x0900_0000          # PL011
A64_UART_SIZE = 0x1000
A64_RTC_BASE = 0x0901_0000           # PL031
A64_RTC_SIZE = 0x1000
A64_VIRTIO_MMIO_BASE = 0x0A00_0000   # virtio-mmio slots, 512 bytes apart, as on QEMU virt
A64_VIRTIO_MMIO_SLOT = 0x200
A64_VIRTIO_MMIO_SLOTS = 32
A64_RAM_START = 0x4000_0000          # 1 GiB: RAM runs from here
A64_MAX_RAM = 255 * GiB              # below the 256 GiB a 40-bit IPA space leaves above A64_RAM_START

# Interrupts: SPI numbers (GIC INTID = 32 + SPI) and PPI numbers (INTID = 16 + PPI).
A64_SPI_BASE = 32
A64_UART_SPI = 1
A64_RTC_SPI = 2
A64_VIRTIO_FIRST_SPI = 16
A64_TIMER_PPIS = {"secure-phys": 13, "phys": 14, "virt": 11, "hyp": 10}   # architected timer

# Boot placement (Documentation/arch/arm64/booting.rst): the kernel at a 2 MiB-aligned base plus
# text_offset; the DTB 8-byte aligned, at most 2 MiB, in a 2 MiB region of its own.
A64_IMAGE_ALIGN = 2 * MiB
A64_FDT_MAX = 2 * MiB
A64_IPA_BITS_MIN = 40                # what the layout above needs (RAM up to 256 GiB)


def a64_ram_end(memory_bytes: int) -> int:
    """End (exclusive) of aarch64 guest RAM of `memory_bytes`."""
    return A64_RAM_START + memory_bytes


def a64_fdt_addr(memory_bytes: int) -> int:
    """The DTB's address: the last 2 MiB of RAM (aligned), so no kernel placement rule can hit it."""
    return (a64_ram_end(memory_bytes) - A64_FDT_MAX) & ~(A64_IMAGE_ALIGN - 1)


def a64_virtio_slot(index: int) -> tuple[int, int]:
    """(base, SPI) of virtio-mmio slot `index`."""
    if not 0 <= index < A64_VIRTIO_MMIO_SLOTS:
        raise ValueError(f"virtio-mmio slot {index} out of range 0..{A64_VIRTIO_MMIO_SLOTS - 1}")
    return A64_VIRTIO_MMIO_BASE + index * A64_VIRTIO_MMIO_SLOT, A64_VIRTIO_FIRST_SPI + index
