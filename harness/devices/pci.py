"""PCI configuration mechanism #1 at ports 0xCF8-0xCFF, with an i440FX host bridge at 00:00.0.

Spec facts followed (PCI Local Bus spec 3.0 section 3.2.2.3.2; Intel 82441FX datasheet; Linux
arch/x86/pci/direct.c):
- CONFIG_ADDRESS (0xCF8) is a 32-bit register: bit 31 enable, bits 23-16 bus, 15-11 device, 10-8
  function, 7-2 dword register; bits 1-0 read as 0. Only a dword access reaches it; byte and word
  accesses to 0xCF8-0xCFB go to the ISA bus and float (0xFF) - Linux's pci_check_type2() relies on
  byte reads of 0xCF8/0xCFA not returning 0.
- Port 0xCF9 as a byte is the PIIX reset control register: writing it with bit 2 (RST_CPU) set
  resets the machine (Linux reboot=pci), reported as a RESET event.
- CONFIG_DATA (0xCFC-0xCFF) accepts byte, word and dword accesses; the byte lanes select the byte
  within the addressed dword. With the enable bit clear, reads float and writes are dropped.
- An absent function reads all ones (vendor ID 0xFFFF means "no device") and drops writes. Each
  absent bus:device.function is reported once as a pci-config gap per access kind; repeats are
  counted and reported in batches (the ledger sums counts).
- Type-0 header: vendor/device at 0x00, command 0x04, status 0x06 (RW1C error bits), revision and
  class at 0x08, cache line 0x0C, latency 0x0D, header type 0x0E (bit 7 multi-function), BARs
  0x10-0x24, subsystem 0x2C, capabilities pointer 0x34, interrupt line/pin 0x3C/0x3D. Read-only
  registers ignore writes (OpenBSD writes to MSI capability registers that are read-only).
- An unimplemented BAR reads 0 and ignores writes, which sizing code reads as "absent".
"""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

from harness import layout
from harness.devices.context import DeviceContext
from harness.model.events import RESET, VmEvent
from harness.model.gap import PCI_CONFIG, GapRecord

CONFIG_SPACE = 256
ADDR_ENABLE = 0x8000_0000
ADDR_MASK = 0x80FF_FFFC          # reserved bits 30-24 and 1-0 read as zero
RESET_CONTROL_OFFSET = 1         # 0xCF9
RCR_RST_CPU = 0x04
DATA_OFFSET = layout.PCI_CONFIG_DATA - layout.PCI_CONFIG_ADDRESS
GAP_BATCH = 1000

# Header offsets
VENDOR_ID, DEVICE_ID, COMMAND, STATUS = 0x00, 0x02, 0x04, 0x06
REVISION, PROG_IF, CLASS = 0x08, 0x09, 0x0A
CACHE_LINE, LATENCY, HEADER_TYPE = 0x0C, 0x0D, 0x0E
BAR0, SUBSYS_VENDOR, SUBSYS_ID, CAP_PTR = 0x10, 0x2C, 0x2E, 0x34
INTERRUPT_LINE, INTERRUPT_PIN = 0x3C, 0x3D
STATUS_RW1C = 0xF900             # parity, SERR, master/target aborts, signalled target abort


@dataclass(frozen=True, order=True)
class Bdf:
    bus: int
    device: int
    function: int

    def __post_init__(self) -> None:
        if not (0 <= self.bus <= 255 and 0 <= self.device <= 31 and 0 <= self.function <= 7):
            raise ValueError(f"PCI address {self.bus}:{self.device}.{self.function} out of range "
                             "(bus <= ff, device <= 1f, function <= 7)")

    def __str__(self) -> str:
        return f"{self.bus:02x}:{self.device:02x}.{self.function:x}"

    @classmethod
    def parse(cls, text: str) -> "Bdf":
        """'bb:dd.f' in hex, as lspci prints it."""
        try:
            bus, rest = text.split(":")
            device, function = rest.split(".")
            numbers = int(bus, 16), int(device, 16), int(function, 16)
        except ValueError:
            raise ValueError(f"bad PCI address {text!r}: expected bb:dd.f in hex, like 00:01.0") from None
        return cls(*numbers)


