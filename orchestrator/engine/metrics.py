"""Per-step metrics: one JSON line per step in <run_dir>/metrics.jsonl, and model FLOPs utilisation.

    writer = MetricsWriter(Path(run_dir) / "metrics.jsonl")
    writer.write({"step": 1, "loss": 5.5, "lr": 1e-3, "tokens_per_s": 1.2e5, "step_time_s": 0.05})
    mfu(tokens_per_s=1.2e5, flops_per_token=flops_per_token(cfg.model), n_devices=1, device_name="NVIDIA H100")

Only rank 0 writes. Each line is flushed at once, so a supervisor or `orchestrator plot` can read a live run;
a resumed run appends (its first line carries "resumed_from").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.engine.config import ModelConfig

__all__ = ["MetricsWriter", "flops_per_token", "peak_flops", "mfu"]

# Dense bf16 peak FLOP/s (no sparsity), from the vendors' data sheets.
_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}


class MetricsWriter:
    """Append-only JSONL, one object per step."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", buffering=1)

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self._file.close()


def flops_per_token(cfg: ModelConfig) -> float:
    """Training FLOPs per token: 6 x non-embedding parameters + attention scores (PaLM appendix B)."""
    # num_params(embedding=False) drops the token embedding (a lookup) but keeps the output projection (a matmul).
    return 6 * cfg.num_params(embedding=False) + 12 * cfg.n_layers * cfg.dim * cfg.seq_len


def peak_flops(device_name: str) -> float | None:
    """bf16 peak of a known GPU by its torch.cuda.get_device_name(), else None."""
    for key, value in _PEAK_BF16.items():
        if key in device_name:
            return value
    return None


def mfu(*, tokens_per_s: float, flops_per_token: float, n_devices: int, device_name: str) -> float | None:
    peak = peak_flops(device_name)
    return None if peak is None else tokens_per_s * flops_per_token / (peak * n_devices)
