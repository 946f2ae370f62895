"""`orchestrator stop` of a SUPERVISED job file (`supervise:`, over SSH) on a private 2-host sandbox: the tiny
engine trains with warm restarts armed (standby workers, keepers), a second process stops the run, and the run
ends with its teardown: nothing but sshd left on either host, `jobs` says stopped, `logs --follow` ends."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from probes import wait_clean
from run_tokens import wait_for
from up_runs import job_rows, metric_steps, stop_from_another_process, up_in_background

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(240)]


def test_stop_of_a_supervised_job_file_tears_the_run_down(private_sandbox, tmp_path):
    sb = private_sandbox(nodes=2)
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "data.txt").write_text("synced\n")
    engine = tmp_path / "engine"
    (tmp_path / "job.yaml").write_text(textwrap.dedent(f"""\
        name: supervised
        hosts: {",".join(sb.hosts)}
        python: {sys.executable}
        nproc_per_node: 1
        workdir: code
        run: -m orchestrator.engine --config tiny --steps 100000 --checkpoint-every 50 --run-dir {engine}
        env: {{OMP_NUM_THREADS: "1"}}
        supervise: {{max_restarts: 1, hang_timeout: 60}}
    """))
    run_id = "sup-stop"
    output = tmp_path / "up.out"
    proc = up_in_background(tmp_path, "job.yaml", "--ssh-config", str(sb.ssh_config), "--run-id", run_id,
                            output=output)
    try:
        assert wait_for(lambda: len(metric_steps(engine)) >= 3 or proc.poll() is not None, timeout=150)
        assert proc.poll() is None, output.read_text()[-3000:]
        assert job_rows(tmp_path)[run_id]["state"] == "running"
        followed = stop_from_another_process(tmp_path, run_id, proc)
        assert f"{sb.hosts[1]}/1: " in followed, followed[-2000:]
        assert "outcome: stopped" in output.read_text()
        assert wait_clean(sb, timeout=15) == {}
        assert (job_rows(tmp_path)[run_id]["state"], job_rows(tmp_path)[run_id]["exit"]) == ("stopped", "143")
        evs = [json.loads(line) for line in (engine / "events.jsonl").read_text().splitlines()]
        assert evs[0]["restart"] == "warm" and evs[-1]["event"] == "stopped", (evs[0], evs[-1])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
