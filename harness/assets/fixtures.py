"""Build the fixture guests (fixtures/): the project's own tiny test kernels.

`build_fixture(name)` compiles one fixture with the Debian toolchain (gcc, as, ld, objcopy)
into fixtures/build/<name>-<sha>.<ext>, where <sha> covers every input (sources, the layout
header generated from harness/layout.py, this recipe). The file appears atomically (temp
file + os.replace) under a per-fixture file lock, so parallel pytest-xdist workers build it
once and never see half a file. A second call returns the cached path without running gcc.

    python -m harness.assets.fixtures [NAME...]     # build all (or some), print the paths
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from harness import layout
from harness.arch.x86_64 import regs as x86_regs
from harness.errors import AssetError, HarnessError, lookup

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES_DIR = REPO_ROOT / "fixtures"
BUILD_DIR_ENV = "HARNESS_FIXTURE_BUILD_DIR"   # another build directory (tests, read-only checkouts)
TOOLS = ("gcc", "ld", "objcopy")

# Runtime shared by every 32-bit fixture (lib/), and by the 64-bit bzImage fixture.
LIB32 = ("lib/start32.S", "lib/trap32.S", "lib/entry32.c", "lib/uart.c", "lib/trap.c", "lib/options.c",
         "lib/milestone.c", "lib/checks.c", "lib/probes.c")
LIB64 = ("lib/trap64.S", "lib/uart.c", "lib/trap.c", "lib/options.c", "lib/milestone.c", "lib/checks.c",
         "lib/probes.c")
PVH32 = ("pvh/entry.S",) + LIB32

ELFOSABI_NETBSD = 2
ELFOSABI_OPENBSD = 12


@dataclass(frozen=True)
class FixtureInfo:
    name: str
    boot: str                     # boot method, as in guests/*.yaml
    description: str
    sources: tuple[str, ...]      # relative to fixtures/
    output: str = "elf32"         # elf32 | elf64 (an ELF32 link converted by objcopy) | aout | bzimage | image
    arch: str = "x86_64"          # x86_64 (gcc, binutils) | aarch64 (the cross toolchain, output "image")
    osabi: int = 0                # EI_OSABI to stamp into the output ELF (0 = leave as linked)
    defines: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ext(self) -> str:
        return {"elf32": "elf", "elf64": "elf", "aout": "bin", "bzimage": "bzImage", "image": "Image"}[self.output]

    @property
    def bits(self) -> int:
        return 64 if self.output == "bzimage" else 32


FIXTURES: dict[str, FixtureInfo] = {f.name: f for f in (
    FixtureInfo("fixture-pvh", "pvh", "PVH entry: checks hvm_start_info, then all probes",
                ("pvh/main.c",) + PVH32),
    FixtureInfo("fixture-pvh-iret", "pvh",
                "fixture-pvh returning from traps with IRET: shows whether the host emulates iretd",
                ("pvh/main.c",) + PVH32, defines=("FIXTURE_USE_IRET",)),
    FixtureInfo("fixture-bzimage", "bzimage",
                "fake bzImage (HdrS 2.15, XLF_KERNEL_64): checks the zero page in 64-bit mode, then probes",
                ("bzimage/entry64.S", "bzimage/main.c") + LIB64, output="bzimage"),
    FixtureInfo("fixture-multiboot", "multiboot", "multiboot v1 ELF32: checks the multiboot info, then probes",
                ("multiboot/header.S", "multiboot/main.c") + LIB32),
    FixtureInfo("fixture-multiboot-aout", "multiboot",
                "multiboot v1 flat image loaded by the a.out kludge (flag bit 16): same checks",
                ("multiboot/header.S", "multiboot/main.c") + LIB32, output="aout", defines=("AOUT_KLUDGE",)),
    FixtureInfo("fixture-netbsd", "netbsd",
                "NetBSD native entry (ELF64, 32-bit entry): checks the cdecl args and bootinfo, then probes",
                ("netbsd/entry.S", "netbsd/main.c") + LIB32, output="elf64", osabi=ELFOSABI_NETBSD),
    FixtureInfo("fixture-openbsd", "openbsd",
                "OpenBSD native entry (ELF64, 32-bit entry): checks the cdecl args and bootargs, then probes",
                ("openbsd/entry.S", "openbsd/main.c") + LIB32, output="elf64", osabi=ELFOSABI_OPENBSD),
    FixtureInfo("fixture-gdb", "bzimage",
                "64-bit bzImage for the gdb stub: prints its variables' addresses and values, calls gdb_probe(a, b)",
                ("bzimage/entry64.S", "gdb/main.c") + LIB64, output="bzimage"),
    FixtureInfo("fixture-arm64", "image",
                "arm64 Image: checks x0 = DTB and every device it names, then PSCI, GICv3 + timer interrupt, "
                "PL011 character mode (TX interrupt per byte) and FIFO mode, PSCI CPU_ON, SYSTEM_OFF",
                ("arm64/head.S", "arm64/main.c"), output="image", arch="aarch64"),
    FixtureInfo("fixture-triple-fault", "pvh", "prints its entry, loads a zero-limit IDT, faults: triple fault",
                ("fail/triple_fault.c",) + PVH32),
    FixtureInfo("fixture-panic", "pvh", "prints its entry, then a BSD-style 'panic:' line, and halts",
                ("fail/panic.c",) + PVH32),
    FixtureInfo("fixture-hang", "pvh", "prints its entry, then spins silently with interrupts off",
                ("fail/hang.c",) + PVH32),
    FixtureInfo("fixture-msr-gate", "pvh",
                "runs the probes, then panics if reading FIXTURE_GATE_MSR faults: dies under gap policy gp only",
                ("fail/msr_gate.c",) + PVH32),
    FixtureInfo("fixture-reboot-loop", "pvh", "prints a distinctive banner, then resets through the 8042 (0xFE)",
                ("fail/reboot_loop.c",) + PVH32),
)}

# Files every build depends on besides its sources.
COMMON_INPUTS = ("include/fixture.h", "include/entry32.h", "link32.ld", "link64.ld", "bzimage/setup.S",
                 "arm64/link.ld")
CROSS = "aarch64-linux-gnu-"
CROSS_TOOLS = tuple(CROSS + tool for tool in TOOLS)


def layout_header() -> str:
    """fixture_layout.h: every integer constant of harness/layout.py, and the MSR indices of
    harness/arch/x86_64/regs.py, as C #defines (the fixtures probe the MSRs the gap policy watches)."""
    lines = ["/* generated from harness/layout.py by harness/assets/fixtures.py: do not edit */",
             "#ifndef FIXTURE_LAYOUT_H", "#define FIXTURE_LAYOUT_H"]
    constants = {**vars(layout), **{n: v for n, v in vars(x86_regs).items() if n.startswith("MSR_")}}
    # No U/ULL suffixes: the header is included from assembly too (gas rejects them); in C a
    # hex literal takes the first type that holds it, so large addresses stay unsigned.
    for name in sorted(constants):
        value = constants[name]
        if name.isupper() and isinstance(value, int) and not isinstance(value, bool):
            lines.append(f"#define {name} 0x{value:x}")
    lines.append("#endif")
    return "\n".join(lines) + "\n"