class PciFunction:
    """A type-0 configuration space: bytes plus a mask of which bits the guest may change.

    Devices (virtio-pci later) subclass it and override read_config/write_config when a register
    has side effects; plain registers only need the masks.
    """

    def __init__(self, vendor: int, device: int, class_code: int, revision: int = 0,
                 subsystem_vendor: int = 0, subsystem: int = 0) -> None:
        self.config = bytearray(CONFIG_SPACE)
        self.wmask = bytearray(CONFIG_SPACE)   # 1 bits are guest-writable
        self.w1c = bytearray(CONFIG_SPACE)     # 1 bits are cleared by writing 1
        self._put(VENDOR_ID, 2, vendor)
        self._put(DEVICE_ID, 2, device)
        self._put(REVISION, 1, revision)
        self._put(PROG_IF, 3, class_code)      # prog-if, subclass, class: 24 bits from 0x09
        self._put(SUBSYS_VENDOR, 2, subsystem_vendor)
        self._put(SUBSYS_ID, 2, subsystem)
        self._put_mask(COMMAND, 2, 0x0547)     # I/O, memory, master, parity, SERR, INTx disable
        self._put_mask(CACHE_LINE, 1, 0xFF)
        self._put_mask(LATENCY, 1, 0xFF)
        self._put_mask(INTERRUPT_LINE, 1, 0xFF)
        for i in range(2):
            self.w1c[STATUS + i] = (STATUS_RW1C >> (8 * i)) & 0xFF

    def _put(self, offset: int, size: int, value: int) -> None:
        self.config[offset:offset + size] = value.to_bytes(size, "little")

    def _put_mask(self, offset: int, size: int, mask: int) -> None:
        self.wmask[offset:offset + size] = mask.to_bytes(size, "little")

    def set_bar(self, index: int, size: int, io: bool = False) -> None:
        """Declare BAR `index` of `size` bytes (a power of two) so sizing probes read it back."""
        if not 0 <= index < 6 or size < (4 if io else 16) or size & (size - 1):
            raise ValueError(f"bad BAR {index} of size {size:#x}")
        offset = BAR0 + 4 * index
        self._put(offset, 4, 0x1 if io else 0x0)
        self._put_mask(offset, 4, ~(size - 1) & 0xFFFF_FFFF & (0xFFFF_FFFC if io else 0xFFFF_FFF0))

    def read_config(self, offset: int, size: int) -> int:
        return int.from_bytes(self.config[offset:offset + size], "little")

    def write_config(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            at = offset + i
            byte = (value >> (8 * i)) & 0xFF
            keep = self.config[at] & ~self.wmask[at]
            new = keep | (byte & self.wmask[at])
            new &= ~(byte & self.w1c[at])
            self.config[at] = new & 0xFF


class HostBridge(PciFunction):
    """Intel 82441FX (440FX) PMC, the host bridge QEMU's pc machine shows: 8086:1237 rev 2."""

    def __init__(self) -> None:
        super().__init__(vendor=0x8086, device=0x1237, class_code=0x060000, revision=0x02)
        self._put(COMMAND, 2, 0x0006)          # memory space + bus master, as firmware leaves it
        self._put(STATUS, 2, 0x0200)           # medium DEVSEL timing; no capability list


class PciHost:
    """Ports 0xCF8-0xCFF. `add_function(bdf, fn)` plugs a device in."""

    def __init__(self, ctx: DeviceContext) -> None:
        self._ctx = ctx
        self._lock = threading.RLock()
        self.address = 0
        self.reset_control = 0
        self._functions: dict[Bdf, PciFunction] = {}
        self._seen: set[tuple[Bdf, str]] = set()
        self._repeats: Counter[tuple[Bdf, str]] = Counter()
        self.add_function(Bdf(0, 0, 0), HostBridge())

    # --- registry ----------------------------------------------------------------------------
    def add_function(self, bdf: Bdf | tuple[int, int, int] | str, function: PciFunction) -> Bdf:
        if isinstance(bdf, str):
            key = Bdf.parse(bdf)
        elif isinstance(bdf, Bdf):
            key = bdf
        else:
            key = Bdf(*bdf)
        with self._lock:
            if key in self._functions:
                raise ValueError(f"PCI function {key} is already taken")
            self._functions[key] = function
            siblings = [b for b in self._functions if (b.bus, b.device) == (key.bus, key.device)]
            function0 = self._functions.get(Bdf(key.bus, key.device, 0))
            if function0 is not None and len(siblings) > 1:
                function0.config[HEADER_TYPE] |= 0x80   # tell scanners to probe functions 1-7
        return key

    def functions(self) -> dict[Bdf, PciFunction]:
        return dict(self._functions)

    # --- bus interface -----------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        with self._lock:
            if offset >= DATA_OFFSET:
                return self._config_access(offset - DATA_OFFSET, size, None)
            if offset == 0 and size == 4:
                return self.address
            if offset == RESET_CONTROL_OFFSET and size == 1:
                return self.reset_control
            return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            if offset >= DATA_OFFSET:
                self._config_access(offset - DATA_OFFSET, size, value)
            elif offset == 0 and size == 4:
                self.address = value & ADDR_MASK
            elif offset == RESET_CONTROL_OFFSET and size == 1:
                self._write_reset_control(value & 0xFF)

    def flush_gaps(self) -> None:
        with self._lock:
            for key, count in sorted(self._repeats.items()):
                if count:
                    self._report(key[0], key[1], count, None, None)
            self._repeats.clear()

    # --- internals ---------------------------------------------------------------------------
    def _write_reset_control(self, value: int) -> None:
        self.reset_control = value & ~RCR_RST_CPU
        if value & RCR_RST_CPU:
            self._ctx.emit(VmEvent(RESET, self._ctx.now(),
                                   {"source": "pci-reset-control", "port": hex(layout.PCI_CONFIG_ADDRESS + 1),
                                    "value": value}))

    def _config_access(self, lane: int, size: int, value: int | None) -> int:
        size = min(size, 4 - lane)                  # an access cannot leave the addressed dword
        ones = (1 << (8 * size)) - 1
        if not self.address & ADDR_ENABLE:
            return ones
        bdf = Bdf((self.address >> 16) & 0xFF, (self.address >> 11) & 0x1F, (self.address >> 8) & 0x7)
        reg = (self.address & 0xFC) + lane
        function = self._functions.get(bdf)
        if function is None:
            self._note_absent(bdf, "read" if value is None else "write", reg, size)
            return ones
        if value is None:
            return function.read_config(reg, size) & ones
        function.write_config(reg, size, value & ones)
        return 0

    def _note_absent(self, bdf: Bdf, access: str, reg: int, size: int) -> None:
        key = (bdf, access)
        if key not in self._seen:
            self._seen.add(key)
            self._report(bdf, access, 1, reg, size)
            return
        self._repeats[key] += 1
        if self._repeats[key] >= GAP_BATCH:
            self._report(bdf, access, self._repeats.pop(key), None, None)

    def _report(self, bdf: Bdf, access: str, count: int, reg: int | None, size: int | None) -> None:
        detail = {} if reg is None else {"offset": reg, "size": size}
        self._ctx.gap(GapRecord(kind=PCI_CONFIG, key=str(bdf), count=count, access=access,
                                values=[] if reg is None else [reg], first_t=self._ctx.now(),
                                detail=detail))
