"""`orchestrator jobs/logs/stop` over recorded run directories (runs recorded by hand; the live ones are in
test_up.py)."""

import json
import os
import subprocess
import sys
import time

import pytest

from orchestrator.cli.main import main
from orchestrator.errors import ConfigError
from orchestrator.job.history import find_run, list_runs, process_start, record_end, record_start


def cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def write_run(base, run_id, *, name="hello", exit_code=0, logs=None):
    run = base / run_id
    record_start(run, name=name, hosts=["node1", "node2"], run_dir=run, supervised=False)
    if exit_code is not None:
        record_end(run, exit_code=exit_code, restarts=0)
    (run / "logs").mkdir(exist_ok=True)
    for host, lines in (logs or {}).items():
        (run / "logs" / f"{host}.log").write_text("".join(f"{line}\n" for line in lines))
    return run


def test_states_and_table(tmp_path, capsys):
    write_run(tmp_path, "r1", exit_code=0)
    write_run(tmp_path, "r2", exit_code=1)
    write_run(tmp_path, "r3", exit_code=143)
    live = write_run(tmp_path, "r4", exit_code=None)  # recorded by this (live) process
    gone = write_run(tmp_path, "r5", exit_code=None)
    record = json.loads((gone / "job.json").read_text())
    (gone / "job.json").write_text(json.dumps(record | {"pid_start": "0"}))  # a reused pid is not the launcher
    assert [r.state for r in list_runs(tmp_path)] == ["done", "failed", "stopped", "running", "lost"]
    assert find_run(tmp_path, "hello").id == "r5" and find_run(tmp_path, None).id == "r5"
    code, out, _ = cli(capsys, "jobs", "--run-dir", str(tmp_path), "--json")
    rows = json.loads(out)
    assert code == 0 and rows[0] == rows[0] | {"id": "r1", "name": "hello", "state": "done", "hosts": "node[1-2]",
                                               "exit": "0", "restarts": "0"}
    assert live.exists()


def test_a_submitted_batch_job_is_pending_until_slurm_gives_it_hosts(tmp_path):
    from orchestrator.job.history import load_run, record_update

    run = tmp_path / "r1"
    record_start(run, name="hello", hosts=[], run_dir=run, supervised=False)
    record_update(run, slurm_job="42")
    assert load_run(run).state == "pending" and load_run(run).row()["state"] == "pending"
    record_update(run, hosts=["node1", "node2"])  # what `up` records when the job starts
    assert load_run(run).state == "running"


def test_find_run_by_prefix_and_errors(tmp_path):
    write_run(tmp_path, "20261201-a")
    write_run(tmp_path, "20261202-b")
    assert find_run(tmp_path, "20261202").id == "20261202-b"
    with pytest.raises(ConfigError, match="2 runs start with it"):
        find_run(tmp_path, "2026")
    with pytest.raises(ConfigError, match="no such run"):
        find_run(tmp_path, "nope")
    with pytest.raises(ConfigError, match="no runs in"):
        find_run(tmp_path / "empty", None)


def test_logs_filters_host_and_rank(tmp_path, capsys):
    write_run(tmp_path, "r1", logs={"node1": ["node1/0: a", "node1/1: b", "node1: launcher"],
                                    "node2": ["node2/2: c", "node2/3: d"]})
    code, out, _ = cli(capsys, "logs", "r1", "--run-dir", str(tmp_path), "--host", "node2")
    assert code == 0 and out.splitlines() == ["node2/2: c", "node2/3: d"]
    _, out, _ = cli(capsys, "logs", "r1", "--run-dir", str(tmp_path), "--rank", "1")
    assert out.splitlines() == ["node1/1: b"]
    code, _, err = cli(capsys, "logs", "r1", "--run-dir", str(tmp_path), "--host", "node9")
    assert code == 2 and "--host='node9'" in err


def test_logs_of_a_supervised_run_start_with_its_setup(tmp_path, capsys):
    """`up` writes setup lines (host-prefixed) to the run's own logs/; the attempts log under the supervised
    run's dir, here the program's --run-dir elsewhere."""
    work = tmp_path / "elsewhere"
    run = write_run(tmp_path, "r1", logs={"node1": ["node1: setup: installed"], "node2": ["node2: setup: installed"]})
    record_start(run, name="hello", hosts=["node1", "node2"], run_dir=work, supervised=True)
    record_end(run, exit_code=0, restarts=1)
    for attempt, line in (("r1-a1", "node1/0: again"), ("r1-a0", "node1/0: first")):
        (work / "attempts" / attempt / "logs").mkdir(parents=True)
        (work / "attempts" / attempt / "logs" / "node1.log").write_text(line + "\n")
    code, out, _ = cli(capsys, "logs", "r1", "--run-dir", str(tmp_path), "--host", "node1")
    assert code == 0 and out.splitlines() == ["node1: setup: installed", "node1/0: first", "node1/0: again"]
    _, out, _ = cli(capsys, "logs", "r1", "--run-dir", str(tmp_path))
    assert out.splitlines()[:2] == ["node1: setup: installed", "node2: setup: installed"]
    _, out, _ = cli(capsys, "logs", "r1", "--run-dir", str(tmp_path), "--rank", "0")
    assert out.splitlines() == ["node1/0: first", "node1/0: again"]


def test_stop_refuses_a_run_that_is_not_running(tmp_path, capsys):
    write_run(tmp_path, "r1", exit_code=0)
    code, _, err = cli(capsys, "stop", "r1", "--run-dir", str(tmp_path))
    assert code == 2 and "not running (state done)" in err


def test_process_start_tells_zombies_from_live_processes():
    assert process_start(os.getpid()) is not None
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while process_start(child.pid) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_start(child.pid) is None  # exited but not reaped yet: a zombie counts as gone
    child.wait()


def test_plain_launch_runs_are_listed_without_a_name(tmp_path):
    run = tmp_path / "20261204-000000-abcdef"
    (run / "logs").mkdir(parents=True)
    (run / "plan.json").write_text(json.dumps({"nodes": [{"host": "node1"}, {"host": "node2"}]}))
    (run / "result.json").write_text(json.dumps({"exit_code": 1}))
    (tmp_path / "not-a-run").mkdir()
    [listed] = list_runs(tmp_path)
    assert listed.row() | {"started": "-", "duration": "-"} == {
        "id": run.name, "name": "-", "state": "failed", "hosts": "node[1-2]", "started": "-", "duration": "-",
        "exit": "1", "restarts": "-"}
