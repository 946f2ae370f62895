"""Typed engine configuration: named model sizes in YAML, command-line overrides, validation in one place.

    cfg = load_config("tiny", overrides=["train.lr=1e-3", "model.n_layers=8"], steps=20, tp=2)
    cfg.model.dim, cfg.parallel.tp, cfg.train.steps

A config file (configs/<name>.yaml, or any path) has up to three sections, `model`, `parallel` and `train`,
whose keys are the fields below. `--set section.field=value` overrides any field (the value is parsed as
YAML, so `--set train.lr=3e-4` is a float). Every dataclass validates itself in __post_init__ and raises
ConfigError naming the field, the value and the fix; relations between sections (tp divides heads, ...)
are checked by ParallelDims.validate_for. Nothing here imports torch: bad input fails in milliseconds,
before any process group exists.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import ConfigError

__all__ = ["ModelConfig", "ParallelConfig", "TrainConfig", "EngineConfig", "load_config", "config_names", "SCHEDULES"]

CONFIG_DIR = Path(__file__).parent / "configs"
SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b")
ENGINES = ("torch", "deepspeed")
DTYPES = ("auto", "fp32", "bf16")


def _positive(section: str, **values: int | float) -> None:
    for name, value in values.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{section}.{name}", value, "use a positive number")


@dataclass(kw_only=True)
class ModelConfig:
    """A decoder-only transformer (RMSNorm, RoPE, SwiGLU, grouped-query attention)."""

    dim: int = 64
    """Hidden width; must be a multiple of n_heads (head_dim = dim // n_heads)."""
    n_layers: int = 4
    """Transformer blocks; the pipeline splits them into stages."""
    n_heads: int = 4
    """Query heads; tp must divide it."""
    n_kv_heads: int = 2
    """Key/value heads (grouped-query attention); must divide n_heads, and tp must divide it."""
    vocab_size: int = 256
    """Vocabulary size; 256 fits the byte-level tokenizer. tp must divide it (the embedding is split by rows)."""
    ffn_hidden: int = 0
    """SwiGLU hidden width; 0 means 8/3 * dim rounded up to a multiple of 64 (as Llama)."""
    seq_len: int = 32
    """Tokens per sample."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""

    def __post_init__(self) -> None:
        _positive("model", dim=self.dim, n_layers=self.n_layers, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads,
                  vocab_size=self.vocab_size, seq_len=self.seq_len, norm_eps=self.norm_eps, rope_theta=self.rope_theta)
        if self.dim % self.n_heads:
            raise ConfigError("model.dim", self.dim, f"use a multiple of model.n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError("model.n_kv_heads", self.n_kv_heads, f"use a divisor of model.n_heads={self.n_heads}")
        if self.ffn_hidden < 0:
            raise ConfigError("model.ffn_hidden", self.ffn_hidden, "use 0 (auto) or a positive width")
        if self.ffn_hidden == 0:
            self.ffn_hidden = -(-int(8 * self.dim / 3) // 64) * 64

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def num_params(self, *, embedding: bool = True) -> int:
        """Parameter count; embedding=False leaves out the token embedding (the output projection stays)."""
        attn = self.dim * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        mlp = 3 * self.dim * self.ffn_hidden
        per_layer = attn + mlp + 2 * self.dim
        emb = self.vocab_size * self.dim
        return self.n_layers * per_layer + self.dim + emb + (emb if embedding else 0)


@dataclass(kw_only=True)
class ParallelConfig:
    """Parallel layout. The product dp_replicate * dp_shard * tp * pp is the world size; -1 infers one factor."""

    dp_shard: int = -1
    """FSDP2 sharding degree (ranks that shard parameters, gradients and optimizer state); -1 = the rest."""
    dp_replicate: int = 1
    """Replicas of the sharded group (HSDP: replicate across nodes, shard within); -1 = the rest."""
    tp: int = 1
    """Tensor-parallel degree (DTensor, within a node)."""
    pp: int = 1
    """Pipeline stages (one per rank along the pp axis; interleaved schedules hold several per rank)."""
    schedule: str = "1f1b"
    """Pipeline schedule: gpipe, 1f1b or interleaved-1f1b."""
    microbatches: int = 0
    """Microbatches per step for the pipeline; 0 = pp (ignored when pp == 1)."""
    virtual_stages: int = 2
    """Stages per rank for interleaved-1f1b."""
    sequence_parallel: bool = False
    """Shard norms and activations along the sequence between TP regions (needs seq_len % tp == 0)."""

    def __post_init__(self) -> None:
        for name in ("dp_shard", "dp_replicate", "tp", "pp"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or (value < 1 and value != -1):
                raise ConfigError(f"--{name.replace('_', '-')}", value, "use a positive integer or -1 (infer)")
        if [self.dp_shard, self.dp_replicate, self.tp, self.pp].count(-1) > 1:
            raise ConfigError(message="at most one of --dp-shard, --dp-replicate, --tp, --pp may be -1 (infer); "
                              "--dp-shard defaults to -1, so give it a value (e.g. --dp-shard 1) to infer another")
        if self.schedule not in SCHEDULES:
            raise ConfigError("--schedule", self.schedule, f"use one of {', '.join(SCHEDULES)}")
        if self.microbatches < 0:
            raise ConfigError("--microbatches", self.microbatches, "use a positive integer (0 = pp)")
        _positive("parallel", virtual_stages=self.virtual_stages)

    @property
    def stages_per_rank(self) -> int:
        return self.virtual_stages if self.schedule == "interleaved-1f1b" else 1


@dataclass(kw_only=True)
class TrainConfig:
    """The training loop: batch, optimizer, schedule, checkpoints, outputs."""

    steps: int = 10
    """Optimizer steps to train (a resumed run continues up to this step)."""
    seed: int = 0
    """Seed for weights and synthetic data; every layout with the same seed trains the same model."""
    global_batch_size: int = 8
    """Samples per optimizer step over all data-parallel ranks; dp_replicate * dp_shard must divide it."""
    lr: float = 1e-3
    """Peak learning rate (AdamW)."""
    warmup_steps: int = 2
    """Linear warm-up steps, then cosine decay to lr * min_lr_ratio at `steps`."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of lr."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables."""
    dtype: str = "auto"
    """Parameter dtype in compute: auto (bf16 on GPU, fp32 on CPU), fp32 or bf16. Master weights stay fp32."""
    activation_checkpointing: bool = False
    """Recompute each transformer block in backward (saves activation memory)."""
    compile: bool = False
    """torch.compile each transformer block (GPU only; ignored on CPU)."""
    engine: str = "torch"
    """torch (this engine: FSDP2 x TP x PP) or deepspeed (ZeRO through deepspeed.initialize)."""
    zero_stage: int = 1
    """ZeRO stage for engine=deepspeed (1, 2 or 3)."""
    data: str = "synthetic"
    """`synthetic` or the path of a token file written by `orchestrator data prepare`."""
    run_dir: str = "runs/default"
    """Where metrics.jsonl and checkpoints/step-N/ go."""
    checkpoint_every: int = 0
    """Save a checkpoint every K steps (and at the last step); 0 disables saving."""
    keep_checkpoints: int = 3
    """Keep the newest K complete checkpoints; 0 keeps all."""
    async_checkpoint: bool = False
    """Save in the background (training continues while the checkpoint is written)."""
    checkpoint_local: bool = False
    """Node-local checkpoints (torch engine): each rank writes its own state to run_dir/node-checkpoints/ on its own
    node and sends a copy to the next node; a restart needs the same layout. For a run dir the ranks do not share
    (`supervise --no-shared-run-dir`); see engine/node_checkpoint.py."""
    snapshot_every: int = 0
    """Snapshot each rank's state into host memory every K steps (0: never); what a warm restart restores. Needs
    ORCH_SNAPSHOT_DIR (the warm launcher sets it, and sets K=1 when this is 0)."""

    def __post_init__(self) -> None:
        _positive("train", steps=self.steps, global_batch_size=self.global_batch_size, lr=self.lr)
        for name in ("warmup_steps", "checkpoint_every", "keep_checkpoints", "seed", "snapshot_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}", getattr(self, name), "use 0 or a positive integer")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("train.min_lr_ratio", self.min_lr_ratio, "use a value in [0, 1]")
        if self.grad_clip < 0:
            raise ConfigError("train.grad_clip", self.grad_clip, "use 0 (off) or a positive norm")
        if self.dtype not in DTYPES:
            raise ConfigError("train.dtype", self.dtype, f"use one of {', '.join(DTYPES)}")
        if self.engine not in ENGINES:
            raise ConfigError("--engine", self.engine, f"use one of {', '.join(ENGINES)}")
        if self.zero_stage not in (1, 2, 3):
            raise ConfigError("train.zero_stage", self.zero_stage, "use 1, 2 or 3")
        if self.checkpoint_local and self.engine != "torch":
            raise ConfigError("--checkpoint-local", True, "node-local checkpoints are the torch engine's; drop it or "
                              "use --engine torch")
        if self.checkpoint_local and self.async_checkpoint:
            raise ConfigError("--async-checkpoint", True, "node-local checkpoints are written synchronously (each a "
                              "rank's own shard); drop --async-checkpoint or --checkpoint-local")
        if self.data != "synthetic" and not Path(self.data).is_file():
            raise ConfigError("--data", self.data, "no such file; write one with `orchestrator data prepare` "
                              "or use --data synthetic")


@dataclass(kw_only=True)
class EngineConfig:
    """Everything one training run needs; the same on every rank."""

    name: str = "tiny"
    """The config's name (file stem), for logs."""
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {"model": ModelConfig, "parallel": ParallelConfig, "train": TrainConfig}
# Command-line flags that map onto config fields (flag name -> section).
FLAG_SECTIONS = {
    "dp_shard": "parallel", "dp_replicate": "parallel", "tp": "parallel", "pp": "parallel", "schedule": "parallel",
    "microbatches": "parallel", "steps": "train", "seed": "train", "run_dir": "train", "data": "train",
    "checkpoint_every": "train", "keep_checkpoints": "train", "async_checkpoint": "train", "engine": "train",
    "snapshot_every": "train", "checkpoint_local": "train",
}


def config_names() -> list[str]:
    """The named configs shipped with the engine (tiny, small, ...)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _read_yaml(name_or_file: str) -> tuple[str, dict[str, Any]]:
    path = Path(name_or_file)
    if not path.is_file():
        path = CONFIG_DIR / f"{name_or_file}.yaml"
    if not path.is_file():
        raise ConfigError("--config", name_or_file, f"use a file or one of {', '.join(config_names())}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict) or set(raw) - set(_SECTIONS):
        raise ConfigError("--config", str(path), f"top-level keys must be among {', '.join(_SECTIONS)}")
    return path.stem, raw


def _apply_override(raw: dict[str, dict[str, Any]], item: str) -> None:
    key, sep, text = item.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or section not in _SECTIONS:
        raise ConfigError("--set", item, f"use SECTION.FIELD=VALUE with SECTION in {', '.join(_SECTIONS)}")
    if name not in {f.name for f in dataclasses.fields(_SECTIONS[section])}:
        known = ", ".join(f.name for f in dataclasses.fields(_SECTIONS[section]))
        raise ConfigError("--set", item, f"{section} has no field {name!r}; fields: {known}")
    raw.setdefault(section, {})[name] = yaml.safe_load(text) if text.strip() else ""


def load_config(name_or_file: str = "tiny", *, overrides: list[str] | tuple[str, ...] = (), **flags: Any) -> EngineConfig:
    """Read a named or file config, apply `--set` overrides, then explicit flags (None = not given)."""
    name, raw = _read_yaml(name_or_file)
    raw = {section: dict(raw.get(section) or {}) for section in _SECTIONS}
    for item in overrides:
        _apply_override(raw, item)
    for flag, value in flags.items():
        if flag not in FLAG_SECTIONS:
            raise TypeError(f"unknown flag {flag}")
        if value is not None:
            raw[FLAG_SECTIONS[flag]][flag] = value
    sections = {}
    for section, cls in _SECTIONS.items():
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw[section]) - known
        if unknown:
            raise ConfigError(f"{section}.{sorted(unknown)[0]}", raw[section][sorted(unknown)[0]],
                              f"unknown field; fields: {', '.join(sorted(known))}")
        for f in dataclasses.fields(cls):  # YAML 1.1 reads "3e-4" (no dot) as a string
            value = raw[section].get(f.name)
            if f.type == "float" and isinstance(value, str):
                try:
                    raw[section][f.name] = float(value)
                except ValueError:
                    pass
        try:
            sections[section] = cls(**raw[section])
        except TypeError as exc:  # a value of the wrong type, e.g. a list for an int
            raise ConfigError(message=f"{section}: {exc}") from exc
    return EngineConfig(name=name, **sections)


def world_from_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) as torchrun sets them; a plain process is rank 0 of 1."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
