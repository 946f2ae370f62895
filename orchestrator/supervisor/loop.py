"""The supervised run: launch, watch, tear down, health-check, exclude/replace/shrink, relaunch; until done.

    plan = plan_supervise(LaunchSpec(program=("orchestrator.engine", "--config", "tiny", "--run-dir", "runs/t1"),
                                     module=True, run_id="t1", nproc_per_node=2, python=(".venv/bin/python",)),
                          SuperviseOptions(hosts="node[1-4]", spare_hosts="node5", nodes="2:4",
                                           ssh=SshOptions(config="ssh_config")))            # see plan.py
    summary = asyncio.run(Supervisor(plan.config, plan.runner).run())
    summary["outcome"], summary["exit_code"], summary["ettr"]       # 'done', 0, 0.83

Each attempt is one orchestrator.launch plan (run id RUNID-aN, its logs under RUN_DIR/attempts/RUNID-aN/),
with ORCH_HEARTBEAT_DIR=RUN_DIR/heartbeat added to the ranks' env. The program must resume by itself from
the newest complete checkpoint under its run dir (the engine does: `--run-dir` the same on every attempt);
RUN_DIR is the program's `--run-dir` when it has one, so events.jsonl sits next to metrics.jsonl and
checkpoints/ (what `orchestrator plot` and `orchestrator status` read). The run dir is on a file system the
head and every node share, or, with shared_run_dir False, each node's heartbeats and metrics lines come back over
its SSH session into the head's run dir (relay.py): this loop reads the same files either way.

While an attempt runs, three detectors watch it (detect.py): the first torchrun "failed (exitcode" line
(a rank exit, within ~0.3 s), the runner's own results (a node's launcher exit, a lost control connection),
and the heartbeat files (a hang after --hang-timeout, or at once under warm restarts when a node's keeper reports
a rank stopped by a signal; the stalled ranks' processes are probed so a stopped or stuck one is named, and every
rank's Python stack is dumped so the one not where the others wait is named).
Then the runner (runner.py: over SSH, or Slurm steps in slurm.py) tears the attempt down on every host
(verified), the hosts and spares are health-checked, the culprit is named (diagnosis.py), policy.decide()
picks the next host list, and after a backoff the next attempt starts. Exit codes: 0 done; 1 gave up; 128+N
stopped by signal N; 2 when the attempt reports a configuration error (Slurm's requeue contract; never retried).

The heartbeats also feed the straggler detector (straggler.py), which may stop an attempt at a checkpoint to
swap a slow node for a spare (a "straggler" diagnosis). Under warm restarts (warm.py) a rank exit or a hang
does not end the attempt: the node keepers replace the rank in-run; and a straggler is swapped for a spare
keeper in-run, as a lost node is.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from orchestrator.contracts import signal_exit_code
from orchestrator.engine.checkpoint_files import newest_checkpoint
from orchestrator.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from orchestrator.hosts import Host
from orchestrator.launch.output import OutputLine
from orchestrator.supervisor import policy
from orchestrator.supervisor.detect import MetricsTail, parse_rank_exit, pids_by_host, stalled_ranks
from orchestrator.supervisor.diagnosis import Attempt, Diagnosis, diagnose
from orchestrator.supervisor.events import EventLog, read_events, read_metrics, summarize
from orchestrator.supervisor.flight import flight_report, with_flight
from orchestrator.supervisor.hangdump import dump_ranks
from orchestrator.supervisor.plan import SupervisorConfig, attempt_plan, local_checkpoints
from orchestrator.supervisor.preflight import apply_preflight
from orchestrator.supervisor.runner import AttemptRunner
from orchestrator.supervisor.stacks import hang_stacks
from orchestrator.supervisor.warm import WarmRestarts
from orchestrator.supervisor.straggler import StragglerWatch

__all__ = ["Supervisor", "local_checkpoint"]

log = logging.getLogger("orchestrator.supervisor.loop")


class Supervisor:
    def __init__(self, cfg: SupervisorConfig, runner: AttemptRunner, *, sink=None, preflight=None):
        """runner: runs attempts and checks hosts (runner.SshAttempts, slurm.SlurmSteps); sink(OutputLine) gets
        every output line of every attempt; preflight: the health gate's CheckReport over the hosts and spares,
        whose failed nodes leave before attempt 0 (preflight.py)."""
        self.cfg, self.runner, self.sink, self.preflight = cfg, runner, sink, preflight
        self.run_dir = cfg.run_dir
        self.events = EventLog(cfg.run_dir)
        self.heartbeat_dir = cfg.run_dir / "heartbeat"
        self.state = policy.PolicyState()
        self.step_seen: dict[int, float] = {}
        self.metrics = MetricsTail(cfg.run_dir / "metrics.jsonl")
        # a run dir used before: its metrics say what the nodes hold (read only where that matters)
        self.local_checkpoint = (local_checkpoint(read_metrics(cfg.run_dir), None) if local_checkpoints(cfg.spec)
                                 else None)
        """The engine's node-local checkpoints (--checkpoint-local), which the head cannot see: the newest step
        its metrics said every rank holds."""
        self.started_at = time.time()
        self.current: Attempt | None = None
        self.warm = WarmRestarts(self.events, runner, hang_timeout=cfg.hang_timeout, kill_timeout=cfg.health_timeout,
                                 heartbeat_dir=self.heartbeat_dir) if cfg.restart == "warm" else None

    # ---- the whole run ------------------------------------------------------------------------------------
    async def run(self) -> dict:
        cfg = self.cfg
        hosts, spares = list(cfg.hosts), list(cfg.spares)
        self.events.emit("start", run_id=cfg.spec.run_id, restart=cfg.restart, hosts=[h.name for h in hosts],
                         spares=[h.name for h in spares], limits=asdict(cfg.limits),
                         hang_timeout=cfg.hang_timeout, program=list(cfg.spec.program))
        number, end, exit_code = 0, None, EXIT_FAILURE
        try:
            if self.preflight is not None:
                hosts, short = apply_preflight(self.preflight, hosts, spares, limits=cfg.limits, events=self.events,
                                               runner=self.runner)
                end = ("gave_up", {"reason": short}) if short else None
            while end is None:
                attempt = await self._attempt(number, hosts, spares)
                if self.warm is not None:
                    hosts = self.warm.apply_swaps(attempt, hosts, spares)
                result = attempt.result
                if result is not None and result.stopped_by is not None:
                    end, exit_code = ("stopped", {"reason": f"signal {result.stopped_by}"}), signal_exit_code(result.stopped_by)
                    break
                if (attempt.error is None and attempt.hang is None and attempt.straggler is None and result is not None
                        and (result.exit_code == 0 or self.warm is not None and self.warm.survived(attempt))):
                    end, exit_code = ("done", {}), EXIT_OK
                    break
                if result is not None and result.config_error:  # the requeue contract: never retried
                    end, exit_code = ("gave_up", {"reason": "configuration error (exit 2): not retried"}), EXIT_USAGE
                    break
                decision, diagnosis = await self._recover(attempt, hosts, spares)
                if decision.action == "give_up":
                    end = ("gave_up", {"reason": decision.reason, "last_cause": diagnosis.cause})
                    break
                hosts = self._apply(decision, hosts, spares)
                resume, skipped = self._newest_checkpoint()
                lost = None if attempt.last_step is None else attempt.last_step - (resume or 0)
                self.events.emit("restart", attempt=number + 1, resume_step=resume, skipped_checkpoints=skipped,
                                 steps_lost=lost, backoff_s=round(decision.backoff_s, 2), cause=diagnosis.cause,
                                 hosts=[h.name for h in hosts])
                await asyncio.sleep(decision.backoff_s)
                number += 1
        except asyncio.CancelledError:
            end, exit_code = ("stopped", {"reason": "cancelled"}), 130
            raise
        finally:
            kind, extra = end or ("stopped", {"reason": "supervisor error"})
            summary = summarize(read_events(self.run_dir) + [{"event": kind, "time": time.time(), **extra}],
                                read_metrics(self.run_dir))
            self.events.emit(kind, **extra, summary=summary)
            self.events.close()
        return summary | {"exit_code": exit_code}

    # ---- one attempt ----------------------------------------------------------------------------------------
    async def _attempt(self, number: int, hosts: list[Host], spares: list[Host]) -> Attempt:
        """One attempt; under warm restarts with its keepers' store on the head (supervisor/warm.py)."""
        stop = asyncio.Event()
        store = None if self.warm is None else self.warm.open_store(
            [h.name for h in hosts], loop=asyncio.get_running_loop(), stop=stop, attempt=lambda: self.current)
        try:
            return await self._run_attempt(number, hosts, spares, stop, store)
        finally:
            if store is not None:
                store.close()

    async def _run_attempt(self, number: int, hosts: list[Host], spares: list[Host], stop: asyncio.Event,
                           store) -> Attempt:
        from orchestrator.engine.heartbeat import read_heartbeats

        plan = attempt_plan(self.cfg, number, hosts, spares, store=store.endpoint if store else None)
        shutil.rmtree(self.heartbeat_dir, ignore_errors=True)  # last attempt's beats would look like a hang
        self.heartbeat_dir.mkdir(parents=True)
        resume, skipped = self._newest_checkpoint()
        policy.note_launch(self.state, resume)
        attempt = self.current = Attempt(number, plan, time.time())
        self.events.emit("launch", attempt=number, run_id=plan.run_id, hosts=plan.hosts, world_size=plan.world_size,
                         resume_step=resume, skipped_checkpoints=skipped, logs=str(Path(plan.run_dir) / "logs"))
        watch = StragglerWatch(self.cfg.straggler, events=self.events, checkpoint=lambda: self._newest_checkpoint()[0],
                               attempt=number, spares=len(spares),
                               # in-run swaps are tested over SSH; under Slurm a straggler is swapped cold
                               at_once=store is not None and bool(plan.spares) and self.cfg.via == "ssh")

        def sink(line: OutputLine) -> None:
            if attempt.rank_exit is None and not stop.is_set() and (found := parse_rank_exit(line)) is not None:
                attempt.rank_exit = found
                node = plan.node(found.host) if found.host in plan.hosts else None
                self.events.emit("failure", attempt=number, kind="rank_exit", host=found.host,
                                 rank=node.first_rank + found.local_rank if node else None,
                                 local_rank=found.local_rank, exitcode=found.exitcode, signal=found.signal,
                                 pid=found.pid, since_launch_s=round(found.seen_at - attempt.launched_at, 3))
            if self.warm is not None:
                self.warm.on_line(attempt, line)
            if self.sink is not None:
                self.sink(line)

        task = asyncio.ensure_future(self.runner.run_attempt(plan, sink=sink, stop=stop))
        while not task.done():
            await asyncio.wait({task}, timeout=self.cfg.poll_s)
            self._poll_metrics(attempt)
            if stop.is_set() or attempt.rank_exit is not None or task.done():
                continue
            if self.warm is not None and self.warm.hang_check_paused(time.time()):
                continue  # the ranks killed for a hang are being replaced
            beats = read_heartbeats(self.heartbeat_dir)
            if self.warm is not None:
                beats = self.warm.live(beats)
            stalled = stalled_ranks(beats, now=time.time(), hang_timeout=self.cfg.hang_timeout,
                                    startup_timeout=self.cfg.startup_timeout, launched_at=attempt.launched_at,
                                    expected=plan.world_size)
            found = "heartbeat_timeout"
            if self.warm is not None:
                stalled = self.warm.still_stalled(stalled)
                if not stalled and (stalled := self.warm.stopped_ranks(beats)):
                    found = "stopped"  # the keeper saw the rank stopped by a signal
            if stalled:
                attempt.hang = stalled
                self.events.emit("failure", attempt=number, kind="hang", found=found, hang_timeout=self.cfg.hang_timeout,
                                 stalled=[{k: b.get(k) for k in ("host", "rank", "step", "status", "time", "pid",
                                                                 "missing")} for b in stalled])
                # a rank its keeper saw stopped is the culprit already: no flight recorder dump to wait for (a rank's
                # first one takes a second or two)
                attempt.probe = await self._probe(stalled, attempt, beats, flight_recorders=found != "stopped")
                if self.warm is not None and await self.warm.kill_hung(attempt, stalled, attempt.probe):
                    attempt.hang = None  # the keepers replace the killed ranks: the attempt goes on
                    continue
                stop.set()
            elif (slow := watch.poll(beats)) is not None:
                if not watch.at_once:
                    attempt.straggler = slow
                    stop.set()
                elif self.warm.swap_straggler(attempt, slow, store):
                    watch.swapped()
                else:
                    watch.at_next_checkpoint()
        try:
            attempt.result = task.result()
        except Exception as exc:  # noqa: BLE001 - a launcher-side error is one more failure to recover from
            log.warning("attempt %d: launcher error: %s", number, exc, exc_info=True)
            attempt.error = f"{type(exc).__name__}: {exc}"
            self.events.emit("failure", attempt=number, kind="launcher_error", error=attempt.error)
        self._poll_metrics(attempt)
        return attempt

    async def _probe(self, stalled: list[dict], attempt: Attempt, beats: dict[str, dict], *,
                     flight_recorders: bool) -> dict:
        """The stalled ranks' /proc states; meanwhile every rank's Python stack and flight recorder (hangdump.py,
        stacks.py, flight.py)."""
        dumps = asyncio.ensure_future(dump_ranks(self.runner, attempt.plan, beats, timeout=self.cfg.health_timeout,
                                                swaps=attempt.swaps, flight_recorders=flight_recorders))
        try:
            probe = await self.runner.probe_pids(pids_by_host(stalled), timeout=self.cfg.health_timeout)
        except Exception as exc:  # noqa: BLE001 - the probe only sharpens the diagnosis
            log.warning("process probe failed: %s", exc)
            probe = {}
        dumps = await dumps
        attempt.stacks = with_flight(hang_stacks(dumps, probe), flight_report(dumps))
        self.events.emit("hang_stacks", attempt=attempt.number, **attempt.stacks)
        log.warning("attempt %d hung: %s", attempt.number, attempt.stacks["culprit"])
        if "flight_recorder" in attempt.stacks and "flight recorder:" not in attempt.stacks["culprit"]:
            log.warning("attempt %d flight recorder: %s", attempt.number, attempt.stacks["flight_recorder"]["line"])
        return probe

    def _poll_metrics(self, attempt: Attempt) -> None:
        for record in self.metrics.poll():
            step, seen = record["step"], record["seen_at"]
            if self.warm is not None:
                self.warm.on_step(attempt, record, seen, attempt.last_step, self.step_seen)
            attempt.last_step = step
            self.local_checkpoint = local_checkpoint([record], self.local_checkpoint)
            if not attempt.first_step_seen:
                attempt.first_step_seen = True
                policy.note_success(self.state)
                resumed = record.get("resumed_from")
                since = self.step_seen.get(resumed) if resumed else self.started_at
                lost = None
                if attempt.number > 0 and since is not None:
                    lost = round(seen - since - float(record.get("step_time_s") or 0.0), 3)
                where = {k: record[k] for k in ("resume_source", "restored") if k in record}
                self.events.emit("first_step", attempt=attempt.number, step=step, resumed_from=resumed,
                                 since_launch_s=round(seen - attempt.launched_at, 3), time_lost_s=lost, **where)
            self.step_seen[step] = seen

    def _newest_checkpoint(self) -> tuple[int | None, list[str]]:
        """(the step the next attempt resumes from, why newer DCP checkpoints were skipped): the run dir's DCP
        checkpoints, else the node-local ones the engine reported."""
        step, skipped = newest_checkpoint(self.run_dir)
        return (self.local_checkpoint if step is None else step), skipped

    # ---- between attempts -------------------------------------------------------------------------------
    async def _recover(self, attempt: Attempt, hosts: list[Host],
                       spares: list[Host]) -> tuple[policy.Decision, Diagnosis]:
        names = [h.name for h in hosts] + [s.name for s in spares]
        # Without a check command "healthy" means reachable, and a host whose teardown just came back clean was
        # reached a moment ago: skip its second round trip (it is on the recovery's critical path).
        teardown = attempt.result.teardown if attempt.result is not None else {}
        reached = [] if self.cfg.health_command else [h for h in names if teardown.get(h) == "clean"]
        todo = [h for h in names if h not in reached]
        checked = await self.runner.check_hosts(todo, command=self.cfg.health_command or None,
                                                timeout=self.cfg.health_timeout)
        health = dict.fromkeys(reached, "ok") | checked
        self.events.emit("health", attempt=attempt.number, results=health,
                         command=list(self.cfg.health_command) or ["true"], reached_by_teardown=reached)
        diagnosis = diagnose(attempt, health)
        self.events.emit("diagnosis", attempt=attempt.number, **diagnosis.to_event())
        blame = policy.blame_from(signal=diagnosis.signal, kind=diagnosis.cause, host=diagnosis.host)
        checkpoint, _ = self._newest_checkpoint()
        decision = policy.decide([h.name for h in hosts], spares=[s.name for s in spares], blame=blame,
                                 health=health, checkpoint_step=checkpoint, state=self.state, limits=self.cfg.limits)
        for host, why in decision.excluded.items():
            self.events.emit("exclude", host=host, reason=why)
            if self.runner.exclude(host, why):
                self.events.emit("drain", host=host, reason=why)
        for old, new in decision.replaced.items():
            self.events.emit("replace", host=old, spare=new)
        if decision.shrunk:
            self.events.emit("shrink", from_nodes=decision.shrunk[0], to_nodes=decision.shrunk[1],
                             world_size=decision.shrunk[1] * self.cfg.limits.nproc_per_node)
        return decision, diagnosis

    def _apply(self, decision: policy.Decision, hosts: list[Host], spares: list[Host]) -> list[Host]:
        """The next attempt's hosts; spares used or excluded leave the spare list, healthy leftovers join it."""
        by_name = {h.name: h for h in hosts + spares}
        chosen = [by_name[n] for n in decision.hosts]
        left_out = [h for h in hosts if h.name not in decision.hosts and h.name not in decision.excluded]
        spares[:] = [s for s in spares if s.name not in decision.hosts] + left_out
        return chosen


def local_checkpoint(records: list[dict], newest: int | None) -> int | None:
    """The newest node-local checkpoint after these metrics records (in order), starting from `newest`: a save
    reports local_checkpoint, a restore from node-local checkpoints (resume_source local or peer) drops every
    newer one."""
    for record in records:
        if record.get("resume_source") in ("local", "peer"):
            newest = record.get("resumed_from")
        if type(record.get("local_checkpoint")) is int:
            newest = record["local_checkpoint"]
    return newest
