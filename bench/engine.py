"""Engine benchmark: step time per parallel layout (CPU), async vs sync checkpoint stall, GPU tokens/s and MFU.

    $ python bench/engine.py cpu                       # tiny model, layouts 1, dp2, tp2, pp2, dp2xtp2, pp2xdp2xtp2
    $ python bench/engine.py cpu --layouts 1,dp2 --config tiny --steps 12
    $ python bench/engine.py checkpoint                # median save stall, sync vs async (target: async <= 10%)
    $ python bench/engine.py gpu                       # ~1.2B "large" model, bf16, one GPU: tokens/s and MFU
    $ python bench/engine.py gpu --torchtitan-cmd "torchrun --nproc-per-node 1 -m torchtitan.train ..."
    $ python bench/gpu_check.py                        # the whole one-GPU check in one table (see there)

Every run is the real engine in fresh processes (torchrun for > 1 process); numbers are medians over the
steps after --warmup, read from the run's metrics.jsonl. The GPU mode runs torchtitan too when given its
command line (same model size, sequence length and batch: set them in its config) and prints the ratio of
tokens/s; torchtitan's own log line ("tps: ..., mfu: ...%") is parsed for its numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAYOUTS = {
    "1": (1, []),
    "dp2": (2, ["--dp-shard", "2"]),
    "tp2": (2, ["--tp", "2", "--dp-shard", "1"]),
    "pp2": (2, ["--pp", "2", "--dp-shard", "1", "--schedule", "1f1b", "--microbatches", "2"]),
    "pp2-interleaved": (2, ["--pp", "2", "--dp-shard", "1", "--schedule", "interleaved-1f1b", "--microbatches", "2"]),
    "dp2xtp2": (4, ["--dp-shard", "2", "--tp", "2"]),
    "hsdp2x2": (4, ["--dp-replicate", "2", "--dp-shard", "2"]),
    "pp2xdp2xtp2": (8, ["--pp", "2", "--dp-shard", "2", "--tp", "2"]),
}


class EngineFailed(RuntimeError):
    """The engine exited non-zero; the message ends with the last line of its stderr."""


def run_engine(nproc: int, args: list[str], run_dir: Path, *, timeout: float = 1800,
               torchrun: bool = False) -> tuple[list[dict], float]:
    """Run the engine (under torchrun when nproc > 1 or torchrun); return its metrics records and the wall
    time including start-up."""
    base = ["-m", "orchestrator.engine", "--run-dir", str(run_dir), *args]
    if nproc == 1 and not torchrun:
        cmd = [sys.executable, *base]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *base]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    begin = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    wall = time.perf_counter() - begin
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or [f"exit code {out.returncode}"]
        raise EngineFailed(f"engine failed ({shlex.join(cmd)}):\n{out.stderr[-3000:]}\n{lines[-1]}")
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()], wall


def median(records: list[dict], key: str, warmup: int) -> float:
    values = [r[key] for r in records[warmup:] if key in r] or [r[key] for r in records if key in r]
    return statistics.median(values) if values else float("nan")


def gpu_args(*, config: str, seq_len: int, batch: int, steps: int, compile: bool, ac: bool, dtype: str = "bf16",
             extra: list[str] = ()) -> list[str]:
    """Engine arguments for a one-device throughput run (warm-up of 2 steps in the lr schedule)."""
    overrides = [f"train.global_batch_size={batch}", f"model.seq_len={seq_len}", f"train.dtype={dtype}",
                 f"train.compile={str(compile).lower()}", f"train.activation_checkpointing={str(ac).lower()}",
                 "train.warmup_steps=2", *extra]
    return ["--config", config, "--steps", str(steps), *sum((["--set", s] for s in overrides), [])]


def save_stalls(records: list[dict], *, own: bool = False) -> list[float]:
    """Checkpoint stalls of a run's saves, without the last one (the run ends with it and waits for it).
    own: less the wait for the previous async save's write (what a save costs when saves are far enough apart)."""
    return [r["checkpoint_stall_s"] - (r.get("checkpoint_wait_s", 0.0) if own else 0.0)
            for r in records[:-1] if "checkpoint_stall_s" in r]


def cmd_cpu(a) -> None:
    common = ["--config", a.config, "--steps", str(a.steps), *sum((["--set", s] for s in a.set), [])]
    print(f"# engine step time on CPU: config={a.config} steps={a.steps} (median of steps > {a.warmup}), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}, {os.cpu_count()} cpus")
    print(f"{'layout':<16} {'procs':>5} {'step_ms':>9} {'tokens/s':>10} {'vs 1 proc':>9} {'wall_s':>7}  final loss")
    base = None
    for name in a.layouts.split(","):
        nproc, flags = LAYOUTS[name]
        with tempfile.TemporaryDirectory() as tmp:
            records, wall = run_engine(nproc, common + flags, Path(tmp))
        step = median(records, "step_time_s", a.warmup)
        base = base or step
        print(f"{name:<16} {nproc:>5} {step * 1e3:>9.1f} {median(records, 'tokens_per_s', a.warmup):>10.0f} "
              f"{base / step:>8.2f}x {wall:>7.1f}  {records[-1]['loss']:.6f}", flush=True)


