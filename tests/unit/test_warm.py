"""Warm restarts, the pure parts: the keeper protocol, when supervise chooses warm, the keeper's command line, and
in-memory snapshots restoring a model exactly (the multi-process behaviour: tests/integration/test_warm_restart.py)."""

import pytest
import torch

from orchestrator.engine.warm import Assignment, event_line, parse_event
from orchestrator.errors import ConfigError
from orchestrator.launch.plan import LaunchSpec, build_plan
from orchestrator.hosts import Host
from orchestrator.supervisor.plan import SuperviseOptions, restart_mode


def test_event_lines_round_trip_and_other_lines_are_not_events():
    event = parse_event(event_line("rank_exit", rank=1, exitcode=-9))
    assert event["event"] == "rank_exit" and event["rank"] == 1 and event["exitcode"] == -9 and event["time"] > 0
    for text in ("hello", "orchestrator-warm not json", 'orchestrator-warm ["a list"]', 'orchestrator-warm {"x": 1}'):
        assert parse_event(text) is None


def test_assignments_round_trip():
    job = Assignment(generation=3, rank=5, local_rank=1, world_size=8)
    assert Assignment.parse(job.line()) == job and job.line().endswith(b"\n")


def engine(*args: str, launcher: str = "torchrun") -> LaunchSpec:
    return LaunchSpec(program=("orchestrator.engine", *args), module=True, run_id="r1", launcher=launcher)


@pytest.mark.parametrize("spec, opts, mode", [
    (engine("--config", "tiny"), {}, "warm"),
    (engine("--config", "tiny"), {"restart": "cold"}, "cold"),
    (engine("--engine", "deepspeed"), {}, "cold"),
    (engine(launcher="deepspeed"), {}, "cold"),
    (LaunchSpec(program=("train.py",), run_id="r1"), {}, "cold"),
    (LaunchSpec(program=("other.module",), module=True, run_id="r1"), {}, "cold"),
])
def test_auto_restarts_warm_only_for_the_torch_engine_over_ssh(spec, opts, mode):
    chosen, why = restart_mode(spec, SuperviseOptions(**opts))
    assert chosen == mode and why


def test_warm_that_cannot_be_had_is_a_config_error_naming_the_option():
    with pytest.raises(ConfigError) as info:
        restart_mode(LaunchSpec(program=("train.py",), run_id="r1"), SuperviseOptions(restart="warm"))
    assert info.value.field == "--restart" and "not the engine" in str(info.value)
    with pytest.raises(ConfigError):
        restart_mode(engine(), SuperviseOptions(restart="warm", via="slurm"))
    with pytest.raises(ConfigError):
        restart_mode(engine(), SuperviseOptions(restart="tepid"))


def test_the_warm_launcher_runs_a_keeper_per_node_with_its_ranks():
    plan = build_plan(engine("--config", "tiny", launcher="warm"), [Host("a", 2), Host("b", 2)])
    argv = plan.nodes[1].argv
    assert argv[1:3] == ("-m", "orchestrator.engine.keeper")
    assert {"--node-rank=1", "--nproc-per-node=2", "--first-rank=2", "--world-size=4", "--master-addr=a"} <= set(argv)
    assert argv[argv.index("--") + 1:] == ("--config", "tiny")
    with pytest.raises(ConfigError) as info:
        build_plan(LaunchSpec(program=("train.py",), run_id="r1", launcher="warm"), [Host("a", 1)])
    assert info.value.field == "--launcher"


def _model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _train(model, opt, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        x = torch.randn(4, 8)  # from the global RNG: the snapshot must restore it too
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_a_snapshot_restores_model_optimizer_rng_and_extra_exactly(tmp_path):
    from orchestrator.engine.snapshot import Snapshots

    model, opt = _model_and_optimizer(0)
    _train(model, opt, 3)
    snaps = Snapshots(tmp_path, rank=0, keep=2)
    for step in (3, 4, 5):  # the same state under three steps: only the newest two stay
        stall = snaps.save(step, [model], [opt], extra={"data": {"position": step}})
    snaps.wait()
    assert snaps.steps() == [4, 5] and snaps.newest() == 5 and stall >= 0
    expected = _train(model, opt, 4)

    fresh, fresh_opt = _model_and_optimizer(1)  # other weights, no optimizer state yet
    torch.randn(100)  # and the RNG moved on
    assert snaps.load(5, [fresh], [fresh_opt]) == {"data": {"position": 5}}
    assert _train(fresh, fresh_opt, 4) == expected


def test_a_snapshot_of_another_model_is_refused(tmp_path):
    from orchestrator.engine.snapshot import Snapshots

    model, opt = _model_and_optimizer(0)
    snaps = Snapshots(tmp_path, rank=0)
    snaps.save(1, [model], [opt], extra={})
    snaps.close()
    other = torch.nn.Linear(3, 3)
    with pytest.raises(ValueError, match="snapshot lacks"):
        snaps.load(1, [other], [torch.optim.AdamW(other.parameters())])
