"""`python bench/gpu_check.py --cpu`: the one-GPU check's smoke run on CPU prints every row, and every row is
PASS, a figure or SKIP with a reason (no FAIL, no crash); the table is also written as JSON."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_cpu_smoke_run_has_no_failed_row(tmp_path):
    out_file = tmp_path / "gpu_check.json"
    out = subprocess.run([sys.executable, "bench/gpu_check.py", "--cpu", "--out", str(out_file)], cwd=REPO,
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert "torch:" in out.stdout and "CUDA:" in out.stdout
    table = json.loads(out_file.read_text())
    rows = {r["check"]: r for r in table["rows"]}
    assert len(rows) == 10  # --cpu: one checkpoint config (tiny)
    for name, r in rows.items():
        assert r["status"] in ("pass", "figure", "skip"), f"{name}: {r}"
        if r["status"] == "skip":
            assert r["detail"], f"{name}: a skip without its reason"
        assert name in out.stdout  # the printed table holds every row
    assert rows["resume (tiny, async save)"]["status"] == "pass"
    assert "tok/s" in rows["engine tiny batch 4"]["result"]
    assert "async" in rows["checkpoint tiny"]["result"]
