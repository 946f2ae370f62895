"""Bad configurations fail fast on every rank, with one clear message from rank 0, and never hang.

Each case starts real rank processes of `python -m orchestrator.engine` with the environment torchrun gives
them (RANK, WORLD_SIZE, MASTER_ADDR/PORT), so the exit status of every rank is visible; one case goes
through torchrun itself. Validation runs before the process group is joined, so no rank waits on another.
"""

import os
import subprocess
import sys
import time

import pytest
from local_torchrun import free_port

DEADLINE_S = 90  # generous for a loaded 2-core machine; a hang would wait on the rendezvous forever


def start_ranks(world: int, args: list[str], tmp_path) -> list[subprocess.Popen]:
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, "-m", "orchestrator.engine", "--run-dir", str(tmp_path),
                                       "--steps", "2", *args], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


CASES = [
    pytest.param(["--tp", "2", "--dp-shard", "1", "--set", "model.n_kv_heads=1"],
                 "--tp=2: tp must divide model.n_kv_heads=1", id="tp-not-dividing-kv-heads"),
    pytest.param(["--pp", "2", "--dp-shard", "1", "--set", "model.n_layers=1"],
                 "--pp=2: pp=2 exceeds model.n_layers=1", id="pp-above-layers"),
    pytest.param(["--tp", "2", "--dp-shard", "2"],
                 "dp_replicate=1 x dp_shard=2 x tp=2 x pp=1 = 4, but WORLD_SIZE=2", id="product-not-world-size"),
    pytest.param(["--pp", "2", "--schedule", "zigzag"], "--schedule='zigzag': use one of gpipe, 1f1b, "
                 "interleaved-1f1b", id="unknown-schedule"),
    pytest.param(["--data", "no/such/tokens.npy"], "--data='no/such/tokens.npy': no such file",
                 id="missing-data-file"),
]


@pytest.mark.parametrize("args,message", CASES)
def test_every_rank_exits_2_and_rank0_explains(tmp_path, args, message):
    begin = time.monotonic()
    procs = start_ranks(2, args, tmp_path)
    try:
        results = [p.communicate(timeout=DEADLINE_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [2, 2], results
    rank0_err, rank1_err = results[0][1], results[1][1]
    assert f"orchestrator: config error: {message}" in rank0_err
    assert "config error" not in rank1_err, "only rank 0 prints the error"
    assert "Traceback" not in rank0_err + rank1_err
    assert time.monotonic() - begin < DEADLINE_S


def test_torchrun_reports_failure_promptly(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "orchestrator.engine", "--run-dir", str(tmp_path), "--tp", "4"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=DEADLINE_S,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode != 0
    assert out.stderr.count("orchestrator: config error: --dp-shard=-1: cannot infer it: dp_replicate=1 x tp=4 x "
                            "pp=1 = 4 does not divide WORLD_SIZE=2") == 1, out.stderr[-3000:]
