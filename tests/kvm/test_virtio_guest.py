"""A guest drives virtio-blk over virtio-mmio through real KVM MMIO exits: it negotiates
VERSION_1, sets up a queue, reads sector 0 of a raw image and reports the first byte and the
status on ports; its write to sector 1 lands in the overlay, never in the image."""
from __future__ import annotations

import hashlib
from collections import Counter

from kvm_guests import FakeBus, FakeDevice, assemble, needs_as, needs_kvm, running_machine, wait_for

from harness import layout
from harness.devices.bus import Bus
from harness.devices.virtio.blk import VirtioBlk
from harness.devices.virtio.disk import CowDisk
from harness.devices.virtio.mmio import VirtioMmio

pytestmark = [needs_kvm, needs_as]

B = layout.VIRTIO_MMIO_START
GUEST = f"""
    mov dword ptr ds:[{B + 0x70:#x}], 0
    mov dword ptr ds:[{B + 0x70:#x}], 1
    mov dword ptr ds:[{B + 0x70:#x}], 3
    mov dword ptr ds:[{B + 0x24:#x}], 1          # DriverFeaturesSel = 1
    mov dword ptr ds:[{B + 0x20:#x}], 1          # VIRTIO_F_VERSION_1 (bit 32)
    mov dword ptr ds:[{B + 0x70:#x}], 0xB
    mov dword ptr ds:[{B + 0x30:#x}], 0
    mov dword ptr ds:[{B + 0x38:#x}], 8
    mov dword ptr ds:[{B + 0x80:#x}], 0x100000   # descriptors
    mov dword ptr ds:[{B + 0x90:#x}], 0x100080   # available ring
    mov dword ptr ds:[{B + 0xA0:#x}], 0x101000   # used ring
    mov dword ptr ds:[{B + 0x44:#x}], 1
    mov dword ptr ds:[{B + 0x70:#x}], 0xF
    # request 1: read sector 0 -> 0x103000, status -> 0x102100
    mov dword ptr ds:[0x102000], 0
    mov dword ptr ds:[0x102004], 0
    mov dword ptr ds:[0x102008], 0
    mov dword ptr ds:[0x10200C], 0
    mov dword ptr ds:[0x100000], 0x102000
    mov dword ptr ds:[0x100008], 16
    mov dword ptr ds:[0x10000C], 0x00010001      # flags NEXT, next 1
    mov dword ptr ds:[0x100010], 0x103000
    mov dword ptr ds:[0x100018], 512
    mov dword ptr ds:[0x10001C], 0x00020003      # WRITE|NEXT, next 2
    mov dword ptr ds:[0x100020], 0x102100
    mov dword ptr ds:[0x100028], 1
    mov dword ptr ds:[0x10002C], 0x00000002      # WRITE
    mov word ptr ds:[0x100084], 0
    mov word ptr ds:[0x100082], 1
    mov dword ptr ds:[{B + 0x50:#x}], 0          # QueueNotify
1:  cmp word ptr ds:[0x101002], 1                # used.idx
    jne 1b
    mov al, byte ptr ds:[0x103000]
    mov dx, 0x10
    out dx, al
    mov al, byte ptr ds:[0x102100]
    mov dx, 0x11
    out dx, al
    # request 2: write 512 bytes of 0x5A to sector 1 (header type 1), descriptors 3..5
    mov edi, 0x104000
    mov ecx, 512
    mov al, 0x5A
    rep stosb
    mov dword ptr ds:[0x102200], 1
    mov dword ptr ds:[0x102208], 1
    mov dword ptr ds:[0x100030], 0x102200
    mov dword ptr ds:[0x100038], 16
    mov dword ptr ds:[0x10003C], 0x00040001
    mov dword ptr ds:[0x100040], 0x104000
    mov dword ptr ds:[0x100048], 512
    mov dword ptr ds:[0x10004C], 0x00050001      # device-readable, NEXT 5
    mov dword ptr ds:[0x100050], 0x102300
    mov dword ptr ds:[0x100058], 1
    mov dword ptr ds:[0x10005C], 0x00000002
    mov word ptr ds:[0x100086], 3
    mov word ptr ds:[0x100082], 2
    mov dword ptr ds:[{B + 0x50:#x}], 0
2:  cmp word ptr ds:[0x101002], 2
    jne 2b
    mov al, byte ptr ds:[0x102300]
    mov dx, 0x12
    out dx, al
3:  jmp 3b
"""


