"""A run dir the nodes do not share: the forwarder (node side, a real process here) and the relay (head side)."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.contracts import HEARTBEAT_ENV, RELAY_KEY_ENV, RUN_TMPDIR
from orchestrator.errors import ConfigError
from orchestrator.hosts import Host
from orchestrator.launch.plan import LaunchSpec, build_plan
from orchestrator.remote.fanout import run_on_async
from orchestrator.remote.local import LocalTransport
from orchestrator.supervisor.plan import SuperviseOptions, plan_supervise
from orchestrator.supervisor.relay import MARK, Relay, RelayTransport, forward_plan, head_marker

KEY = "k3y"
# The launcher's stand-in: ranks' heartbeats through the engine's own writer, the engine's metrics lines, output
# on both streams (one line left open, then finished), its env for the test to see, and an exit code of its own.
CHILD = r"""
import json, os, sys, time
from orchestrator.engine.heartbeat import Heartbeat
out = sys.argv[1]
json.dump({k: os.environ.get(k) for k in ("ORCH_HEARTBEAT_DIR", "ORCH_RELAY_KEY")}, open(out + "/env.json", "w"))
beats = [Heartbeat.from_env(rank=r, local_rank=r, world_size=2) for r in (0, 1)]
for step in range(1, 4):
    for hb in beats:
        hb.beat(step=step)
    with open(out + "/metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": step, "loss": 1.0 / step}) + "\n")
    print("step", step, flush=True)
    sys.stderr.write("half a line ")
    sys.stderr.flush()
    time.sleep(0.15)
    sys.stderr.write("and its end\n")
    sys.stderr.flush()
