"""The README's main job, as a newcomer runs it: `orchestrator demo` as root on a fresh 4-host sandbox."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from orch_cli import ORCH

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(300)]


def test_demo_trains_the_engine_across_four_sandbox_hosts(tmp_path):
    name = f"ptdemo{os.getpid()}"
    out = subprocess.run([*ORCH, "demo", "--name", name, "--run-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=280, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "demo ok" in out.stderr
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    metrics = [json.loads(line) for line in (run / "engine" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 21))
    assert (run / "engine" / "training.png").stat().st_size > 0
    # every one of the 4 hosts ran ranks, and the sandbox is gone afterwards
    assert sorted(p.name for p in (run / "logs").iterdir()) == [f"node{i}.log" for i in range(1, 5)]
    assert not Path(f"/tmp/orchestrator-sandbox/{name}").exists()
    assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
