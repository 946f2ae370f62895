"""Name the culprit of a failed attempt: the root cause, not the cascade (pure over what the attempt observed).

    attempt = Attempt(0, plan, launched_at=t0)
    attempt.rank_exit = RankExit("n2", local_rank=1, exitcode=-9, pid=77, seen_at=t1)   # detect.parse_rank_exit
    attempt.result = AttemptResult(exit_code=1)
    d = diagnose(attempt, health={"n1": "ok", "n2": "ok"})
    d.cause, d.host, d.rank, d.signal       # 'killed', 'n2', 3, 'SIGKILL'
    d.to_event()                            # the "diagnosis" event's fields in events.jsonl

Order of evidence: a launcher-side error; a straggler the loop stopped the attempt for (straggler.py); for a
hang, a probed process that is stopped/stuck, else a host that failed its health check (a lost node), else the
rank the stacks single out (stacks.py: not where the others wait), else the oldest stalled rank (a hang's diagnosis carries the stacks' culprit line); a non-cascade first
failure from the runner's analysis (torchrun's reports); the first rank exit the head saw if it was a signal
(even when the host is unreachable afterwards: the health check excludes it anyway); a host that failed its
health check (a lost node says nothing: its peers' errors are the cascade); a lost control connection;
otherwise the first failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.launch.plan import LaunchPlan
from orchestrator.supervisor.detect import RankExit
from orchestrator.supervisor.runner import AttemptResult
from orchestrator.supervisor.straggler import Straggler

__all__ = ["Attempt", "Diagnosis", "diagnose"]

BAD_STATES = {"T": "stopped (SIGSTOP)", "t": "stopped by a tracer", "D": "in uninterruptible sleep (D)",
              "Z": "a zombie"}
_OUR_STOP = (None, "SIGTERM", "SIGINT")  # signals of our own teardown: a rank ended by them is not the culprit
_RANK_CAUSES = ("hang", "killed", "crash")
_EXIT_CAUSES = ("killed", "crash")


@dataclass
class Attempt:
    """What one attempt observed (the loop fills it in while the attempt runs; diagnose() reads it)."""

    number: int
    plan: LaunchPlan
    launched_at: float
    rank_exit: RankExit | None = None
    """The first torchrun "failed (exitcode" line the head saw."""
    hang: list[dict] | None = None
    """The stalled ranks' heartbeats, when the hang detector fired."""
    straggler: Straggler | None = None
    """The slow node the attempt was stopped for (to swap it for a spare)."""
    probe: dict | None = None
    """host -> {pid: /proc state letter} of the stalled ranks."""
    stacks: dict | None = None
    """The hang's stack report (stacks.hang_stacks: groups, culprit line, culprit_ranks), when dumped."""
    result: AttemptResult | None = None
    error: str | None = None
    """A launcher-side error ("OSError: ...")."""
    first_step_seen: bool = False
    last_step: int | None = None
    swaps: dict[str, str] = field(default_factory=dict)
    """lost host -> the spare that took its place in-run (warm restarts)."""


@dataclass(frozen=True, kw_only=True)
class Diagnosis:
    """The culprit of one failed attempt."""

    cause: str
    """'crash' (a non-zero exit), 'killed' (a signal), 'hang', 'node_lost', 'launcher_error', 'straggler' or
    'unknown'."""
    host: str | None
    detail: str
    rank: int | None = None
    """The global rank (for crash, killed, hang)."""
    pid: int | None = None
    """The stopped/stuck process of a hang, when the probe found one."""
    signal: str | None = None
    exit_code: int | None = None
    """The rank's exit code (for crash, killed)."""
    last_lines: list[str] | None = None
    """The culprit rank's last output lines, when the runner's failure analysis has them."""
    cascade: list[str] | None = None
    """For a lost node: the other nodes' failures it caused."""
    culprit: str | None = None
    """For a hang: where the ranks are stuck, in one line, from their Python stacks (stacks.py)."""

    def to_event(self) -> dict:
        """The "diagnosis" event's fields: rank for rank causes, signal and exit code for process exits (even
        when unknown: None), pid, last_lines and cascade when known."""
        out: dict = {"cause": self.cause, "host": self.host}
        if self.cause in _RANK_CAUSES:
            out["rank"] = self.rank
        if self.pid is not None:
            out["pid"] = self.pid
        if self.cause in _EXIT_CAUSES:
            out |= {"signal": self.signal, "exit_code": self.exit_code}
        out["detail"] = self.detail
        if self.last_lines is not None:
            out["last_lines"] = self.last_lines
        if self.cascade is not None:
            out["cascade"] = self.cascade
        if self.culprit is not None:
            out["culprit"] = self.culprit
        return out


