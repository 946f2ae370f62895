"""The supervisor's side of warm restarts: the keepers' news into events.jsonl, and hung ranks killed, not the attempt.

    warm = WarmRestarts(events, runner)                   # one per supervised run with cfg.restart == "warm"
    warm.on_line(attempt, line)                           # every output line (keepers' `orchestrator-warm` lines)
    warm.on_step(attempt, record, seen_at, previous_step) # every metrics.jsonl record
    await warm.kill_hung(attempt, stalled, probe)         # True: the stuck ranks were killed, the attempt goes on
    warm.hang_check_paused(now)                           # True while the killed ranks' replacements start
    warm.stopped_ranks(beats)                             # heartbeats of ranks a keeper saw stopped (SIGSTOP)
    warm.swap_straggler(attempt, straggler, store)        # True: a spare keeper took the slow node's place in-run

Under warm restarts (engine/keeper.py) a rank failure does not end the attempt: the node's keeper replaces the
rank from a standby and every rank restores the newest in-memory snapshot. The supervisor sees it through the
keepers' event lines and writes:
  failure      {kind: "rank_exit", warm: true, host, rank, exitcode, signal}  (a rank the supervisor killed after
               a hang was already reported as kind "hang")
  diagnosis    {cause: "killed" | "crash" | "hang", host, rank, action: "warm_restart"}
  warm_restart {generation, host, replaced: {rank: standby pid}}      once per new generation
  warm_resumed {step, resumed_from, steps_lost, time_lost_s, phases, source}  the first step after it (from
               metrics.jsonl; source: memory, or disk when a disk checkpoint was newer than every snapshot)
  warm_give_up {host, reason}        a keeper gave up: the attempt ends and the supervisor restarts it cold
A lost node (its keeper silent for the keepers' node timeout) with a spare keeper left:
  failure      {kind: "node_lost", warm: true, host, node_rank, silent_s}
  diagnosis    {cause: "node_lost", host, action: "warm_replace", spare}
  replace      {host, spare, warm: true}     the spare keeps the node's place for the rest of the run
  warm_restart, then warm_resumed as above (phases add spare_joined: the spare fetched the node's snapshots)
The lost node's heartbeat files are removed (the spare's ranks write their own), and the next attempt, if any,
runs on the spare instead of the lost host. A straggler to replace (straggler.py) is swapped the same way over
SSH, at once, when a spare keeper is beating: failure {kind: "straggler", warm: true}, diagnosis {cause:
"straggler", action: "warm_replace", spare}, replace {warm: true}; its keeper sees itself replaced and steps
aside. The supervisor hosts the keepers' store for each attempt (HeadStore) and watches the keepers' beats
itself, so that no node is special: node 0 may be lost too. When the head's
address for the nodes cannot be found (no route to the first host), node 0's keeper hosts the store and watches,
and a loss of node 0 ends the attempt (cold restart). Under --via slurm the keepers run inside the attempt's srun
step and each spare keeper in a one-node step of its own; a lost node is replaced the same way (supervisor/slurm.py).
A hang (no heartbeat for --hang-timeout, or at once for a rank its keeper reports stopped by a signal) is resolved
by SIGKILL of the stopped ranks (state T in the probe), else of the ranks the stacks blame (elsewhere while the
others wait in a collective), else of every stalled rank, which turns it into a rank exit the keepers repair; when a stalled
rank's host does not answer the probe (a lost node), the keepers get LOST_WAIT_S to replace it with a spare
(when the attempt has spare keepers), else the attempt is stopped and restarted cold.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from orchestrator.engine.warm import NodeWatch, parse_event
from orchestrator.errors import RemoteError
from orchestrator.launch.failures import signal_name
from orchestrator.launch.output import OutputLine
from orchestrator.supervisor.detect import pids_by_host

__all__ = ["WarmRestarts"]

log = logging.getLogger("orchestrator.supervisor.warm")

LOST_WAIT_S = 15.0
"""How long after a hang on an unreachable host the keepers may take to replace it before the attempt is stopped."""


BEAT_S = 0.2
NODE_TIMEOUT_S = 2.0
"""A keeper silent this long is a lost node (the keepers beat every 0.2 s)."""


class HeadStore:
    """One attempt's TCPStore, hosted here on the head, and the thread that watches the keepers' beats in it.

        store = HeadStore("10.0.0.1", nnodes=2, on_event=print, on_give_up=print)   # any free port
        attempt_plan(cfg, number, hosts, spares, store=store.endpoint)              # "10.0.0.1:41234"
        store.retire(1)        # a spare keeper takes node 1's place now (a straggler): the hand-over, or None
        store.close()                                                              # when the attempt ended

    on_event(event) gets each node_lost event (engine/warm.py NodeWatch), on_give_up(reason) the reason the run
    cannot go on warm (a node lost, no spare left); both are called in the watch thread.
    """

    def __init__(self, address: str, *, nnodes: int, on_event: Callable[[dict], None],
                 on_give_up: Callable[[str], None], node_timeout: float = NODE_TIMEOUT_S):
        from torch.distributed import TCPStore

        self.store = TCPStore("0.0.0.0", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=30))
        self.endpoint = f"{address}:{self.store.port}"
        self.watch = NodeWatch(self.store, nnodes=nnodes, node_timeout=node_timeout, report=on_event)
        self.on_give_up = on_give_up
        self.stopping = threading.Event()
        self.lock = threading.Lock()  # the watch thread's polls and retire() from the supervisor's loop
        self.thread = threading.Thread(target=self._run, daemon=True, name="head-store-watch")
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(BEAT_S):
            try:
                with self.lock:
                    reason = self.watch.poll()
            except Exception as exc:  # noqa: BLE001 - a watch error must not take the supervisor down
                log.warning("watching the keepers' beats: %s", exc)
                continue
            if reason is not None:
                self.on_give_up(reason)
                return

    def retire(self, node_rank: int) -> dict | None:
        """A spare keeper takes node `node_rank`'s place now (engine/warm.py NodeWatch.retire); None: no spare."""
        with self.lock:
            return self.watch.retire(node_rank)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        del self.store  # the server thread stops with its last reference


