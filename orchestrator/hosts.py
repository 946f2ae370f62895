"""Host sets: machines in order, with how many slots (GPUs/processes) each; DeepSpeed-style filters.

    from orchestrator.hosts import Host, HostList, apply_filter, expand, fold
    hosts = HostList(Host(n, 8) for n in expand("node[01-04]"))            # 4 x Host(slots=8)
    apply_filter(hosts, include="node01:0,1@node03").names -> ["node01", "node03"]
    expand("gpu-[1-2]-[1-2]") -> ["gpu-1-1", "gpu-1-2", "gpu-2-1", "gpu-2-2"]
    fold(["node3", "node1", "node2"]) -> "node[1-3]"

Node-set syntax is Slurm's hostlist plus ClusterShell's set operators: `node[01-16]`, `gpu-[1-2]-[1-4]`,
`n[3,1-2]`, `a,b`, `node[1-8]!node3`, `n[1-8]&n[4-12]`, `n[1-8]^n[4-12]`, `n[1-9/2]`.
Order is Slurm's, since node order decides ranks: exactly what `scontrol show hostnames` prints for every list
Slurm accepts. Comma-separated parts keep their order (`b,a` -> b, a), ranges in a bracket keep theirs
(`n[3,1-2]` -> n3, n1, n2), several brackets vary the last fastest, then the first, second, ... (Slurm's
walk), duplicates keep their first place. A width comes from the range's start (`n[01-3]` -> n01..n03), as in
Slurm. An expression with a set operator (`!`, `&`, `^`) or a step is a set: ClusterShell parses it and it
expands in its sorted order; operators and commas apply left to right (`n[1-4]!n2,n9` is (n[1-4] minus n2)
plus n9). At most MAX_HOSTS names in a whole expression, counted before anything is expanded. Node groups
(`@rack1`) are refused: they need a site-wide groups.conf the nodes may not share, and `@` separates hosts in
--include.

Host names must look like DNS names or IPv4 addresses (letters, digits, `.`, `-`, `_`, starting with a
letter or digit): a name is passed to ssh as an argument, so `-oProxyCommand=...` or `a;rm -rf ~` must never
get that far.

Which source a command reads (--hosts, --hostfile, a Slurm job) is orchestrator.selection's.
--include/--exclude follow DeepSpeed's runner (parse_resource_filter):
`NODE_SPEC[@NODE_SPEC...]`, `NODE_SPEC = NAME[:SLOT[,SLOT...]]`; NAME may be a node set here.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from ClusterShell.NodeSet import RESOLVER_NOGROUP, NodeSet, NodeSetException

from orchestrator.errors import ConfigError

log = logging.getLogger("orchestrator.hosts")

__all__ = ["MAX_HOSTS", "MAX_SLOTS", "Host", "HostList", "HostSetError", "expand", "fold", "apply_filter"]

MAX_HOSTS = 65536
MAX_SLOTS = 1024  # processes per host: far above any node's GPU count, low enough to plan in an instant
_BRACKETED, _RANGE = re.compile(r"\[([^\[\]]*)\]"), re.compile(r"(\d+)-(\d+)")
_SLURM_RANGES = re.compile(r"\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*")  # what Slurm reads inside a bracket
_SLURM_RANGE = re.compile(r"(\d+)(?:-(\d+))?")
_VALID_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_SET_OPERATORS = "!&^"
_SPEC_SEPARATOR, _SLOTS_START, _SLOT_SEPARATOR = "@", ":", ","  # DeepSpeed's --include/--exclude syntax


class HostSetError(ConfigError):
    """A malformed node set; `.part` is the piece ClusterShell (or the name check) rejected."""

    def __init__(self, field: str, value: str, part: str, fix: str):
        self.part = part
        super().__init__(field, value, f"bad part {part!r}: {fix}")


@dataclass(frozen=True, slots=True)
class Host:
    """One machine of a run.

    slots:    how many processes (usually GPUs) the run may start there.
    slot_ids: the device indices chosen with --include/--exclude (len == slots); None means 0..slots-1.
    """

    name: str
    slots: int = 1
    slot_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.slots <= MAX_SLOTS:
            raise ConfigError("slots", self.slots, f"host {self.name}: give 1 to {MAX_SLOTS} slots")
        ids = self.slot_ids
        if ids is not None and (len(ids) != self.slots or len(set(ids)) != len(ids) or min(ids) < 0):
            raise ConfigError("slot_ids", ids, f"host {self.name}: give {self.slots} distinct slot ids >= 0")

    @property
    def devices(self) -> tuple[int, ...]:
        """The slot (device) indices this host contributes, in order."""
        return self.slot_ids if self.slot_ids is not None else tuple(range(self.slots))


class HostList(list[Host]):
    """The resolved, ordered hosts of a run: rank order follows list order."""

    @property
    def names(self) -> list[str]:
        return [h.name for h in self]

    @property
    def folded(self) -> str:
        return fold(self.names)

    @property
    def total_slots(self) -> int:
        return sum(h.slots for h in self)


def _split_top_level(expr: str) -> list[str]:
    """Split on commas outside brackets (`a,n[1,3],b` -> a | n[1,3] | b); ClusterShell parses each part."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(expr):
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            parts.append(expr[start:i])
            start = i + 1
    parts.append(expr[start:])
    return parts


