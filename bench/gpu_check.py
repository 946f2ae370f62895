"""One-GPU check in one table: engine tokens/s and MFU against Hugging Face Llama (and torchtitan), checkpoint
stalls, a resume, activation checkpointing, the DeepSpeed path and the largest batch that fits.

    $ python bench/gpu_check.py --out gpu_check.md       # one GPU (H100/H200 class), about 8 minutes
    $ python bench/gpu_check.py --out gpu_check.json     # the same table as JSON
    $ python bench/gpu_check.py --cpu                    # smoke run: tiny shapes, CPU, gloo, no compile (~1 min)

It prints the GPU name, driver, torch and CUDA versions, then one table. Every row is PASS/FAIL, a figure, or
SKIP with its reason. Rows run in processes of their own: the engine rows through bench/engine.py's
run_engine, the Hugging Face and torchtitan rows through this script's --row mode. So an out-of-memory or a
crash in one row shows as FAIL with the error's last line and the other rows still run. Rows that would
start after --budget-s are skipped ("time budget").

GPU rows (the `large` config, 1.24B parameters, seq 2048, bf16, torch.compile):
  engine batch 4 / 8           tokens/s and MFU of the engine (FSDP2 bf16 policy, fp32 master weights)
  HF Llama batch 4 / 8         transformers' LlamaForCausalLM of the same shape: fp32 master + bf16 autocast,
                               SDPA, torch.compile, fused AdamW, the same loss; with the engine/HF ratio
  torchtitan batch 4           torchtitan's llama3 Transformer of the same shape in the same harness
  engine batch 4 + AC          activation checkpointing on
  checkpoint medium / large    median save stall, sync and async (async as % of sync)
  resume                       a run resumed from a checkpoint repeats the uninterrupted run's losses
  deepspeed ZeRO-1             the DeepSpeed path trains (when deepspeed imports)
  largest batch                batches 8, 12, 16, ... (eager, 2 steps each) until one runs out of memory
Targets: MFU >= 45% at batch 4 and >= 55% at the best batch, >= 1.15x HF tokens/s, async stall <= 2% of sync.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import EngineFailed, gpu_args, median, run_engine, save_stalls  # noqa: E402

HERE = Path(__file__).resolve()


@dataclass(frozen=True)
class Profile:
    cpu: bool
    config: str
    seq: int
    batches: tuple[int, int]
    dtype: str
    compile: bool
    steps: int
    warmup: int
    ckpt_configs: tuple[str, ...]
    ckpt_batch: int
    ckpt_every: int
    resume_config: str
    resume_tolerance: float


GPU = Profile(cpu=False, config="large", seq=2048, batches=(4, 8), dtype="bf16", compile=True, steps=14, warmup=5,
              ckpt_configs=("medium", "large"), ckpt_batch=2, ckpt_every=30, resume_config="small",
              resume_tolerance=1e-3)  # bf16 kernels with atomics (attention backward) are not bitwise repeatable
CPU = Profile(cpu=True, config="tiny", seq=32, batches=(4, 8), dtype="fp32", compile=False, steps=4, warmup=1,
              ckpt_configs=("tiny",), ckpt_batch=4, ckpt_every=2, resume_config="tiny", resume_tolerance=1e-5)


def row(status: str, result: str, detail: str = "", **values) -> dict:
    """status: pass, fail, skip or figure; result: what the table shows."""
    return {"status": status, "result": result, "detail": detail, **values}


def last_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


# ---- engine rows (bench/engine.py's run_engine) ------------------------------------------------------------
def engine_throughput(p: Profile, batch: int, *, ac: bool = False, config: str | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        records, wall = run_engine(1, gpu_args(config=config or p.config, seq_len=p.seq, batch=batch, steps=p.steps,
                                               compile=p.compile, ac=ac, dtype=p.dtype), Path(tmp))
    tps, mfu = median(records, "tokens_per_s", p.warmup), median(records, "mfu", p.warmup)
    shown = f"{tps:,.0f} tok/s" + (f", MFU {mfu:.1%}" if mfu == mfu else "")
    return row("figure", shown, f"step {median(records, 'step_time_s', p.warmup):.3f} s, loss "
               f"{records[-1]['loss']:.3f}, wall {wall:.0f} s", tokens_per_s=tps, mfu=mfu if mfu == mfu else None)


def checkpoint_stall(p: Profile, config: str) -> dict:
    # Saves every ckpt_every steps; the last save (the run waits for it at exit) is not counted.
    steps = 2 * p.ckpt_every + 1
    stalls = {}
    for mode in ("sync", "async"):
        args = gpu_args(config=config, seq_len=p.seq, batch=p.ckpt_batch, steps=steps, compile=False, ac=False,
                        dtype=p.dtype) + ["--checkpoint-every", str(p.ckpt_every), "--keep-checkpoints", "1",
                                          f"--{mode}-checkpoint"]
        with tempfile.TemporaryDirectory() as tmp:
            records, _ = run_engine(1, args, Path(tmp))
        stalls[mode] = (save_stalls(records), save_stalls(records, own=True))
    sync = statistics.median(stalls["sync"][0])
    (first, *_), (_, *own) = stalls["async"]
    steady = statistics.median(own or [first])
    waited = statistics.median(stalls["async"][0][1:] or [0.0]) - steady
    return row("figure", f"sync {sync:.2f} s, async {steady:.3f} s ({steady / sync:.1%})",
               f"async: first save {first:.3f} s (allocates the host buffers), later saves {steady:.3f} s plus "
               f"{max(waited, 0):.3f} s waiting for the previous write (saves every {p.ckpt_every} steps)",
               sync_s=sync, async_s=steady)


def resume(p: Profile) -> dict:
    every, steps = 3, 6
    args = gpu_args(config=p.resume_config, seq_len=min(p.seq, 512), batch=4, steps=steps, compile=False, ac=False,
                    dtype=p.dtype) + ["--checkpoint-every", str(every), "--keep-checkpoints", "0", "--async-checkpoint"]
    with tempfile.TemporaryDirectory() as tmp:
        whole, resumed = Path(tmp) / "whole", Path(tmp) / "resumed"
        reference, _ = run_engine(1, args, whole)
        shutil.copytree(whole / "checkpoints" / f"step-{every}", resumed / "checkpoints" / f"step-{every}")
        records, _ = run_engine(1, args, resumed)
    expected = {r["step"]: r["loss"] for r in reference if r["step"] > every}
    got = {r["step"]: r["loss"] for r in records}
    if sorted(got) != sorted(expected):
        return row("fail", "FAIL", f"resumed run trained steps {sorted(got)}, expected {sorted(expected)}")
    diff = max(abs(got[s] - expected[s]) for s in got)
    ok = diff <= p.resume_tolerance
    return row("pass" if ok else "fail", "PASS" if ok else "FAIL",
               f"steps {every + 1}-{steps} after an async save: max abs loss diff {diff:.2e} (<= {p.resume_tolerance:g})")


def deepspeed_path(p: Profile) -> dict:
    try:
        import deepspeed  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available here"
        return row("skip", "SKIP", f"deepspeed does not import ({last_line(exc)})")
    args = gpu_args(config=p.resume_config, seq_len=min(p.seq, 512), batch=4, steps=4, compile=False, ac=False,
                    dtype=p.dtype) + ["--engine", "deepspeed"]
    with tempfile.TemporaryDirectory() as tmp:
        records, _ = run_engine(1, args, Path(tmp), torchrun=True)
    losses = [r["loss"] for r in records]
    ok = len(losses) == 4 and all(l == l for l in losses)
    return row("pass" if ok else "fail", "PASS" if ok else "FAIL", f"ZeRO-1, {len(losses)} steps, losses "
               + " ".join(f"{l:.3f}" for l in losses))


def largest_batch(p: Profile) -> dict:
    if p.cpu:
        return row("skip", "SKIP", "GPU only (finds where memory runs out)")
    fits, tps = None, None
    for batch in range(8, 129, 4):
        try:
            with tempfile.TemporaryDirectory() as tmp:
                records, _ = run_engine(1, gpu_args(config=p.config, seq_len=p.seq, batch=batch, steps=2,
                                                    compile=False, ac=False, dtype=p.dtype), Path(tmp))
        except EngineFailed as exc:
            if "out of memory" not in str(exc).lower():
                raise
            break
        fits, tps = batch, records[-1]["tokens_per_s"]
    if fits is None:
        return row("figure", "< 8", "batch 8 does not fit")
    return row("figure", f"batch {fits}", f"eager, 2 steps; {tps:,.0f} tok/s at batch {fits} (step 2)", batch=fits)


# ---- in-process harness for other implementations (run in a child: --row) -------------------------------
def harness(forward, params, p: Profile, batch: int, vocab: int) -> dict:
    """Train `forward` (tokens -> logits) like the engine does a step: bf16 autocast over fp32 weights, the
    engine's loss, grad-norm clipping, fused AdamW on CUDA; median tokens/s after the warm-up."""
    import torch

    from orchestrator.engine.loss import cross_entropy

    device = "cpu" if p.cpu else "cuda"
    params = list(params)
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device == "cuda")
    gen = torch.Generator().manual_seed(0)
    times, loss = [], None
    for _ in range(p.steps):
        tokens = torch.randint(0, vocab, (batch, p.seq + 1), generator=gen).to(device)
        begin = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=p.dtype == "bf16"):
            logits = forward(tokens[:, :-1])
        loss = cross_entropy(logits, tokens[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        loss = loss.item()  # waits for the device
        times.append(time.perf_counter() - begin)
    return {"tokens_per_s": batch * p.seq / statistics.median(times[p.warmup:] or times), "loss": loss}


def child_hf(p: Profile, batch: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from orchestrator.engine.config import load_config

    m = load_config(p.config).model
    config = LlamaConfig(vocab_size=m.vocab_size, hidden_size=m.dim, intermediate_size=m.ffn_hidden,
                         num_hidden_layers=m.n_layers, num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads,
                         max_position_embeddings=p.seq, rms_norm_eps=m.norm_eps, rope_theta=m.rope_theta,
                         tie_word_embeddings=False, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).to("cpu" if p.cpu else "cuda").train()
    run = torch.compile(model) if p.compile else model
    return harness(lambda x: run(input_ids=x).logits, model.parameters(), p, batch, m.vocab_size)


def child_torchtitan(p: Profile, batch: int) -> dict:
    import torch
    from torchtitan.models.llama3 import Transformer, TransformerModelArgs

    from orchestrator.engine.config import load_config

    m = load_config(p.config).model
    # multiple_of=64 gives the same SwiGLU width as the engine (8/3 * dim rounded up to 64).
    args = TransformerModelArgs(dim=m.dim, n_layers=m.n_layers, n_heads=m.n_heads, n_kv_heads=m.n_kv_heads,
                                vocab_size=m.vocab_size, multiple_of=64, norm_eps=m.norm_eps, rope_theta=m.rope_theta,
                                max_seq_len=p.seq)
    with torch.device("cpu" if p.cpu else "cuda"):
        model = Transformer(args)
        model.init_weights()
    model.train()
    run = torch.compile(model) if p.compile else model
    return harness(run, model.parameters(), p, batch, m.vocab_size)


CHILDREN = {"hf": ("transformers", child_hf), "torchtitan": ("torchtitan", child_torchtitan)}


def other_impl(p: Profile, name: str, batch: int) -> dict:
    module, _ = CHILDREN[name]
    try:
        __import__(module)
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available here"
        return row("skip", "SKIP", f"{module} does not import ({last_line(exc)})")
    cmd = [sys.executable, str(HERE), "--row", name, "--batch", str(batch)] + (["--cpu"] if p.cpu else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    lines = (out.stdout + out.stderr).strip().splitlines()
    if out.returncode != 0 or not out.stdout.strip():
        return row("fail", "FAIL", lines[-1] if lines else f"exit code {out.returncode}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    from orchestrator.engine.config import load_config
    from orchestrator.engine.metrics import flops_per_token, mfu

    m = load_config(p.config, overrides=[f"model.seq_len={p.seq}"]).model
    value = None if p.cpu else mfu(tokens_per_s=result["tokens_per_s"], flops_per_token=flops_per_token(m),
                                   n_devices=1, device_name=device_info()["gpu"])
    shown = f"{result['tokens_per_s']:,.0f} tok/s" + (f", MFU {value:.1%}" if value is not None else "")
    return row("figure", shown, f"loss {result['loss']:.3f}", tokens_per_s=result["tokens_per_s"], mfu=value)


# ---- the table --------------------------------------------------------------------------------------------
def plan(p: Profile) -> list[tuple[str, object]]:
    b1, b2 = p.batches
    rows: list[tuple[str, object]] = []
    for b in (b1, b2):
        rows += [(f"engine {p.config} batch {b}", lambda b=b: engine_throughput(p, b)),
                 (f"HF Llama batch {b}", lambda b=b: other_impl(p, "hf", b))]
    rows += [(f"checkpoint {c}", lambda c=c: checkpoint_stall(p, c)) for c in p.ckpt_configs]
    rows += [(f"resume ({p.resume_config}, async save)", lambda: resume(p)),
             (f"engine batch {b1} + activation ckpt", lambda: engine_throughput(p, b1, ac=True)),
             (f"torchtitan batch {b1}", lambda: other_impl(p, "torchtitan", b1)),
             ("deepspeed ZeRO-1", lambda: deepspeed_path(p)),
             (f"largest batch ({p.config}, seq {p.seq})", lambda: largest_batch(p))]
    return rows


def add_ratios(results: list[dict]) -> None:
    """Engine / HF tokens/s on the HF rows of the same batch."""
    by_name = {r["check"]: r for r in results}
    for r in results:
        if r["check"].startswith("HF Llama batch") and r.get("tokens_per_s"):
            batch = r["check"].rsplit(" ", 1)[1]
            engine = next((e for n, e in by_name.items() if n.startswith("engine ") and n.endswith(f"batch {batch}")), None)
            if engine and engine.get("tokens_per_s"):
                r["detail"] = f"engine/HF {engine['tokens_per_s'] / r['tokens_per_s']:.2f}x; {r['detail']}"


def device_info() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda or "none", "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else "unknown"
        except (OSError, IndexError, subprocess.TimeoutExpired):
            info["driver"] = "unknown"
    else:
        info["gpu"], info["driver"] = "none (CPU)", "none"
    return info


def run_all(p: Profile, budget_s: float) -> list[dict]:
    begin, results = time.perf_counter(), []
    for name, fn in plan(p):
        if time.perf_counter() - begin > budget_s:
            result = row("skip", "SKIP", f"time budget ({budget_s:.0f} s) spent")
        else:
            started = time.perf_counter()
            try:
                result = fn()
            except Exception as exc:  # noqa: BLE001 - one row's failure must not hide the others
                result = row("fail", "FAIL", last_line(exc))
                if os.environ.get("GPU_CHECK_TRACEBACK"):
                    traceback.print_exc()
            result["seconds"] = round(time.perf_counter() - started, 1)
        results.append({"check": name, **result})
        print(f"  {name}: {result['result']} {result['detail']}", file=sys.stderr, flush=True)
    add_ratios(results)
    return results


def render(info: dict, results: list[dict], p: Profile) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (f"{'CPU smoke (--cpu)' if p.cpu else 'one-GPU check'}: {info['gpu']}, driver {info['driver']}, "
             f"torch {info['torch']}, CUDA {info['cuda']}")
    table = Table(title=title)
    for col in ("check", "result", "detail", "s"):
        table.add_column(col, overflow="fold")
    style = {"pass": "green", "fail": "red", "skip": "yellow", "figure": ""}
    for r in results:
        table.add_row(r["check"], f"[{style[r['status']]}]{r['result']}" if style[r["status"]] else r["result"],
                      r["detail"], str(r.get("seconds", "")))
    Console(width=160).print(table)


def write_out(path: Path, info: dict, results: list[dict]) -> None:
    if path.suffix == ".json":
        path.write_text(json.dumps({"device": info, "rows": results}, indent=1) + "\n")
        return
    lines = [f"GPU: {info['gpu']}; driver {info['driver']}; torch {info['torch']}; CUDA {info['cuda']}", "",
             "| check | result | detail |", "| --- | --- | --- |"]
    lines += [f"| {r['check']} | {r['result']} | {r['detail']} |" for r in results]
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="smoke run on CPU: tiny shapes, gloo, no compile")
    parser.add_argument("--out", type=Path, help="also write the table here (.json, else markdown)")
    parser.add_argument("--budget-s", type=float, default=480, help="skip rows that would start after this")
    parser.add_argument("--row", choices=list(CHILDREN), help=argparse.SUPPRESS)  # child: one harness row
    parser.add_argument("--batch", type=int, default=4, help=argparse.SUPPRESS)
    a = parser.parse_args()
    p = CPU if a.cpu else GPU
    if a.row:
        print(json.dumps(CHILDREN[a.row][1](p, a.batch)))
        return 0
    if not p.cpu:
        import torch

        if not torch.cuda.is_available():
            print("bench/gpu_check.py: no CUDA device visible; run with --cpu for the CPU smoke run", file=sys.stderr)
            return 2
    info = device_info()
    print(f"GPU: {info['gpu']}  driver: {info['driver']}  torch: {info['torch']}  CUDA: {info['cuda']}", flush=True)
    results = run_all(p, a.budget_s)
    render(info, results, p)
    if a.out:
        write_out(a.out, info, results)
    return 1 if any(r["status"] == "fail" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