def test_guest_reads_and_writes_a_virtio_mmio_disk(tmp_path):
    from harness.memory import GuestRam
    image = tmp_path / "disk.img"
    image.write_bytes(b"\xC3" + bytes(64 * 1024 - 1))
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    io, ports = FakeBus(), [FakeDevice() for _ in range(3)]
    for i, dev in enumerate(ports):
        io.register(0x10 + i, 1, dev)
    ram = GuestRam(8 << 20)
    mmio = Bus("mmio")
    holder: dict = {}
    gaps: list = []
    blk = VirtioBlk(ram, gaps.append, CowDisk(image, tmp_path / "overlay"))
    transport = VirtioMmio(blk, B, layout.VIRTIO_MMIO_GSIS[0], 
                           lambda gsi, lvl: holder["m"].set_irq(gsi, lvl) if "m" in holder else None)
    mmio.register(B, layout.VIRTIO_MMIO_SLOT, transport, "virtio-blk")
    with running_machine(assemble(GUEST, 32), io=io, mmio=mmio, ram=ram) as m:
        holder["m"] = m
        wait_for(lambda: ports[2].writes, 30)
    assert ports[0].writes == [(0, 1, 0xC3)]          # first byte of sector 0
    assert ports[1].writes == [(0, 1, 0)]             # VIRTIO_BLK_S_OK
    assert ports[2].writes == [(0, 1, 0)]             # the write succeeded too
    assert blk.disk.read(512, 512) == b"\x5A" * 512   # the guest sees its write ...
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before   # ... the image does not
    assert not gaps and transport.isr & 1
    blk.disk.close()
    ram.close()


def test_watched_acpi_tables_record_what_the_guest_read(tmp_path):
    """acpi_watch: the RSDP stays in RAM, the tables are served from MMIO; a guest that follows
    RSDP -> XSDT -> first entry reads XSDT and that table, and nothing else is recorded."""
    from harness.devices.context import DeviceContext
    from harness.devices.table_rom import TableRom
    from harness.firmware import FirmwareOptions, describe, install
    from harness.memory import GuestRam
    ram = GuestRam(8 << 20)
    fw = install(ram, describe(1), FirmwareOptions(watch=True, mptable=False))
    seen: list = []
    ctx = DeviceContext(set_irq=lambda g, l: None, emit=lambda e: None, gap=seen.append)
    mmio = Bus("mmio")
    mmio.register(layout.ACPI_WATCH_ADDR, layout.ACPI_WATCH_SIZE,
                  TableRom(ctx, layout.ACPI_WATCH_ADDR, layout.ACPI_WATCH_SIZE, fw.watched), "acpi-tables")
    io, port = FakeBus(), FakeDevice()
    io.register(0x10, 4, port)
    code = f"""
    mov esi, dword ptr ds:[{layout.ACPI_RSDP_ADDR + 24:#x}]   # RSDP.XsdtAddress (low half)
    mov eax, dword ptr ds:[esi + 36]                         # XSDT.Entry[0]
    mov eax, dword ptr ds:[eax]                              # that table's signature
    mov dx, 0x10
    out dx, eax
1:  jmp 1b
    """
    with running_machine(assemble(code, 32), io=io, mmio=mmio, ram=ram):
        wait_for(lambda: port.writes)
    ram.close()
    reads = Counter(g.key for g in seen if g.kind == "firmware-table-read")
    assert port.writes[0][2].to_bytes(4, "little") == b"FACP"
    assert reads == {"XSDT": 1, "FACP": 1}
    assert set(fw.tables) >= {"XSDT", "FACP", "APIC", "DSDT"} and all(
        layout.ACPI_WATCH_ADDR <= a < layout.ACPI_WATCH_ADDR + layout.ACPI_WATCH_SIZE
        for n, a in fw.tables.items() if n != "RSDP")
