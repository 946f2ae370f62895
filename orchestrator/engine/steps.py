"""What both engines share around their own step: the LR schedule and the step loop (metrics, heartbeat, saves).

    losses = run_steps(start=start, cfg=cfg, rank=rank, heartbeat=heartbeat, step=train_one, save=checkpoint)
    lr = lr_at(step, cfg)          # the schedule, a pure function of the step

Its own module so that train.py (the torch engine, which hands `--engine deepspeed` on) and deepspeed_engine.py
both import it and neither imports the other's loop.
"""

from __future__ import annotations

import math
from pathlib import Path

from orchestrator.engine.config import EngineConfig
from orchestrator.engine.metrics import MetricsWriter, last_step

__all__ = ["lr_at", "run_steps"]


def lr_at(step: int, cfg: EngineConfig) -> float:
    """Linear warm-up to lr, then cosine decay to lr * min_lr_ratio at the last step (a pure function of
    the step, so nothing about the schedule needs saving)."""
    t = cfg.train
    if t.warmup_steps and step <= t.warmup_steps:
        return t.lr * step / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * cosine)


def run_steps(*, start: int, cfg: EngineConfig, rank: int, heartbeat, step, save, snapshot=None,
              resumed: dict | None = None, restored_record: dict | None = None) -> list[float]:
    """The step loop both engines share; returns the losses of steps start+1..steps.

    step(n) trains step n and returns its metrics record; save(n) checkpoints on the --checkpoint-every schedule
    and returns fields for the record (checkpoint_stall_s: the seconds it blocked) or None; snapshot(n, record),
    when given, runs on the train.snapshot_every schedule, keeps the step's record with the snapshot and returns
    fields (snapshot_stall_s) for the next step's record; every step beats the heartbeat, rank 0 appends
    metrics.jsonl and TensorBoard's tb/. `resumed` (e.g. {"resume_source": "memory"}) joins the first record
    after a resume, next to resumed_from; `restored_record`, the record kept with the snapshot resumed from, is
    written first where rank 0 never wrote it.
    """
    t = cfg.train
    writer = MetricsWriter(Path(t.run_dir), start=start) if rank == 0 else None
    if writer is not None and restored_record is not None and (last_step(Path(t.run_dir)) or 0) < start:
        writer.write(restored_record)  # snapshotted before its disk save, which a failure cut short
    losses: list[float] = []
    try:
        snapped: dict = {}
        for n in range(start + 1, t.steps + 1):
            record = step(n) | snapped
            snapped, snap = {}, snapshot is not None and t.snapshot_every and n % t.snapshot_every == 0
            kept = dict(record) if snap else None  # what a restore of the snapshot writes if this never was
            if n == start + 1 and start:
                record |= {"resumed_from": start, **(resumed or {})}
            if t.checkpoint_every and (n % t.checkpoint_every == 0 or n == t.steps):
                if snap:  # before the disk save: its copy reaches the peer node while the save runs
                    snapped, snap = snapshot(n, kept) or {}, False
                heartbeat.beat(step=n, status="checkpointing")
                record.update(save(n) or {})
            heartbeat.beat(step=n)
            losses.append(record["loss"])
            if writer is not None:
                writer.write(record)
            # The snapshot keeps the record: a restore of it never skips a step whose loss was not written. Its
            # stall goes into the next step's record.
            if snap:
                snapped = snapshot(n, kept) or {}
    finally:
        if writer is not None:
            writer.close()
    return losses
