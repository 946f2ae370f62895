"""Engine data: deterministic global stream, per-dp-rank slices that rebuild the same global batch, resume,
token files made by `orchestrator data prepare`."""

import json
import subprocess

import numpy as np
import pytest
import torch

from orchestrator.engine.data import Batches, SyntheticTokens, TokenFile, build_batches, write_token_file
from orchestrator.errors import ConfigError
from orch_cli import ORCH


def global_batches(data, dp_size, steps, **kw):
    """Concatenate every dp rank's slice per step -> the global batch the layout trains on."""
    ranks = [build_batches(data, vocab_size=256, seed=3, global_batch=8, seq_len=16, dp_rank=r, dp_size=dp_size,
                           **kw) for r in range(dp_size)]
    out = []
    for _ in range(steps):
        parts = [next(b) for b in ranks]
        out.append((torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])))
    return out


@pytest.fixture
def token_file(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("hello, world: the quick brown fox jumps over the lazy dog. " * 40 + "ünïcode ✓\n")
    out = tmp_path / "corpus.npy"
    write_token_file(text, out)
    return out


@pytest.mark.parametrize("data", ["synthetic", "file"])
def test_every_dp_layout_sees_the_same_global_batch(data, token_file):
    spec = "synthetic" if data == "synthetic" else str(token_file)
    reference = global_batches(spec, 1, 3)
    for dp in (2, 4, 8):
        for (x, y), (rx, ry) in zip(global_batches(spec, dp, 3), reference):
            assert torch.equal(x, rx) and torch.equal(y, ry)
    x, y = reference[0]
    assert x.shape == (8, 16) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])  # labels are the next tokens
    assert not torch.equal(reference[0][0], reference[1][0])  # steps differ


def test_sample_depends_only_on_seed_and_index():
    a, b = SyntheticTokens(256, seed=1), SyntheticTokens(256, seed=1)
    assert torch.equal(a.samples(5, 3, 9), torch.cat([b.samples(7, 1, 9), b.samples(5, 2, 9)])[[1, 2, 0]])
    assert not torch.equal(a.samples(0, 4, 9), SyntheticTokens(256, seed=2).samples(0, 4, 9))
    assert int(a.samples(0, 64, 9).max()) < 256


def test_resume_continues_the_stream_also_with_another_dp_size():
    straight = global_batches("synthetic", 1, 5)
    first = build_batches("synthetic", vocab_size=256, seed=3, global_batch=8, seq_len=16, dp_size=2, dp_rank=0)
    next(first), next(first)
    state = json.loads(json.dumps(first.state_dict()))  # survives the checkpoint's JSON
    resumed = []
    for r in range(4):
        b = build_batches("synthetic", vocab_size=256, seed=3, global_batch=8, seq_len=16, dp_size=4, dp_rank=r)
        b.load_state_dict(state)
        resumed.append(next(b)[0])
    assert torch.equal(torch.cat(resumed), straight[2][0])


def test_token_file_roundtrip_and_epochs(token_file, tmp_path):
    tokens = np.load(token_file, mmap_mode="r")
    assert tokens.dtype == np.uint16 and bytes(tokens.astype(np.uint8)) == (tmp_path / "corpus.txt").read_bytes()
    assert json.loads((tmp_path / "corpus.npy.json").read_text())["vocab_size"] == 256
    # a text whose 17-token windows are unique, so each sample can be located in the file
    (tmp_path / "rand.txt").write_bytes(np.random.default_rng(0).integers(0, 256, 16 * 50 + 5, np.uint8).tobytes())
    write_token_file(tmp_path / "rand.txt", tmp_path / "rand.npy")
    tokens = np.load(tmp_path / "rand.npy")
    ds = TokenFile(tmp_path / "rand.npy", seed=0)
    epoch = ds.samples(0, 50, 17)
    offsets = [i * 16 for i in range(50)]
    by_offset = {tuple(tokens[o:o + 17].tolist()): o for o in offsets}
    seen = [by_offset[tuple(row.tolist())] for row in epoch]  # KeyError if a sample is not a window
    assert sorted(seen) == offsets and seen != offsets  # every window once, shuffled
    assert not torch.equal(ds.samples(50, 50, 17), epoch)  # the next epoch is reshuffled


def test_uint32_token_file(tmp_path):
    (tmp_path / "t.txt").write_bytes(bytes(range(256)) * 2)
    write_token_file(tmp_path / "t.txt", tmp_path / "t.npy", dtype="uint32")
    assert np.load(tmp_path / "t.npy").dtype == np.uint32
    b = build_batches(str(tmp_path / "t.npy"), vocab_size=256, seed=0, global_batch=2, seq_len=8)
    assert next(b)[0].shape == (2, 8)


def test_missing_data_file_names_the_flag_and_path(tmp_path):
    missing = tmp_path / "nope.npy"
    with pytest.raises(ConfigError) as err:
        build_batches(str(missing), vocab_size=256, seed=0, global_batch=2, seq_len=8)
    assert err.value.field == "--data" and str(missing) in str(err.value)


def test_bad_sizes_are_config_errors(token_file):
    with pytest.raises(ConfigError, match="global_batch"):
        Batches(SyntheticTokens(256), global_batch=6, seq_len=8, dp_rank=0, dp_size=4)
    with pytest.raises(ConfigError, match="vocab"):
        build_batches(str(token_file), vocab_size=128, seed=0, global_batch=2, seq_len=8)
    with pytest.raises(ConfigError, match="seq_len"):
        next(build_batches(str(token_file), vocab_size=256, seed=0, global_batch=2, seq_len=100000))


def test_cli_prepare(tmp_path):
    (tmp_path / "in.txt").write_text("abc" * 100)
    out = subprocess.run([*ORCH, "data", "prepare", str(tmp_path / "in.txt"), "-o",
                          str(tmp_path / "out.npy"), "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["num_tokens"] == 300
    bad = subprocess.run([*ORCH, "data", "prepare", str(tmp_path / "missing.txt"),
                          "-o", str(tmp_path / "x.npy")], capture_output=True, text=True)
    assert bad.returncode == 2 and "missing.txt" in bad.stderr and "Traceback" not in bad.stderr