def _slurm_dims(part: str) -> tuple[list[str], list[list[tuple[str, str]]]] | None:
    """`r[1-2]n[3,1]` -> (["r", "n", ""], [[("1", "2")], [("3", "3"), ("1", "1")]]); None if not Slurm syntax."""
    if any(op in part for op in _SET_OPERATORS):
        return None
    pieces = _BRACKETED.split(part)  # text, bracket content, text, ...
    texts, contents = pieces[0::2], pieces[1::2]
    if any("[" in t or "]" in t for t in texts) or not all(_SLURM_RANGES.fullmatch(c) for c in contents):
        return None
    return texts, [[(lo, hi or lo) for lo, hi in _SLURM_RANGE.findall(c)] for c in contents]


def _slurm_names(texts: list[str], dims: list[list[tuple[str, str]]]) -> list[str]:
    """Every name in the order `scontrol show hostnames` gives: ranges as written, the last bracket varying
    fastest, then the first, second, ... (Slurm's hostlist walks r[1-2]n[1-2]c[1-2] as r1n1c1 r1n1c2 r2n1c1 ...)."""
    values = [[str(i).zfill(len(lo)) for lo, hi in ranges for i in range(int(lo), int(hi) + 1)] for ranges in dims]
    order = [*range(len(dims) - 2, -1, -1), len(dims) - 1] if dims else []  # slowest first
    names = []
    for combo in itertools.product(*(values[d] for d in order)):
        by_dim = dict(zip(order, combo))
        names.append(texts[0] + "".join(by_dim[d] + texts[d + 1] for d in range(len(dims))))
    return names


def _check_ranges(expr: str, field: str, whole: str) -> None:
    # ClusterShell's RangeSet (and our Slurm walk) hold every index of a range: refuse n[1-999999999] first
    for low, high in _RANGE.findall(" ".join(_BRACKETED.findall(expr))):
        if int(high) - int(low) >= MAX_HOSTS:
            raise HostSetError(field, whole, f"{low}-{high}", f"a range of at most {MAX_HOSTS} hosts")
        if int(high) < int(low):
            raise HostSetError(field, whole, f"{low}-{high}", f"the start is above the end; write it upwards, e.g. [{high}-{low}]")


def _clustershell(expr: str, field: str, whole: str) -> NodeSet:
    try:
        return NodeSet(expr, resolver=RESOLVER_NOGROUP)
    except NodeSetException as exc:
        part = getattr(exc, "part", None) or expr
        raise HostSetError(field, whole, part, f"{exc}; write ranges like node[01-16] or gpu-[1-2]-[1-4]") from None


def _part(expr: str, field: str, whole: str) -> tuple[int, Callable[[], list[str]]]:
    """(how many names, how to list them): counted before anything is expanded, so a huge set is refused in time."""
    _check_ranges(expr, field, whole)
    slurm = _slurm_dims(expr)
    if slurm is not None:
        texts, dims = slurm
        return math.prod(sum(int(hi) - int(lo) + 1 for lo, hi in ranges) for ranges in dims), \
            lambda: _slurm_names(texts, dims)
    operands = [o for piece in re.split(f"[{_SET_OPERATORS}]", expr) for o in _split_top_level(piece)]
    if len(operands) > 1:  # set algebra on a huge operand takes ClusterShell minutes: count every operand first
        named = sum(_part(o, field, whole)[0] for o in operands)
        if named > MAX_HOSTS:
            raise HostSetError(field, whole, expr, f"its operands name {named} hosts; at most {MAX_HOSTS}")
    nodeset = _clustershell(expr, field, whole)  # a step (n[1-9/2]), set operators, or malformed
    return len(nodeset), lambda: list(nodeset)  # len() counts without expanding


def _check_name(name: str, field: str, whole: str) -> str:
    if name.startswith("@"):
        raise HostSetError(field, whole, name, "node groups are not supported; list the hosts, e.g. node[1-4]")
    if not _VALID_NAME.fullmatch(name):
        raise HostSetError(
            field, whole, name, "not a host name; use letters, digits, '.', '-', '_', starting with a letter or digit",
        )
    return name


