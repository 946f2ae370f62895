"""A 2-host torch job (gloo) whose ranks run inside docker containers; Ctrl-C leaves no container, no process.

    sudo .venv/bin/python -m pytest tests/integration/test_container_launch.py -q

The image is the small test image (python3 and the system libraries torch needs); the venv and this checkout
are bind-mounted at their own paths (the workdir mount), the way a real image would carry them inside.
Runs `orchestrator launch --container` as a user would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from orch_cli import ORCH

pytestmark = pytest.mark.sandbox

REPO = str(Path(__file__).resolve().parents[2])


def launch_argv(sb, image: str, run_dir: Path, program: list[str]) -> list[str]:
    python = f"{sys.prefix}/bin/python"
    return [*ORCH, "launch", "--container", image, "--container-python", python,
            "--hosts", ",".join(sb.hosts), "--nproc-per-node", "2", "--ssh-config", str(sb.ssh_config),
            "--workdir", REPO, "--run-dir", str(run_dir), "--env", "OMP_NUM_THREADS=1", "-m", program[0], "--",
            *program[1:]]


def test_torch_job_in_containers_and_ctrl_c_leaves_nothing(docker_sandbox, tmp_path):
    sb, baseline = docker_sandbox

    argv = launch_argv(sb, "orch-test:torch", tmp_path / "runs",
                       ["orchestrator.launch.examples.allreduce", "--sleep", "120"])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    results, lines = [], []
    deadline = time.monotonic() + 150
    while len(results) < 4 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "RESULT {" in line:
            results.append(json.loads(line.split("RESULT ", 1)[1]))
    assert len(results) == 4, "".join(lines[-30:])
    assert all(r["sum"] == r["expected"] == 10 for r in results)
    assert {r["host"] for r in results} == set(sb.hosts)
    for h in sb.hosts:  # the ranks really are in a container labelled with the run id
        labels = sb.exec(h, ["docker", "ps", "--format", "{{.Label \"orch.run\"}}"]).stdout.split()
        assert len(labels) == 1, labels

    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 128 + signal.SIGINT, out[-3000:]
    for h in sb.hosts:
        assert sb.exec(h, ["docker", "ps", "-aq"]).stdout.strip() == "", h
        assert set(sb.pids(h)) <= baseline[h], [Path(f"/proc/{p}/cmdline").read_text() for p in set(sb.pids(h)) - baseline[h]]
    assert not list(Path(REPO).glob("torchelastic_*"))  # torchrun's per-rank files stayed in the container's /tmp
