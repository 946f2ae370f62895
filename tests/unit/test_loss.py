"""Chunked cross-entropy equals the plain fp32 one (value and gradient), for fp32 and bf16 logits."""

import pytest
import torch
import torch.nn.functional as F

from orchestrator.engine.loss import cross_entropy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_chunked_equals_plain(dtype, chunk):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(3, 50, 97, generator=gen).to(dtype)
    labels = torch.randint(0, 97, (3, 50), generator=gen)
    plain_in = base.clone().requires_grad_()
    plain = F.cross_entropy(plain_in.flatten(0, 1).float(), labels.flatten())
    plain.backward()
    chunked_in = base.clone().requires_grad_()
    chunked = cross_entropy(chunked_in, labels, chunk_tokens=chunk)
    chunked.backward()
    assert chunked.dtype == torch.float32
    assert chunked.item() == pytest.approx(plain.item(), abs=1e-5)
    assert torch.allclose(chunked_in.grad.float(), plain_in.grad.float(), atol=1e-5, rtol=0)
