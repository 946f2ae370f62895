"""`orchestrator launch --dry-run/--json` and bad input: exit codes, redaction, nothing started (no network)."""

import json
import os

import pytest
from orch_cli import orch


def cli(*args, env=None):
    return orch("launch", *args, env=env)


def test_dry_run_prints_would_run_per_host_redacted(tmp_path):
    out = cli("--hosts", "node[1-3]", "--nproc-per-node", "2", "--env", "WANDB_API_KEY=abc123", "--run-id", "r-dry",
              "--run-dir", str(tmp_path), "--dry-run", "--", "train.py", "--token=xyz789")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("would run on node") == 3
    assert "--node-rank=2" in out.stdout and "--master-addr=node1" in out.stdout
    assert "abc123" not in out.stdout and "xyz789" not in out.stdout
    assert not (tmp_path / "r-dry").exists()  # dry run: nothing written, nothing started


def test_json_is_one_document_on_stdout():
    out = cli("--hosts", "a,b", "--nproc-per-node", "1", "--launcher", "deepspeed", "--env", "DB_PASSWORD=pw",
              "--dry-run", "--json", "-m", "pkg.train", "--", "--lr", "1")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [n["host"] for n in doc["nodes"]] == ["a", "b"] and doc["world_size"] == 2
    assert doc["hostfile"] == "a slots=1\nb slots=1\n"
    assert doc["env"]["values"]["DB_PASSWORD"] == "***"
    assert doc["nodes"][1]["argv"][-4:] == ["-m", "pkg.train", "--lr", "1"]  # the rank command, under rankprefix.py


@pytest.mark.parametrize("args, needle", [
    (["--hosts", "node[1-", "--nproc-per-node", "1", "--", "t.py"], "--hosts"),
    (["--hosts", "a", "--nproc-per-node", "1", "--env", "NOPE", "--", "t.py"], "--env"),
    (["--hosts", "a", "--nproc-per-node", "1", "--env-file", "/nonexistent.env", "--", "t.py"], "--env-file"),
    (["--hosts", "a", "--nproc-per-node", "1", "--python", "b=/py", "--", "t.py"], "--python"),
    (["--hosts", "a", "--nproc-per-node", "1", "--master-port", "0", "--", "t.py"], "--master-port"),
    (["--hosts", "a", "--nproc-per-node", "1"], "SCRIPT_OR_MODULE"),
])
def test_bad_input_exits_2_without_traceback(args, needle):
    out = cli(*args)
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr and "Traceback" not in out.stderr


def test_empty_run_dir_is_refused():
    """'' would have put runs/<id> at the file-system root."""
    out = cli("--hosts", "localhost", "--nproc-per-node", "1", "--run-dir", "", "--", "t.py")
    assert out.returncode == 2 and "--run-dir=''" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("bad", ["not-a-dir/sub", "x" * 300])
def test_run_dir_that_cannot_be_made_is_one_line_before_the_header(tmp_path, bad):
    (tmp_path / "not-a-dir").write_text("a file")
    out = cli("--hosts", "localhost", "--nproc-per-node", "1", "--run-dir", str(tmp_path / bad), "--run-id", "r1",
              "--", "t.py")
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("orchestrator: config error: --run-dir=") and "cannot create it" in out.stderr
    assert out.stderr.count("\n") == 1 and "[orch] run" not in out.stderr  # no header: nothing started


def test_auth_names_are_never_printed(tmp_path):
    env = {**os.environ, "TORCH_AUTH": "head-secret-1"}  # TORCH_* is forwarded from the head
    args = ("--hosts", "a", "--nproc-per-node", "1", "--env", "AUTH=cli-secret-2", "--env", "MONKEY=banana",
            "--dry-run")
    for extra in ((), ("--json",)):
        out = cli(*args, *extra, "--", "t.py", env=env)
        assert out.returncode == 0, out.stderr
        assert "head-secret-1" not in out.stdout and "cli-secret-2" not in out.stdout and "banana" in out.stdout
    doc = json.loads(out.stdout)
    assert doc["env"]["values"]["TORCH_AUTH"] == doc["env"]["values"]["AUTH"] == "***"
