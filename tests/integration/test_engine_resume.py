"""Checkpoint resume across process groups and layouts, with the real engine under real torchrun (gloo, fp32).

One uninterrupted run (pp2 x tp2, 4 processes) saves asynchronously at steps 4 and 8. The run "stops" after
step 4: a copy of its run dir keeps only checkpoints/step-4 (or a truncated step-8 too), and a new process
group resumes it with the same layout, with dp4, and as one process. Steps 5-8 must reproduce the
uninterrupted run to 1e-5.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from local_torchrun import free_port, metric_losses
from orch_cli import ORCH

STEPS, SAVE_AT = 8, 4
pytestmark = pytest.mark.slow


def run_engine(run_dir: Path, nproc: int, *layout: str) -> subprocess.CompletedProcess:
    args = ["--config", "tiny", "--steps", str(STEPS), "--checkpoint-every", str(SAVE_AT), "--keep-checkpoints", "0",
            "--run-dir", str(run_dir), *layout]
    if nproc == 1:
        cmd = [*ORCH, "-v", "train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
               "127.0.0.1", "--master-port", str(free_port()), "-m", "orchestrator.engine", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("resume") / "uninterrupted"
    run_engine(run_dir, 4, "--pp", "2", "--tp", "2", "--async-checkpoint")  # saves overlap the next steps
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-4", "step-8"]
    assert sorted(metric_losses(run_dir)) == list(range(1, STEPS + 1))
    return run_dir


def stopped_after_save(uninterrupted: Path, dest: Path, *, truncated_newest: bool = False) -> Path:
    """A run dir as if the run had stopped right after the step-4 save (metrics up to 4)."""
    shutil.copytree(uninterrupted / "checkpoints" / f"step-{SAVE_AT}", dest / "checkpoints" / f"step-{SAVE_AT}")
    if truncated_newest:
        newest = dest / "checkpoints" / f"step-{STEPS}"
        shutil.copytree(uninterrupted / "checkpoints" / f"step-{STEPS}", newest)
        shard = max(newest.glob("*.distcp"), key=lambda p: p.stat().st_size)
        os.truncate(shard, shard.stat().st_size // 3)
    return dest


@pytest.mark.parametrize("nproc,layout", [
    pytest.param(4, ("--pp", "2", "--tp", "2"), id="same-layout-pp2-tp2"),
    pytest.param(4, ("--dp-shard", "4"), id="pp2-tp2-to-dp4"),
    pytest.param(1, (), id="pp2-tp2-to-1-process-truncated-newest"),
])
def test_resume_reproduces_the_uninterrupted_run(uninterrupted, tmp_path, nproc, layout):
    truncated = nproc == 1
    run_dir = stopped_after_save(uninterrupted, tmp_path / "run", truncated_newest=truncated)
    out = run_engine(run_dir, nproc, *layout)
    resumed, expected = metric_losses(run_dir), metric_losses(uninterrupted)
    assert sorted(resumed) == list(range(SAVE_AT + 1, STEPS + 1)), "resumed at the wrong step"
    diff = max(abs(resumed[s] - expected[s]) for s in resumed)
    assert diff <= 1e-5, f"losses after resume differ by {diff}: {resumed} vs {expected}"
    first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert first.get("resumed_from") == SAVE_AT
    if truncated:
        assert f"skipping checkpoint {run_dir / 'checkpoints' / f'step-{STEPS}'}" in out.stderr
        assert "truncated shard" in out.stderr
