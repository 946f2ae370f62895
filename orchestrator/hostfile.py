"""Hostfiles in the formats other tools read: render a HostList, parse it back.

    from orchestrator.hostfile import render, parse, load
    text = render(hosts, "deepspeed")      # "node1 slots=8\nnode2 slots=8\n"
    hosts = parse(text, "deepspeed")       # the same hosts, same order, same slots
    hosts = load("hostfiles/example-deepspeed.txt", default_slots=8)

Formats (FORMATS):
    deepspeed  `host slots=N` per line, `#` comments and blank lines allowed (DeepSpeed's -H/--hostfile).
               A line without `slots=` is a plain host line and gets default_slots; a line's host may be a
               node set (`node[1-4] slots=8`). A duplicate host or a line that is neither is an error naming
               the file and line.
    mpi        OpenMPI's hostfile: `host slots=N` (mpirun --hostfile); `max_slots=M` is accepted and ignored
               on parse. Same parser as deepspeed. (MPICH's `host:N` is not rendered.)
    pdsh       one line, a folded node set for `pdsh -w "$(cat FILE)"` (no slots: parse gives default_slots).
    slurm      one line, a folded Slurm nodelist for `sbatch/srun --nodelist` (no slots). pdsh and slurm are
               the same text: only a number that ends a name is folded (gpu-1-[1-4]; node0-ib stays as is),
               the form both readers accept.
    json       `[{"host": "node1", "slots": 8}, ...]` in rank order; "slot_ids" only when --include/--exclude
               picked devices.
parse(render(hosts, fmt), fmt) gives back the same host set; deepspeed, mpi and json also keep order and
slots, json keeps slot_ids too. pdsh and slurm fold into ClusterShell's sorted order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from orchestrator.errors import ConfigError
from orchestrator.hosts import MAX_SLOTS, Host, HostList, expand, fold

__all__ = ["FORMATS", "render", "parse", "load", "write", "default_path"]

_LINE_HINT = "write 'HOST slots=N' (DeepSpeed/OpenMPI) or one host per line"


def _render_slots_lines(hosts: HostList) -> str:
    return "".join(f"{h.name} slots={h.slots}\n" for h in hosts)


def _render_nodelist(hosts: HostList) -> str:
    return fold(hosts.names, last_axis_only=True) + "\n"


def _render_json(hosts: HostList) -> str:
    rows = [{"host": h.name, "slots": h.slots} | ({"slot_ids": list(h.slot_ids)} if h.slot_ids else {}) for h in hosts]
    return "[\n" + ",\n".join(f"  {json.dumps(row)}" for row in rows) + "\n]\n"  # a host per line: diffable


def _parse_slots(token: str, where: str, line: str) -> int | None:
    """`slots=8` -> 8; `max_slots=...` (OpenMPI) -> None; anything else is a bad line."""
    key, eq, value = token.partition("=")
    if eq and key == "max_slots" and value.isascii() and value.isdigit():
        return None
    if eq and key == "slots" and value.isascii() and value.isdigit() and 1 <= int(value) <= MAX_SLOTS:
        return int(value)
    raise ConfigError(where, line, f"bad field {token!r}; slots must be an integer from 1 to {MAX_SLOTS}; {_LINE_HINT}")


def _parse_lines(text: str, source: str, default_slots: int) -> HostList:
    hosts, first_line = HostList(), {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}:{lineno}"
        name_expr, *fields = line.split()
        slots = [s for s in (_parse_slots(tok, where, line) for tok in fields) if s is not None]
        if len(slots) > 1:
            raise ConfigError(where, line, f"slots= given {len(slots)} times; {_LINE_HINT}")
        for name in expand(name_expr, field=where):
            if name in first_line:
                raise ConfigError(
                    where, line, f"host {name} is already on line {first_line[name]}; list each host once"
                )
            first_line[name] = lineno
            hosts.append(Host(name, slots[0] if slots else default_slots))
    if not hosts:
        raise ConfigError(source, "", f"no host in it; {_LINE_HINT}")
    return hosts


def _parse_nodelist(text: str, source: str, default_slots: int) -> HostList:
    lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    expr = ",".join(ln for ln in lines if ln)
    return HostList(Host(n, default_slots) for n in expand(expr, field=source))


_JSON_HINT = 'write a JSON list like [{"host": "node1", "slots": 8}] ("slot_ids": [0, 1] optional)'


def _json_entry(row: object, where: str, default_slots: int) -> Host:
    if not (isinstance(row, dict) and isinstance(row.get("host"), str) and set(row) <= {"host", "slots", "slot_ids"}):
        raise ConfigError(where, row, _JSON_HINT)
    slots, ids = row.get("slots", default_slots), row.get("slot_ids")
    if type(slots) is not int or not 1 <= slots <= MAX_SLOTS:
        raise ConfigError(where, row, f"slots is an integer from 1 to {MAX_SLOTS}; {_JSON_HINT}")
    if not (ids is None or isinstance(ids, list) and all(type(i) is int for i in ids)):
        raise ConfigError(where, row, f"slot_ids is a list of integers; {_JSON_HINT}")
    names = expand(row["host"], field=where)
    if len(names) != 1:
        raise ConfigError(where, row, "give one host per entry")
    return Host(names[0], slots, tuple(ids) if ids is not None else None)


def _parse_json(text: str, source: str, default_slots: int) -> HostList:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}:{exc.lineno}", exc.msg, _JSON_HINT) from None
    if not isinstance(rows, list) or not rows:
        raise ConfigError(source, type(rows).__name__, f"not a non-empty list; {_JSON_HINT}")
    hosts, first_entry = HostList(), {}
    for i, row in enumerate(rows):
        host = _json_entry(row, f"{source}[{i}]", default_slots)
        if host.name in first_entry:
            raise ConfigError(f"{source}[{i}]", row, f"host {host.name} is already entry {first_entry[host.name]}; "
                              "list each host once")
        first_entry[host.name] = i
        hosts.append(host)
    return hosts


_Renderer = Callable[[HostList], str]
_Parser = Callable[[str, str, int], HostList]
FORMATS: dict[str, tuple[_Renderer, _Parser]] = {
    "deepspeed": (_render_slots_lines, _parse_lines),
    "mpi": (_render_slots_lines, _parse_lines),
    "pdsh": (_render_nodelist, _parse_nodelist),
    "slurm": (_render_nodelist, _parse_nodelist),
    "json": (_render_json, _parse_json),
}


def _format(fmt: str) -> tuple[_Renderer, _Parser]:
    if fmt not in FORMATS:
        raise ConfigError("--format", fmt, f"use one of {', '.join(FORMATS)}")
    return FORMATS[fmt]


def render(hosts: list[Host], fmt: str) -> str:
    """The text of a hostfile in `fmt` (see FORMATS) for `hosts`, in their order where the format keeps it."""
    return _format(fmt)[0](HostList(hosts))


def parse(text: str, fmt: str, *, source: str = "<hostfile>", default_slots: int = 1) -> HostList:
    """Parse hostfile text; ConfigError names `source` (a path) and the line for every bad entry."""
    return _format(fmt)[1](text, source, default_slots)


def load(path: str | os.PathLike, *, default_slots: int = 1, fmt: str | None = None) -> HostList:
    """Read a hostfile; fmt defaults to json for *.json and to the deepspeed/plain line format otherwise."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8-sig") as f:  # -sig: a hostfile saved by a Windows editor has a BOM
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError("--hostfile", source, f"cannot read it ({reason}); give an existing text file") from None
    fmt = fmt or ("json" if source.endswith(".json") else "deepspeed")
    return parse(text, fmt, source=source, default_slots=default_slots)


def default_path(fmt: str) -> str:
    """Where `orchestrator hosts render` writes by default (git ignores both names).

    hostfiles/<fmt>.rendered.txt, or hostfiles/hosts.rendered.json for json.
    """
    _format(fmt)
    return os.path.join("hostfiles", "hosts.rendered.json" if fmt == "json" else f"{fmt}.rendered.txt")


def write(hosts: list[Host], fmt: str, path: str | os.PathLike) -> str:
    """Render `hosts` into `path` (parent folders created) and return the path written."""
    text = render(hosts, fmt)
    target = os.fspath(path)
    try:
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        with open(target, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        fix = f"cannot write it ({exc.strerror}); pick a writable path or '-' for stdout"
        raise ConfigError("-o", target, fix) from None
    return target