class WarmRestarts:
    def __init__(self, events, runner, *, hang_timeout: float, kill_timeout: float = 10.0,
                 heartbeat_dir: Path | None = None):
        self.events, self.runner, self.heartbeat_dir = events, runner, heartbeat_dir
        self.hang_timeout, self.kill_timeout = hang_timeout, kill_timeout
        self.killed: dict[int, str] = {}  # pid -> why the supervisor killed it
        self.dead: set[int] = set()  # pids of ranks the keepers reported gone or killed (replacements on the way)
        self.stopped: set[int] = set()  # pids of ranks the keepers reported stopped by a signal, not yet handled
        self.generations: set[int] = set()
        self.phases: dict[str, float] = {}  # of the recovery in progress: event -> first/last time on the nodes
        self.recovering: int | None = None  # the attempt whose warm recovery is in progress
        self.resumes = 0
        self.paused_until = 0.0
        self.awaiting_loss: set[str] = set()  # unreachable hosts the keepers were given time to replace
        self.swapped_out: set[str] = set()  # heartbeat hostnames of stragglers swapped for a spare in-run
        self.address: str | None = None  # the head's, as the nodes dial it ('' when not found)

    # ---- the keepers' store -----------------------------------------------------------------------------------
    def open_store(self, attempt_hosts: list[str], *, loop, stop: asyncio.Event,
                   attempt: Callable[[], object]) -> HeadStore | None:
        """The attempt's store on the head (None: node 0's keeper hosts it, when the head's address is unknown).
        attempt(): the Attempt its events belong to (made after the plan, which needs the store's endpoint)."""
        if self.address is None:
            try:
                self.address = self.runner.head_address(attempt_hosts[0])
            except (OSError, ValueError, AttributeError, RemoteError) as exc:
                log.warning("the keepers' store stays on node 0 (its loss then means a cold restart): no address "
                            "of this machine on the route to %s: %s", attempt_hosts[0], exc)
                self.address = ""
        if not self.address:
            return None

        def give_up(reason: str) -> None:
            def now() -> None:
                self.events.emit("warm_give_up", attempt=attempt().number, host=None, reason=reason)
                stop.set()
            loop.call_soon_threadsafe(now)

        return HeadStore(self.address, nnodes=len(attempt_hosts), on_give_up=give_up,
                         on_event=lambda e: loop.call_soon_threadsafe(self._node_lost, attempt(), e))

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
        elif kind == "rank_stopped" and event.get("pid") is not None:
            self.stopped.add(event["pid"])
        elif kind == "stuck":
            # its keeper killed it and gave its rank to a standby: its heartbeat stops until the standby beats,
            # which is no hang (a probe, stack dump and kill through srun steps on the recovery's critical path)
            if event.get("pid") is not None:
                self.dead.add(event["pid"])
            self.events.emit("warm_stuck", attempt=attempt.number, host=line.host, rank=event.get("rank"),
                             pid=event.get("pid"), generation=event.get("generation"))
        elif kind == "give_up":
            self.events.emit("warm_give_up", attempt=attempt.number, host=line.host, reason=event.get("reason"))
        elif kind == "node_lost":
            self._node_lost(attempt, event)
        elif kind == "spare_joined":
            self.phases["spare_joined"] = event["time"]
            self.events.emit("warm_spare_joined", attempt=attempt.number, host=line.host,
                             **{k: event.get(k) for k in ("node_rank", "lost_host", "snapshots_from", "fetched",
                                                          "error", "seconds")})
        elif kind == "left":
            self.phases.setdefault("left", event["time"])
        elif kind == "joined" and event.get("generation", 0) > 0:
            self.phases["joined"] = event["time"]

    def _rank_exit(self, attempt, host: str | None, event: dict) -> None:
        pid, exitcode = event.get("pid"), int(event.get("exitcode", 1))
        self.dead.add(pid)
        # a survivor may have left its broken group before its keeper's news of the exit reached us
        self.phases = {"exit": event["time"], "seen": time.time()} | {k: v for k, v in self.phases.items() if k == "left"}
        self.recovering = attempt.number
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

    def _node_lost(self, attempt, event: dict) -> None:
        host, spare = event.get("host"), event.get("spare")
        self.awaiting_loss.discard(host)
        self._spare_took_place(
            attempt, event, host,
            failure={"kind": "node_lost", "host": host, "node_rank": event.get("node_rank"),
                     "silent_s": event.get("silent_s")},
            diagnosis={"cause": "node_lost", "host": host,
                       "detail": f"{host}'s keeper was silent for {event.get('silent_s')} s; {spare} takes its place"})

    def swap_straggler(self, attempt, slow, store: HeadStore) -> bool:
        """Swap a straggler for a spare keeper in-run (HeadStore.retire): its keeper steps aside (its ranks end),
        and the spare restores the node's ranks from their in-memory snapshots, as for a lost node. False when no
        spare keeper is beating (the caller then swaps it cold at the next checkpoint)."""
        placed = attempt.plan.rank_location(slow.ranks[0]) if slow.ranks else None
        handed = store.retire(attempt.plan.hosts.index(placed[0])) if placed else None
        if handed is None:
            return False
        self.swapped_out.add(slow.host)
        self._spare_took_place(
            attempt, handed, placed[0],
            failure={"kind": "straggler", "host": slow.host, "step": slow.step},
            diagnosis={"cause": "straggler", "host": slow.host,
                       "detail": f"{slow.describe()}; {handed['spare']} takes its place"})
        return True

    def _spare_took_place(self, attempt, handed: dict, host: str, *, failure: dict, diagnosis: dict) -> None:
        """A spare keeper took the place of plan host `host` in-run (handed: the node_lost event's fields): the
        recovery's start, the swap, its failure, diagnosis and replace events, and the node's beats forgotten."""
        spare = handed.get("spare")
        self.phases = {"exit": handed["time"], "seen": time.time()}
        self.recovering = attempt.number
        attempt.swaps[host] = spare
        self.events.emit("failure", attempt=attempt.number, warm=True, **failure)
        self.events.emit("diagnosis", attempt=attempt.number, rank=None, signal=None, action="warm_replace",
                         spare=spare, **diagnosis)
        self.events.emit("replace", host=host, spare=spare, warm=True)
        self._forget_beats(attempt.plan.nodes[handed["node_rank"]].ranks if "node_rank" in handed else ())
        self.paused_until = time.time() + self.hang_timeout  # the spare's ranks have not beaten yet

    def live(self, beats: dict[str, dict]) -> dict[str, dict]:
        """The heartbeats but those of stragglers swapped out in-run: their ranks end after the swap, and a last
        beat written then would look like a hang and stop the straggler windows."""
        return {k: b for k, b in beats.items() if b.get("host") not in self.swapped_out}

    def _forget_beats(self, ranks) -> None:
        """Remove the lost node's heartbeat files: they would look like a hang, and the spare writes its own."""
        from orchestrator.engine.heartbeat import read_heartbeats

        if self.heartbeat_dir is None:
            return
        for stem, beat in read_heartbeats(self.heartbeat_dir).items():
            if beat.get("rank") in ranks:
                (self.heartbeat_dir / f"{stem}.json").unlink(missing_ok=True)

    def apply_swaps(self, attempt, hosts: list, spares: list) -> list:
        """The hosts after the attempt's in-run replacements (a spare used leaves `spares`; the lost host is out)."""
        if not attempt.swaps:
            return hosts
        by_name = {h.name: h for h in hosts + spares}
        out = [by_name.get(attempt.swaps.get(h.name), h) for h in hosts]
        spares[:] = [s for s in spares if s.name not in attempt.swaps.values()]
        return out

    def survived(self, attempt) -> bool:
        """The attempt ended with only its replaced hosts failed or lost: the run is done."""
        result = attempt.result
        if not attempt.swaps or result.stopped_by is not None:
            return False
        lost = set(attempt.swaps)
        return set(result.unreachable) <= lost and all(f.host in lost for f in result.failures)

    # ---- metrics --------------------------------------------------------------------------------------------
    def on_step(self, attempt, record: dict, seen_at: float, previous_step: int | None,
                step_seen: dict[int, float]) -> None:
        """A metrics record; the first one after a restore closes the recovery: from memory, or from a disk
        checkpoint newer than every snapshot while a warm recovery is under way (not a cold attempt's start)."""
        source = record.get("resume_source")
        if source is None or source != "memory" and self.recovering != attempt.number:
            return
        resumed = record.get("resumed_from")
        since = step_seen.get(resumed)
        lost = None if since is None else round(seen_at - since - float(record.get("step_time_s") or 0.0), 3)
        phases = {k: round(v, 3) for k, v in self.phases.items()} | {"first_step_seen": round(seen_at, 3)}
        self.resumes += 1
        self.events.emit("warm_resumed", attempt=attempt.number, step=record["step"], resumed_from=resumed,
                         steps_lost=None if previous_step is None or resumed is None else max(0, previous_step - resumed),
                         time_lost_s=lost, phases=phases, source=source)
        self.phases, self.recovering = {}, None

    # ---- hangs ----------------------------------------------------------------------------------------------
    def hang_check_paused(self, now: float) -> bool:
        return now < self.paused_until

    def still_stalled(self, stalled: list[dict]) -> list[dict]:
        """The stalled heartbeats but those of ranks the keepers already reported gone: their beats stop until
        the replacement writes its own (a replacement that never comes is the keeper's to give up on)."""
        return [b for b in stalled if b.get("pid") is None or b["pid"] not in self.dead]

    def stopped_ranks(self, beats: dict[str, dict]) -> list[dict]:
        """The heartbeats of ranks their keepers reported stopped by a signal: a hang known now, not after
        --hang-timeout. Each report is handed out once (a report without a heartbeat yet waits for it)."""
        found = [b for b in beats.values() if b.get("pid") in self.stopped and b["pid"] not in self.dead]
        self.stopped -= {b["pid"] for b in found} | self.dead
        return found

    async def kill_hung(self, attempt, stalled: list[dict], probe: dict) -> bool:
        """SIGKILL the stopped ranks, else those the stacks blame (not in the collective the others wait in), else
        every stalled one; True when the kill reached every host asked.

        A stalled rank on a host the probe did not reach is a lost node: nothing is killed; when the attempt has
        spare keepers they get LOST_WAIT_S to replace it (True), else (or the second time) the attempt is stopped
        and restarted cold (False)."""
        stalled = [b for b in stalled if b.get("host") and b.get("pid")]
        if not stalled:
            return False
        gone = {b["host"] for b in stalled if b["host"] not in probe}
        if gone:
            if not attempt.plan.spares or gone & self.awaiting_loss:
                return False
            self.awaiting_loss |= gone
            self.events.emit("warm_wait", attempt=attempt.number, hosts=sorted(gone), wait_s=LOST_WAIT_S,
                             reason="unreachable: the keepers may replace it with a spare")
            self.paused_until = time.time() + LOST_WAIT_S
            return True
        stopped = {host: [pid for pid, state in states.items() if state in ("T", "t")] for host, states in probe.items()}
        targets = {h: p for h, p in stopped.items() if p} or _blamed(stalled, attempt.stacks) or pids_by_host(stalled)
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


def _blamed(stalled: list[dict], stacks: dict | None) -> dict[str, list[int]]:
    """host -> pids of the ranks the hang's stacks single out while the others wait in a collective (empty when
    no rank waits or none stands out: then nothing tells the culprit from its victims)."""
    stacks = stacks or {}
    blamed = set(stacks.get("culprit_ranks") or ())
    if not blamed or not any(g.get("waiting") for g in stacks.get("groups") or ()):
        return {}
    return pids_by_host([b for b in stalled if b.get("rank") in blamed])