def fixture_names() -> list[str]:
    return sorted(FIXTURES)


def _info(name: str) -> FixtureInfo:
    return lookup(FIXTURES, name, "fixture", names=fixture_names(), error=AssetError)


def source_digest(info: FixtureInfo) -> str:
    """sha256 (16 hex digits) of everything that goes into the fixture's image."""
    h = hashlib.sha256()
    h.update(repr(info).encode())
    h.update(layout_header().encode())
    h.update(Path(__file__).read_bytes())
    for rel in sorted(set(info.sources) | set(COMMON_INPUTS)):
        path = FIXTURES_DIR / rel
        if not path.is_file():
            raise AssetError(f"fixture source {path} is missing", "restore fixtures/ from git (git checkout fixtures)")
        h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build_dir() -> Path:
    return Path(os.environ.get(BUILD_DIR_ENV) or FIXTURES_DIR / "build")


def fixture_path(name: str) -> Path:
    """Where build_fixture(name) puts (or finds) the image; does not build."""
    info = _info(name)
    return build_dir() / f"{name}-{source_digest(info)}.{info.ext}"


def symbols_path(name: str) -> Path:
    """The ELF with the fixture's symbols (`gdb FILE`): the image itself when it is that ELF."""
    image = fixture_path(name)
    return image if image.suffix == ".elf" else image.with_name(image.name + ".sym.elf")


def fixture_symbols(name: str) -> Path:
    """Build fixture `name` if needed and return the ELF with its symbols."""
    build_fixture(name)
    return symbols_path(name)


