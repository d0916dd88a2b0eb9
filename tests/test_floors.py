"""The architecture floors (docs/architecture.md) hold: import-linter's contracts in pyproject.toml
pass, every package of the harness stands on a floor, and loading a matrix or the reports (the
QEMU path too) loads neither cffi nor capstone nor the KVM layer."""
from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("cffi", "_cffi_backend", "capstone", "harness.kvm", "harness.backends.builtin_vm")


def _contracts() -> list[dict]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_lint_imports_keeps_every_contract():
    lint = Path(sys.executable).with_name("lint-imports")
    assert lint.exists(), "import-linter is a test dependency: pip install -e '.[test]'"
    out = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"Contracts: {len(_contracts())} kept, 0 broken." in out.stdout


def test_every_package_stands_on_a_floor():
    [layers] = [c for c in _contracts() if c["type"] == "layers"]
    on_a_floor = {name.strip() for floor in layers["layers"] for name in floor.replace(":", "|").split("|")}
    packages = {f"harness.{p.stem if p.is_file() else p.name}" for p in (REPO / "harness").iterdir()
                if (p.suffix == ".py" and p.stem not in ("__init__", "__main__")) or (p / "__init__.py").exists()}
    assert packages - on_a_floor == set(), "put new packages on a floor in pyproject.toml and docs/architecture.md"
    assert on_a_floor - packages == set()


def _loaded_after(*modules: str) -> list[str]:
    code = (f"import sys\nimport {', '.join(modules)}\n"
            f"print(__import__('json').dumps(sorted(m for m in sys.modules if m.startswith({HEAVY!r}))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         check=True)
    return json.loads(out.stdout)


def test_matrix_and_reports_load_neither_cffi_nor_capstone():
    assert _loaded_after("harness.runner.matrix", "harness.report") == []


def test_runner_and_qemu_path_load_no_kvm():
    loaded = _loaded_after("harness.runner.execute", "harness.runner.plugin", "harness.backends.qemu",
                           "harness.cli.main", "harness.cli.run_cmd", "harness.report.html")
    assert loaded == []


def test_the_vmm_modules_are_what_the_check_would_catch():
    # The check above means something only if importing the VMM does load what it looks for.
    loaded = _loaded_after("harness.kvm.machine")
    assert "_cffi_backend" in loaded and "harness.kvm.machine" in loaded
