"""The supervisor's side of warm restarts: the keepers' news into events.jsonl, and hung ranks killed, not the attempt.

    warm = WarmRestarts(events, runner)                   # one per supervised run with cfg.restart == "warm"
    warm.on_line(attempt, line)                           # every output line (keepers' `orchestrator-warm` lines)
    warm.on_step(attempt, record, seen_at, previous_step) # every metrics.jsonl record
    await warm.kill_hung(attempt, stalled, probe)         # True: the stuck ranks were killed, the attempt goes on
    warm.hang_check_paused(now)                           # True while the killed ranks' replacements start

Under warm restarts (engine/keeper.py) a rank failure does not end the attempt: the node's keeper replaces the
rank from a standby and every rank restores the newest in-memory snapshot. The supervisor sees it through the
keepers' event lines and writes:
  failure      {kind: "rank_exit", warm: true, host, rank, exitcode, signal}  (a rank the supervisor killed after
               a hang was already reported as kind "hang")
  diagnosis    {cause: "killed" | "crash" | "hang", host, rank, action: "warm_restart"}
  warm_restart {generation, host, replaced: {rank: standby pid}}      once per new generation
  warm_resumed {step, resumed_from, steps_lost, time_lost_s, phases}  the first step after it (from metrics.jsonl)
  warm_give_up {host, reason}        a keeper gave up: the attempt ends and the supervisor restarts it cold
A hang (no heartbeat for --hang-timeout) is resolved by SIGKILL of the stopped ranks (state T in the probe), or of
every stalled rank when none is stopped, which turns it into a rank exit the keepers repair; when a stalled
rank's host does not answer the probe (a lost node), the attempt is stopped and restarted cold instead.
"""

from __future__ import annotations

import logging
import time

from orchestrator.engine.warm import parse_event
from orchestrator.launch.failures import signal_name
from orchestrator.launch.output import OutputLine
from orchestrator.supervisor.detect import pids_by_host

__all__ = ["WarmRestarts"]

log = logging.getLogger("orchestrator.supervisor.warm")


class WarmRestarts:
    def __init__(self, events, runner, *, hang_timeout: float, kill_timeout: float = 10.0):
        self.events, self.runner = events, runner
        self.hang_timeout, self.kill_timeout = hang_timeout, kill_timeout
        self.killed: dict[int, str] = {}  # pid -> why the supervisor killed it
        self.generations: set[int] = set()
        self.phases: dict[str, float] = {}  # of the recovery in progress: event -> first/last time on the nodes
        self.resumes = 0
        self.paused_until = 0.0

    # ---- the keepers' lines -------------------------------------------------------------------------------
    def on_line(self, attempt, line: OutputLine) -> None:
        event = parse_event(line.text)
        if event is None:
            return
        kind = event["event"]
        if kind == "rank_exit":
            self._rank_exit(attempt, line.host, event)
        elif kind == "generation" and event.get("generation") not in self.generations:
            self.generations.add(event["generation"])
            self.events.emit("warm_restart", attempt=attempt.number, generation=event["generation"], host=line.host,
                             replaced=event.get("replaced"))
        elif kind == "stuck":
            self.events.emit("warm_stuck", attempt=attempt.number, host=line.host, rank=event.get("rank"),
                             pid=event.get("pid"), generation=event.get("generation"))
        elif kind == "give_up":
            self.events.emit("warm_give_up", attempt=attempt.number, host=line.host, reason=event.get("reason"))
        elif kind == "left":
            self.phases.setdefault("left", event["time"])
        elif kind == "joined" and event.get("generation", 0) > 0:
            self.phases["joined"] = event["time"]

    def _rank_exit(self, attempt, host: str | None, event: dict) -> None:
        pid, exitcode = event.get("pid"), int(event.get("exitcode", 1))
        # a survivor may have left its broken group before its keeper's news of the exit reached us
        self.phases = {"exit": event["time"], "seen": time.time()} | {k: v for k, v in self.phases.items() if k == "left"}
        why = self.killed.pop(pid, None) if pid is not None else None
        node = attempt.plan.node(host) if host in attempt.plan.hosts else None
        if why is None:
            self.events.emit("failure", attempt=attempt.number, kind="rank_exit", warm=True, host=host,
                             rank=event.get("rank"), local_rank=(event["rank"] - node.first_rank) if node else None,
                             exitcode=exitcode, signal=signal_name(exitcode), pid=pid)
        cause = why or ("killed" if exitcode < 0 else "crash")
        self.events.emit("diagnosis", attempt=attempt.number, cause=cause, host=host, rank=event.get("rank"),
                         signal=signal_name(exitcode), action="warm_restart",
                         detail=f"rank {event.get('rank')} on {host} exited with {exitcode}"
                                + (f" after the supervisor killed it ({why})" if why else ""))

    # ---- metrics --------------------------------------------------------------------------------------------
    def on_step(self, attempt, record: dict, seen_at: float, previous_step: int | None,
                step_seen: dict[int, float]) -> None:
        """A metrics record; the first one after a restore from memory closes the recovery."""
        if record.get("resume_source") != "memory":
            return
        resumed = record.get("resumed_from")
        since = step_seen.get(resumed)
        lost = None if since is None else round(seen_at - since - float(record.get("step_time_s") or 0.0), 3)
        phases = {k: round(v, 3) for k, v in self.phases.items()} | {"first_step_seen": round(seen_at, 3)}
        self.resumes += 1
        self.events.emit("warm_resumed", attempt=attempt.number, step=record["step"], resumed_from=resumed,
                         steps_lost=None if previous_step is None or resumed is None else max(0, previous_step - resumed),
                         time_lost_s=lost, phases=phases)
        self.phases = {}

    # ---- hangs ----------------------------------------------------------------------------------------------
    def hang_check_paused(self, now: float) -> bool:
        return now < self.paused_until

    async def kill_hung(self, attempt, stalled: list[dict], probe: dict) -> bool:
        """SIGKILL the stopped ranks (else every stalled one); True when the kill reached every host asked.

        A stalled rank on a host the probe did not reach is a lost node: nothing is killed, the attempt is
        stopped and restarted cold (warm restarts do not replace nodes yet)."""
        stalled = [b for b in stalled if b.get("host") and b.get("pid")]
        if not stalled or any(b["host"] not in probe for b in stalled):
            return False
        stopped = {host: [pid for pid, state in states.items() if state in ("T", "t")] for host, states in probe.items()}
        targets = {h: p for h, p in stopped.items() if p} or pids_by_host(stalled)
        for pids in targets.values():  # before the kill: the keepers report the exits at once
            for pid in pids:
                self.killed[pid] = "hang"
        try:
            done = await self.runner.kill_pids(targets, timeout=self.kill_timeout)
        except Exception as exc:  # noqa: BLE001 - then the attempt is stopped the cold way
            log.warning("could not kill the hung ranks: %s", exc)
            return False
        self.events.emit("warm_kill", attempt=attempt.number, targets=targets, reached=sorted(done), reason="hang")
        self.paused_until = time.time() + self.hang_timeout
        return set(done) >= set(targets)
