"""A pre-flight's result applied before a supervised run's first attempt (`supervise --preflight`, or `up`).

    hosts, short = apply_preflight(report, hosts, spares, limits=cfg.limits, events=log, runner=runner)
    # report: the health gate's CheckReport over the hosts and the spares (orchestrator.check.run_check)

A node that failed the gate leaves as a node that failed its health check between attempts does: an `exclude`
event (the runner may drain it), its place taken by the next spare that passed (`replace`), else the run
shrinks within MIN:MAX (`shrink`); policy.replace_or_shrink decides, as it does after a failure. A spare that
failed leaves the spare list (an `exclude` event with spare=true). `spares` is updated in place; `short` is the
reason to give up before anything starts (fewer nodes passed than the layout needs), else None.
"""

from __future__ import annotations

from orchestrator.hosts import Host, fold
from orchestrator.supervisor import policy

__all__ = ["apply_preflight"]


def apply_preflight(report, hosts: list[Host], spares: list[Host], *, limits: policy.Limits, events,
                    runner) -> tuple[list[Host], str | None]:
    failed = {h: "preflight: " + "; ".join(report.nodes[h].reasons) for h in report.failed}
    events.emit("preflight", check_id=report.check_id, exit_code=report.exit_code,
                verdicts={h: n.verdict for h, n in report.nodes.items()}, timings=report.timings,
                network={k: report.network.get(k) for k in ("backend", "nodes", "rounds", "skipped")})
    spare_names = {s.name for s in spares}
    for host in [h.name for h in hosts + spares if h.name in failed]:
        events.emit("exclude", host=host, reason=failed[host], spare=host in spare_names)
        if runner.exclude(host, failed[host]):
            events.emit("drain", host=host, reason=failed[host])
    spares[:] = [s for s in spares if s.name not in failed]
    names, replaced, shrunk, short = policy.replace_or_shrink(
        [h.name for h in hosts], excluded=failed, spares=[s.name for s in spares], limits=limits)
    for old, new in replaced.items():
        events.emit("replace", host=old, spare=new)
    if shrunk:
        events.emit("shrink", from_nodes=shrunk[0], to_nodes=shrunk[1], world_size=shrunk[1] * limits.nproc_per_node)
    by_name = {h.name: h for h in hosts + spares}
    spares[:] = ([s for s in spares if s.name not in names]  # as after a failure: passed hosts a shrink left out wait
                 + [h for h in hosts if h.name not in names and h.name not in failed])
    if short:
        short = f"preflight: {fold(list(failed))} failed; {short}; nothing was started"
    return [by_name[n] for n in names], short
