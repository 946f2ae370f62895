"""Apply tensor parallel, activation checkpointing, torch.compile and FSDP2 to one model part, in that order.

    part = parallelize_model(part, mesh=mesh, dims=dims, cfg=cfg, device_type="cuda")

The order matters (as in torchtitan): TP rewrites the Linear/Embedding weights into DTensors on the tp axis,
activation checkpointing and compile wrap whole blocks, and FSDP2 shards what is left over the dp axes
(HSDP when dp_replicate > 1). Each step is a small `apply_*` helper; parallelize_model composes them.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from orchestrator.engine.config import EngineConfig
from orchestrator.engine.parallel_dims import ParallelDims

__all__ = ["parallelize_model", "apply_tp", "apply_ac", "apply_compile", "apply_fsdp", "param_dtype", "clip_grad_norm"]

log = logging.getLogger("orchestrator.engine.parallelize")


def param_dtype(cfg: EngineConfig, device_type: str) -> torch.dtype:
    """Compute dtype: bf16 on GPU and fp32 on CPU unless train.dtype says otherwise."""
    if cfg.train.dtype == "auto":
        return torch.bfloat16 if device_type == "cuda" else torch.float32
    return torch.bfloat16 if cfg.train.dtype == "bf16" else torch.float32


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh, *, sequence_parallel: bool) -> None:
    """Megatron-style plans: column-parallel in, row-parallel out, vocab-split embedding, replicated logits.

    With sequence parallel, norms and the residual stream are sharded along the sequence (Shard(1)) between
    the TP regions, and the attention/MLP inputs are gathered to Replicate on entry.
    """
    seq = Shard(1) if sequence_parallel else Replicate()
    top: dict[str, object] = {}
    if model.tok_embeddings is not None:
        top["tok_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=seq)
    if model.output is not None:
        top["output"] = ColwiseParallel(input_layouts=seq, output_layouts=Replicate())
        if sequence_parallel:
            top["norm"] = SequenceParallel()
    if top:
        parallelize_module(model, tp_mesh, top)
    for block in model.layers.values():
        plan: dict[str, object] = {
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=seq),
            "feed_forward.w1": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(output_layouts=seq),
            "feed_forward.w3": ColwiseParallel(),
        }
        if sequence_parallel:
            plan.update({
                "attention_norm": SequenceParallel(),
                "attention": PrepareModuleInput(input_layouts=(Shard(1), None), desired_input_layouts=(Replicate(), None)),
                "ffn_norm": SequenceParallel(),
                "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            })
        parallelize_module(block, tp_mesh, plan)


def apply_ac(model: nn.Module) -> None:
    """Full activation checkpointing per transformer block: recompute it in backward."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for name, block in list(model.layers.named_children()):
        model.layers.register_module(name, checkpoint_wrapper(block, preserve_rng_state=False))


def apply_compile(model: nn.Module) -> None:
    """torch.compile each block (same structure everywhere, so it compiles once and reuses)."""
    for name, block in list(model.layers.named_children()):
        model.layers.register_module(name, torch.compile(block, fullgraph=True))


def apply_fsdp(model: nn.Module, dp_mesh: DeviceMesh, *, dtype: torch.dtype, pp_enabled: bool) -> None:
    """FSDP2 per block, then the root. With a pipeline, keep parameters gathered between microbatches."""
    # FSDP2 warns on every forward when a wrapped module returns a view (TP's to_local outputs do): the
    # model never modifies those outputs in place, which is the case the warning is about.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    reshard = not pp_enabled
    if model.tok_embeddings is not None:
        fully_shard(model.tok_embeddings, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard)
    for block in model.layers.values():
        fully_shard(block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard)
    if model.output is not None:
        # Gathered right after the forward anyway (its backward comes first): do not reshard.
        fully_shard([model.norm, model.output], mesh=dp_mesh, mp_policy=mp, reshard_after_forward=False)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard)


def parallelize_model(model: nn.Module, *, mesh: DeviceMesh, dims: ParallelDims, cfg: EngineConfig,
                      device_type: str) -> nn.Module:
    """Apply every enabled technique to one model part (the whole model, or one pipeline stage)."""
    if dims.tp > 1:
        apply_tp(model, mesh["tp"], sequence_parallel=cfg.parallel.sequence_parallel)
    if cfg.train.activation_checkpointing:
        apply_ac(model)
    if cfg.train.compile:
        if device_type == "cuda":
            apply_compile(model)
        else:
            log.warning("train.compile is GPU-only; running eager on %s", device_type)
    dtype = param_dtype(cfg, device_type)
    if dims.dp > 1 or dtype != torch.float32:
        # HSDP: replicate over dp_replicate, shard over dp_shard. FSDP2 also carries the bf16 policy, so a
        # single GPU still goes through it (a 1-rank shard costs nothing).
        dp_mesh = mesh["dp_replicate", "dp_shard"] if dims.dp_replicate > 1 else mesh["dp_shard"]
        apply_fsdp(model, dp_mesh, dtype=dtype, pp_enabled=dims.pp > 1)
    return model


@torch.no_grad()
def clip_grad_norm(params: list[nn.Parameter], max_norm: float, *, pp_group=None) -> torch.Tensor:
    """Clip the global gradient norm over plain and DTensor gradients of every mesh, and over the pipeline.

    torch's clip_grad_norm_ cannot stack norms of DTensors that live on different meshes (TP+FSDP weights on
    (dp, tp), norm weights on dp only), so norms are taken per (mesh, placements) group, made global with
    full_tensor(), summed in squares, and summed over the pp ranks (each holds different layers).
    """
    from torch.distributed.tensor import DTensor

    # A scalar norm on a 2-D (dp_shard, tp) mesh is reduced with two all-reduces; torch warns about that on
    # every step, but for one scalar per step it costs nothing worth a flattened mesh.
    logging.getLogger("torch.distributed.tensor._redistribute").setLevel(logging.ERROR)
    groups: dict[object, list[nn.Parameter]] = {}
    for p in params:
        if p.grad is not None:
            g = p.grad
            key = (g.device_mesh, tuple(g.placements)) if isinstance(g, DTensor) else None
            groups.setdefault(key, []).append(p)
    total_sq = torch.zeros((), dtype=torch.float32, device=params[0].device)
    for group in groups.values():
        norm = torch.nn.utils.get_total_norm([p.grad for p in group])
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        total_sq += norm.float() ** 2
    if pp_group is not None:
        torch.distributed.all_reduce(total_sq, group=pp_group)
    total = total_sq.sqrt()
    for group in groups.values():
        torch.nn.utils.clip_grads_with_norm_(group, max_norm, total)
    return total
