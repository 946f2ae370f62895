"""The engine's TensorBoard scalars, read back with TensorBoard's own reader: the same numbers as metrics.jsonl,
and a resumed run's file hides the steps trained past its checkpoint and marks the restart."""

import json
import shutil

import pytest
import torch.distributed as dist
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from orchestrator.engine.config import load_config
from orchestrator.engine.train import train


@pytest.fixture
def engine_run(tmp_path, monkeypatch):
    """train() in this process as a world of one (gloo); the process group is gone afterwards, also on failure."""
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "ORCH_HEARTBEAT_DIR", "ORCH_SNAPSHOT_DIR"):
        monkeypatch.delenv(name, raising=False)

    def run(steps: int) -> dict:
        return train(load_config("tiny", steps=steps, checkpoint_every=2, run_dir=str(tmp_path)))

    yield run
    if dist.is_initialized():
        dist.destroy_process_group()


def board(run_dir) -> EventAccumulator:
    return EventAccumulator(str(run_dir / "tb")).Reload()  # reads every event file there, in order


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_scalars_match_metrics_jsonl(tmp_path, engine_run):
    engine_run(3)
    records = metrics(tmp_path)
    scalars = board(tmp_path)
    for key in ("loss", "lr", "tokens_per_s", "step_time_s", "grad_norm", "checkpoint_stall_s"):
        expected = [(r["step"], r[key]) for r in records if key in r]
        assert [(e.step, e.value) for e in scalars.Scalars(key)] == [(s, pytest.approx(v, rel=1e-6))
                                                                    for s, v in expected]
    assert [e.step for e in scalars.Scalars("loss")] == [1, 2, 3]


def test_resume_purges_the_lost_steps_and_marks_the_restart(tmp_path, engine_run):
    engine_run(3)
    shutil.rmtree(tmp_path / "checkpoints" / "step-3")  # as if the run died after step 3, before its save
    engine_run(4)  # resumes from step 2
    records = metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 3, 4]
    latest = {r["step"]: r["loss"] for r in records}  # the resumed run's step 3 wins
    scalars = board(tmp_path)
    assert [(e.step, e.value) for e in scalars.Scalars("loss")] == [
        (s, pytest.approx(v, rel=1e-6)) for s, v in sorted(latest.items())]
    assert [(e.step, e.value) for e in scalars.Scalars("resumed_from")] == [(3, 2)]
    assert "resume_source/text_summary" in scalars.Tags()["tensors"]
