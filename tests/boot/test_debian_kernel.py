"""A real Debian kernel: the bzImage header, its lz4/xz/zstd payload, the PVH note inside.

Looks for a kernel in $HARNESS_DEBIAN_KERNEL (a vmlinuz or a linux-image-*.deb), then in
/tmp/debkern (where `apt-get download linux-image-cloud-amd64`'s dependency was unpacked),
then /boot. Skips cleanly when there is none.
"""
import glob
import os
import subprocess
from pathlib import Path

import pytest

from harness.boot import detect_method, image, load
from harness.boot.pvh import pvh_entry
from harness.memory import GuestRam

MiB = 1024 * 1024


def find_kernel(tmp_path: Path) -> Path | None:
    candidates = [os.environ.get("HARNESS_DEBIAN_KERNEL", "")]
    candidates += sorted(glob.glob("/tmp/debkern/**/vmlinuz-*", recursive=True))
    candidates += sorted(glob.glob("/tmp/debkern/linux-image-*.deb")) + sorted(glob.glob("/boot/vmlinuz-*"))
    for cand in filter(None, candidates):
        path = Path(cand)
        if not path.is_file() or not os.access(path, os.R_OK):
            continue
        if path.suffix == ".deb":
            out = tmp_path / "deb"
            if subprocess.run(["dpkg-deb", "-x", str(path), str(out)], capture_output=True).returncode:
                continue
            found = sorted(out.glob("boot/vmlinuz-*"))
            if found:
                return found[0]
            continue
        return path
    return None


@pytest.fixture
def debian_kernel(tmp_path):
    kernel = find_kernel(tmp_path)
    if kernel is None:
        pytest.skip("no Debian kernel found (set HARNESS_DEBIAN_KERNEL, or apt-get download "
                    "linux-image-<ver>-cloud-amd64 and dpkg-deb -x it under /tmp/debkern)")
    return kernel


@pytest.mark.slow
def test_real_bzimage_pvh_vmlinux(debian_kernel):
    data = image.read_kernel(debian_kernel, 1024 * MiB)
    hdr = image.parse_setup_header(data)
    image.require_64bit_entry(hdr)
    assert hdr.kernel_version
    vmlinux = image.extract_vmlinux(data, 1024 * MiB)
    elf = image.parse_elf(vmlinux)
    assert elf.machine == image.EM_X86_64 and elf.elfclass == 64
    entry = pvh_entry(elf)
    assert entry is not None, "Debian kernels are built with CONFIG_PVH"
    assert any(s.paddr <= entry < s.paddr + s.memsz for s in elf.loads())
    assert detect_method(debian_kernel) == "bzimage"

    mem = GuestRam(256 * MiB)
    try:
        plan = load("pvh", mem, debian_kernel, None, "console=ttyS0")
        assert plan.entry.rip == entry and plan.entry.mode == "protected32"
        assert plan.info["kernel_version"] == hdr.kernel_version
        # the entry's bytes in guest memory are the vmlinux's bytes at that address
        seg = next(s for s in elf.loads() if s.paddr <= entry < s.paddr + s.filesz)
        off = seg.offset + entry - seg.paddr
        assert mem.read(entry, 16) == vmlinux[off:off + 16]
        plan = load("bzimage", mem, debian_kernel, None, "console=ttyS0")
        assert plan.entry.mode == "long64" and plan.entry.rip == image.parse_setup_header(data).pref_address + 0x200
    finally:
        mem.close()


@pytest.mark.slow
def test_real_xen_multiboot(tmp_path):
    """Debian's xen-4.17-amd64.gz: gzip-compressed ELF with a Multiboot v1 header."""
    found = sorted(glob.glob("/tmp/debkern/**/xen-*-amd64.gz", recursive=True)) + sorted(glob.glob("/boot/xen-*.gz"))
    if not found:
        pytest.skip("no Xen hypervisor image (apt-get download xen-hypervisor-4.17-amd64; dpkg-deb -x it "
                    "under /tmp/debkern)")
    xen = Path(found[0])
    assert detect_method(xen) == "multiboot"
    module = tmp_path / "dom0-kernel"
    module.write_bytes(b"\x7fELF-dom0" * 1000)
    mem = GuestRam(256 * MiB)
    try:
        plan = load("multiboot", mem, xen, module, "console=com1 com1=115200")
        assert plan.entry.mode == "protected32" and plan.entry.gprs["rax"] == 0x2BADB002
        assert plan.info["cmdline"] == f"{xen.name} console=com1 com1=115200"
        start, size = plan.info["initrd"]
        assert start % 4096 == 0 and mem.read(start, size) == module.read_bytes()
        low, high = plan.info["load_range"]
        assert low <= plan.entry.rip < high
    finally:
        mem.close()