def cmd_checkpoint(a) -> None:
    layout = LAYOUTS[a.layout]
    common = ["--config", a.config, "--steps", str(a.steps), "--checkpoint-every", str(a.every), "--keep-checkpoints", "2",
              *sum((["--set", s] for s in a.set), [])]
    stalls = {}
    for mode in ("--sync-checkpoint", "--async-checkpoint"):
        with tempfile.TemporaryDirectory() as tmp:
            records, _ = run_engine(layout[0], common + layout[1] + [mode], Path(tmp))
        stalls[mode] = statistics.median(save_stalls(records))
    sync, asyn = stalls["--sync-checkpoint"], stalls["--async-checkpoint"]
    print(f"# checkpoint stall per save: config={a.config} {' '.join(a.set)} layout={a.layout}, "
          f"save every {a.every} steps, median over saves")
    print(f"sync  {sync * 1e3:9.1f} ms\nasync {asyn * 1e3:9.1f} ms\nasync/sync {asyn / sync:.1%} (target <= 10%)")


def cmd_gpu(a) -> None:
    args = gpu_args(config=a.config, seq_len=a.seq_len, batch=a.batch, steps=a.steps, compile=a.compile, ac=a.ac,
                    extra=a.set)
    with tempfile.TemporaryDirectory() as tmp:
        records, wall = run_engine(1, args, Path(tmp))
    tps, mfu = median(records, "tokens_per_s", a.warmup), median(records, "mfu", a.warmup)
    print(f"# one GPU, bf16: config={a.config} seq_len={a.seq_len} batch={a.batch} compile={a.compile} ac={a.ac}")
    print(f"orchestrator  tokens/s {tps:10.0f}  MFU {mfu:.1%}  step {median(records, 'step_time_s', a.warmup):.3f} s"
          f"  (wall {wall:.0f} s)")
    if a.torchtitan_cmd:
        out = subprocess.run(a.torchtitan_cmd, shell=True, capture_output=True, text=True, timeout=3600)
        log = out.stdout + out.stderr
        tt_tps = [float(x.replace(",", "")) for x in re.findall(r"tps:\s*([\d,]+)", log)][a.warmup:]
        tt_mfu = [float(x) for x in re.findall(r"mfu:\s*([\d.]+)%", log)][a.warmup:]
        if out.returncode != 0 or not tt_tps:
            print(f"torchtitan failed or printed no tps (rc={out.returncode}):\n{log[-2000:]}")
            return
        tt = statistics.median(tt_tps)
        print(f"torchtitan    tokens/s {tt:10.0f}  MFU {statistics.median(tt_mfu) / 100 if tt_mfu else float('nan'):.1%}")
        print(f"ratio orchestrator/torchtitan tokens/s: {tps / tt:.2f}x (target >= 1.0x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    cpu = sub.add_parser("cpu", help="step time per layout")
    cpu.add_argument("--layouts", default="1,dp2,tp2,pp2,dp2xtp2,pp2xdp2xtp2", help=f"from {','.join(LAYOUTS)}")
    cpu.add_argument("--config", default="tiny")
    cpu.add_argument("--steps", type=int, default=12)
    cpu.add_argument("--warmup", type=int, default=2)
    cpu.add_argument("--set", action="append", default=[], help="engine --set override (repeatable)")
    ckpt = sub.add_parser("checkpoint", help="sync vs async checkpoint stall")
    ckpt.add_argument("--layout", default="dp2", choices=list(LAYOUTS))
    ckpt.add_argument("--config", default="tiny")
    ckpt.add_argument("--steps", type=int, default=13)
    ckpt.add_argument("--every", type=int, default=3, help="save every K steps")
    ckpt.add_argument("--set", action="append", default=[], help="engine --set override (repeatable)")
    gpu = sub.add_parser("gpu", help="tokens/s and MFU on one GPU, optionally against torchtitan")
    gpu.add_argument("--config", default="large")
    gpu.add_argument("--seq-len", type=int, default=2048)
    gpu.add_argument("--batch", type=int, default=4)
    gpu.add_argument("--steps", type=int, default=30)
    gpu.add_argument("--warmup", type=int, default=5)
    gpu.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    gpu.add_argument("--ac", action=argparse.BooleanOptionalAction, default=False, help="activation checkpointing")
    gpu.add_argument("--set", action="append", default=[], help="engine --set override (repeatable)")
    gpu.add_argument("--torchtitan-cmd", help="torchtitan command line to run side by side (same model/seq/batch)")
    a = parser.parse_args()
    try:
        {"cpu": cmd_cpu, "checkpoint": cmd_checkpoint, "gpu": cmd_gpu}[a.mode](a)
    except EngineFailed as exc:
        raise SystemExit(str(exc)) from None


if __name__ == "__main__":
    main()
