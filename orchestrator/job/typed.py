"""Typed definitions from plain data: one dataclass gives the validation, the JSON Schema and dotted overrides.

    @dataclass(frozen=True, kw_only=True)
    class Section:
        size: int = field(default=1, metadata=doc("How many."))
    load(Section, {"size": 2}, where="job.yaml")     # Section(size=2); ConfigError naming the field otherwise
    schema(Section)                                 # {"type": "object", "properties": {"size": {...}}, ...}
    apply_set({"size": 1}, "size=4")                # {"size": 4}   (the value is read as YAML: 4 is an int)

Supported field types: str, int, float, bool, Literal[...], list[str], dict[str, str], a nested dataclass, and
unions of those with None. Every error is one ConfigError: `where:path.to.field=value: what to write instead`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

import yaml

from orchestrator.errors import ConfigError

__all__ = ["apply_set", "doc", "load", "schema"]


def doc(text: str) -> dict:
    """Field metadata: the help text (shown in the JSON Schema's descriptions)."""
    return {"help": text}


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping of names to strings"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true/false",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(tp, value, path: str, where: str):
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(option, value, path, where)
            except ConfigError:
                if dataclasses.is_dataclass(option) and isinstance(value, Mapping):
                    raise  # the mapping was meant for the section: its own error is the useful one
        raise _error(where, path, value, f"use {_name(tp)}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise _error(where, path, value, f"use one of {', '.join(map(str, typing.get_args(tp)))}")
    if origin is list:
        if not isinstance(value, list):
            raise _error(where, path, value, f"use {_name(tp)}")
        return tuple(_convert(typing.get_args(tp)[0], v, f"{path}[{i}]", where) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _error(where, path, value, f"use {_name(tp)}, e.g. {{NCCL_DEBUG: INFO}}")
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or isinstance(v, (list, dict)) or v is None:
                raise _error(where, f"{path}.{k}", v, "use NAME: VALUE with a plain value")
            out[k] = v if isinstance(v, str) else ("true" if v is True else "false" if v is False else str(v))
        return out
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise _error(where, path, value, f"use a mapping with {', '.join(_hints(tp))}")
        return load(tp, value, where=where, prefix=f"{path}.")
    if tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise _error(where, path, value, f"use {_name(tp)}")


def _error(where: str, path: str, value, fix: str) -> ConfigError:
    return ConfigError(f"{where}:{path}" if where else path, value, fix)


def load(cls, data: Mapping, *, where: str = "", prefix: str = ""):
    """An instance of dataclass `cls` from a mapping: unknown, missing and mistyped fields are ConfigErrors."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"known fields: {', '.join(fields)}"
            raise _error(where, f"{prefix}{key}", data[key], f"unknown field; {hint}")
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = _convert(hints[name], data[name], f"{prefix}{name}", where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            help_text = f.metadata.get("help", "")
            raise _error(where, f"{prefix}{name}", None, f"missing; add it ({help_text})" if help_text else "missing")
    return cls(**values)


def _schema_of(tp) -> dict:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return {"anyOf": [_schema_of(a) for a in typing.get_args(tp)]}
    if origin is Literal:
        return {"enum": list(typing.get_args(tp))}
    if origin is list:
        return {"type": "array", "items": _schema_of(typing.get_args(tp)[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}
    if dataclasses.is_dataclass(tp):
        return schema(tp)
    return {"type": {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}[tp]}


def schema(cls) -> dict:
    """The JSON Schema (draft 2020-12) of dataclass `cls`: the same fields, types and help as load() checks."""
    hints = _hints(cls)
    properties, required = {}, []
    for f in dataclasses.fields(cls):
        prop = _schema_of(hints[f.name])
        if "help" in f.metadata:
            prop["description"] = f.metadata["help"]
        if f.default is not dataclasses.MISSING and f.default is not None:
            prop["default"] = list(f.default) if isinstance(f.default, tuple) else f.default
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
        properties[f.name] = prop
    out = {"type": "object", "properties": properties, "additionalProperties": False}
    if cls.__doc__:
        out["description"] = cls.__doc__.strip().splitlines()[0]
    return out | ({"required": required} if required else {})


def apply_set(data: dict, assignment: str) -> dict:
    """`a.b=value` -> data with data["a"]["b"] = value (read as YAML); a new dict, the input is left alone."""
    path, sep, text = assignment.partition("=")
    if not sep or not path or any(not part for part in path.split(".")):
        raise ConfigError("--set", assignment, "use FIELD=VALUE with a dotted field path, e.g. --set nproc_per_node=4")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    out = dict(data)
    node = out
    parts = path.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = {}
        elif not isinstance(child, Mapping):
            raise ConfigError("--set", assignment, f"{'.'.join(parts[:i + 1])} is not a section")
        node[part] = child = dict(child)
        node = child
    node[parts[-1]] = value
    return out
