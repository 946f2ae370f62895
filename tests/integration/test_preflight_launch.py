"""`--preflight` on real sandbox hosts: the health gate of `orchestrator check` before a run, with one bad host.

launch refuses (nothing starts on any host), supervise puts the spare in the bad host's place (the run completes
on the others), and `up` does either from `preflight: true` in the job file. The bad host has a full disk in the
run's workdir (orchestrator.sandbox.faults.fill_disk) or, for `up` (whose gate runs before the sync, in the
login directory), a pulled cable. Three hosts of the session sandbox, 1 process each; the program is a short
script that leaves a marker file per host in a directory every host shares with the head.
"""

from __future__ import annotations

import contextlib
import json
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.sandbox.faults import fill_disk
from orch_cli import orch
from run_tokens import tokened

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(180)]

SCRIPT = textwrap.dedent("""\
    import os, socket, sys
    open(os.path.join(sys.argv[1], socket.gethostname()), "w").write("ran")
    print("hello from", socket.gethostname(), flush=True)
""")


@pytest.fixture(scope="module")
def hosts(sandbox):
    """Three hosts away from those other modules fault (the last three) and the first four."""
    names = sandbox.hosts[8:11]
    yield names
    for host in names:
        sandbox.link_up(host)


@pytest.fixture
def job(tmp_path):
    """(workdir, marker dir, script), all under tmp_path (shared with the hosts)."""
    workdir, markers = tmp_path / "work", tmp_path / "markers"
    workdir.mkdir()
    markers.mkdir()
    script = tmp_path / "hello.py"
    script.write_text(SCRIPT)
    return workdir, markers, script


def options(sandbox, workdir: Path, tmp_path: Path, run_id: str) -> list[str]:
    return ["--nproc-per-node", "1", "--ssh-config", sandbox.ssh_config, "--connect-timeout", "5", "--python",
            sys.executable, "--workdir", str(workdir), "--run-dir", str(tmp_path / "runs"), "--run-id", run_id,
            "--env", "OMP_NUM_THREADS=1", "--preflight"]


def leftovers(sandbox, hosts, run_id: str) -> dict[str, list[int]]:
    return {h: tokened(run_id, pids=sandbox.pids(h)) for h in hosts}


def test_launch_preflight_refuses_and_starts_nothing(sandbox, hosts, job, tmp_path):
    workdir, markers, script = job
    good1, bad, good2 = hosts
    with contextlib.ExitStack() as undo:
        undo.callback(fill_disk(sandbox, bad, str(workdir)))
        out = orch("launch", "--hosts", ",".join(hosts), *options(sandbox, workdir, tmp_path, "pf-launch"),
                   "--", str(script), str(markers), timeout=150)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "No space left on device" in out.stderr and f"[orch] preflight: {bad} failed; nothing was started" \
        in out.stderr, out.stderr[-3000:]
    assert list(markers.iterdir()) == [] and "hello from" not in out.stdout  # no rank anywhere
    assert "[orch] run pf-launch" not in out.stderr  # the launch itself never began
    run = tmp_path / "runs" / "pf-launch"
    assert (run / "preflight.hostfile").read_text().splitlines() == [f"{good1} slots=1", f"{good2} slots=1"]
    assert f"orchestrator launch --hostfile {run / 'preflight.hostfile'}" in out.stderr
    assert json.loads((run / "preflight.json").read_text())["failed"] == [bad]
    time.sleep(0.5)
    assert not any(leftovers(sandbox, hosts, "pf-launch-preflight-node").values())


def test_supervise_preflight_puts_the_spare_in_place_of_the_bad_host(sandbox, hosts, job, tmp_path):
    workdir, markers, script = job
    good, bad, spare = hosts
    with contextlib.ExitStack() as undo:
        undo.callback(fill_disk(sandbox, bad, str(workdir)))
        out = orch("supervise", "--hosts", f"{good},{bad}", "--spare-hosts", spare,
                   *options(sandbox, workdir, tmp_path, "pf-sup"), "--", str(script), str(markers), timeout=150)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(p.name for p in markers.iterdir()) == sorted([good, spare])
    events = [json.loads(line) for line in (tmp_path / "runs" / "pf-sup" / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "preflight", "exclude", "replace", "launch", "done"], events
    assert events[1]["verdicts"][bad].startswith("FAIL: disk: cannot write in") and events[1]["exit_code"] == 1
    assert events[2]["host"] == bad and events[2]["reason"].startswith("preflight: disk:")
    assert events[3]["spare"] == spare and events[4]["hosts"] == [good, spare]


def job_file(root: Path, hosts: list[str], markers: Path, *extra: str) -> Path:
    (root / "code").mkdir(parents=True)
    (root / "code" / "hello.py").write_text(SCRIPT)
    (root / "job.yaml").write_text("\n".join([
        "name: pf", f"hosts: {','.join(hosts)}", "nproc_per_node: 1", f"python: {sys.executable}", "workdir: code",
        f"run: hello.py {markers}", "env: {OMP_NUM_THREADS: '1'}", "preflight: true", *extra]) + "\n")
    return root


def test_up_preflight_refuses_a_plain_launch_and_excludes_under_supervision(sandbox, hosts, job, tmp_path):
    """preflight: true in the job file; the middle host's cable is pulled (its probe cannot connect)."""
    _, markers, _ = job
    good, bad, spare = hosts
    root = job_file(tmp_path / "up", [good, bad], markers)
    ssh = ["--ssh-config", sandbox.ssh_config, "--connect-timeout", "5"]
    sandbox.link_down(bad)
    try:
        plain = orch("up", "job.yaml", *ssh, "--run-id", "pf-up1", cwd=root, timeout=150)
        supervised = orch("up", "job.yaml", *ssh, "--run-id", "pf-up2", "--set", f"supervise.spares={spare}",
                          cwd=root, timeout=150)
    finally:
        sandbox.link_up(bad)
    assert plain.returncode == 255, plain.stderr[-3000:]  # unreachable: the gate's (and the contract's) 255
    assert "[orch] sync" not in plain.stderr and f"{bad} failed; nothing was started" in plain.stderr
    assert "--set hosts=null --set hostfile=" in plain.stderr
    assert supervised.returncode == 0, supervised.stderr[-3000:]
    assert "[orch] sync 1 files" in supervised.stderr and bad not in supervised.stderr.split("[orch] sync", 1)[1] \
        .splitlines()[0]  # the code went to the run host and the spare only
    assert sorted(p.name for p in markers.iterdir()) == sorted([good, spare])
    rows = {r["id"]: r for r in json.loads(orch("jobs", "--json", cwd=root).stdout)}
    assert (rows["pf-up1"]["state"], rows["pf-up1"]["exit"]) == ("failed", "255")
    assert rows["pf-up2"]["state"] == "done"
