"""`orchestrator check` bad input: one line naming the field, exit 2, nothing started (no host is reachable here)."""

from __future__ import annotations

import pytest

from orchestrator.cli.main import main


@pytest.mark.parametrize("args,expected", [
    (["--hosts", "n[1-"], "--hosts='n[1-'"),
    (["--hosts", "n1", "--bw-ratio", "3"], "--bw-ratio=3.0: use a ratio between 0 and 1"),
    (["--hosts", "n1", "--timeout", "1"], "--timeout=1.0: use at least 10 seconds"),
    (["--hosts", "n[1-2]", "--python", "n9=/opt/py"], "--python='n9=/opt/py': n9 is not one of"),
    (["--hosts", "n1", "--workdir", "job"], "--workdir='job': give an absolute path"),
    (["--hosts", "n1", "--gpus-per-node", "0"], "--gpus-per-node=0"),
    (["--hosts", "n1", "--net-port", "80"], "--net-port=80: use a TCP port 1024-65000"),
    ([], "--hosts=None: give --hosts"),
])
def test_bad_input_exits_2_with_one_line(args, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    out = tmp_path / "ok.txt"
    with pytest.raises(SystemExit) as exc:
        main(["check", *args, "--out-hostfile", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []
