"""The training loop: one function every rank runs, for any dp_replicate x dp_shard x tp x pp layout.

    cfg = load_config("tiny", steps=20, tp=2)
    summary = train(cfg)          # under torchrun: every rank; alone: a 1-process gloo group
    summary["losses"]             # rank 0: the loss of every step trained in this process

Order of work: validate the layout (ConfigError before any process group, so every rank fails at once),
join the process group, build the mesh, build the model on the meta device, split it into pipeline
stages, parallelize each part (TP, AC, compile, FSDP2), materialize and initialise the weights, resume
from the newest complete checkpoint, then train. Each step logs one line to <run_dir>/metrics.jsonl
(rank 0) and one heartbeat per rank (see heartbeat.py). Identical seeds and global batches give the same
losses for every layout (the parity tests hold this to 1e-5 in fp32).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from orchestrator.engine.config import EngineConfig, world_from_env
from orchestrator.engine.parallel_dims import ParallelDims
from orchestrator.engine.steps import lr_at, run_steps

__all__ = ["train", "validate"]

log = logging.getLogger("orchestrator.engine.train")


def validate(cfg: EngineConfig, world_size: int | None = None) -> ParallelDims:
    """Resolve and check the layout against this world (ConfigError on any mismatch); touches nothing."""
    dims = ParallelDims.resolve(cfg.parallel, world_size=world_from_env()[2] if world_size is None else world_size)
    dims.validate_for(cfg)
    return dims


def train(cfg: EngineConfig) -> dict[str, Any]:
    """Train cfg.train.steps steps (resuming if a checkpoint exists); returns a summary (losses on rank 0)."""
    dims = validate(cfg)
    if cfg.train.engine == "deepspeed":
        from orchestrator.engine import deepspeed_engine

        return deepspeed_engine.train(cfg)
    rank, local_rank, world_size = world_from_env()
    from orchestrator.engine import flight_recorder
    from orchestrator.engine.heartbeat import Heartbeat

    heartbeat = Heartbeat.from_env(rank=rank, local_rank=local_rank, world_size=world_size)
    heartbeat.steps = cfg.train.steps
    heartbeat.flight_recorder = flight_recorder.arm(rank)
    heartbeat.beat(step=0, status="starting")
    try:
        summary = _Trainer(cfg, dims, rank=rank, local_rank=local_rank, heartbeat=heartbeat).run()
    except BaseException:
        heartbeat.beat(status="failed")
        raise
    heartbeat.beat(step=summary["last_step"], status="done")
    return summary


class _Trainer:
    """State of one rank's run; split from train() so each phase is a short method."""

    def __init__(self, cfg: EngineConfig, dims: ParallelDims, *, rank: int, local_rank: int, heartbeat):
        import torch

        self.torch = torch
        self.cfg, self.dims, self.rank, self.heartbeat = cfg, dims, rank, heartbeat
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            self.device = torch.device("cuda", local_rank)
        else:
            self.device = torch.device("cpu")
        self._init_process_group()
        self.mesh, self.dp_mesh = dims.build_mesh(self.device.type)
        # Ranks of one pipeline stage do the same work in the optimizer step: only they are compared.
        heartbeat.compute_group = f"pp{self.mesh['pp'].get_local_rank() if dims.pp > 1 else 0}"
        self.clock = _LocalClock(torch, self.device) if heartbeat.timing else None

    def _init_process_group(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            return
        backend = "cpu:gloo,cuda:nccl" if self.device.type == "cuda" else "gloo"
        if "MASTER_ADDR" in os.environ:  # torchrun / deepspeed / srun set the rendezvous
            dist.init_process_group(backend, device_id=self.device if self.device.type == "cuda" else None)
        else:  # a plain process: a world of one, so the same code (mesh, DCP) runs unchanged
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)

    # ---- build ---------------------------------------------------------------------------------------
    def _build_model(self) -> None:
        from functools import partial

        from orchestrator.engine.loss import cross_entropy
        from orchestrator.engine.model import Transformer, init_weights
        from orchestrator.engine.parallelize import parallelize_model
        from orchestrator.engine.pipeline import build_pipeline, has_first_stage, has_last_stage

        torch, cfg = self.torch, self.cfg
        torch.manual_seed(cfg.train.seed)
        with torch.device("meta"):
            model = Transformer(cfg.model)
        parallelize = partial(parallelize_model, mesh=self.mesh, dims=self.dims, cfg=cfg,
                              device_type=self.device.type)
        self.loss_fn = cross_entropy
        if self.dims.pp > 1:
            self.parts, self.schedule = build_pipeline(model, mesh=self.mesh, dims=self.dims, cfg=cfg,
                                                       device=self.device, loss_fn=self.loss_fn,
                                                       parallelize=parallelize)
        else:
            self.parts, self.schedule = [parallelize(model)], None
        self.first, self.last = has_first_stage(self.parts), has_last_stage(self.parts)
        for part in self.parts:
            part.to_empty(device=self.device)
            init_weights(part, cfg=cfg.model, seed=cfg.train.seed)
            part.train()
        t = cfg.train
        # fused: one kernel for the whole update on CUDA (DTensor parameters included); CPU keeps foreach.
        fused = self.device.type == "cuda"
        self.optimizers = [torch.optim.AdamW(part.parameters(), lr=t.lr, betas=(t.beta1, t.beta2),
                                             weight_decay=t.weight_decay, fused=fused) for part in self.parts]

    def _build_data(self) -> None:
        from orchestrator.engine.data import build_batches

        cfg, dp_mesh = self.cfg, self.dp_mesh
        self.batches = build_batches(cfg.train.data, vocab_size=cfg.model.vocab_size, seed=cfg.train.seed,
                                     global_batch=cfg.train.global_batch_size, seq_len=cfg.model.seq_len,
                                     dp_rank=dp_mesh.get_local_rank(), dp_size=dp_mesh.size())

    # ---- step ----------------------------------------------------------------------------------------
    def _forward_backward(self, inputs, labels):
        torch = self.torch
        if self.schedule is None:
            loss = self.loss_fn(self.parts[0](inputs), labels)
            loss.backward()
            return loss.detach()
        losses: list = []
        args = (inputs,) if self.first else ()
        self.schedule.step(*args, target=labels if self.last else None, losses=losses)
        if self.last:
            return torch.stack([l.detach() for l in losses]).mean()
        return torch.zeros((), device=self.device)

    def _global_loss(self, loss):
        """The global-batch mean loss on every rank: the ranks holding the last stage (dp x tp of them) each
        contribute loss / (dp * tp); everyone else zero."""
        import torch.distributed as dist

        if self.dims.world_size == 1:
            return loss.item()
        share = loss / (self.dims.dp * self.dims.tp) if self.last else loss * 0
        dist.all_reduce(share)
        return share.item()

    def _step(self, step: int) -> dict[str, Any]:
        from orchestrator.engine.parallelize import clip_grad_norm

        torch, cfg = self.torch, self.cfg
        begin = time.perf_counter()
        lr = lr_at(step, cfg)
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
        inputs, labels = (t.to(self.device, non_blocking=True) for t in next(self.batches))
        loss = self._forward_backward(inputs, labels)
        grad_norm = None
        if cfg.train.grad_clip > 0:
            pp_group = self.mesh["pp"].get_group() if self.dims.pp > 1 else None
            grad_norm = clip_grad_norm([p for part in self.parts for p in part.parameters()],
                                       cfg.train.grad_clip, pp_group=pp_group)
        clock = self.clock
        if clock is not None:  # the optimizer step: rank-local (no collective), the straggler detector's input
            clock.start()
        for opt in self.optimizers:
            opt.step()
        if clock is not None:
            clock.stop()
        loss_value = self._global_loss(loss)  # .item() also waits for the device
        if clock is not None:
            self.heartbeat.add_compute(clock.seconds())
        elapsed = time.perf_counter() - begin
        tokens = cfg.train.global_batch_size * cfg.model.seq_len
        record = {"step": step, "loss": loss_value, "lr": lr, "tokens_per_s": tokens / elapsed,
                  "step_time_s": elapsed}
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        if self.device.type == "cuda":
            from orchestrator.engine.metrics import flops_per_token, mfu

            value = mfu(tokens_per_s=record["tokens_per_s"], flops_per_token=flops_per_token(cfg.model),
                        n_devices=self.dims.world_size, device_name=torch.cuda.get_device_name(self.device))
            if value is not None:
                record["mfu"] = value
        return record

    # ---- run -----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        t = self.cfg.train
        self._build_model()
        self._build_data()
        ckpt = self._checkpointer()
        try:
            return self._run(ckpt)
        except BaseException:
            if t.checkpoint_local:  # its server and copy thread: a warm worker lives on after a broken generation
                ckpt.close()
            raise

    def _checkpointer(self):
        """The disk checkpoints: DCP in the shared run dir, or node-local ones (--checkpoint-local)."""
        t = self.cfg.train
        if t.checkpoint_local:
            from orchestrator.engine.node_checkpoint import NodeCheckpoints

            return NodeCheckpoints(t.run_dir, rank=self.rank, world_size=self.dims.world_size, keep=t.keep_checkpoints,
                                   nproc_per_node=int(os.environ.get("LOCAL_WORLD_SIZE", self.dims.world_size)),
                                   layout=f"world_size={self.dims.world_size} {self.dims.describe()} stages_per_rank="
                                          f"{len(self.parts)}")
        from orchestrator.engine.checkpoint import Checkpointer

        return Checkpointer(Path(t.run_dir), keep=t.keep_checkpoints, async_save=t.async_checkpoint)

    def _run(self, ckpt) -> dict[str, Any]:
        cfg, t = self.cfg, self.cfg.train
        snaps = self._snapshots()
        start, source, extra, resumed = 0, None, None, {}
        memory_step = self._common_snapshot(snaps, ckpt) if snaps is not None else None
        if memory_step is not None:
            start, source, extra = memory_step, "memory", snaps.load(memory_step, self.parts, self.optimizers)
        elif (loaded := ckpt.load_latest(self.parts, self.optimizers)) is not None:
            (start, extra), source = loaded, "disk"
            if t.checkpoint_local:  # which node each rank's state came from
                source, resumed = ckpt.resume_source, {"restored": ckpt.restored}
        if extra is not None:
            self.batches.load_state_dict(extra["data"])
            self.heartbeat.beat(step=start, status="starting")
            log.info("resumed at step %d from %s", start, source)
        log.info("training %s (%.1fM params) on %s, %s", cfg.name, cfg.model.num_params() / 1e6,
                 self.device, self.dims.describe())

        def save(step: int) -> dict:
            begin = time.perf_counter()  # the whole blocking time, waiting on the previous async save too
            ckpt.save(step, self.parts, self.optimizers, extra={"data": self.batches.state_dict()})
            # checkpoint_wait_s: the part spent waiting for the previous async save to finish writing (its
            # writes take longer than the steps between two saves)
            record = {"checkpoint_stall_s": time.perf_counter() - begin, "checkpoint_wait_s": ckpt.last_wait_s}
            # node-local: the supervisor learns from this line that every rank holds `step` (it cannot look)
            return record | ({"local_checkpoint": step} if t.checkpoint_local else {})

        def snapshot(step: int, record: dict) -> dict:
            return {"snapshot_stall_s": snaps.save(step, self.parts, self.optimizers,
                                                   extra={"data": self.batches.state_dict(), "record": record})}

        try:
            losses = run_steps(start=start, cfg=cfg, rank=self.rank, heartbeat=self.heartbeat, step=self._step,
                               save=save, snapshot=snapshot if snaps is not None else None,
                               resumed={"resume_source": source, **resumed} if source else None,
                               restored_record=extra.get("record") if source == "memory" else None)
        finally:
            if snaps is not None:  # its writer thread too: a warm worker lives on after a broken generation
                snaps.close()
        ckpt.close()
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
        return {"losses": losses, "first_step": start + 1, "last_step": max(start, t.steps),
                "layout": self.dims.describe(), "resume_source": source}

    # ---- in-memory snapshots -------------------------------------------------------------------------------
    def _snapshots(self):
        from orchestrator.engine.snapshot import SNAPSHOT_DIR_ENV, Snapshots

        directory = os.environ.get(SNAPSHOT_DIR_ENV)
        if not self.cfg.train.snapshot_every or not directory:
            return None
        return Snapshots(directory, rank=self.rank)

    def _common_snapshot(self, snaps, ckpt) -> int | None:
        """The newest snapshot step every rank holds (None: some rank has none), unless a newer disk checkpoint
        exists; every rank gets the same answer."""
        import torch.distributed as dist

        torch = self.torch
        steps = snaps.steps()
        newest = torch.tensor([steps[-1] if steps else -1])
        if self.dims.world_size > 1:
            dist.all_reduce(newest, op=dist.ReduceOp.MIN)
        step = int(newest.item())
        disk = ckpt.newest()
        # One vote per rank, so that every rank takes the same path even if they see the disk differently.
        usable = torch.tensor([1 if step in steps and not (disk is not None and disk > step) else 0])
        if self.dims.world_size > 1:
            dist.all_reduce(usable, op=dist.ReduceOp.MIN)
        return step if usable.item() else None


class _LocalClock:
    """Times one section of a step: wall time on CPU; on a GPU, CUDA events (the section only queues kernels), read
    with seconds() once the step waited for the device."""

    def __init__(self, torch, device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        self.begin = self.end = 0.0

    def start(self) -> None:
        if self.cuda:
            self.events[0].record()
        else:
            self.begin = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            self.events[1].record()
        else:
            self.end = time.perf_counter()

    def seconds(self) -> float:
        return self.events[0].elapsed_time(self.events[1]) / 1e3 if self.cuda else self.end - self.begin
