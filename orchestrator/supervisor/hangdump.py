"""Before a hung attempt is torn down: every rank's Python stack and flight recorder, dumped on its node through the
runner.

    dumps = await dump_ranks(runner, plan, read_heartbeats(run_dir / "heartbeat"), timeout=20)
    dumps[1]                                  # RankDump(rank=1, host="n2", pid=4243, threads=[...py-spy JSON...])
    report = stacks.hang_stacks(dumps, states=probe)          # groups and the culprit line (stacks.py)

The PIDs come from the ranks' heartbeat files, and the flight recorder's dump path from the ranks that armed
one (engine/flight_recorder.py); each rank's host from the plan (the name the runner reaches it
by; the heartbeat's own hostname when the plan does not place the rank). Never raises: a dump that cannot be
had is that rank's error ("py-spy not found ...", "dump exit 255: timed out after 20 s"), and the hang report
says which ranks have no stack and why.
"""

from __future__ import annotations

import logging

from orchestrator.launch.plan import DEFAULT_PYTHON, LaunchPlan
from orchestrator.supervisor.runner import AttemptRunner
from orchestrator.supervisor.stacks import RankDump

__all__ = ["dump_ranks"]

log = logging.getLogger("orchestrator.supervisor.hangdump")


async def dump_ranks(runner: AttemptRunner, plan: LaunchPlan, beats: dict[str, dict], *, timeout: float,
                     swaps: dict[str, str] | None = None, flight_recorders: bool = True) -> list[RankDump]:
    """Every rank with a heartbeat, in rank order, with its py-spy dump or why there is none, and its flight
    recorder's when it armed one and `flight_recorders`. swaps: plan host -> the spare that took its place in-run (warm
    restarts), followed to the host that runs the rank now."""
    ranks: dict[int, tuple[str, int]] = {}
    pids: dict[str, list[int]] = {}
    flight: dict[str, dict[int, str]] = {}
    for beat in beats.values():
        rank, pid = beat.get("rank"), beat.get("pid")
        if isinstance(rank, int) and isinstance(pid, int):
            placed = plan.rank_location(rank)
            host = placed[0] if placed else str(beat.get("host"))
            while swaps and host in swaps:
                host = swaps[host]
            ranks[rank] = (host, pid)
            pids.setdefault(host, []).append(pid)
            if flight_recorders and isinstance(beat.get("flight_recorder"), str):  # armed: answers SIGUSR2 with one
                flight.setdefault(host, {})[pid] = beat["flight_recorder"]
    pythons = {n.host: n.python for n in plan.started}
    try:
        dumps = await runner.dump_stacks(pids, python=lambda h: pythons.get(h, DEFAULT_PYTHON), timeout=timeout,
                                         flight=flight)
    except Exception as exc:  # noqa: BLE001 - the stacks only sharpen the diagnosis
        log.warning("stack dump failed: %s", exc)
        dumps = {host: {pid: {"error": f"stack dump failed: {exc}"} for pid in p} for host, p in pids.items()}
    out = []
    for rank, (host, pid) in sorted(ranks.items()):
        got = dumps.get(host, {}).get(pid) or {"error": "no answer from the dump"}
        out.append(RankDump(rank, host, pid, threads=got.get("threads"), error=got.get("error"),
                            flight=got.get("flight"), flight_error=got.get("flight_error")))
    return out
