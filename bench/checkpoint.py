"""Checkpoint benchmark: how long a save holds training up, sync against async, ours against raw DCP.

    $ python bench/checkpoint.py                                   # tiny and small (~125M) models, CPU
    $ python bench/checkpoint.py --configs small --repeats 5 --seq-len 64 --dir runs/bench-ckpt

One process trains the engine's Transformer (fp32, AdamW, batch 1 x --seq-len tokens so a CPU step stays
short) and checkpoints it --repeats times per method, methods interleaved round by round:
  - dcp.save / dcp.async_save of the same state dict: the anchor, DCP itself (raw async = its default
    stager: the copy blocks, the write runs in a thread);
  - orchestrator's Checkpointer, sync and async (async also moves the copy into a thread: the next
    optimizer step waits for it through a pre-hook);
  - node-local (`--checkpoint-local`, engine/node_checkpoint.py): the rank's own state as one torch.save file,
    written before the call returns (one process: no all-reduce, no peer to copy to).
After each save --overlap training steps run before wait(), so async work overlaps real steps.
"stall" = time the save held the training loop up: the save call plus, for async, any wait in the next
optimizer step. "slowdown" = extra time of the overlapped steps against steps without a save (on 2 shared
cores the background write competes with training; noisy). Target: async stall <= 10% of the sync save.
"""

from __future__ import annotations

import argparse
import warnings
import shutil
import statistics
import time
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

from orchestrator.engine.checkpoint import Checkpointer
from orchestrator.engine.config import load_config
from orchestrator.engine.data import SyntheticTokens
from orchestrator.engine.model import Transformer, init_weights
from orchestrator.engine.node_checkpoint import NodeCheckpoints

METHODS = ("dcp.save (raw)", "dcp.async_save (raw)", "Checkpointer sync", "Checkpointer async", "node-local")


class Bench:
    def __init__(self, config: str, seq_len: int, root: Path):
        self.cfg = load_config(config, overrides=[f"model.seq_len={seq_len}"])
        torch.manual_seed(0)
        self.model = Transformer(self.cfg.model)
        init_weights(self.model, cfg=self.cfg.model, seed=0)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.data = SyntheticTokens(self.cfg.model.vocab_size)
        self.root, self.step_no, self.pending = root, 0, None
        self.ckpt = {"Checkpointer sync": Checkpointer(root / "sync", keep=1),
                     "Checkpointer async": Checkpointer(root / "async", keep=1, async_save=True),
                     "node-local": NodeCheckpoints(root / "node", rank=0, world_size=1, nproc_per_node=1,
                                                   layout="bench", keep=1)}

    def step(self) -> float:
        begin = time.perf_counter()
        tokens = self.data.samples(self.step_no, 1, self.cfg.model.seq_len + 1)
        loss = F.cross_entropy(self.model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.step_no += 1
        return time.perf_counter() - begin

    def save(self, method: str, i: int) -> float:
        """Start one save; return the seconds the call blocked."""
        begin = time.perf_counter()
        if method in self.ckpt:
            self.ckpt[method].save(self.step_no, self.model, self.opt, extra={"data": {"samples_seen": i}})
        else:
            model, optim = get_state_dict(self.model, self.opt,
                                          options=StateDictOptions(flatten_optimizer_state_dict=True))
            state, path = {"model": model, "optim": optim}, str(self.root / f"raw-{i % 2}")
            if method == "dcp.save (raw)":
                dcp.save(state, checkpoint_id=path, no_dist=True)
            else:
                self.pending = dcp.async_save(state, checkpoint_id=path, no_dist=True)
        return time.perf_counter() - begin

    def finish(self, method: str) -> None:
        if method in self.ckpt:
            self.ckpt[method].wait()
        elif self.pending is not None:
            self.pending.result()
            self.pending = None

    def round(self, method: str, i: int, overlap: int) -> dict:
        stall = self.save(method, i)
        steps = [self.step() for _ in range(overlap)]
        if method in self.ckpt:  # the call plus the optimizer step's wait for the background copy
            stall = self.ckpt[method].last_save_stall_s
        begin = time.perf_counter()
        self.finish(method)
        return {"method": method, "stall": stall, "steps": steps, "drain": time.perf_counter() - begin}


def run(config: str, args) -> tuple[list[str], dict]:
    root = Path(args.dir) / config
    shutil.rmtree(root, ignore_errors=True)
    bench = Bench(config, args.seq_len, root)
    for _ in range(2):  # warm-up: allocator, optimizer state, page cache
        bench.step()
    for method in METHODS:
        bench.round(method, 0, 1)
    base = [bench.step() for _ in range(args.overlap * 2)]
    rounds = []
    for i in range(args.repeats):
        for method in METHODS:
            rounds.append(bench.round(method, i + 1, args.overlap))
        base += [bench.step() for _ in range(args.overlap)]
    step_s = statistics.median(base)
    size = sum(f.stat().st_size for f in (root / "sync").rglob("*") if f.is_file())
    bench.ckpt["node-local"].close()
    shutil.rmtree(root, ignore_errors=True)
    lines, by = [], {}
    for method in METHODS:
        mine = [r for r in rounds if r["method"] == method]
        stall = statistics.median(r["stall"] for r in mine)
        slowdown = statistics.median(sum(r["steps"]) - step_s * len(r["steps"]) for r in mine)
        by[method] = stall
        lines.append(f"{config:<6} {bench.cfg.model.num_params() / 1e6:>7.1f}M {size / 1e6:>8.1f}  {method:<22} "
                     f"{stall:>8.3f} {slowdown:>+10.3f} {statistics.median(r['drain'] for r in mine):>8.3f}")
    ratios = {"ours": by["Checkpointer async"] / by["Checkpointer sync"],
              "raw": by["dcp.async_save (raw)"] / by["dcp.save (raw)"],
              "sync_vs_raw": by["Checkpointer sync"] / by["dcp.save (raw)"], "step_s": step_s}
    return lines, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="tiny,small", help="Comma-separated engine configs.")
    parser.add_argument("--repeats", type=int, default=3, help="Saves per method (medians are reported).")
    parser.add_argument("--overlap", type=int, default=2, help="Training steps between a save and its wait().")
    parser.add_argument("--seq-len", type=int, default=64, help="Tokens per step (batch 1).")
    parser.add_argument("--dir", default="runs/bench-checkpoint", help="Scratch directory on disk (deleted).")
    args = parser.parse_args()
    # DCP's own notes on every save (deprecations; "overwriting" the raw anchor's two scratch paths)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Detected an existing checkpoint")
    print(f"checkpoint stall, 1 process, CPU ({torch.get_num_threads()} threads), torch {torch.__version__}; "
          f"median of {args.repeats}, {args.overlap} steps overlap each save")
    print(f"{'config':<6} {'params':>8} {'ckpt MB':>8}  {'method':<22} {'stall s':>8} {'slowdown s':>10} "
          f"{'drain s':>8}")
    summary = []
    for config in args.configs.split(","):
        lines, ratios = run(config, args)
        print("\n".join(lines), flush=True)
        summary.append(f"{config}: async stall / sync save = {ratios['ours']:.3f} (target <= 0.10; raw DCP "
                       f"async/sync {ratios['raw']:.3f}); Checkpointer sync / dcp.save = {ratios['sync_vs_raw']:.2f}x;"
                       f" step {ratios['step_s']:.3f} s")
    print("\n".join(summary))
    shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
