"""The one keyed lookup of the registries: an unknown key is one HarnessError naming it and the
names the table knows, with the fix."""
import importlib

import pytest

from harness.errors import AssetError, ConfigError, lookup


def test_a_known_key_returns_its_entry():
    assert lookup({"a": 1, "b": 2}, "b", "letter") == 2


def test_an_unknown_key_names_the_key_the_known_names_and_where():
    with pytest.raises(ConfigError) as info:
        lookup({"a": 1, "b": 2}, "c", "letter", where="the alphabet")
    assert info.value.one_line() == "error: unknown letter 'c' (fix: use one of: a, b (the alphabet))"


def test_the_error_class_and_the_listed_names_can_be_chosen():
    with pytest.raises(AssetError) as info:
        lookup({"b": 1, "a": 2}, "z", "recipe", names=sorted({"b", "a"}), error=AssetError)
    assert info.value.problem == "unknown recipe 'z'" and info.value.fix == "use one of: a, b"


@pytest.mark.parametrize("module, function, key, error, problem", [
    ("harness.assets.lab", "lab_params", "riscv64", ConfigError, "unknown lab arch 'riscv64'"),
    ("harness.assets.recipes", "get_recipe", "nope", AssetError, "unknown asset recipe 'nope'"),
    ("harness.backends.registry", "get_backend", "bochs", ConfigError, "unknown backend 'bochs'"),
    ("harness.arch.x86_64.cpuid", "check_profile", "p4", ConfigError, "unknown CPU profile 'p4'"),
    ("harness.kvm.msr", "check_policy", "ignore", ConfigError, "unknown gap policy 'ignore'"),
    ("harness.backends.qemu", "_binary", "mips", ConfigError, "unknown QEMU emulator arch 'mips'"),
])
def test_every_registry_answers_an_unknown_key_the_same_way(module, function, key, error, problem):
    with pytest.raises(error) as info:
        getattr(importlib.import_module(module), function)(key)
    assert info.value.problem == problem and info.value.fix.startswith("use one of: ")