def check_toolchain(arch: str = "x86_64") -> None:
    tools = CROSS_TOOLS if arch == "aarch64" else TOOLS
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        packages = "gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu" if arch == "aarch64" else "gcc binutils"
        raise AssetError(f"the fixture toolchain is missing ({', '.join(missing)})", f"apt-get install {packages}")


def build_fixture(name: str) -> Path:
    """Build fixture `name` (cached by source hash) and return the image path."""
    info = _info(name)
    out = fixture_path(name)
    if out.is_file():
        return out
    check_toolchain(info.arch)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # one builder per fixture; the others wait, then reuse
        if out.is_file():
            return out
        with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=out.parent) as tmp:
            image = _build_in(info, Path(tmp))
            if image.name != f"{info.name}.elf":   # keep the linked ELF too: its symbols are for debuggers
                os.replace(Path(tmp) / f"{info.name}.elf", symbols_path(name))
            os.replace(image, out)
        _prune_stale(name, out)
    return out


def _prune_stale(name: str, keep: Path) -> None:
    """Drop this fixture's images built from older sources (same checkout, so nobody needs them)."""
    for old in keep.parent.glob(f"{name}-" + "[0-9a-f]" * 16 + f".{FIXTURES[name].ext}*"):
        if old != keep and old != symbols_path(name):
            with contextlib.suppress(OSError):
                old.unlink()


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        raise AssetError(f"{what} failed: {' | '.join(tail)}",
                         "fix the fixture source named above (command: " + " ".join(argv) + ")")


def _cflags(info: FixtureInfo, gen: Path) -> list[str]:
    if info.arch == "aarch64":
        return [*ARM64_CFLAGS, "-I", str(gen)] + [f"-D{d}" for d in info.defines]
    arch = ["-m64", "-mno-red-zone", "-mcmodel=small"] if info.bits == 64 else ["-m32", "-march=i686"]
    return arch + ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                   "-ffreestanding", "-nostdlib", "-fno-pic", "-fno-pie", "-fno-stack-protector",
                   "-mgeneral-regs-only", "-fno-asynchronous-unwind-tables", "-fcf-protection=none",
                   "-fno-omit-frame-pointer", "-I", str(FIXTURES_DIR / "include"), "-I", str(gen)] + \
        [f"-D{d}" for d in info.defines]


def _compile(info: FixtureInfo, tmp: Path) -> list[Path]:
    gen = tmp / "gen"
    gen.mkdir()
    (gen / "fixture_layout.h").write_text(layout_header())
    objs = []
    for i, rel in enumerate(info.sources):
        obj = tmp / f"{i:02d}-{Path(rel).stem}.o"
        compiler = CROSS + "gcc" if info.arch == "aarch64" else "gcc"
        _run([compiler, *_cflags(info, gen), "-c", str(FIXTURES_DIR / rel), "-o", str(obj)], f"compiling {rel}")
        objs.append(obj)
    return objs


def _link(info: FixtureInfo, objs: list[Path], elf: Path) -> None:
    script = "link64.ld" if info.bits == 64 else "link32.ld"
    emulation = "elf_x86_64" if info.bits == 64 else "elf_i386"
    _run(["ld", "-m", emulation, "-nostdlib", "--build-id=none", "-z", "noexecstack", "-z", "max-page-size=0x1000",
          "-T", str(FIXTURES_DIR / script), f"--defsym=LOAD_ADDR=0x{layout.KERNEL_LOAD_ADDR:x}",
          "-o", str(elf), *map(str, objs)], f"linking {info.name}")


ARM64_CFLAGS = ("-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-ffreestanding", "-nostdlib",
                "-fno-pic", "-fno-pie", "-fno-stack-protector", "-fno-asynchronous-unwind-tables",
                "-mgeneral-regs-only", "-mstrict-align", "-mcmodel=small", "-fno-omit-frame-pointer")


def _build_arm64(info: FixtureInfo, tmp: Path) -> Path:
    """Cross-compile, link at 0 (the code is PC-relative), objcopy to a flat arm64 Image."""
    objs = _compile(info, tmp)
    elf = tmp / f"{info.name}.elf"
    _run([CROSS + "ld", "-nostdlib", "--build-id=none", "-static", "-z", "noexecstack", "-z", "max-page-size=0x1000",
          "-T", str(FIXTURES_DIR / "arm64/link.ld"), "-o", str(elf), *map(str, objs)], f"linking {info.name}")
    out = tmp / f"{info.name}.Image"
    _run([CROSS + "objcopy", "-O", "binary", str(elf), str(out)], "objcopy to an arm64 Image")
    if out.read_bytes()[56:60] != b"ARM\x64":
        raise AssetError("the arm64 fixture does not start with its Image header", "fix fixtures/arm64/head.S")
    return out


