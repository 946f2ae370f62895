"""Token cross-entropy in fp32 without an fp32 copy of the whole logits tensor.

    loss = cross_entropy(model(inputs), labels)     # logits [batch, seq, vocab] in bf16 or fp32

The model returns logits in its compute dtype (bf16 on GPU). Upcasting all of them at once would keep an fp32
copy of [batch * seq, vocab] plus its log-softmax for backward (for 8 x 2048 tokens and a 32k vocabulary,
about 4 GiB). Instead the tokens are cut into chunks of `chunk_tokens`; each chunk is upcast, reduced to a
sum of losses, and recomputed in backward (activation checkpointing per chunk), so at most one chunk of fp32
values is alive at a time. Short inputs (every CPU config) take the plain path, so their numbers are
unchanged; the chunked path equals the plain one to float rounding (tests/unit/test_loss.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = ["cross_entropy", "CHUNK_TOKENS"]

CHUNK_TOKENS = 4096  # 4096 x 32k vocab x 4 bytes = 0.5 GiB of fp32 per chunk


def _loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, reduction="sum")


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *, chunk_tokens: int = CHUNK_TOKENS) -> torch.Tensor:
    """Mean cross-entropy (fp32) of logits [..., vocab] against integer labels [...]."""
    flat, target = logits.flatten(0, -2), labels.flatten()
    if target.numel() <= chunk_tokens:
        return F.cross_entropy(flat.float(), target)
    total = sum(checkpoint(_loss_sum, part, tgt, use_reentrant=False)
                for part, tgt in zip(flat.split(chunk_tokens), target.split(chunk_tokens)))
    return total / target.numel()
