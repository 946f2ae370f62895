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


class _Beats:
    def __init__(self, calls):
        self.calls = calls

    def beat(self, *, step=None, status="training"):
        self.calls.append((status, step))


def test_a_checkpoint_steps_snapshot_comes_before_its_disk_save_and_a_restore_writes_its_record_once(tmp_path):
    from orchestrator.engine.metrics import last_step
    from orchestrator.engine.steps import run_steps

    cfg = load_config("tiny", steps=4, checkpoint_every=2, snapshot_every=1, run_dir=str(tmp_path))
    calls, kept = [], {}

    def snapshot(n, record):
        calls.append(("snapshot", n))
        kept[n] = record
        return {"snapshot_stall_s": 0.0}

    def run(start, restored=None):
        run_steps(start=start, cfg=cfg, rank=0, heartbeat=_Beats(calls), step=lambda n: {"step": n, "loss": n / 10},
                  save=lambda n: calls.append(("save", n)) or {"checkpoint_stall_s": 0.0}, snapshot=snapshot,
                  resumed={"resume_source": "memory"} if start else None, restored_record=restored)

    assert last_step(tmp_path) is None
    run(0)
    # step 2 (a disk checkpoint): snapshot, then the save, then the step's beat and record; step 1: record first
    assert calls[:8] == [("training", 1), ("snapshot", 1), ("snapshot", 2), ("checkpointing", 2), ("save", 2),
                         ("training", 2), ("training", 3), ("snapshot", 3)]
    assert kept[2] == {"step": 2, "loss": 0.2, "snapshot_stall_s": 0.0}  # without the save's fields
    assert [r["step"] for r in metrics(tmp_path)] == [1, 2, 3, 4] and last_step(tmp_path) == 4
    # the save of step 2 failed before rank 0 wrote step 2's record; every rank restores step 2's snapshot
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics(tmp_path)[:1]))
    run(2, restored=kept[2])
    assert [r["step"] for r in metrics(tmp_path)] == [1, 2, 3, 4]
    assert metrics(tmp_path)[1] == kept[2] and metrics(tmp_path)[2]["resumed_from"] == 2
    run(2, restored=kept[2])  # its record was written: not again
    assert [r["step"] for r in metrics(tmp_path)] == [1, 2, 3, 4, 3, 4]
