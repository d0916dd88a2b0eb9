"""The generated aarch64 device tree: every blob passes dtc without warnings and says what the
machine description says (read back with fdtget)."""
from __future__ import annotations

import pytest
from fdt_check import dtc_decompile, fdt_nodes, fdtget, needs_dtc

from harness import layout
from harness.boot.fdt import Aarch64Machine, build_fdt
from harness.errors import ConfigError

pytestmark = needs_dtc
MiB = layout.MiB


def _hex_cells(*values64: int) -> str:
    return " ".join(f"{half:x}" for v in values64 for half in (v >> 32, v & 0xFFFFFFFF))


@pytest.mark.parametrize("vcpus,virtio,initrd", [(1, 0, None), (2, 4, (0x4800_0000, 0x12345)),
                                                 (8, 32, (0x4100_0000, MiB))])
def test_blob_passes_dtc_and_matches_description(tmp_path, vcpus, virtio, initrd):
    m = Aarch64Machine(512 * MiB, vcpus=vcpus, cmdline="console=ttyAMA0 earlycon", initrd=initrd,
                       virtio_slots=virtio)
    blob = build_fdt(m)
    dtc_decompile(blob, tmp_path)
    root = fdt_nodes(blob, tmp_path)
    assert f"memory@{layout.A64_RAM_START:x}" in root
    assert fdtget(blob, tmp_path, f"/memory@{layout.A64_RAM_START:x}", "reg") == _hex_cells(
        layout.A64_RAM_START, 512 * MiB)
    assert fdt_nodes(blob, tmp_path, "/cpus") == [f"cpu@{i:x}" for i in range(vcpus)]
    assert fdtget(blob, tmp_path, "/cpus/cpu@0", "enable-method", "s") == "psci"
    assert fdtget(blob, tmp_path, "/psci", "method", "s") == "hvc"
    gic = f"/intc@{layout.A64_GICD_BASE:x}"
    assert fdtget(blob, tmp_path, gic, "reg") == _hex_cells(
        layout.A64_GICD_BASE, layout.A64_GICD_SIZE, layout.A64_GICR_BASE, vcpus * layout.A64_GICR_STRIDE)
    assert fdtget(blob, tmp_path, "/timer", "interrupts") == "1 d 4 1 e 4 1 b 4 1 a 4"
    uart = f"/pl011@{layout.A64_UART_BASE:x}"
    assert fdtget(blob, tmp_path, uart, "interrupts") == f"0 {layout.A64_UART_SPI:x} 4"
    assert fdtget(blob, tmp_path, "/chosen", "stdout-path", "s") == uart
    assert fdtget(blob, tmp_path, "/chosen", "bootargs", "s") == "console=ttyAMA0 earlycon"
    assert sum(n.startswith("virtio_mmio@") for n in root) == virtio
    assert f"pl031@{layout.A64_RTC_BASE:x}" in root
    if initrd is None:
        assert "linux,initrd-start" not in dtc_decompile(blob, tmp_path)
    else:
        assert fdtget(blob, tmp_path, "/chosen", "linux,initrd-start") == _hex_cells(initrd[0])
        assert fdtget(blob, tmp_path, "/chosen", "linux,initrd-end") == _hex_cells(initrd[0] + initrd[1])


def test_cpu_nodes_carry_kvms_mpidr(tmp_path):
    blob = build_fdt(Aarch64Machine(256 * MiB, vcpus=20))
    dtc_decompile(blob, tmp_path)
    cpus = fdt_nodes(blob, tmp_path, "/cpus")
    assert cpus[15] == "cpu@f" and cpus[16] == "cpu@100" and cpus[19] == "cpu@103"
    assert fdtget(blob, tmp_path, "/cpus/cpu@103", "reg") == "103"


def test_last_virtio_slot_irq_and_address(tmp_path):
    blob = build_fdt(Aarch64Machine(256 * MiB, virtio_slots=layout.A64_VIRTIO_MMIO_SLOTS))
    base, spi = layout.a64_virtio_slot(layout.A64_VIRTIO_MMIO_SLOTS - 1)
    node = f"/virtio_mmio@{base:x}"
    assert fdtget(blob, tmp_path, node, "reg") == _hex_cells(base, layout.A64_VIRTIO_MMIO_SLOT)
    assert fdtget(blob, tmp_path, node, "interrupts") == f"0 {spi:x} 1"


def test_empty_command_line_is_an_empty_string(tmp_path):
    blob = build_fdt(Aarch64Machine(256 * MiB))
    dtc_decompile(blob, tmp_path)
    assert fdtget(blob, tmp_path, "/chosen", "bootargs", "s") == ""


def test_fdt_address_is_aligned_inside_ram():
    for mem in (32 * MiB, 256 * MiB, 3 * 1024 * MiB + 4096):
        addr = layout.a64_fdt_addr(mem)
        assert addr % layout.A64_IMAGE_ALIGN == 0
        assert layout.A64_RAM_START <= addr and addr + layout.A64_FDT_MAX <= layout.a64_ram_end(mem)


@pytest.mark.parametrize("kwargs", [dict(vcpus=0), dict(vcpus=10_000), dict(memory_bytes=MiB),
                                    dict(memory_bytes=1 << 50), dict(virtio_slots=33),
                                    dict(initrd=(0x1000, 10)), dict(initrd=(0x4000_0000, 1 << 40)),
                                    dict(initrd=(0x4000_0000, 0))])
def test_hostile_descriptions_are_one_line_errors(kwargs):
    args = dict(memory_bytes=256 * MiB)
    args.update(kwargs)
    with pytest.raises(ConfigError):
        Aarch64Machine(**args)


def test_oversized_command_line_is_refused():
    with pytest.raises(ConfigError, match="2 MiB"):
        build_fdt(Aarch64Machine(256 * MiB, cmdline="x" * (3 * MiB)))
