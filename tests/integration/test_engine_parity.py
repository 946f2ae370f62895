"""Every parallel layout trains exactly like one process: real torchrun, gloo, fp32, the tiny config.

One single-process run is the reference (module fixture); each layout trains the same seed and global batch
for STEPS steps and its per-step losses (metrics.jsonl) must match to 1e-5; every rank leaves a final heartbeat. 2-4 processes per case, plus one
8-process pp2 x dp2 x tp2 case (the machine has 2 cores: keep the matrix small).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.engine.heartbeat import read_heartbeats

STEPS = 10
TOLERANCE = 1e-5
pytestmark = pytest.mark.slow


def run_engine(run_dir: Path, nproc: int, *args: str) -> list[float]:
    common = ["--config", "tiny", "--steps", str(STEPS), "--seed", "3", "--run-dir", str(run_dir)]
    if nproc == 1:
        cmd = [sys.executable, "-m", "orchestrator.engine", *common, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "orchestrator.engine", *common, *args]
    heartbeat_dir = run_dir / "heartbeat"
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=420,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "ORCH_HEARTBEAT_DIR": str(heartbeat_dir)})
    assert out.returncode == 0, out.stderr[-4000:]
    beats = read_heartbeats(heartbeat_dir)
    assert sorted(b["rank"] for b in beats.values()) == list(range(nproc)), "one heartbeat file per rank"
    assert all(b["status"] == "done" and b["step"] == STEPS for b in beats.values()), beats
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for r in records:
        assert {"step", "loss", "lr", "tokens_per_s", "step_time_s"} <= r.keys()
    return [r["loss"] for r in records]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[float]:
    losses = run_engine(tmp_path_factory.mktemp("parity") / "single", 1)
    assert losses[-1] < losses[0], "the reference run should learn something"
    return losses


@pytest.mark.parametrize("nproc,layout", [
    pytest.param(2, ("--dp-shard", "2"), id="dp2"),
    pytest.param(2, ("--tp", "2", "--dp-shard", "1"), id="tp2"),
    pytest.param(2, ("--pp", "2", "--schedule", "1f1b", "--microbatches", "2"), id="pp2-1f1b"),
    pytest.param(2, ("--pp", "2", "--schedule", "interleaved-1f1b", "--microbatches", "2"), id="pp2-interleaved"),
    pytest.param(4, ("--dp-shard", "2", "--tp", "2", "--set", "parallel.sequence_parallel=true"), id="dp2-tp2-sp"),
    pytest.param(8, ("--pp", "2", "--dp-shard", "2", "--tp", "2", "--schedule", "gpipe", "--microbatches", "2"),
                 id="pp2-dp2-tp2"),
])
def test_layout_matches_single_process(reference, tmp_path, nproc, layout):
    losses = run_engine(tmp_path / "run", nproc, *layout)
    diff = max(abs(a - b) for a, b in zip(losses, reference))
    assert diff <= TOLERANCE, f"max abs loss difference {diff:.3g} > {TOLERANCE}: {losses} vs {reference}"
