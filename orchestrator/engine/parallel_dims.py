"""The parallel layout of one run: validated degrees, then the DeviceMesh built from them.

    dims = ParallelDims.resolve(cfg.parallel, world_size=8)      # infers the one -1 factor
    dims.validate_for(cfg)                                       # ConfigError before any process group
    mesh, dp_mesh = dims.build_mesh("cpu")   # ("pp", "dp_replicate", "dp_shard", "tp") + the flattened dp axis

Glossary (used across the engine):
    axis / dim   one named dimension of the device mesh: pp, dp_replicate, dp_shard, tp. "dp" is the flattened
                 dp_replicate x dp_shard axis: the ranks that see different data.
    degree       the size of an axis (tp=2 means two ranks share every layer).
    rank         a process (one GPU); host / node: a machine holding local ranks 0..N-1.
    stage        a slice of consecutive layers on the pp axis; interleaved schedules hold several per rank
                 (virtual stages), stage s lives on pp rank s % pp.
The mesh puts tp innermost, so tensor-parallel groups are consecutive ranks (the same node under torchrun),
then dp_shard, dp_replicate, and pp outermost (the least traffic crosses the slowest links).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.errors import ConfigError

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

    from orchestrator.engine.config import EngineConfig, ParallelConfig

__all__ = ["ParallelDims", "MESH_DIMS"]

MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "tp")


@dataclass(frozen=True, kw_only=True)
class ParallelDims:
    """Degrees of every axis; their product is the world size."""

    dp_replicate: int
    dp_shard: int
    tp: int
    pp: int
    world_size: int

    def __post_init__(self) -> None:
        if self.dp_replicate * self.dp_shard * self.tp * self.pp != self.world_size:
            raise ConfigError(message=(
                f"dp_replicate={self.dp_replicate} x dp_shard={self.dp_shard} x tp={self.tp} x pp={self.pp} = "
                f"{self.dp_replicate * self.dp_shard * self.tp * self.pp}, but WORLD_SIZE={self.world_size}; "
                "make the product equal the number of processes (or pass -1 for one factor to infer it)"))

    @classmethod
    def resolve(cls, parallel: ParallelConfig, *, world_size: int) -> ParallelDims:
        """Fill in the one factor given as -1 from the world size, then check the product."""
        degrees = {"dp_replicate": parallel.dp_replicate, "dp_shard": parallel.dp_shard,
                   "tp": parallel.tp, "pp": parallel.pp}
        unknown = [name for name, value in degrees.items() if value == -1]
        if unknown:
            known = math.prod(v for v in degrees.values() if v != -1)
            if world_size % known:
                given = " x ".join(f"{k}={v}" for k, v in degrees.items() if v != -1)
                raise ConfigError(f"--{unknown[0].replace('_', '-')}", -1, (
                    f"cannot infer it: {given} = {known} does not divide WORLD_SIZE={world_size}"))
            degrees[unknown[0]] = world_size // known
        return cls(world_size=world_size, **degrees)

    @property
    def dp(self) -> int:
        """Ranks that see different data (replicas x shards)."""
        return self.dp_replicate * self.dp_shard

    def validate_for(self, cfg: EngineConfig) -> None:
        """Check the layout against the model and the batch; raise ConfigError with the fix."""
        model, par, train = cfg.model, cfg.parallel, cfg.train
        for name in ("n_heads", "n_kv_heads", "vocab_size"):
            value = getattr(model, name)
            if value % self.tp:
                raise ConfigError("--tp", self.tp, f"tp must divide model.{name}={value}; "
                                  f"use tp in {_divisors(math.gcd(model.n_heads, model.n_kv_heads, model.vocab_size))}")
        if model.ffn_hidden % self.tp:
            raise ConfigError("--tp", self.tp, f"tp must divide model.ffn_hidden={model.ffn_hidden}")
        if par.sequence_parallel and model.seq_len % self.tp:
            raise ConfigError("parallel.sequence_parallel", True,
                              f"tp={self.tp} must divide model.seq_len={model.seq_len}, or turn it off")
        stages = self.pp * par.stages_per_rank
        if stages > model.n_layers:
            what = f"pp={self.pp}" if par.stages_per_rank == 1 else \
                f"pp={self.pp} x virtual_stages={par.stages_per_rank} = {stages} stages"
            raise ConfigError("--pp", self.pp, f"{what} exceeds model.n_layers={model.n_layers}; "
                              "every stage needs at least one layer")
        if train.global_batch_size % self.dp:
            raise ConfigError("train.global_batch_size", train.global_batch_size,
                              f"must be divisible by dp_replicate x dp_shard = {self.dp}")
        if self.pp > 1:
            mb = self.microbatches(par)
            local_batch = train.global_batch_size // self.dp
            if local_batch % mb:
                raise ConfigError("--microbatches", mb, f"must divide the per-replica batch {local_batch} "
                                  f"(train.global_batch_size={train.global_batch_size} / dp={self.dp})")
            if par.schedule in ("1f1b", "interleaved-1f1b") and mb < self.pp:
                raise ConfigError("--microbatches", mb, f"{par.schedule} needs at least pp={self.pp} microbatches")
            rounds = max(1, mb // self.pp)
            if par.schedule == "interleaved-1f1b" and mb % rounds:
                raise ConfigError("--microbatches", mb, f"interleaved-1f1b needs a multiple of pp={self.pp} "
                                  f"(or fewer than {2 * self.pp})")
        if train.engine == "deepspeed" and (self.tp > 1 or self.pp > 1 or self.dp_replicate > 1):
            raise ConfigError("--engine", "deepspeed", f"runs data parallel (ZeRO) only, found {self.describe()}; "
                              "use --engine torch for tp/pp/HSDP")

    def microbatches(self, par: ParallelConfig) -> int:
        """Pipeline microbatches per step (1 without a pipeline)."""
        if self.pp == 1:
            return 1
        return par.microbatches or self.pp

    def describe(self) -> str:
        return f"pp={self.pp} dp_replicate={self.dp_replicate} dp_shard={self.dp_shard} tp={self.tp}"

    def build_mesh(self, device_type: str) -> tuple[DeviceMesh, DeviceMesh]:
        """The 4-D mesh (size-1 axes included, so code can always index by name) and the flattened dp mesh
        (dp_replicate x dp_shard: the ranks that read different data)."""
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device_type, (self.pp, self.dp_replicate, self.dp_shard, self.tp),
                                mesh_dim_names=MESH_DIMS)
        return mesh, mesh["dp_replicate", "dp_shard"]._flatten("dp")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