def _build_in(info: FixtureInfo, tmp: Path) -> Path:
    if info.arch == "aarch64":
        return _build_arm64(info, tmp)
    objs = _compile(info, tmp)
    elf = tmp / f"{info.name}.elf"
    _link(info, objs, elf)
    if info.output == "elf32":
        return elf
    if info.output == "elf64":
        # The BSD kernels are ELF64 files whose entry point is 32-bit code: link 32-bit
        # code, then let objcopy rewrite the container (addresses and notes are kept).
        out = tmp / f"{info.name}.elf64"
        _run(["objcopy", "-I", "elf32-i386", "-O", "elf64-x86-64", str(elf), str(out)], "objcopy to ELF64")
        _stamp_osabi(out, info.osabi)
        return out
    if info.output == "aout":
        out = tmp / f"{info.name}.bin"
        _run(["objcopy", "-O", "binary", str(elf), str(out)], "objcopy to a flat image")
        return out
    return _make_bzimage(info, elf, tmp)


def _stamp_osabi(path: Path, osabi: int) -> None:
    if osabi:
        with open(path, "r+b") as f:
            f.seek(7)                     # e_ident[EI_OSABI]
            f.write(bytes([osabi]))


def _elf_symbol(elf: Path, name: str) -> int:
    from elftools.elf.elffile import ELFFile
    with open(elf, "rb") as f:
        table = ELFFile(f).get_section_by_name(".symtab")
        syms = table.get_symbol_by_name(name) if table else None
        if not syms:
            raise AssetError(f"symbol {name} missing from {elf.name}", "check the fixture's linker script")
        return int(syms[0]["st_value"])


SETUP_SECTS = 1                   # setup sectors after the boot sector: the header fits in the first


def _make_bzimage(info: FixtureInfo, elf: Path, tmp: Path) -> Path:
    """bzImage = boot sector + setup sector (bzimage/setup.S: the header) + the 64-bit payload."""
    payload = tmp / "payload.bin"
    _run(["objcopy", "-O", "binary", str(elf), str(payload)], "objcopy payload")
    setup_obj, setup_bin = tmp / "setup.o", tmp / "setup.bin"
    _run(["gcc", "-m32", "-I", str(tmp / "gen"), "-c", str(FIXTURES_DIR / "bzimage/setup.S"), "-o", str(setup_obj)],
         "assembling setup.S")
    _run(["objcopy", "-O", "binary", "-j", ".setup", str(setup_obj), str(setup_bin)], "objcopy setup")
    setup = bytearray(setup_bin.read_bytes())
    size = (SETUP_SECTS + 1) * 512
    if len(setup) > size or setup[0x202:0x206] != b"HdrS":
        raise AssetError("bzimage/setup.S does not produce a setup area with the HdrS header",
                         "fix fixtures/bzimage/setup.S")
    setup += bytes(size - len(setup))
    body = payload.read_bytes()
    if _elf_symbol(elf, "_start") != layout.KERNEL_LOAD_ADDR or len(body) <= 0x200:
        raise AssetError("the bzImage payload does not start with its entry code", "fix fixtures/link64.ld")
    image_end = _elf_symbol(elf, "_image_end")
    body += bytes(-len(body) % 16)   # padded to whole paragraphs, as Linux's build tool pads to syssize
    setup[0x1F1] = SETUP_SECTS
    struct.pack_into("<I", setup, 0x1F4, len(body) // 16)                      # syssize, 16-byte units
    struct.pack_into("<I", setup, 0x260, image_end - layout.KERNEL_LOAD_ADDR)  # init_size incl. bss
    out = tmp / f"{info.name}.bzImage"
    out.write_bytes(bytes(setup) + body)
    return out


def main(argv: list[str] | None = None) -> int:
    names = (sys.argv[1:] if argv is None else argv) or fixture_names()
    try:
        for name in names:
            print(f"{name}: {build_fixture(name)}")
    except HarnessError as err:
        print(err.one_line(), file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