beats[1].beat(status="failed")
sys.exit(3)
"""


def forwarder(tmp_path: Path, *, shared: bool = False, own_tmpdir: bool = False) -> list[str]:
    node = tmp_path / "node"
    node.mkdir(exist_ok=True)
    (node / "metrics.jsonl").write_text('{"step": 0, "earlier": "attempt"}\n')
    head = tmp_path / "head"
    if shared:
        head_marker(head, "r1-a0").parent.mkdir(parents=True)
        head_marker(head, "r1-a0").touch()
    plan = build_plan(LaunchSpec(program=("train.py",), run_id="r1-a0", python=(sys.executable,)), [Host("node1")])
    relay = Relay(KEY, head, node_metrics=str(node / "metrics.jsonl"), every=0.05)
    argv = relay.forwarder(sys.executable, "r1-a0", own_tmpdir=own_tmpdir)
    node0 = plan.nodes[0]
    assert forward_plan(plan, relay).nodes[0].argv == (*relay.forwarder(node0.python, "r1-a0"), *node0.argv)
    return [*argv, sys.executable, "-c", CHILD, str(node)]


def run_forwarder(tmp_path: Path, **kwargs) -> tuple[subprocess.CompletedProcess, dict]:
    env = {RELAY_KEY_ENV: KEY, RUN_TMPDIR: str(tmp_path), HEARTBEAT_ENV: str(tmp_path / "head" / "heartbeat"),
           "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run(forwarder(tmp_path, **kwargs), capture_output=True, timeout=60, env=env)
    return done, json.loads((tmp_path / "node" / "env.json").read_text())


def test_the_forwarder_relays_beats_and_new_metrics_lines_between_the_launchers_lines(tmp_path):
    done, env = run_forwarder(tmp_path)
    assert done.returncode == 3, done.stderr
    assert env == {"ORCH_HEARTBEAT_DIR": str(tmp_path / "heartbeat"), "ORCH_RELAY_KEY": None}  # node-local, no key
    relay, kept = Relay(KEY, tmp_path / "head"), {}
    relay.mark("r1-a0")
    for stream in ("stdout", "stderr"):
        kept[stream] = [line for line in getattr(done, stream).decode().split("\n")[:-1] if not relay.take(line)]
    assert kept == {"stdout": ["step 1", "step 2", "step 3"], "stderr": ["half a line and its end"] * 3}
    node_beats = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "heartbeat").glob("*.json")}
    head_beats = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "head" / "heartbeat").glob("*.json")}
    assert head_beats == node_beats and len(head_beats) == 2  # the last beat of each rank, "failed" included
    assert sorted(b["status"] for b in head_beats.values()) == ["failed", "training"]
    head_metrics = (tmp_path / "head" / "metrics.jsonl").read_text().splitlines()
    assert head_metrics == (tmp_path / "node" / "metrics.jsonl").read_text().splitlines()[1:]  # not the earlier one


def test_under_srun_the_forwarder_makes_and_removes_its_own_temp_dir(tmp_path):
    done, env = run_forwarder(tmp_path, own_tmpdir=True)  # RUN_TMPDIR (tmp_path) is only the base here
    assert done.returncode == 3, done.stderr
    beats = Path(env["ORCH_HEARTBEAT_DIR"])
    assert beats.name == "heartbeat" and beats.parent.parent == tmp_path and beats.parent.name.startswith("orch-relay-")
    assert not beats.parent.exists()  # removed once the launcher was gone
    relay = Relay(KEY, tmp_path / "head")
    relay.mark("r1-a0")
    assert sum(map(relay.take, (done.stdout + done.stderr).decode().split("\n"))) >= 2 + 3  # both beats, 3 metrics
    assert len(list((tmp_path / "head" / "heartbeat").glob("*.json"))) == 2


def test_a_node_that_sees_the_heads_marker_shares_its_run_dir_and_relays_nothing(tmp_path):
    done, env = run_forwarder(tmp_path, shared=True)
    assert done.returncode == 3 and b"\x1frelay" not in done.stdout + done.stderr
    assert env == {"ORCH_HEARTBEAT_DIR": str(tmp_path / "head" / "heartbeat"), "ORCH_RELAY_KEY": None}


def test_relay_lines_never_reach_the_runs_output_through_a_transport(tmp_path):
    relay, seen = Relay(KEY, tmp_path / "head"), []
    relay.mark("r1-a0")
    beat = {"rank": 0, "step": 5, "status": "training", "time": 1.0}
    script = (f"print({relay.prefix!r} + 'hb node1-rank0 ' + {json.dumps(json.dumps(beat))}); print('hello'); "
              f"print({MARK!r} + 'wrong hb node1-rank0 {{}}')")

    async def go():
        return await run_on_async(["localhost"], [sys.executable, "-c", script],
                                  transport=RelayTransport(LocalTransport(), relay),
                                  on_line=lambda host, stream, line: seen.append(line))

    assert asyncio.run(go()).exit_code == 0
    assert seen == ["hello", f"{MARK}wrong hb node1-rank0 {{}}"]  # another key is output like any other line
    assert json.loads((tmp_path / "head" / "heartbeat" / "node1-rank0.json").read_text()) == beat


@pytest.mark.parametrize("line", [f"{MARK}{KEY} hb ../x-rank1 {{}}", f"{MARK}{KEY} hb n1-rank1 [1]",
                                  f"{MARK}{KEY} hb n1-rank1 {{", f"{MARK}{KEY} m not json", f"{MARK}{KEY} zz {{}}"])
def test_malformed_records_are_dropped_not_written(tmp_path, line):
    relay = Relay(KEY, tmp_path)
    relay.mark("r1-a0")
    assert relay.take(line)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [".head-r1-a0"]


def engine_plan(*program: str, **opts):
    spec = LaunchSpec(program=("orchestrator.engine", "--run-dir", "/data/r1", *program), module=True, run_id="r1",
                      nproc_per_node=1, run_dir="runs")
    return plan_supervise(spec, SuperviseOptions(hosts="n[1-2]", shared_run_dir=False, **opts), environ={})


def test_the_plan_starts_every_launcher_under_the_forwarder_with_the_runs_key():
    p = engine_plan()
    node = p.first_attempt.nodes[1]
    at = node.argv.index("--")
    assert node.argv[at + 1:at + 4] == ("python3", "-m", "orchestrator.engine.keeper")  # warm, as when shared
    assert node.argv[at - 6:at] == ("--every", "0.2", "--shared-if", str(head_marker(Path("/data/r1"), "r1-a0")),
                                    "--metrics", "/data/r1/metrics.jsonl")
    assert p.first_attempt.env.values[RELAY_KEY_ENV] == p.config.relay_key and len(p.config.relay_key) == 16
    assert p.to_json()["shared_run_dir"] is False and p.to_json()["plan"]["env"]["values"][RELAY_KEY_ENV] == "***"
    assert "not shared" in p.describe()[-2] and "$(cat orchestrator/supervisor/forwarder.py)" in p.describe()[-3]
    assert p.runner.relay is not None


@pytest.mark.parametrize(("program", "opts", "field"), [
    (("--checkpoint-every", "5"), {}, "--checkpoint-every"),
    (("--checkpoint-every=5",), {"restart": "cold"}, "--checkpoint-every"),
])
def test_what_a_private_run_dir_cannot_do_is_a_config_error(program, opts, field):
    environ = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_NUM_NODES": "2"}
    spec = LaunchSpec(program=("orchestrator.engine", *program), module=True, run_id="r1", nproc_per_node=1)
    with pytest.raises(ConfigError) as info:
        plan_supervise(spec, SuperviseOptions(hosts="n[1-2]", shared_run_dir=False, **opts), environ=environ)
    assert info.value.field == field
    assert engine_plan("--checkpoint-every", "0").config.shared_run_dir is False
    assert engine_plan("--checkpoint-every", "5", "--checkpoint-local").config.shared_run_dir is False


def test_node_local_checkpoints_refuse_a_node_count_that_may_shrink():
    with pytest.raises(ConfigError) as info:
        engine_plan("--checkpoint-every", "5", "--checkpoint-local", nodes="1:2")
    assert info.value.field == "--nodes" and "cannot be resharded" in str(info.value)
    assert engine_plan("--checkpoint-local", nodes="2").config.limits.min_nodes == 2


def test_under_slurm_each_srun_task_is_the_forwarder_with_its_own_temp_dir():
    environ = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n[1-3]", "SLURM_JOB_NUM_NODES": "3"}
    spec = LaunchSpec(program=("orchestrator.engine", "--run-dir", "/data/r1"), module=True, run_id="r1",
                      nproc_per_node=1, run_dir="runs")
    p = plan_supervise(spec, SuperviseOptions(hosts="n[1-2]", spare_hosts="n3", via="slurm", shared_run_dir=False),
                       environ=environ)
    assert p.first_attempt.nodes[0].argv[1:3] == ("-m", "orchestrator.engine.keeper")  # srun's task wraps it
    marker = str(head_marker(Path("/data/r1"), "r1-a0"))
    for argv in (p.srun, *p.runner.spare_argvs(p.first_attempt)):
        at = argv.index("--own-tmpdir")
        assert argv[at - 6:at + 5] == ["--every", "0.2", "--shared-if", marker, "--metrics", "/data/r1/metrics.jsonl",
                                       "--own-tmpdir", "--", "python3", "-m", "orchestrator.launch.slurm"]
    assert p.runner.relay is not None and "over the srun step's output" in p.describe()[-2]
    assert "'$(cat orchestrator/supervisor/forwarder.py)'" in p.describe()[-3]  # the dry run names the code
