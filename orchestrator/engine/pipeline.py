"""Pipeline parallel: split the model into stages by layers and drive them with a torch.distributed.pipelining
schedule.

    layer_ranges = split_layers(n_layers=8, n_stages=4)            # [(0, 2), (2, 4), (4, 6), (6, 8)]
    parts, schedule = build_pipeline(model, mesh=mesh, dims=dims, cfg=cfg, device=device,
                                     loss_fn=loss_fn, parallelize=fn)
    schedule.step(tokens, target=labels, losses=losses)             # first stage feeds, last stage scores

Stage s of S = pp * stages_per_rank lives on pp rank s % pp (the loop layout ScheduleInterleaved1F1B expects).
Each stage is a copy of the (meta-device) model that keeps only its own layers, under their original
indices, so parameter names and checkpoints do not depend on the split.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

from orchestrator.engine.config import EngineConfig
from orchestrator.engine.parallel_dims import ParallelDims

__all__ = ["split_layers", "stage_ids", "build_pipeline"]


def split_layers(*, n_layers: int, n_stages: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) layer ranges; the first n_layers % n_stages stages get one extra layer."""
    base, extra = divmod(n_layers, n_stages)
    ranges, start = [], 0
    for s in range(n_stages):
        stop = start + base + (1 if s < extra else 0)
        ranges.append((start, stop))
        start = stop
    return ranges


def stage_ids(*, pp_rank: int, pp: int, stages_per_rank: int) -> list[int]:
    """The stages this pp rank holds (loop layout: rank r holds r, r + pp, r + 2 pp, ...)."""
    return [pp_rank + v * pp for v in range(stages_per_rank)]


def _stage_module(model: nn.Module, stage: int, n_stages: int, layers: tuple[int, int]) -> nn.Module:
    part = copy.deepcopy(model)
    for name in list(part.layers.keys()):
        if not layers[0] <= int(name) < layers[1]:
            del part.layers[name]
    if stage != 0:
        part.tok_embeddings = None
    if stage != n_stages - 1:
        part.norm = None
        part.output = None
    return part


def build_pipeline(model: nn.Module, *, mesh: DeviceMesh, dims: ParallelDims, cfg: EngineConfig,
                   device: torch.device, loss_fn: Callable, parallelize: Callable[[nn.Module], nn.Module]):
    """Split `model` (on the meta device), parallelize each local stage, and return (parts, schedule)."""
    pp_mesh = mesh["pp"]
    per_rank = cfg.parallel.stages_per_rank
    n_stages = dims.pp * per_rank
    ranges = split_layers(n_layers=cfg.model.n_layers, n_stages=n_stages)
    parts, stages = [], []
    for s in stage_ids(pp_rank=pp_mesh.get_local_rank(), pp=dims.pp, stages_per_rank=per_rank):
        part = parallelize(_stage_module(model, s, n_stages, ranges[s]))
        parts.append(part)
        stages.append(PipelineStage(part, s, n_stages, device, group=pp_mesh.get_group()))
    n_micro = dims.microbatches(cfg.parallel)
    # scale_grads: each microbatch's loss is a mean over its samples, so the summed gradients are divided by
    # the number of microbatches to equal the gradient of the mean over the whole batch.
    if cfg.parallel.schedule == "interleaved-1f1b":
        schedule = ScheduleInterleaved1F1B(stages, n_micro, loss_fn=loss_fn, scale_grads=True)
    else:
        cls = Schedule1F1B if cfg.parallel.schedule == "1f1b" else ScheduleGPipe
        schedule = cls(stages[0], n_micro, loss_fn=loss_fn, scale_grads=True)
    return parts, schedule


def has_first_stage(parts: list[nn.Module]) -> bool:
    return any(p.tok_embeddings is not None for p in parts)


def has_last_stage(parts: list[nn.Module]) -> bool:
    return any(p.output is not None for p in parts)
