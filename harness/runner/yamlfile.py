"""YAML with line numbers, and validation errors that name file, line, problem and what is allowed.

Mappings load as `YMap` (a dict that remembers the line of itself and of each key) and sequences
as `YList`, so a validator can point at the exact line of a bad value. Duplicate keys are errors
(PyYAML silently keeps the last one, which hides typos).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import yaml

from harness.errors import ConfigError


class YMap(dict):
    line: int = 0
    key_lines: dict[str, int]
    path: str = ""


class YList(list):
    line: int = 0
    item_lines: list[int]
    path: str = ""


class _LineLoader(yaml.SafeLoader):
    pass


# Dates stay strings: an unquoted `until: 2030-02-30` would otherwise raise a bare ValueError
# inside PyYAML; the fields that hold dates validate them with their file and line.
_LineLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> YMap:
    loader.flatten_mapping(node)
    result = YMap()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    result.path = loader.name
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            raise ConfigError(f"{loader.name}:{key_node.start_mark.line + 1}: duplicate key {key!r}",
                              "keep one of them")
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> YList:
    result = YList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    result.path = loader.name
    return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml(path: Path) -> Any:
    """Parse a YAML file; syntax errors become one-line ConfigErrors with the line."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file", "check the path") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})", "check permissions") from None
    loader = _LineLoader(text)
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 0
        raise ConfigError(f"{path}:{line}: invalid YAML: {e.problem or e.context}",
                          "fix the syntax at that line") from None
    finally:
        loader.dispose()


def where(container: Any, key: str | int | None = None) -> str:
    """'file:line' of a key in a YMap, an item of a YList, or the container itself."""
    path = getattr(container, "path", "?")
    line = getattr(container, "line", 0)
    if isinstance(container, YMap) and key is not None:
        line = container.key_lines.get(str(key), container.key_lines.get(key, line))  # type: ignore[arg-type]
    elif isinstance(container, YList) and isinstance(key, int) and key < len(container.item_lines):
        line = container.item_lines[key]
    return f"{path}:{line}"


def fail(container: Any, key: str | int | None, problem: str, allowed: str) -> ConfigError:
    return ConfigError(f"{where(container, key)}: {problem}", allowed)


def require_map(value: Any, parent: Any, key: str | int | None, what: str) -> YMap:
    if not isinstance(value, dict):
        raise fail(parent, key, f"{what} must be a mapping, got {type(value).__name__}", f"write {what} as key: value lines")
    return value  # type: ignore[return-value]


def check_keys(mapping: YMap, allowed: Iterable[str], what: str, required: Iterable[str] = ()) -> None:
    allowed = list(allowed)
    for key in mapping:
        if key not in allowed:
            raise fail(mapping, key, f"unknown key {key!r} in {what}", f"allowed keys: {', '.join(allowed)}")
    for key in required:
        if key not in mapping:
            raise fail(mapping, None, f"{what} lacks required key {key!r}", f"add {key}: ...")


def get_typed(mapping: YMap, key: str, types: type | tuple[type, ...], default: Any, what: str) -> Any:
    if key not in mapping:
        return default
    value = mapping[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise fail(mapping, key, f"{what}.{key} must be {_names(types)}, got a boolean", f"give a {_names(types)}")
    if not isinstance(value, types):
        raise fail(mapping, key, f"{what}.{key} must be {_names(types)}, got {type(value).__name__} {value!r}",
                   f"give a {_names(types)}")
    return value


def get_choice(mapping: YMap, key: str, choices: Iterable[str], default: Any, what: str) -> Any:
    choices = list(choices)
    if key not in mapping:
        return default
    value = mapping[key]
    if value not in choices:
        raise fail(mapping, key, f"{what}.{key} is {value!r}", f"allowed: {', '.join(choices)}")
    return value


def get_str_list(mapping: YMap, key: str, default: list[str], what: str) -> list[str]:
    if key not in mapping:
        return list(default)
    value = mapping[key]
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list):
        raise fail(mapping, key, f"{what}.{key} must be a list", "write a YAML list: [a, b]")
    return [str(v) for v in value]


def _names(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join({"int": "an integer", "float": "a number", "str": "a string", "list": "a list",
                        "dict": "a mapping", "bool": "true/false"}.get(t.__name__, t.__name__) for t in types)