def expand(expr: str, *, field: str = "--hosts") -> list[str]:
    """Expand a node-set expression into ordered, unique host names; ConfigError (naming `field`) if malformed."""
    text = expr.strip()
    if not text:
        raise ConfigError(field, expr, "give at least one host, e.g. node[1-4]")
    if any(op in text for op in _SET_OPERATORS):
        parts = [text]  # set algebra: one ClusterShell expression, its order
    else:
        parts = [p.strip() for p in _split_top_level(text)]
        if "" in parts:
            raise HostSetError(field, expr, expr, "empty element between commas; remove the extra comma")
    sized = [_part(part, field, expr) for part in parts]
    total = sum(count for count, _ in sized)
    if total > MAX_HOSTS:  # the whole expression, not each part: a,b,c of 65536 each is still too many
        raise HostSetError(field, expr, expr, f"{total} hosts; at most {MAX_HOSTS} (check the ranges)")
    names: dict[str, None] = {}
    for _, listing in sized:
        for name in listing():
            names.setdefault(_check_name(name, field, expr))
    if not names:
        raise ConfigError(field, expr, "the expression selects no host; check the ! / & / ^ operands")
    return list(names)


def fold(names: Iterable[str], *, last_axis_only: bool = False) -> str:
    """Fold host names into a ClusterShell node set string (sorted): node1,node2,node3 -> node[1-3].

    last_axis_only folds only a number that ends a name (gpu-1-[1-4],gpu-2-[1-4]; node0-ib,node1-ib stay
    unfolded): the form both pdsh -w and Slurm accept (Slurm refuses node[0-1]-ib as "Invalid hostlist").
    """
    names = list(names)
    if not last_axis_only:
        return str(NodeSet.fromlist(names, resolver=RESOLVER_NOGROUP))
    numbered = NodeSet.fromlist([n for n in names if n[-1:].isdigit()], resolver=RESOLVER_NOGROUP)
    numbered.fold_axis = (-1,)
    others = sorted({n for n in names if not n[-1:].isdigit()})
    return ",".join(([str(numbered)] if numbered else []) + others)


def _parse_specs(text: str, field: str, hosts: HostList) -> list[tuple[list[str], list[int] | None]]:
    """`a:0,1@b` -> [(["a"], [0, 1]), (["b"], None)], checking names and slots against `hosts`."""
    known = {h.name: h for h in hosts}
    specs = []
    for spec in text.split(_SPEC_SEPARATOR):
        name_expr, has_slots, slot_text = spec.partition(_SLOTS_START)
        names = expand(name_expr, field=field)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(
                field, text, f"host {fold(unknown)} is not in the host list ({hosts.folded}); pick hosts from it"
            )
        slots = None
        if has_slots:
            try:
                slots = [int(s) for s in slot_text.split(_SLOT_SEPARATOR)]
            except ValueError:
                raise ConfigError(
                    field, text, f"bad slot list {slot_text!r} in {spec!r}; write HOST:0,1 (comma-separated indices)"
                ) from None
            for name in names:
                missing = [s for s in slots if s not in known[name].devices]
                if missing:
                    raise ConfigError(
                        field, text, f"host {name} has no slot {missing[0]} (it has {list(known[name].devices)})"
                    )
        specs.append((names, slots))
    return specs


def apply_filter(hosts: HostList, *, include: str | None = None, exclude: str | None = None) -> HostList:
    """DeepSpeed's --include/--exclude on a resolved host list (semantics of runner.parse_resource_filter).

    include: only the named hosts (all their slots, or the listed ones); a host named twice keeps its last spec.
    exclude: drop whole hosts, or only the listed slots. Order stays that of `hosts`; hosts left with no
    slot are dropped. include and exclude together is an error, as in DeepSpeed.
    """
    if include and exclude:
        raise ConfigError("--include/--exclude", f"{include} / {exclude}", "they are mutually exclusive; use one")
    if not include and not exclude:
        return hosts
    field, text = ("--include", include) if include else ("--exclude", exclude)
    chosen: dict[str, list[int]] = {} if include else {h.name: list(h.devices) for h in hosts}
    by_name = {h.name: h for h in hosts}
    for names, slots in _parse_specs(text, field, hosts):
        for name in names:
            if include:
                chosen[name] = list(slots) if slots is not None else list(by_name[name].devices)
            else:
                chosen[name] = [s for s in chosen[name] if slots is not None and s not in slots]
    result = HostList()
    for host in hosts:
        ids = list(dict.fromkeys(chosen.get(host.name, [])))
        if not ids:
            continue
        if tuple(ids) == host.devices:
            result.append(host)
        else:
            result.append(replace(host, slots=len(ids), slot_ids=tuple(ids)))
    if not result:
        raise ConfigError(field, text, f"no host is left of {hosts.folded}; exclude fewer hosts")
    return result
