"""Engine config: named sizes, --set overrides, validation messages; the lr schedule; heartbeat files; MFU."""

import json
import math

import pytest

from orchestrator.engine.config import config_names, load_config
from orchestrator.engine.heartbeat import Heartbeat, read_heartbeats
from orchestrator.engine.metrics import flops_per_token, mfu
from orchestrator.engine.steps import lr_at
from orchestrator.errors import ConfigError


@pytest.mark.parametrize("name,millions", [("small", 125), ("medium", 350), ("large", 1300), ("7b", 6700)])
def test_named_sizes_have_their_parameter_counts(name, millions):
    params = load_config(name).model.num_params() / 1e6
    assert 0.9 * millions <= params <= 1.1 * millions


def test_tiny_is_the_test_model():
    m = load_config("tiny").model
    assert (m.n_layers, m.dim, m.n_heads, m.n_kv_heads, m.vocab_size, m.seq_len) == (4, 64, 4, 2, 256, 32)
    assert {"tiny", "small", "medium", "large", "7b"} <= set(config_names())


def test_flags_and_set_overrides_reach_their_fields():
    cfg = load_config("tiny", overrides=["train.lr=3e-4", "model.n_layers=8", "parallel.sequence_parallel=true"],
                      steps=7, tp=2, schedule="gpipe", async_checkpoint=True, run_dir="r")
    assert (cfg.train.lr, cfg.model.n_layers, cfg.parallel.sequence_parallel) == (3e-4, 8, True)
    assert (cfg.train.steps, cfg.parallel.tp, cfg.parallel.schedule, cfg.train.async_checkpoint) == (7, 2, "gpipe", True)
    assert cfg.train.run_dir == "r" and cfg.train.engine == "torch"


def test_a_yaml_file_works_as_config(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model: {dim: 32, n_heads: 2, n_kv_heads: 1}\ntrain: {steps: 3}\n")
    cfg = load_config(str(path))
    assert (cfg.name, cfg.model.dim, cfg.model.head_dim, cfg.train.steps) == ("mine", 32, 16, 3)


@pytest.mark.parametrize("kwargs,fragment", [
    ({"name_or_file": "huge"}, "--config='huge': use a file or one of"),
    ({"overrides": ["lr=1"]}, "--set='lr=1': use SECTION.FIELD=VALUE"),
    ({"overrides": ["train.learning_rate=1"]}, "train has no field 'learning_rate'"),
    ({"overrides": ["model.dim=65"]}, "model.dim=65: use a multiple of model.n_heads=4"),
    ({"overrides": ["model.n_kv_heads=3"]}, "model.n_kv_heads=3: use a divisor of model.n_heads=4"),
    ({"overrides": ["model.dim=[1, 2]"]}, "model.dim=[1, 2]: use a positive number"),
    ({"overrides": ["train.dtype=fp8"]}, "train.dtype='fp8': use one of auto, fp32, bf16"),
    ({"schedule": "zigzag"}, "--schedule='zigzag': use one of gpipe, 1f1b, interleaved-1f1b"),
    ({"tp": 0}, "--tp=0: use a positive integer or -1"),
    ({"steps": 0}, "train.steps=0: use a positive number"),
    ({"engine": "jax"}, "--engine='jax': use one of torch, deepspeed"),
    ({"data": "missing.npy"}, "--data='missing.npy': no such file"),
])
def test_bad_config_raises_config_error_naming_the_field(kwargs, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(**kwargs)
    assert fragment in str(err.value)


def test_lr_warms_up_then_decays_to_the_floor():
    cfg = load_config("tiny", steps=10, overrides=["train.warmup_steps=2", "train.lr=1.0", "train.min_lr_ratio=0.1"])
    assert [lr_at(s, cfg) for s in (1, 2)] == [0.5, 1.0]
    assert math.isclose(lr_at(10, cfg), 0.1)
    decay = [lr_at(s, cfg) for s in range(2, 11)]
    assert decay == sorted(decay, reverse=True)


def test_heartbeat_files_are_replaced_atomically_and_readable(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCH_HEARTBEAT_DIR", str(tmp_path / "hb"))
    beats = [Heartbeat.from_env(rank=r, local_rank=r, world_size=2) for r in range(2)]
    beats[0].beat(step=0, status="starting")
    beats[0].beat(step=5)
    beats[1].beat(step=4)
    seen = read_heartbeats(tmp_path / "hb")
    assert sorted(b["step"] for b in seen.values()) == [4, 5]
    first = json.loads(beats[0].path.read_text())
    assert first["status"] == "training" and first["rank"] == 0 and first["pid"] > 0 and first["time"] > 0
    assert not list((tmp_path / "hb").glob(".*tmp")), "no temporary files left behind"
    beats[0].beat(status="failed")
    assert json.loads(beats[0].path.read_text())["step"] == 5, "a failure keeps the last step"


def test_heartbeat_is_off_without_the_env(monkeypatch):
    monkeypatch.delenv("ORCH_HEARTBEAT_DIR", raising=False)
    hb = Heartbeat.from_env(rank=0, local_rank=0, world_size=1)
    hb.beat(step=1)
    assert hb.path is None


def test_mfu_uses_six_n_plus_attention():
    m = load_config("large").model
    per_token = flops_per_token(m)
    assert 6 * 1.1e9 < per_token < 6 * 1.5e9
    assert mfu(tokens_per_s=1e5, flops_per_token=per_token, n_devices=1, device_name="NVIDIA H100 80GB HBM3") == \
        pytest.approx(1e5 * per_token / 989e12)
    assert mfu(tokens_per_s=1.0, flops_per_token=1.0, n_devices=1, device_name="cpu") is None


def test_orchestrator_train_print_config_resolves_flags_and_sets():
    from click.testing import CliRunner

    from orchestrator.cli.main import cli

    result = CliRunner().invoke(cli, ["train", "--config", "tiny", "--tp", "2", "--set", "train.lr=3e-4",
                                      "--print-config"])
    assert result.exit_code == 0, result.output
    cfg = json.loads(result.output)
    assert cfg["parallel"]["tp"] == 2 and cfg["train"]["lr"] == 3e-4 and cfg["model"]["n_layers"] == 4
