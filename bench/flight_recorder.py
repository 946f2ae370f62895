"""What torch's flight recorder (on by default under `supervise`) costs a training step, against off.

    .venv/bin/python bench/flight_recorder.py                      # 3 engine runs of each, 300 steps
    .venv/bin/python bench/flight_recorder.py --runs 5 --steps 500

Parts (gloo, OMP_NUM_THREADS=1, torchrun with 2 processes on this machine):
  collective  one process (a one-rank gloo group, so the collective itself is short) doing --collectives small
              all_reduces in a row, recorder on and off, interleaved: the time per collective; on - off is what
              recording one costs (its entry and the Python frames)
  count       the tiny engine with the recorder on, once: collectives recorded per step (its own dump at exit)
  engine      the tiny engine, --runs runs of each, on and off interleaved: the median step time of each run
The cost per step is count x (on - off) of the collective part; the engine part is the end-to-end check, which on
a shared machine swings more than the cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from orchestrator.engine.flight_recorder import run_env  # noqa: E402

PY = sys.executable
LOOP = """
import os, sys, time, torch, torch.distributed as dist
dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
t, n = torch.ones(8), int(sys.argv[1])
for _ in range(50):
    dist.all_reduce(t)
begin = time.perf_counter()
for _ in range(n):
    dist.all_reduce(t)
print("US", (time.perf_counter() - begin) / n * 1e6)
dist.destroy_process_group()
"""
COUNT = """
import atexit, json, pickle, runpy, sys
def report():
    from torch._C import _distributed_c10d as c10d
    entries = pickle.loads(c10d._dump_fr_trace())["entries"]
    if int(__import__("os").environ["RANK"]) == 0:
        print("COUNT", len(entries))
atexit.register(report)
sys.argv = ["orchestrator.engine", *sys.argv[1:]]
runpy.run_module("orchestrator.engine", run_name="__main__")
"""


def env(work: Path, on: bool, entries: int = 2000) -> dict:
    base = os.environ | {"OMP_NUM_THREADS": "1"}
    base = {k: v for k, v in base.items() if not k.startswith(("TORCH_FR_", "TORCH_NCCL_"))}
    return base | (run_env(str(work / "fr" / "rank"), {}, entries=entries) if on else {})


def torchrun(args: list[str], environ: dict) -> str:
    out = subprocess.run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args],
                         env=environ, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return out.stdout


def median_step_ms(run_dir: Path) -> float:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][10:]
    return round(1e3 * statistics.median(r["step_time_s"] for r in records), 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="engine runs of each (on, off)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--collectives", type=int, default=20000)
    ap.add_argument("--loops", type=int, default=5, help="collective loops of each (on, off)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orch-bench-fr-"))
    print(f"load average at start: {os.getloadavg()}", flush=True)
    per: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.loops):
        for on in (True, False):
            out = subprocess.run([PY, "-c", LOOP, str(args.collectives)], env=env(work, on), capture_output=True,
                                 text=True, check=True).stdout
            per[on].append(float(out.split("US")[1].split()[0]))
    added_us = statistics.median(per[True]) - statistics.median(per[False])
    print(json.dumps({"collective_us": {"on": per[True], "off": per[False], "added_median": round(added_us, 2)}}),
          flush=True)
    out = torchrun(["--no-python", PY, "-c", COUNT, "--config", "tiny", "--steps", "20", "--run-dir",
                    str(work / "count")], env(work, True, entries=100000))
    per_step = int(out.split("COUNT")[1].split()[0]) / 20
    print(json.dumps({"collectives_per_step": per_step}), flush=True)
    steps: dict[bool, list[float]] = {True: [], False: []}
    for n in range(args.runs):
        for on in (True, False):
            run_dir = work / f"engine-{'on' if on else 'off'}-{n}"
            torchrun(["-m", "orchestrator.engine", "--config", "tiny", "--steps", str(args.steps), "--run-dir",
                      str(run_dir)], env(work, on))
            steps[on].append(median_step_ms(run_dir))
            print(json.dumps({"engine": "on" if on else "off", "run": n, "median_step_ms": steps[on][-1]}), flush=True)
    on, off = statistics.median(steps[True]), statistics.median(steps[False])
    cost_ms = per_step * added_us / 1e3
    print(json.dumps({"summary": {"added_us_per_collective": round(added_us, 2), "collectives_per_step": per_step,
                                  "added_ms_per_step": round(cost_ms, 3), "step_ms_off": off, "step_ms_on": on,
                                  "on_vs_off": round(on / off, 4), "added_share": round(cost_ms / off, 5)}}))
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
