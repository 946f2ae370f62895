"""Where a hung run's collectives stand, from the ranks' flight recorder summaries (rank_dump.py); pure.

    report = flight_report(dumps)          # dumps: stacks.RankDump list, .flight set on the ranks that dumped
    stacks = with_flight(hang_stacks(dumps, probe), report)    # the "hang_stacks" event with "flight_recorder"
    report["line"]      # 'group 0: rank 1 on n2 never entered collective #3 (gloo:all_reduce at train.py:88
                        #  (step)) where every other rank waits; its last was #2'
    report["behind"]    # [1]: ranks that did not reach a collective the others wait in
    report["groups"]    # one record per process group with a collective in flight (see below)

Per process group, a collective is in flight when a rank enqueued it and has not completed it. The newest one any
member enqueued, #N, is what the others wait in, and:
- a member whose last enqueued collective is older never entered #N: it is elsewhere (its stack says where),
  the culprit;
- members whose #N differ in op or sizes disagree on the collective (a desync: a bug in the program);
- when every member entered #N and none completed it, the collective itself is stuck (a network or device
  fault); NCCL's recorder also says which ranks started it on the device.
A group's members: the ranks whose recorder knows it (and the group's ranks in pg_config, which NCCL fills);
the default group "0" holds every rank of the run. A member without a dump (stopped, or it did not answer) is
listed as such: it is not counted behind or waiting.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence

from orchestrator.supervisor.stacks import RankDump, ranks_on, where

__all__ = ["flight_report", "with_flight"]

DEFAULT_GROUP = "0"


def with_flight(stacks: dict, flight: dict | None) -> dict:
    """The stack report (stacks.hang_stacks) with the recorder's: when the stacks single nobody out (on GPUs every
    rank may sit in the same device sync) its ranks behind are the culprits, and its line joins the culprit's."""
    if flight is None:
        return stacks
    out = stacks | {"flight_recorder": flight}
    if flight["behind"] and not stacks["culprit_ranks"]:
        out |= {"culprit": f"{stacks['culprit']}; flight recorder: {flight['line']}", "culprit_ranks": flight["behind"]}
    return out


def flight_report(dumps: Sequence[RankDump]) -> dict | None:
    """The hang report's "flight_recorder" field; None when no rank dumped one (and none said why not)."""
    have = [d for d in dumps if d.flight is not None]
    errors = {d.rank: d.flight_error for d in dumps if d.flight_error}
    if not have and not errors:
        return None
    hosts = {d.rank: d.host for d in dumps}
    groups = [g for name in sorted({n for d in have for n in d.flight.get("pg_status") or {}}, key=_order)
              if (g := _group(name, have, [d.rank for d in dumps])) is not None]
    behind = sorted({r for g in groups for r in g["behind"]})
    lines = [_line(g, hosts) for g in groups]
    if not groups:
        lines = ["no collective in flight" if have else "no flight recorder dump"]
    out = {"line": "; ".join(lines), "behind": behind, "groups": groups}
    return out | ({"no_dump": {str(r): why for r, why in sorted(errors.items())}} if errors else {})


def _order(name: str) -> tuple:
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def _group(name: str, have: Sequence[RankDump], all_ranks: list[int]) -> dict | None:
    status = {d.rank: d.flight["pg_status"][name] for d in have if name in (d.flight.get("pg_status") or {})}
    enqueued = {r: int(s.get("last_enqueued_collective", -1)) for r, s in status.items()}
    # gloo's status counts a collective completed only once the next one is enqueued: its entries say sooner
    done = {d.rank: max((int(e.get("collective_seq_id", -1)) for e in (d.flight.get("entries") or {}).get(name, [])
                         if e.get("retired") or e.get("state") == "completed"), default=-1) for d in have}
    completed = {r: max(int(s.get("last_completed_collective", -1)), done.get(r, -1)) for r, s in status.items()}
    newest = max(enqueued.values(), default=-1)
    if newest < 0 or all(completed[r] >= newest for r in status):
        return None  # nothing in flight in this group
    members = set(status) | _configured(name, have) | (set(all_ranks) if name == DEFAULT_GROUP else set())
    waiting = sorted(r for r in status if enqueued[r] == newest and completed[r] < newest)
    behind = sorted(r for r in status if enqueued[r] < newest)
    entries = {r: _entry(d, name, newest) for d in have if (r := d.rank) in waiting}
    kinds: dict[tuple, list[int]] = {}
    for rank, entry in entries.items():
        kinds.setdefault((entry.get("profiling_name"), str(entry.get("input_sizes"))) if entry else (None, ""),
                         []).append(rank)
    first = next((e for e in entries.values() if e), {})
    started = {r: int(status[r].get("last_started_collective", -1)) for r in waiting}
    return {"group": name, "collective": newest, "op": first.get("profiling_name"), "where": _where(first),
            "waiting": waiting, "behind": behind, "last": {str(r): enqueued[r] for r in behind},
            "no_dump": sorted(members - set(status)),
            "ops": [{"op": op, "sizes": sizes, "ranks": ranks} for (op, sizes), ranks in kinds.items()]
            if len(kinds) > 1 else [],
            "not_started": sorted(r for r, s in started.items() if 0 <= s < newest)
            if any(s >= 0 for s in started.values()) else []}


def _configured(name: str, have: Sequence[RankDump]) -> set[int]:
    """The group's ranks as pg_config says (NCCL's recorder fills it; gloo's leaves it empty)."""
    for d in have:
        ranks = ((d.flight.get("pg_config") or {}).get(name) or {}).get("ranks")
        try:
            parsed = ast.literal_eval(ranks) if isinstance(ranks, str) else ranks
        except (ValueError, SyntaxError):
            continue
        if parsed:
            return {int(r) for r in parsed}
    return set()


def _entry(dump: RankDump, name: str, seq: int) -> dict | None:
    return next((e for e in (dump.flight.get("entries") or {}).get(name, []) if e.get("collective_seq_id") == seq
                 and not e.get("is_p2p")), None)


def _where(entry: dict) -> str | None:
    """Where the program called the collective: the innermost frame outside the libraries (stacks.where)."""
    place = where(entry.get("frames") or [])
    return f"{place.file}:{place.line} ({place.function})" if place else None


def _ranks(ranks: Sequence[int], hosts: dict[int, str]) -> str:
    return ranks_on(ranks, [hosts.get(r, "?") for r in sorted(ranks)])


def _line(group: dict, hosts: dict[int, str]) -> str:
    name, seq = group["group"], group["collective"]
    what = f"collective #{seq} ({group['op']}" + (f" at {group['where']})" if group["where"] else ")")
    waiting, behind = group["waiting"], group["behind"]
    if group["ops"]:
        said = "; ".join(f"{_ranks(k['ranks'], hosts)} call {k['op']} {k['sizes']}" for k in group["ops"])
        line = f"group {name}: the ranks disagree on collective #{seq}: {said}"
    elif behind:
        lasts = sorted(set(group["last"].values()))
        line = (f"group {name}: {_ranks(behind, hosts)} never entered {what} where "
                f"{'every other rank waits' if not group['no_dump'] else _ranks(waiting, hosts) + ' wait'}; "
                f"{'its' if len(behind) == 1 else 'their'} last was #{'/#'.join(map(str, lasts))}")
    else:
        line = f"group {name}: every rank with a dump entered {what} and none completed it"
        if group["not_started"]:
            line += f"; {_ranks(group['not_started'], hosts)} did not start it on the device"
    if group["no_dump"]:
        line += f"; no dump from {_ranks(group['no_dump'], hosts)}"
    return line
