"""A job file with `container:` on a private 2-host sandbox with docker: the workdir is synced to each node and
mounted into the container, torchrun and its ranks run inside it (gloo all_reduce across the hosts), and
`orchestrator stop` from another process leaves no container and no process of the run on either host.

The image is the small test image (python3 and the system libraries torch needs); this checkout with its venv
is mounted read-only through `container_mounts`, the way a real image would carry them inside.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from orch_cli import orch
from run_tokens import wait_for
from up_runs import job_rows, stop_from_another_process, up_in_background

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(240)]

REPO = str(Path(__file__).resolve().parents[2])
TRAIN = textwrap.dedent("""\
    import os, sys, time
    import torch, torch.distributed as dist
    dist.init_process_group("gloo")
    total = torch.ones(1)
    dist.all_reduce(total)
    print(f"hello rank={os.environ['RANK']} sum={total.item():g} in_container={os.path.exists('/.dockerenv')} "
          f"marker={open('data.txt').read().strip()}", flush=True)
    time.sleep(float(sys.argv[sys.argv.index('--sleep') + 1]) if '--sleep' in sys.argv else 0)
    dist.destroy_process_group()
""")


def test_container_job_file_runs_in_containers_and_stop_leaves_nothing(docker_sandbox, tmp_path):
    sb, baseline = docker_sandbox
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "train.py").write_text(TRAIN)
    (tmp_path / "code" / "data.txt").write_text("synced\n")
    (tmp_path / "job.yaml").write_text(textwrap.dedent(f"""\
        name: boxed
        hosts: {",".join(sb.hosts)}
        nproc_per_node: 2
        python: {sys.executable}
        workdir: code
        env: {{OMP_NUM_THREADS: "1"}}
        container: orch-test:torch
        container_python: {sys.prefix}/bin/python
        container_mounts: ["{REPO}:{REPO}:ro"]
        run: train.py
    """))
    ssh = ["--ssh-config", str(sb.ssh_config), "--connect-timeout", "5"]
    out = orch("up", "job.yaml", *ssh, "--run-id", "boxed", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    hellos = sorted(line.split(": ", 1)[1] for line in out.stdout.splitlines() if "hello rank=" in line)
    assert hellos == [f"hello rank={r} sum=4 in_container=True marker=synced" for r in range(4)], out.stdout[-3000:]
    for h in sb.hosts:
        assert sb.exec(h, ["docker", "ps", "-aq"]).stdout.strip() == "", h

    run_id = "boxed-stop"
    proc = up_in_background(tmp_path, "job.yaml", *ssh, "--run-id", run_id, "--set", "run=train.py --sleep 120",
                            output=tmp_path / "up.out")
    try:
        assert wait_for(lambda: b"hello rank=3" in b"".join(
            p.read_bytes() for p in (tmp_path / "runs" / run_id / "logs").glob("*.log")), timeout=120)
        assert "hello rank=3" in stop_from_another_process(tmp_path, run_id, proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for h in sb.hosts:
        assert sb.exec(h, ["docker", "ps", "-aq"]).stdout.strip() == "", h
    assert wait_for(lambda: all(set(sb.pids(h)) <= baseline[h] for h in sb.hosts), timeout=15), \
        {h: [Path(f"/proc/{p}/cmdline").read_text() for p in set(sb.pids(h)) - baseline[h]] for h in sb.hosts}
    rows = job_rows(tmp_path)
    assert rows[run_id]["state"] == "stopped" and rows["boxed"]["state"] == "done"
