"""The DeepSpeed path: the same model, data, init and LR schedule, trained through deepspeed.initialize (ZeRO).

    $ deepspeed --num_gpus 2 --no_local_rank --module orchestrator.engine --engine deepspeed \\
          --set train.zero_stage=2 --config tiny --steps 20 --run-dir runs/ds
    ds_config = deepspeed_config(cfg, dp=2, device_type="cpu")   # the config generated from ours

Only data parallelism (ZeRO stage 1, 2 or 3 over every rank) runs here; tp and pp belong to the torch path.
The client optimizer is the torch path's AdamW and gradient clipping is DeepSpeed's (same global-norm
formula), so a fp32 run matches the torch engine's single-process losses. On CPU DeepSpeed talks gloo.
`--no_local_rank` keeps the launcher from appending --local_rank (the engine reads LOCAL_RANK).

Checkpoints: DeepSpeed's own format (save_checkpoint with tag step-N) under run_dir/checkpoints/step-N/,
committed by rank 0 writing meta.json {"format": "deepspeed", "files": {name: size}, ...} after every rank
finished (the sizes are what checkpoint_files.py checks); resume loads the newest committed tag (not
reshardable into the torch path; same world size or ZeRO's own rules).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from orchestrator.contracts import step_dir_name
from orchestrator.engine.checkpoint_files import complete_steps, file_sizes
from orchestrator.engine.config import EngineConfig, world_from_env
from orchestrator.errors import ConfigError

__all__ = ["deepspeed_config", "train"]

log = logging.getLogger("orchestrator.engine.deepspeed")


def deepspeed_config(cfg: EngineConfig, *, dp: int, device_type: str) -> dict[str, Any]:
    """The DeepSpeed JSON config equivalent to our train section, for `dp` data-parallel ranks."""
    from orchestrator.engine.parallelize import param_dtype

    t = cfg.train
    config: dict[str, Any] = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.global_batch_size // dp,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": {"stage": t.zero_stage},
        "steps_per_print": 2**31 - 1,  # metrics.jsonl is the log
        "wall_clock_breakdown": False,
    }
    if str(param_dtype(cfg, device_type)) == "torch.bfloat16":
        config["bf16"] = {"enabled": True}
    return config


def _import_deepspeed():
    try:
        import deepspeed
    except ImportError as exc:
        raise ConfigError("--engine", "deepspeed", f"deepspeed is not importable ({exc}); install the extra: "
                          "DS_BUILD_OPS=0 pip install 'orchestrator[deepspeed]'") from exc
    return deepspeed


def _committed_steps(ckpt_dir: Path) -> list[int]:
    return [s for s in complete_steps(ckpt_dir.parent) if (ckpt_dir / step_dir_name(s) / "meta.json").is_file()]


def train(cfg: EngineConfig) -> dict[str, Any]:
    """Train cfg.train.steps steps with DeepSpeed on every rank (resuming if a checkpoint exists)."""
    from orchestrator.engine.heartbeat import Heartbeat
    from orchestrator.engine.parallel_dims import ParallelDims

    rank, local_rank, world_size = world_from_env()
    dims = ParallelDims.resolve(cfg.parallel, world_size=world_size)
    if dims.pp > 1 or dims.tp > 1:
        raise ConfigError("--engine", "deepspeed", f"runs data parallel (ZeRO) only, found {dims.describe()}; "
                          "use --engine torch for tp/pp")
    deepspeed = _import_deepspeed()
    heartbeat = Heartbeat.from_env(rank=rank, local_rank=local_rank, world_size=world_size)
    heartbeat.steps = cfg.train.steps
    heartbeat.beat(step=0, status="starting")
    try:
        summary = _run(cfg, deepspeed, rank=rank, local_rank=local_rank, world_size=world_size, heartbeat=heartbeat)
    except BaseException:
        heartbeat.beat(step=-1, status="failed")
        raise
    heartbeat.beat(step=summary["last_step"], status="done")
    return summary


def _run(cfg: EngineConfig, deepspeed, *, rank: int, local_rank: int, world_size: int, heartbeat) -> dict[str, Any]:
    import torch
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator

    from orchestrator.engine.data import build_batches
    from orchestrator.engine.loss import cross_entropy
    from orchestrator.engine.model import Transformer, init_weights
    from orchestrator.engine.steps import lr_at, run_steps

    t = cfg.train
    accel = get_accelerator()
    if accel.device_name() == "cpu":
        # DeepSpeed's CPU shared-memory all-reduce only speeds up inference and costs a 2-4 min g++ JIT build
        # on first use; without it DeepSpeed uses plain torch.distributed (gloo). Its op table is a cached,
        # mutable dict by design (deepspeed/ops/__init__.py).
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend=accel.communication_backend_name())
    device = torch.device(accel.device_name(local_rank))
    torch.manual_seed(t.seed)
    model = Transformer(cfg.model)
    init_weights(model, cfg=cfg.model, seed=t.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay)
    engine, ds_optimizer, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=deepspeed_config(cfg, dp=world_size, device_type=device.type))
    batches = build_batches(t.data, vocab_size=cfg.model.vocab_size, seed=t.seed, global_batch=t.global_batch_size,
                            seq_len=cfg.model.seq_len, dp_rank=rank, dp_size=world_size)
    run_dir = Path(t.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    start = _resume(engine, batches, ckpt_dir)
    tokens = t.global_batch_size * cfg.model.seq_len

    def step(n: int) -> dict:
        begin = time.perf_counter()
        lr = lr_at(n, cfg)
        for group in ds_optimizer.param_groups:
            group["lr"] = lr
        inputs, labels = (x.to(device) for x in next(batches))
        logits = engine(inputs)
        loss = cross_entropy(logits, labels)
        engine.backward(loss)
        engine.step()
        global_loss = loss.detach().clone()
        dist.all_reduce(global_loss)
        elapsed = time.perf_counter() - begin
        return {"step": n, "loss": global_loss.item() / world_size, "lr": lr,
                "tokens_per_s": tokens / elapsed, "step_time_s": elapsed, "engine": "deepspeed"}

    def save(n: int) -> None:
        _save(engine, ckpt_dir, n, batches.state_dict(), keep=t.keep_checkpoints, rank=rank)

    losses = run_steps(start=start, cfg=cfg, rank=rank, heartbeat=heartbeat, step=step, save=save)
    dist.barrier()
    dist.destroy_process_group()
    return {"losses": losses, "first_step": start + 1, "last_step": max(start, t.steps),
            "layout": f"deepspeed zero{t.zero_stage} dp={world_size}"}


def _resume(engine, batches, ckpt_dir: Path) -> int:
    steps = _committed_steps(ckpt_dir)
    if not steps:
        return 0
    tag = step_dir_name(steps[-1])
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if path is None:
        raise RuntimeError(f"deepspeed could not load committed checkpoint {ckpt_dir / tag}")
    batches.load_state_dict(client_state["data"])
    log.info("resumed from %s", ckpt_dir / tag)
    return int(client_state["step"])


def _save(engine, ckpt_dir: Path, step: int, data_state: dict, *, keep: int, rank: int) -> None:
    import torch.distributed as dist

    tag = step_dir_name(step)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"step": step, "data": data_state})
    dist.barrier()  # every rank's shards are on disk before the commit marker
    if rank == 0:
        meta = {"format": "deepspeed", "step": step, "extra": {"data": data_state}, "time": time.time(),
                "files": file_sizes(ckpt_dir / tag)}
        (ckpt_dir / tag / "meta.json").write_text(json.dumps(meta) + "\n")
        if keep > 0:
            for old in _committed_steps(ckpt_dir)[:-keep]:
                shutil.rmtree(ckpt_dir / step_dir_name(old), ignore_errors=True)
