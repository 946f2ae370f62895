"""The DeepSpeed config generated from ours (no deepspeed import needed)."""

import pytest

from orchestrator.engine.config import load_config
from orchestrator.engine.deepspeed_engine import deepspeed_config


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_config_follows_ours(stage):
    cfg = load_config("tiny", overrides=[f"train.zero_stage={stage}", "train.global_batch_size=16",
                                         "train.grad_clip=0.5"])
    ds = deepspeed_config(cfg, dp=4, device_type="cpu")
    assert ds["train_batch_size"] == 16 and ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 1 and ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"] == {"stage": stage}
    assert "bf16" not in ds and "fp16" not in ds  # fp32 on CPU, like the torch path


def test_bf16_on_gpu_unless_fp32_asked():
    assert deepspeed_config(load_config("tiny"), dp=1, device_type="cuda")["bf16"] == {"enabled": True}
    fp32 = load_config("tiny", overrides=["train.dtype=fp32"])
    assert "bf16" not in deepspeed_config(fp32, dp=1, device_type="cuda")
