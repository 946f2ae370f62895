"""plan_supervise(): a supervised run's plan from typed options (pure: no hosts, nothing written)."""

from pathlib import Path

import pytest

from orchestrator.errors import EXIT_USAGE, ConfigError
from orchestrator.launch.plan import LaunchSpec
from orchestrator.supervisor.plan import SuperviseOptions, model_parallel_of, plan_supervise, program_option
from orchestrator.supervisor.runner import SshAttempts


def spec(*program: str, run_id: str = "r1", nproc: int | None = 2) -> LaunchSpec:
    return LaunchSpec(program=("orchestrator.engine", *program), module=True, run_id=run_id, nproc_per_node=nproc,
                      run_dir="runs")


def plan(*program: str, **opts):
    return plan_supervise(spec(*program), SuperviseOptions(**({"hosts": "n[1-3]"} | opts)), environ={})


def test_hosts_beyond_max_wait_as_spares_and_limits_come_from_options():
    p = plan("--tp", "2", "--run-dir", "/shared/r", nodes="1:2", spare_hosts="s1", max_restarts=5,
             health_check="nvidia-smi -L", failure_grace=3.0)
    assert [h.name for h in p.config.hosts] == ["n1", "n2"] and [s.name for s in p.config.spares] == ["s1", "n3"]
    limits = p.config.limits
    assert (limits.min_nodes, limits.max_nodes, limits.max_restarts, limits.model_parallel) == (1, 2, 5, 2)
    assert p.config.health_command == ("nvidia-smi", "-L") and p.config.run_dir == Path("/shared/r")
    assert p.first_attempt.run_id == "r1-a0" and p.first_attempt.hosts == ["n1", "n2"] and p.srun is None
    assert isinstance(p.runner, SshAttempts) and p.runner.failure_grace == 3.0


def test_run_dir_without_one_in_the_program_is_launch_run_dir_slash_run_id():
    assert plan().config.run_dir == Path("runs") / "r1"


def test_model_parallel_from_the_engine_args():
    assert model_parallel_of(("orchestrator.engine", "--tp", "2", "--pp=3")) == 6
    assert model_parallel_of(("train.py",)) == 1
    assert model_parallel_of(("train.py", "--tp", "-1", "--pp", "2")) == 2  # -1: the engine infers tp
    assert model_parallel_of(("train.py", "--tp", "2", "--tp=4")) == 4  # the last one wins, as in argparse
    assert program_option(("train.py", "--run-dir"), "--run-dir") is None  # a flag without its value
    assert plan("--tp", "2", model_parallel=3).config.limits.model_parallel == 3  # the option wins


@pytest.mark.parametrize("program", [("--tp", "abc"), ("--pp=0",), ("--tp", "2", "--pp", "-3"), ("--tp=",)])
def test_bad_tp_or_pp_in_the_program_is_a_config_error_unless_model_parallel_is_given(program):
    with pytest.raises(ConfigError) as info:
        plan(*program)
    assert info.value.field in ("--tp", "--pp") and info.value.exit_code == EXIT_USAGE
    assert "--model-parallel" in str(info.value)
    assert plan(*program, model_parallel=2).config.limits.model_parallel == 2


@pytest.mark.parametrize(("opts", "field"), [
    ({"nodes": "x"}, "--nodes"),
    ({"nodes": "3:2"}, "--nodes"),
    ({"nodes": "4:4"}, "--nodes"),  # MIN above the 3 hosts given
    ({"spare_hosts": "n2"}, "--spare-hosts"),
    ({"spare_hosts": "n[1-"}, "--spare-hosts"),
    ({"srun_options": ("--exclusive",)}, "--srun-opt/--drain-bad-nodes"),
    ({"drain_bad_nodes": True}, "--srun-opt/--drain-bad-nodes"),
    ({"via": "slurm"}, "--via slurm"),  # no allocation in this environment
    ({"hosts": None}, "--hosts"),
    ({"straggler_threshold": 1.0}, "--straggler-threshold"),
    ({"straggler_steps": 0}, "--straggler-steps"),
    ({"straggler_action": "drain"}, "--straggler-action"),
])
def test_bad_values_are_config_errors_naming_the_field(opts, field):
    with pytest.raises(ConfigError) as info:
        plan(**opts)
    assert info.value.field == field and info.value.exit_code == EXIT_USAGE