def diagnose(attempt: Attempt, health: dict[str, str]) -> Diagnosis:
    """The culprit of a failed attempt, from its evidence and the health check after it (see the module doc)."""
    plan, result = attempt.plan, attempt.result
    unhealthy = {h: why for h, why in health.items() if why != "ok" and h in plan.hosts}
    if attempt.error is not None:
        return Diagnosis(cause="launcher_error", host=None, detail=attempt.error)
    if (slow := attempt.straggler) is not None:
        return Diagnosis(cause="straggler", host=slow.host, detail=slow.describe())
    if attempt.hang is not None:
        return _hang(attempt.hang, attempt.probe or {}, unhealthy, attempt.stacks or {}, plan)
    first = result.first_failure if result is not None else None
    if first is not None and not first.cascade:
        return _from_failure(first)
    seen = attempt.rank_exit
    if seen is not None and seen.signal not in _OUR_STOP:
        node = plan.node(seen.host) if seen.host in plan.hosts else None
        return Diagnosis(cause="killed", host=seen.host, rank=node.first_rank + seen.local_rank if node else None,
                         signal=seen.signal, exit_code=seen.exitcode, detail=f"killed by {seen.signal}")
    if unhealthy:
        host = next(iter(unhealthy))
        return Diagnosis(cause="node_lost", host=host, detail=unhealthy[host],
                         cascade=[f.headline() for f in (result.failures if result is not None else [])])
    if result is not None and result.unreachable:
        host, why = next(iter(result.unreachable.items()))
        return Diagnosis(cause="node_lost", host=host, detail=f"control connection lost: {why}")
    if first is not None:
        return _from_failure(first)
    return Diagnosis(cause="unknown", host=None,
                     detail=f"exit code {result.exit_code if result is not None else None}")


def _hang(stalled: list[dict], probe: dict[str, dict[int, str]], unhealthy: dict[str, str], stacks: dict,
          plan: LaunchPlan) -> Diagnosis:
    culprit = stacks.get("culprit")
    for host, states in probe.items():
        for pid, state in states.items():
            if state in BAD_STATES:
                beat = next((b for b in stalled if b.get("pid") == pid), {})
                return Diagnosis(cause="hang", host=host, rank=beat.get("rank"), pid=pid, culprit=culprit,
                                 detail=f"rank {beat.get('rank')} (pid {pid}) is {BAD_STATES[state]}")
    if unhealthy:
        host = next(iter(unhealthy))
        return Diagnosis(cause="node_lost", host=host, detail=f"heartbeats stopped; {host}: {unhealthy[host]}",
                         culprit=culprit)
    first = stalled[0]
    detail = f"no heartbeat for {len(stalled)} rank(s) since step {first.get('step')}"
    blamed = stacks.get("culprit_ranks") or []
    placed = plan.rank_location(blamed[0]) if blamed else None
    if placed is not None:  # the stacks single out a rank: a better suspect than the oldest heartbeat
        return Diagnosis(cause="hang", host=placed[0], rank=blamed[0], detail=detail, culprit=culprit)
    return Diagnosis(cause="hang", host=first.get("host"), rank=first.get("rank"), detail=detail, culprit=culprit)


def _from_failure(f) -> Diagnosis:
    return Diagnosis(cause="killed" if f.signal and f.signal not in _OUR_STOP else "crash", host=f.host, rank=f.rank,
                     signal=f.signal, exit_code=f.rank_exitcode, detail=f.headline(), last_lines=f.last_lines)
