"""A decoder-only transformer (RMSNorm, RoPE, SwiGLU, grouped-query attention), built for splitting.

    with torch.device("meta"):
        model = Transformer(cfg.model)
    ...split for the pipeline, parallelize...
    model.to_empty(device=device); init_weights(model, seed=0)
    logits = model(tokens)                                     # [batch, seq, vocab], compute dtype

Parameter names never depend on the layout: blocks live in a ModuleDict under their original indices
("layers.7.attention.wq.weight" stays that on whichever pipeline stage holds block 7), and a stage simply
sets the parts it does not own to None (tok_embeddings on later stages, norm/output on earlier ones). The
forward therefore takes token ids when it has an embedding, hidden states otherwise. Under tensor
parallelism the projections hold a slice of the heads, so attention reads the local head count from the
tensor shapes. init_weights draws every parameter from its own generator seeded by (seed, name), whole,
and keeps this rank's shard: weights are identical for every layout.
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.engine.config import ModelConfig

__all__ = ["Transformer", "init_weights", "canonical_name"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_tables(head_dim: int, seq_len: int, theta: float, device: torch.device | None = None) -> torch.Tensor:
    """cos and sin of the rotary angles, stacked: [2, seq_len, head_dim // 2] (fp32)."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), freqs)
    return torch.stack((angles.cos(), angles.sin()))


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :h/2], x[..., h/2:]) of x: [batch, seq, heads, head_dim]."""
    cos, sin = rope[0][None, : x.shape[1], None, :], rope[1][None, : x.shape[1], None, :]
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.head_dim = cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        bsz, seq = x.shape[0], x.shape[1]
        # -1 heads: under TP each rank holds n_heads / tp query and n_kv_heads / tp kv heads.
        q = self.wq(x).view(bsz, seq, -1, self.head_dim)
        k = self.wk(x).view(bsz, seq, -1, self.head_dim)
        v = self.wv(x).view(bsz, seq, -1, self.head_dim)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])
        return self.wo(out.transpose(1, 2).reshape(bsz, seq, -1))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """The whole model, or one pipeline stage of it (parts it does not own are None)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings: nn.Embedding | None = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleDict({str(i): TransformerBlock(cfg) for i in range(cfg.n_layers)})
        self.norm: RMSNorm | None = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output: nn.Linear | None = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        # Not persistent: recomputed on every device, never in a checkpoint.
        self.register_buffer("rope", rope_tables(cfg.head_dim, cfg.seq_len, cfg.rope_theta), persistent=False)

    def reset_buffers(self) -> None:
        """Recompute the RoPE tables after `to_empty` (meta-device construction leaves them uninitialised)."""
        self.rope = rope_tables(self.cfg.head_dim, self.cfg.seq_len, self.cfg.rope_theta, device=self.rope.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(x) if self.tok_embeddings is not None else x
        for layer in self.layers.values():
            h = layer(h, self.rope)
        h = self.norm(h) if self.norm is not None else h
        # Logits stay in the compute dtype: the loss upcasts them chunk by chunk (loss.py).
        return self.output(h) if self.output is not None else h


# Wrappers (activation checkpointing, torch.compile) insert these into parameter names.
_WRAPPER_PARTS = ("_checkpoint_wrapped_module.", "_orig_mod.")


def canonical_name(name: str) -> str:
    """The parameter name as in the plain, unsplit model."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def _init_full(name: str, shape: torch.Size, cfg: ModelConfig, generator: torch.Generator) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return torch.ones(shape)
    std = 0.02
    if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
        std = 0.02 / (2 * cfg.n_layers) ** 0.5  # residual projections: keep the stream's variance flat in depth
    return torch.empty(shape).normal_(0.0, std, generator=generator)


@torch.no_grad()
def init_weights(model: nn.Module, *, cfg: ModelConfig, seed: int) -> None:
    """Fill every parameter (plain or DTensor shard) as the unsplit model would get it for this seed."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    for name, param in model.named_parameters():
        name = canonical_name(name)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        full = _init_full(name, param.shape, cfg, generator)
        if isinstance(param, DTensor):
            # Every rank drew the same full tensor: keep the local shard without communication.
            local = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None).to_local()
            param.to_local().copy_(local)
        else:
            param.copy_(full)
    for module in model.modules():
        if isinstance(module, Transformer):
            module.reset_buffers()