def test_via_slurm_plans_the_srun_step_of_each_attempt():
    environ = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "c[1-2]", "SLURM_JOB_NUM_NODES": "2"}
    p = plan_supervise(spec(nproc=1), SuperviseOptions(via="slurm", drain_bad_nodes=True), environ=environ)
    assert p.first_attempt.hosts == ["c1", "c2"] and p.srun[0] == "srun" and "--label" in p.srun
    assert p.runner.drain_bad_nodes and p.to_json()["srun"][0] == "srun"
    assert p.describe()[-2].startswith("supervised: run dir runs/r1, nodes 2:2, spares -")
    assert p.describe()[-1].startswith("restarts: warm (standby workers and in-memory snapshots on every node, "
                                       "inside each srun step; a spare keeper in a one-node step of its own")


def test_warm_restarts_under_slurm_run_a_keeper_per_node_and_each_spare_keeper_in_its_own_step():
    environ = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "c[1-3]", "SLURM_JOB_NUM_NODES": "3"}
    p = plan_supervise(spec("--config", "tiny", nproc=1), SuperviseOptions(via="slurm", nodes="2"), environ=environ)
    assert p.config.restart == "warm" and [s.name for s in p.config.spares] == ["c3"]
    first = p.first_attempt
    assert first.launcher == "warm" and [n.host for n in first.spares] == ["c3"]
    keeper = p.srun[p.srun.index("--") + 1:]
    assert keeper[1:3] == ["-m", "orchestrator.engine.keeper"] and "--node-rank=0" in keeper
    assert "--no-kill" in p.srun and "--nodelist=c[1-2]" in p.srun  # the step outlives a node Slurm declares failed
    assert "--overlap" in p.srun  # not held up by an earlier step that lost a node
    [spare] = p.runner.spare_argvs(first)
    assert spare[:3] == ["srun", "--nodes=1", "--ntasks=1"] and "--nodelist=c3" in spare and "--label" in spare
    assert "--spare" in spare[spare.index("--") + 1:]
    with pytest.raises(ConfigError, match="--spare-hosts"):
        plan_supervise(spec("--config", "tiny", nproc=1), SuperviseOptions(via="slurm", hosts="c[1-2]",
                                                                           spare_hosts="d1"), environ=environ)
    assert first.launcher_env["ORCH_RUN_TMPDIR"] == "/dev/shm"
    cold = plan_supervise(spec("--config", "tiny", nproc=1), SuperviseOptions(via="slurm", restart="cold"),
                          environ=environ)
    assert cold.first_attempt.launcher == "torchrun" and "torch.distributed.run" in cold.srun
    over_ssh = plan("--config", "tiny", spare_hosts="s1")
    assert [n.host for n in over_ssh.first_attempt.spares] == ["s1"]


def test_straggler_options_reach_the_config_and_off_stops_the_ranks_timing():
    p = plan(straggler_threshold=1.3, straggler_steps=80, straggler_action="name")
    slow = p.config.straggler
    assert (slow.threshold, slow.steps, slow.action, slow.window) == (1.3, 80, "name", 16)
    assert "ORCH_STEP_TIMING" not in p.first_attempt.env.values
    assert p.describe()[-2].endswith("stragglers: name a node >= 1.3x the median for 80 steps")
    off = plan(straggler_action="off")
    assert off.first_attempt.env.values["ORCH_STEP_TIMING"] == "0"
    assert off.first_attempt.env.sources["ORCH_STEP_TIMING"] == "supervisor"
    assert plan().describe()[-2].endswith("stragglers: name (no spare) a node >= 1.1x the median for 50 steps")
