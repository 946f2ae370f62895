"""The node probe as sent (inline source) and run_check on `localhost` (no sshd: the local transport)."""

from __future__ import annotations

import json
import subprocess
import sys

from orchestrator.check import CheckSpec, run_check
from orchestrator.check.runner import PROBE
from orchestrator.hosts import Host, HostList
from orchestrator.inline import python_source


def probe(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", python_source(PROBE), *args], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_node_probe_reports_disk_cpu_python_and_no_gpu(tmp_path):
    doc = probe("node", "--workdir", str(tmp_path), "--cpu-reps", "1")
    assert doc["disk"]["path"] == str(tmp_path) and doc["disk"]["free_bytes"] > 0 and "error" not in doc["disk"]
    assert doc["cpu_s"] > 0 and doc["python"] == sys.version.split()[0] and doc["time"] > 0
    assert list(tmp_path.iterdir()) == []  # the write test leaves nothing behind


def test_node_probe_reports_a_workdir_it_cannot_write(tmp_path):
    doc = probe("node", "--workdir", str(tmp_path / "missing"), "--cpu-reps", "1")
    assert doc["disk"]["error"] == "No such file or directory"


def test_run_check_on_localhost_passes_and_skips_the_network(tmp_path):
    report = run_check(HostList([Host("localhost")]), CheckSpec(python=(sys.executable,), workdir=(str(tmp_path),)))
    node = report.nodes["localhost"]
    assert report.exit_code == 0 and node.passed and node.free_gb > 0 and abs(node.skew_s) < 1, node
    assert report.network["skipped"] == "fewer than 2 nodes passed the node checks"
    assert [h.name for h in report.admitted()] == ["localhost"]
