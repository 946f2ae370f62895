"""ParallelDims: inference of the -1 factor, every validation message, the pipeline split helpers."""

import re

import pytest

from orchestrator.engine.config import load_config
from orchestrator.engine.parallel_dims import ParallelDims
from orchestrator.engine.pipeline import split_layers, stage_ids
from orchestrator.errors import ConfigError


def dims_for(world: int, **flags) -> ParallelDims:
    cfg = load_config("tiny", **flags)
    dims = ParallelDims.resolve(cfg.parallel, world_size=world)
    dims.validate_for(cfg)
    return dims


def test_dp_shard_is_inferred_from_the_world_size():
    dims = dims_for(8, tp=2, pp=2)
    assert (dims.pp, dims.dp_replicate, dims.dp_shard, dims.tp, dims.dp) == (2, 1, 2, 2, 2)


def test_any_single_factor_may_be_inferred():
    assert dims_for(2, dp_shard=1, tp=-1).tp == 2
    assert dims_for(4, dp_shard=2, dp_replicate=-1).dp_replicate == 2


def test_product_mismatch_prints_every_factor_and_world_size():
    with pytest.raises(ConfigError) as err:
        dims_for(6, dp_shard=2, tp=2, pp=2)
    assert str(err.value) == ("dp_replicate=1 x dp_shard=2 x tp=2 x pp=2 = 8, but WORLD_SIZE=6; make the product "
                              "equal the number of processes (or pass -1 for one factor to infer it)")


def test_uninferable_factor_names_the_flag():
    with pytest.raises(ConfigError, match=r"--dp-shard=-1: cannot infer it: .*tp=4.* does not divide WORLD_SIZE=6"):
        dims_for(6, tp=4)


def test_two_unknown_factors_are_refused():
    with pytest.raises(ConfigError, match="at most one"):
        load_config("tiny", tp=-1)  # dp_shard defaults to -1 as well


@pytest.mark.parametrize("overrides,flags,fragment", [
    (["model.n_heads=3", "model.dim=96", "model.n_kv_heads=3"], {"tp": 2, "dp_shard": 1},
     "tp must divide model.n_heads=3"),
    (["model.n_kv_heads=1"], {"tp": 2, "dp_shard": 1}, "tp must divide model.n_kv_heads=1"),
    (["model.vocab_size=255"], {"tp": 2, "dp_shard": 1}, "tp must divide model.vocab_size=255"),
    (["model.seq_len=33", "parallel.sequence_parallel=true"], {"tp": 2, "dp_shard": 1}, "must divide model.seq_len=33"),
    (["model.n_layers=1"], {"pp": 2, "dp_shard": 1}, "pp=2 exceeds model.n_layers=1"),
    (["parallel.virtual_stages=4"], {"pp": 2, "dp_shard": 1, "schedule": "interleaved-1f1b", "microbatches": 2},
     "pp=2 x virtual_stages=4 = 8 stages exceeds model.n_layers=4"),
    (["train.global_batch_size=6"], {"dp_shard": 4}, "must be divisible by dp_replicate x dp_shard = 4"),
    ([], {"pp": 2, "dp_shard": 1, "microbatches": 3}, "must divide the per-replica batch 8"),
    ([], {"pp": 2, "dp_shard": 1, "microbatches": 1}, "1f1b needs at least pp=2 microbatches"),
])
def test_layout_errors_name_the_field_and_fix(overrides, flags, fragment):
    cfg = load_config("tiny", overrides=overrides, **flags)
    world = flags.get("dp_shard", 1) * flags.get("tp", 1) * flags.get("pp", 1)
    dims = ParallelDims.resolve(cfg.parallel, world_size=world)
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        dims.validate_for(cfg)


def test_microbatches_default_to_pp_and_are_one_without_a_pipeline():
    cfg = load_config("tiny")
    assert ParallelDims(dp_replicate=1, dp_shard=1, tp=1, pp=4, world_size=4).microbatches(cfg.parallel) == 4
    assert ParallelDims(dp_replicate=1, dp_shard=2, tp=1, pp=1, world_size=2).microbatches(cfg.parallel) == 1


def test_split_layers_is_contiguous_and_balanced():
    assert split_layers(n_layers=8, n_stages=4) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert split_layers(n_layers=5, n_stages=2) == [(0, 3), (3, 5)]
    ranges = split_layers(n_layers=30, n_stages=7)
    assert ranges[0][0] == 0 and ranges[-1][1] == 30
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1


def test_interleaved_stages_loop_over_the_pp_ranks():
    assert stage_ids(pp_rank=1, pp=4, stages_per_rank=2) == [1, 5]
    assert stage_ids(pp_rank=0, pp=2, stages_per_rank=1) == [0]


def test_stage_parameter_names_and_weights_do_not_depend_on_the_split():
    import torch

    from orchestrator.engine.model import Transformer, init_weights
    from orchestrator.engine.pipeline import _stage_module

    cfg = load_config("tiny").model
    full = Transformer(cfg)
    init_weights(full, cfg=cfg, seed=7)
    with torch.device("meta"):
        skeleton = Transformer(cfg)
    ranges = split_layers(n_layers=cfg.n_layers, n_stages=3)
    stages = [_stage_module(skeleton, s, 3, ranges[s]) for s in range(3)]
    names = [set(dict(stage.named_parameters())) for stage in stages]
    assert set.union(*names) == set(dict(full.named_parameters())), "the stages hold exactly the full model"
    assert sum(map(len, names)) == len(dict(full.named_parameters())), "no parameter lives on two stages"
    assert "layers.3.attention.wq.weight" in names[2] and "tok_embeddings.weight" in names[0]
    last = stages[2].to_empty(device="cpu")
    init_weights(last, cfg=cfg, seed=7)
    for name, param in last.named_parameters():
        assert torch.equal(param, full.get_parameter(name)), name
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len))
    hidden = full.tok_embeddings(tokens)
    for layer in list(full.layers.values())[:ranges[2][0]]:
        hidden = layer(hidden, full.rope)
    assert torch.allclose(last(hidden), full(tokens), atol=1e-6), "the last stage continues the full forward"
