"""`orchestrator supervise` planning (dry run: nothing started, nothing written) and bad input."""

import json

import pytest

from orchestrator.cli.main import main
from orchestrator.supervisor.plan import parse_nodes
from orch_cli import ORCH


class Out:
    def __init__(self, code, output):
        self.exit_code, self.output = code, output


def run(*args, capsys=None):
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return Out(exit_info.value.code, captured.out + captured.err)


def test_dry_run_json_has_the_plan_limits_and_heartbeat_env(tmp_path, capsys):
    out = run("supervise", "--hosts", "n[1-3]", "--nproc-per-node", "2", "--nodes", "1:2", "--spare-hosts", "s1",
              "--dry-run", "--json", "-m", "orchestrator.engine", "--", "--tp", "2", "--run-dir", str(tmp_path / "r"), capsys=capsys)
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["run_dir"] == str(tmp_path / "r")
    assert [n["host"] for n in doc["plan"]["nodes"]] == ["n1", "n2"]
    assert doc["spares"] == ["s1", "n3"]  # hosts beyond MAX wait as spares
    assert doc["limits"]["model_parallel"] == 2 and doc["limits"]["min_nodes"] == 1
    assert doc["plan"]["env"]["values"]["ORCH_HEARTBEAT_DIR"] == str((tmp_path / "r" / "heartbeat").resolve())
    assert not (tmp_path / "r").exists()


def test_bad_nodes_range_is_exit_2(capsys):
    out = run("supervise", "--hosts", "n[1-2]", "--nodes", "3:4", "--dry-run", "--", "train.py", capsys=capsys)
    assert out.exit_code == 2 and "--nodes" in out.output


def test_spare_that_is_a_run_host_is_exit_2(capsys):
    out = run("supervise", "--hosts", "n[1-2]", "--spare-hosts", "n2", "--dry-run", "--", "train.py", capsys=capsys)
    assert out.exit_code == 2 and "--spare-hosts" in out.output


def test_parse_nodes():
    assert parse_nodes(None, 4) == (4, 4)
    assert parse_nodes("2:3", 4) == (2, 3)
    assert parse_nodes("2", 4) == (2, 2)


def test_via_slurm_outside_an_allocation_is_a_config_error(capsys, monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        monkeypatch.delenv(name, raising=False)
    out = run("supervise", "--hosts", "n[1-2]", "--via", "slurm", "--dry-run", "--", "train.py", capsys=capsys)
    assert out.exit_code == 2 and "--via" in out.output


def test_events_and_status_skip_lines_that_are_not_event_objects(tmp_path):
    import subprocess

    good = [{"event": "start", "time": 100.0}, {"event": "launch", "time": 101.0, "attempt": 0, "hosts": ["a"]}]
    lines = [json.dumps(good[0]).encode(), b"[1, 2]", b'"x"', b'{"event": "launch", "tim', b"\xff\xfe{}",
             b'{"no": "event"}', json.dumps(good[1]).encode()]
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n" + b'{"event": "first_st')  # live: mid-line
    (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 1, "step_time_s": 0.5}\n{"step": 2, "step_time_s": "x"}\n')
    for args in (["events", str(tmp_path)], ["events", "--json", str(tmp_path)], ["status", "--once", str(tmp_path)]):
        out = subprocess.run([*ORCH, *args], capture_output=True, text=True)
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
        assert "events.jsonl: skipped 5 line(s)" in out.stderr and "(line 2, 3, 4, 5, 6)" in out.stderr
        assert "metrics.jsonl: skipped 1 line(s)" in out.stderr and "(line 2)" in out.stderr
    rows = subprocess.run([*ORCH, "events", "--json", str(tmp_path)],
                          capture_output=True, text=True).stdout.splitlines()
    assert [json.loads(row) for row in rows] == good


def test_status_shows_the_last_diagnosis_with_a_hangs_culprit(tmp_path):
    import subprocess

    culprit = "rank 1 on n2 is in read_batch at data.py:120 while every other rank waits in all_reduce at train.py:88"
    events = [{"event": "start", "time": 100.0}, {"event": "launch", "time": 101.0, "attempt": 0, "hosts": ["n1"]},
              {"event": "diagnosis", "time": 102.0, "attempt": 0, "cause": "hang", "host": "n2", "rank": 1,
               "detail": "no heartbeat for 2 rank(s) since step 3", "culprit": culprit}]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    out = subprocess.run([*ORCH, "status", "--once", str(tmp_path)], capture_output=True, text=True,
                         env={"COLUMNS": "300", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert f"last failure (attempt 0): hang on n2: {culprit}" in out.stdout
def test_status_and_events_show_a_named_straggler(tmp_path, capsys):
    events = [{"event": "start", "time": 100.0},
              {"event": "launch", "time": 101.0, "attempt": 0, "hosts": ["a", "b"], "world_size": 2},
              {"event": "straggler", "time": 130.0, "attempt": 0, "host": "b", "slowdown": 1.52, "steps": 52}]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (tmp_path / "heartbeat").mkdir()
    for rank, (host, seconds) in enumerate([("a", 0.6), ("b", 0.912)]):
        (tmp_path / "heartbeat" / f"{host}-rank{rank}.json").write_text(json.dumps(
            {"rank": rank, "host": host, "step": 100, "status": "training", "time": 131.0, "compute_s": seconds,
             "compute_steps": 100, "compute_group": "pp0"}))
    out = run("status", "--once", str(tmp_path), capsys=capsys)
    assert out.exit_code == 0 and "stragglers b (1.52x)" in out.output
    rows = {line.split("│")[1].strip(): line for line in out.output.splitlines() if line.count("│") > 5}
    assert "6.00 ms" in rows["a"] and "9.12 ms" in rows["b"] and "1.52x" in rows["b"] and "x" not in rows["a"]
    out = run("events", str(tmp_path), capsys=capsys)
    assert "straggler" in out.output and "stragglers: b" in out.output
