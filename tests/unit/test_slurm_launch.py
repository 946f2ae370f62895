"""Pure parts of the Slurm path: srun argv, node rank substitution, exit-code contract, sbatch script, requeue."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.launch import sbatch
from orchestrator.launch import slurm as via_slurm
from orchestrator.launch.env import build_env_manifest
from orchestrator.launch.plan import LaunchSpec, build_plan
from orchestrator.slurm import Allocation

ALLOC = Allocation(job_id="7", nodes=["node1", "node2", "node3", "node4"], gpus_per_node=2)


def plan_for(alloc=ALLOC, **kw):
    spec = LaunchSpec(program=("train.py", "--lr", "3e-4"), run_id="r1", python=("/venv/bin/python",),
                      env=build_env_manifest(head_env={}, env_args=["A=1", "HF_TOKEN=s3cret"]), **kw)
    return build_plan(spec, via_slurm.allocation_hosts(alloc, nproc_per_node=kw.get("nproc_per_node")))


def test_srun_argv_one_task_per_node_then_node_zero_torchrun():
    plan = plan_for()
    argv = via_slurm.srun_argv(plan, ALLOC, srun_options=["--exclusive"])
    entry = argv.index("/venv/bin/python")
    assert argv[:entry] == ["srun", "--nodes=4", "--ntasks=4", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
                            "--quit-on-interrupt", "--nodelist=node[1-4]", "--exclusive"]
    assert argv[entry:entry + 5] == ["/venv/bin/python", "-m", "orchestrator.launch.slurm", "node", "--"]
    torchrun = argv[entry + 5:]
    assert torchrun[:3] == ["/venv/bin/python", "-m", "torch.distributed.run"]
    assert "--nnodes=4" in torchrun and "--nproc-per-node=2" in torchrun and "--master-addr=node1" in torchrun
    assert torchrun[-3:] == ["train.py", "--lr", "3e-4"]
    assert "s3cret" not in " ".join(argv)                # the env manifest travels in srun's environment


def test_srun_env_carries_the_manifest():
    env = via_slurm.srun_env(plan_for(), base={"PATH": "/bin"})
    assert env["A"] == "1" and env["HF_TOKEN"] == "s3cret" and env["PATH"] == "/bin"


def test_nproc_option_beats_allocation_gpus_and_default_is_one():
    assert "--nproc-per-node=3" in plan_for(nproc_per_node=3).nodes[0].argv
    no_gpus = Allocation(job_id="7", nodes=["a", "b"], gpus_per_node=None)
    assert "--nproc-per-node=1" in plan_for(no_gpus).nodes[0].argv


@pytest.mark.parametrize("opt", ["--ntasks-per-node=2", "-N", "--nodelist=node1", "--kill-on-bad-exit=0"])
def test_srun_options_the_launcher_owns_are_refused(opt):
    with pytest.raises(ConfigError, match="--srun-opt"):
        via_slurm.srun_argv(plan_for(), ALLOC, srun_options=[opt])


def test_node_rank_comes_from_slurm_nodeid():
    argv = ["/py", "-m", "torch.distributed.run", "--nnodes=4", "--node-rank=0", "--nproc-per-node=2", "x.py"]
    args = via_slurm.node_torchrun_args(argv, {"SLURM_NODEID": "3", "SLURM_STEP_NUM_NODES": "4"})
    assert args == ["--nnodes=4", "--node-rank=3", "--nproc-per-node=2", "x.py"]
    with pytest.raises(ConfigError, match="SLURM_NODEID"):
        via_slurm.node_torchrun_args(argv, {})
    with pytest.raises(ConfigError, match="--nnodes"):
        via_slurm.node_torchrun_args(argv, {"SLURM_NODEID": "0", "SLURM_STEP_NUM_NODES": "2"})


def warm_plan():
    spec = LaunchSpec(program=("orchestrator.engine", "--config", "tiny"), module=True, run_id="r1", launcher="warm",
                      python=("/venv/bin/python",), node_tmp_dir="/dev/shm")
    return build_plan(spec, via_slurm.allocation_hosts(ALLOC, nproc_per_node=None))


def test_the_warm_launcher_runs_node_zeros_keeper_argv_in_one_step_with_its_memory_tmpdir():
    plan = warm_plan()
    argv = via_slurm.srun_argv(plan, ALLOC)
    assert argv[argv.index("--") + 1:] == list(plan.nodes[0].argv)
    env = via_slurm.srun_env(plan, base={})
    assert env["ORCH_RUN_TMPDIR"] == "/dev/shm"
    assert "ORCH_RUN_TMPDIR" not in via_slurm.srun_env(plan_for(), base={})  # torchrun keeps the node's TMPDIR


def test_each_node_gets_its_keeper_args_from_slurm_nodeid():
    plan = warm_plan()
    environ = {"SLURM_NODEID": "2", "SLURM_STEP_NUM_NODES": "4", "SLURMD_NODENAME": "node3"}
    args = via_slurm.node_keeper_args(plan.nodes[0].argv, environ)
    assert args == list(plan.nodes[2].argv[3:])  # what the SSH path renders for node 2
    assert {"--node-rank=2", "--first-rank=4", "--host=node3"} <= set(args) and args[-2:] == ["--config", "tiny"]
    with pytest.raises(ConfigError, match="--nnodes"):
        via_slurm.node_keeper_args(plan.nodes[0].argv, environ | {"SLURM_STEP_NUM_NODES": "2"})
    with pytest.raises(ConfigError, match="node argv"):
        via_slurm.node_keeper_args(plan_for().nodes[0].argv, environ)


def test_a_spare_keeper_runs_in_a_one_node_step_of_its_own_and_keeps_spare():
    from orchestrator.hosts import Host

    spec = LaunchSpec(program=("orchestrator.engine", "--config", "tiny"), module=True, run_id="r1", launcher="warm",
                      python=("/venv/bin/python",), node_tmp_dir="/dev/shm")
    plan = build_plan(spec, [Host("node1", 2), Host("node2", 2)], [Host("node4", 2)])
    assert "--no-kill" in via_slurm.srun_argv(plan, ALLOC)
    assert "--no-kill" not in via_slurm.srun_argv(warm_plan(), ALLOC)  # no spare: a lost node ends the step
    [spare] = plan.spares
    argv = via_slurm.spare_srun_argv(spare, ALLOC, srun_options=["--exclusive"])
    assert argv[:argv.index("/venv/bin/python")] == ["srun", "--nodes=1", "--ntasks=1", *via_slurm.SRUN_FIXED,
                                                     "--nodelist=node4", "--exclusive"]
    args = via_slurm.node_keeper_args(spare.argv, {"SLURM_NODEID": "0", "SLURM_STEP_NUM_NODES": "1",
                                                   "SLURMD_NODENAME": "node4"})
    assert args == list(spare.argv[3:]) and "--spare" in args and "--nnodes=2" in args  # no node rank until it joins
    with pytest.raises(ConfigError, match="--spare-hosts"):
        via_slurm.spare_srun_argv(replace(spare, host="node9"), ALLOC)


def test_the_node_tmpdir_goes_under_the_base_and_is_the_runs_tmpdir(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("ORCH_RUN_TMPDIR", "")  # so that the undo removes what private_tmpdir sets
    monkeypatch.delenv("ORCH_RUN_TMPDIR")
    base = tmp_path / "shm"
    base.mkdir()
    tmp = via_slurm.private_tmpdir(str(base))
    assert Path(tmp).parent == base and Path(tmp).name.startswith("orch-slurm-7.0-")
    assert os.environ["TMPDIR"] == os.environ["ORCH_RUN_TMPDIR"] == tmp
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert Path(via_slurm.private_tmpdir()).parent == tmp_path


@pytest.mark.parametrize(("codes", "expected"), [([3], 1), ([-15], 1), ([1, 2], 2), ([2], 2), ([-9, 1], 1)])
def test_exit_code_contract(codes, expected):
    assert via_slurm.exit_code_for(codes) == expected


def test_requeue_only_restartable_failures_and_within_budget(monkeypatch):
    calls = []
    monkeypatch.setattr(via_slurm.subprocess, "run",
                        lambda argv, **kw: calls.append(argv) or type("R", (), {"returncode": 0, "stderr": ""})())
    env = {"SLURM_JOB_ID": "9", "SLURM_RESTART_COUNT": "1"}
    assert not via_slurm.maybe_requeue(0, max_restarts=3, environ=env)
    assert not via_slurm.maybe_requeue(2, max_restarts=3, environ=env)      # config error: never
    assert not via_slurm.maybe_requeue(1, max_restarts=1, environ=env)      # budget used
    assert via_slurm.maybe_requeue(137, max_restarts=3, environ=env)
    assert calls == [["scontrol", "requeue", "9"]]


def spec(**kw):
    base = dict(nodes=2, launch_args=("-m", "orchestrator.engine", "--", "--config", "tiny"), python="/venv/bin/python",
                log_dir="/shared/runs")
    return sbatch.SubmitSpec(**{**base, **kw})


def test_sbatch_script_options_and_command():
    text = sbatch.render_sbatch(spec(gpus_per_node=8, time="01:00:00", partition="gpu", account="ml",
                                     exclude="node[3-4]", requeue=True, max_restarts=5))
    for line in ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --time=01:00:00", "#SBATCH --partition=gpu", "#SBATCH --account=ml",
                 "#SBATCH --exclude=node[3-4]", "#SBATCH --requeue", "#SBATCH --output=/shared/runs/slurm-%j.out",
                 "/venv/bin/python -m orchestrator slurm-launch --requeue-max 5 -m orchestrator.engine -- --config tiny"]:
        assert line in text.splitlines()
    assert text.startswith("#!/bin/bash\n")
    assert "#SBATCH --no-requeue" in sbatch.render_sbatch(spec()).splitlines()


def test_hostile_program_args_are_quoted_in_the_script():
    text = sbatch.render_sbatch(spec(launch_args=("--", "x.py", "$(touch /tmp/pwn)", "a;b")))
    assert "'$(touch /tmp/pwn)' 'a;b'" in text


@pytest.mark.parametrize(("field", "kw"), [("--time", {"time": "banana"}), ("--partition", {"partition": "a b"}),
                                           ("--exclude", {"exclude": "n1\n#SBATCH --x"}), ("--nodes", {"nodes": 0}),
                                           ("--log-dir", {"log_dir": "runs"})])
def test_bad_submit_input_is_config_error(field, kw):
    with pytest.raises(ConfigError, match=field):
        spec(**kw)
