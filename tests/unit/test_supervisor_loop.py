"""The run loop over a scripted AttemptRunner (pure unit: no hosts; the real runners are in the integration tests).

Each case checks what the loop does with what a runner reports: the events it writes, whom it excludes and
drains, and the exit code.
"""

import asyncio
import time
import json

from orchestrator.hosts import Host
from orchestrator.launch.output import OutputLine
from orchestrator.launch.plan import LaunchSpec
from orchestrator.supervisor import Supervisor, SupervisorConfig
from orchestrator.supervisor.policy import Limits
from orchestrator.supervisor.runner import AttemptResult

KILLED = ("E1123 10:42:51.649000 22901 torch/distributed/elastic/multiprocessing/api.py:1002] "
          "failed (exitcode: -9) local_rank: 0 (pid: 4242) of binary: python3")


def killed(host):
    """torchrun's report of a SIGKILLed worker, as a runner hands it on."""
    return OutputLine(host, None, "stderr", KILLED, KILLED.encode())


class ScriptedRunner:
    """An AttemptRunner whose attempts end as scripted: (lines to print, AttemptResult) per attempt."""

    def __init__(self, attempts, health=None, drains=False):
        self.attempts, self.health, self.drains = list(attempts), health or {}, drains
        self.plans, self.excluded = [], []

    async def run_attempt(self, plan, *, sink, stop):
        self.plans.append(plan)
        lines, result = self.attempts.pop(0)
        for line in lines:
            sink(line)
        return result

    async def check_hosts(self, hosts, *, command, timeout):
        return {h: self.health.get(h, "ok") for h in hosts}

    async def probe_pids(self, pids, *, timeout):
        return {}

    def exclude(self, host, reason):
        self.excluded.append(host)
        return self.drains


def supervise(tmp_path, runner, hosts=("n1", "n2"), spares=(), **limits):
    cfg = SupervisorConfig(spec=LaunchSpec(program=("train.py",), run_id="r1", nproc_per_node=1),
                           hosts=[Host(h, 1) for h in hosts], spares=[Host(s, 1) for s in spares],
                           run_dir=tmp_path, limits=Limits(backoff_s=0.0, min_nodes=1, max_nodes=len(hosts),
                                                           **limits), poll_s=0.01)
    summary = asyncio.run(Supervisor(cfg, runner).run())
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    return summary, events


def test_a_killed_rank_is_diagnosed_and_the_same_hosts_relaunched(tmp_path):
    runner = ScriptedRunner([([killed("n2")], AttemptResult(exit_code=1)),
                             ([], AttemptResult(exit_code=0))])
    summary, events = supervise(tmp_path, runner)
    assert summary["exit_code"] == 0 and summary["outcome"] == "done"
    assert [e["event"] for e in events] == ["start", "launch", "failure", "health", "diagnosis", "restart", "launch",
                                            "done"]
    diagnosis = events[4]
    assert (diagnosis["cause"], diagnosis["host"], diagnosis["rank"]) == ("killed", "n2", 1)
    assert [p.run_id for p in runner.plans] == ["r1-a0", "r1-a1"] and runner.plans[1].hosts == ["n1", "n2"]


def test_an_unhealthy_host_is_excluded_drained_and_replaced(tmp_path):
    runner = ScriptedRunner([([killed("n2")], AttemptResult(exit_code=1)),
                             ([], AttemptResult(exit_code=0))], health={"n2": "check failed: exit 1"}, drains=True)
    summary, events = supervise(tmp_path, runner, spares=("s1",))
    assert summary["exit_code"] == 0 and runner.excluded == ["n2"]
    assert [(e["event"], e["host"]) for e in events if e["event"] in ("exclude", "drain", "replace")] == [
        ("exclude", "n2"), ("drain", "n2"), ("replace", "n2")]
    assert runner.plans[1].hosts == ["n1", "s1"]


def test_a_configuration_error_is_exit_2_and_never_retried(tmp_path):
    runner = ScriptedRunner([([], AttemptResult(exit_code=2, config_error=True))])
    summary, events = supervise(tmp_path, runner)
    assert summary["exit_code"] == 2 and len(runner.plans) == 1
    assert events[-1]["event"] == "gave_up" and "configuration error" in events[-1]["reason"]


def test_a_stopped_supervisor_exits_128_plus_the_signal(tmp_path):
    summary, events = supervise(tmp_path, ScriptedRunner([([], AttemptResult(exit_code=130, stopped_by=2))]))
    assert summary["exit_code"] == 130 and events[-1] | {"summary": None, "time": None} == {
        "event": "stopped", "reason": "signal 2", "summary": None, "time": None}


def test_max_restarts_gives_up_with_exit_1(tmp_path):
    crash = AttemptResult(exit_code=1)
    summary, events = supervise(tmp_path, ScriptedRunner([([], crash)] * 2), max_restarts=1)
    assert summary["exit_code"] == 1 and events[-1]["event"] == "gave_up"
    assert events[-1]["reason"].startswith("max restarts reached (1)")


class SlowNodeRunner(ScriptedRunner):
    """Attempt 0: ranks on n1 and n2 write heartbeats, n2's optimizer step 1.5x n1's, a checkpoint every 50 steps;
    it ends (exit 0, as a clean teardown reports) only when the loop stops it. Later attempts: as scripted."""

    async def run_attempt(self, plan, *, sink, stop):
        if self.plans:
            return await super().run_attempt(plan, sink=sink, stop=stop)
        self.plans.append(plan)
        run_dir = self.run_dir
        for step in range(5, 5000, 5):  # 5 steps per poll interval or so
            for rank, host in enumerate(plan.hosts):
                beat = {"rank": rank, "host": host, "step": step, "status": "training", "time": time.time(),
                        "compute_steps": step, "compute_s": step * 0.006 * (1.5 if host == "n2" else 1.0),
                        "compute_group": "pp0"}
                (run_dir / "heartbeat" / f"{host}-rank{rank}.json").write_text(json.dumps(beat))
            if step % 50 == 0:
                (run_dir / "checkpoints" / f"step-{step}").mkdir(parents=True)
                (run_dir / "checkpoints" / f"step-{step}" / "meta.json").write_text('{"files": {}}')
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.005)
                return AttemptResult(exit_code=0, teardown={h: "clean" for h in plan.hosts})
            except asyncio.TimeoutError:
                continue
        return AttemptResult(exit_code=0)


def test_a_straggler_is_replaced_by_the_spare_at_the_next_checkpoint(tmp_path):
    runner = SlowNodeRunner([([], AttemptResult(exit_code=0))])
    runner.run_dir = tmp_path
    summary, events = supervise(tmp_path, runner, spares=("s1",))
    assert summary["exit_code"] == 0 and summary["outcome"] == "done" and summary["stragglers"] == ["n2"]
    named = next(e for e in events if e["event"] == "straggler")
    stop = next(e for e in events if e["event"] == "failure")
    assert named["host"] == "n2" and named["slowdown"] == 1.5 and named["action"] == "replace at the next checkpoint"
    assert stop["kind"] == "straggler" and stop["checkpoint_step"] > named["step"]
    assert [(e["event"], e.get("host")) for e in events if e["event"] in ("diagnosis", "exclude", "replace")] == [
        ("diagnosis", "n2"), ("exclude", "n2"), ("replace", "n2")]
    assert [p.hosts for p in runner.plans] == [["n1", "n2"], ["n1", "s1"]]
    restart = next(e for e in events if e["event"] == "restart")
    assert restart["cause"] == "straggler" and restart["resume_step"] == stop["checkpoint_step"]
