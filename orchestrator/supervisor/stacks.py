"""Where a hung run's ranks are stuck: group their Python stacks (py-spy dumps) and name the odd one out (pure).

    dumps = [RankDump(0, "n1", 4242, threads=json.loads(py_spy_json_of_rank_0)),      # `py-spy dump --json`
             RankDump(1, "n2", 4243, threads=json.loads(py_spy_json_of_rank_1)),
             RankDump(2, "n2", 4244, error="py-spy not found")]
    report = hang_stacks(dumps, states={"n2": {4243: "S"}})      # states: the /proc probe (health.probe_pids)
    report["culprit"]   # 'rank 1 on n2 is in stuck_in_data_loader at train.py:10 while every other rank waits in
                        #  all_reduce at train.py:21 (main); no stack from rank 2 on n2: py-spy not found'
    report["groups"]    # [{"where": "all_reduce at train.py:21 (main)", "waiting": True, "ranks": [0], ...}, ...]

A rank's place is its main thread's innermost frame in the program, not in a library it waits inside: frames of
the standard library, of `<frozen ...>` modules and of INTERNAL packages (torch, deepspeed, ...) are skipped, so
a rank inside dist.all_reduce -> c10d_logger's wrapper is placed at the program's line that called all_reduce.
What it does there is the innermost skipped frame, or the torch.distributed collective when one is on the stack
(all_reduce, barrier, all_gather_into_tensor, ...): ranks in a collective "wait"; the others are the suspects.

The culprit line: a rank the probe found stopped (state T), stuck in D, or a zombie comes first, with its last
stack; otherwise the ranks outside the largest group that waits in a collective (the largest group when none
waits) are named against it. When every rank is in the same place, the line says that no rank stands out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ClusterShell.RangeSet import RangeSet

from orchestrator.hosts import fold
from orchestrator.supervisor.diagnosis import BAD_STATES

__all__ = ["INTERNAL", "RankDump", "Where", "hang_stacks", "main_thread", "ranks_on", "where"]

INTERNAL = ("torch", "deepspeed", "numpy", "triton", "apex", "transformer_engine")
"""Packages a rank waits inside, never the place to blame: their frames are skipped (the program's caller shows)."""
_STDLIB = re.compile(r"/lib/python\d\.\d+/(?!(?:site|dist)-packages/)")
_COLLECTIVES = ("torch/distributed/distributed_c10d.py", "torch/distributed/_functional_collectives.py")
STACK_FRAMES = 40
"""Frames kept per group in the event (innermost first): enough to read the program's call path."""
SHOWN_GROUPS = 3
"""Suspect groups spelled out in the culprit line; more are counted."""


@dataclass(frozen=True)
class Where:
    """A rank's place: the program's innermost frame, and the library call it is inside (None: in the program)."""

    function: str
    file: str
    line: int
    call: str | None = None
    waiting: bool = False
    """`call` is a torch.distributed collective: the rank waits for the others."""

    @property
    def label(self) -> str:
        """'all_reduce at train.py:88 (step)', or 'read_batch at data.py:120' when the rank is in the program."""
        if self.call is None:
            return f"{self.function} at {self.file}:{self.line}"
        return f"{self.call} at {self.file}:{self.line} ({self.function})"


@dataclass(frozen=True)
class RankDump:
    """One rank's py-spy dump (its JSON: a list of threads), or why there is none; and its flight recorder's
    summary (rank_dump.py), or why there is none, when it armed one."""

    rank: int
    host: str
    pid: int | None
    threads: list[dict] | None = None
    error: str | None = None
    flight: dict | None = None
    flight_error: str | None = None


def main_thread(threads: Sequence[dict]) -> dict | None:
    """The thread running the rank's program: the one whose OS id is the pid, else "MainThread", else the first."""
    for thread in threads:
        if thread.get("os_thread_id") is not None and thread.get("os_thread_id") == thread.get("pid"):
            return thread
    return next((t for t in threads if t.get("thread_name") == "MainThread"), threads[0] if threads else None)


def _internal(frame: dict) -> bool:
    filename = str(frame.get("filename") or "")
    if filename.startswith("<frozen") or _STDLIB.search(filename):
        return True
    top = str(frame.get("short_filename") or filename).lstrip("/").split("/", 1)[0]
    return top.removesuffix(".py") in INTERNAL


def _short(frame: dict) -> str:
    return str(frame.get("short_filename") or frame.get("filename") or "?")


def where(frames: Sequence[dict]) -> Where | None:
    """The place of a stack (py-spy frames, innermost first); None for an empty stack."""
    if not frames:
        return None
    site = next((i for i, f in enumerate(frames) if not _internal(f)), None)
    inside = frames[:site] if site is not None else frames[:1]
    place = frames[site] if site is not None else frames[-1]
    collective = next((f for f in inside if _short(f).endswith(_COLLECTIVES)), None)
    call = (collective or inside[0])["name"] if inside else None
    return Where(function=str(place.get("name")), file=_short(place), line=int(place.get("line") or 0), call=call,
                 waiting=collective is not None)


def _stack(frames: Sequence[dict]) -> list[str]:
    return [f"{f.get('name')} ({_short(f)}:{f.get('line')})" for f in frames[:STACK_FRAMES]]


@dataclass
class _Group:
    where: Where
    dumps: list[RankDump] = field(default_factory=list)
    stack: list[str] = field(default_factory=list)

    def to_event(self, states: dict[int, str]) -> dict:
        out = {"where": self.where.label, "waiting": self.where.waiting, "ranks": [d.rank for d in self.dumps],
               "hosts": fold(dict.fromkeys(d.host for d in self.dumps)), "stack": self.stack}
        stopped = {str(d.rank): states[d.rank] for d in self.dumps if d.rank in states}
        return out | ({"states": stopped} if stopped else {})


def _ranks(dumps: Sequence[RankDump]) -> str:
    return ranks_on([d.rank for d in dumps], [d.host for d in dumps])


def ranks_on(ranks: Sequence[int], hosts: Sequence[str]) -> str:
    """'rank 1 on n2', 'ranks 0-3 on n[1-2]'."""
    label = "rank" if len(ranks) == 1 else "ranks"
    return f"{label} {RangeSet.fromlist([str(r) for r in sorted(ranks)])} on {fold(dict.fromkeys(hosts))}"


def hang_stacks(dumps: Sequence[RankDump], states: dict[str, dict[int, str]] | None = None) -> dict:
    """The "hang_stacks" event's fields: groups (largest first), culprit (one line), culprit_ranks, no_stack.

    states: host -> {pid: /proc state letter} (the probe of the stalled ranks); a rank in one of BAD_STATES is
    the culprit whatever its stack says."""
    states = states or {}
    bad = {d.rank: states.get(d.host, {}).get(d.pid) for d in dumps if d.pid is not None}
    bad = {rank: s for rank, s in bad.items() if s in BAD_STATES}
    groups: dict[Where, _Group] = {}
    missing: list[RankDump] = []
    for dump in sorted(dumps, key=lambda d: d.rank):
        thread = main_thread(dump.threads) if dump.threads else None
        place = where(thread.get("frames") or []) if thread else None
        if place is None:
            missing.append(dump if dump.error else RankDump(dump.rank, dump.host, dump.pid, error="empty stack"))
            continue
        group = groups.setdefault(place, _Group(place, stack=_stack(thread["frames"])))
        group.dumps.append(dump)
    ordered = sorted(groups.values(), key=lambda g: (-len(g.dumps), g.dumps[0].rank))
    culprit, blamed = _culprit(ordered, missing, bad)
    return {"groups": [g.to_event(bad) for g in ordered], "culprit": culprit, "culprit_ranks": blamed,
            "no_stack": [{"error": why, "ranks": [d.rank for d in ds], "hosts": fold(dict.fromkeys(d.host for d in ds))}
                         for why, ds in _by_error(missing)]}


def _reference(groups: Sequence[_Group]) -> _Group | None:
    """The group the others are measured against: the largest that waits in a collective, else the largest."""
    return max(groups, key=lambda g: (g.where.waiting, len(g.dumps), -g.dumps[0].rank), default=None)


def _culprit(groups: list[_Group], missing: list[RankDump], bad: dict[int, str]) -> tuple[str, list[int]]:
    """The one-line culprit and the ranks it names."""
    if bad:
        place = {d.rank: g.where for g in groups for d in g.dumps}
        parts = [f"{_ranks([d])} (pid {d.pid}) is {BAD_STATES[bad[d.rank]]}, "
                 + (f"last in {place[d.rank].label}" if d.rank in place else f"no stack: {d.error}")
                 for d in sorted((d for g in groups for d in g.dumps if d.rank in bad), key=lambda d: d.rank)
                 + [d for d in missing if d.rank in bad]]
        rest = [_Group(g.where, kept) for g in groups if (kept := [d for d in g.dumps if d.rank not in bad])]
        reference, blamed = _reference(rest), sorted(bad)
        others = sum(len(g.dumps) for g in rest)
    else:
        reference = _reference(groups)
        suspects = [g for g in groups if g is not reference]
        parts = [f"{_ranks(g.dumps)} {'is' if len(g.dumps) == 1 else 'are'} in {g.where.label}"
                 for g in suspects[:SHOWN_GROUPS]]
        if len(suspects) > SHOWN_GROUPS:
            parts.append(f"{len(suspects) - SHOWN_GROUPS} more group(s) elsewhere")
        blamed = sorted(d.rank for g in suspects for d in g.dumps)
        others = len(reference.dumps) if reference is not None else 0
    line = "; ".join(parts)
    if reference is not None:
        waits = reference.where.waiting
        if not parts:
            verb = ("all wait" if waits else "are all") if others > 1 else ("waits" if waits else "is")
            line = f"{_ranks(reference.dumps)} {verb} in {reference.where.label}"
            line += "" if missing else ": no rank stands out"
        elif len(reference.dumps) == others:
            line += f" while every other rank {'waits' if waits else 'is'} in {reference.where.label}"
        else:
            line += (f" while {len(reference.dumps)} of the other {others} ranks "
                     f"{'wait' if waits else 'are'} in {reference.where.label}")
    line = "; ".join([line] * bool(line) + [f"no stack from {_ranks(ds)}: {why}"
                                           for why, ds in _by_error([d for d in missing if d.rank not in bad])])
    return line or "no stacks", blamed


def _by_error(dumps: Sequence[RankDump]) -> list[tuple[str, list[RankDump]]]:
    reasons: dict[str, list[RankDump]] = {}
    for d in dumps:
        reasons.setdefault(str(d.error), []).append(d)
    return list(reasons.items())
