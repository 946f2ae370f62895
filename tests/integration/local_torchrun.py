"""Test helper: the tiny engine under real torchrun on this machine, as the reference the tests compare against.

    port = free_port()                                        # for launchers that need one named up front
    losses = torchrun_losses(run_dir, ["--config", "tiny", "--steps", "30", "--run-dir", str(run_dir)])
    metric_losses(run_dir)                                    # step -> loss of a finished run
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def torchrun_losses(run_dir: Path, engine_args: list[str], nproc: int = 2, timeout: float = 240) -> dict[int, float]:
    """Run the engine uninterrupted under torchrun (gloo, OMP_NUM_THREADS=1) and return its loss per step.

    --standalone lets torchrun bind its own free port: a fixed port collides with whatever else holds it on a
    busy test machine, and a port picked here could be taken before torchrun binds it."""
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                          "-m", "orchestrator.engine", *engine_args], capture_output=True, text=True,
                         env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:]
    return metric_losses(run_dir)
