"""Checkpointer in one process: roundtrip, resume equals an uninterrupted run, keep-last-K, partial and
corrupt checkpoints skipped, async save committed by wait(). Multi-process layouts: tests/integration."""

import json
import logging
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from orchestrator.engine.checkpoint import Checkpointer
from orchestrator.engine.checkpoint_files import complete_steps, newest_checkpoint
from orchestrator.errors import ConfigError


class Tiny(nn.Module):
    def __init__(self, layers=(0, 1, 2)):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleDict({str(i): nn.Linear(8, 8) for i in (0, 1, 2)})
        for name in [n for n in self.layers if int(n) not in layers]:
            del self.layers[name]  # a pipeline stage keeps its layers under their global index

    def forward(self, x):
        for layer in self.layers.values():
            x = torch.tanh(layer(x))
        return x


def make(layers=(0, 1, 2)):
    model = Tiny(layers)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def train(model, opt, steps, start=0):
    losses = []
    for step in range(start, start + steps):
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(step))
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_fresh_run_has_nothing_to_load(tmp_path):
    model, opt = make()
    assert Checkpointer(tmp_path).load_latest(model, opt) is None
    assert newest_checkpoint(tmp_path) == (None, [])


@pytest.mark.parametrize("async_save", [False, True])
def test_resume_matches_uninterrupted_run(tmp_path, async_save):
    reference = train(*make(), 6)
    model, opt = make()
    ckpt = Checkpointer(tmp_path, async_save=async_save)
    train(model, opt, 3)
    ckpt.save(3, model, opt, extra={"data": {"samples_seen": 12}})
    ckpt.wait()
    assert complete_steps(tmp_path) == [3]
    assert json.loads((tmp_path / "checkpoints/step-3/meta.json").read_text())["step"] == 3

    model2, opt2 = make()
    train(model2, opt2, 1, start=100)  # diverge first: the load must overwrite everything
    step, extra = Checkpointer(tmp_path).load_latest(model2, opt2)
    assert (step, extra) == (3, {"data": {"samples_seen": 12}})
    assert train(model2, opt2, 3, start=3) == pytest.approx(reference[3:], abs=1e-7)


def test_pipeline_parts_save_and_load_into_one_module(tmp_path):
    """Two stages (two parts, one optimizer each) -> one module: names are layout independent."""
    full, full_opt = make()
    train(full, full_opt, 2)
    parts = [make((0, 1)), make((2,))]
    for (part, opt) in parts:
        part.load_state_dict({k: v for k, v in full.state_dict().items() if k in part.state_dict()})
    Checkpointer(tmp_path).save(2, [p for p, _ in parts], [o for _, o in parts])
    model, opt = make()
    assert Checkpointer(tmp_path).load_latest(model, opt)[0] == 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, full.state_dict()[k])


def test_keep_last_k_and_rng(tmp_path):
    model, opt = make()
    ckpt = Checkpointer(tmp_path, keep=2)
    for step in (1, 2, 3):
        torch.manual_seed(step)
        ckpt.save(step, model, opt)
    expected = torch.rand(3)
    assert complete_steps(tmp_path) == [2, 3]
    torch.manual_seed(99)
    Checkpointer(tmp_path).load_latest(model, opt)
    assert torch.equal(torch.rand(3), expected)  # RNG continues where the save left it


def damage_truncate(path):
    shard = max(path.glob("*.distcp"), key=lambda p: p.stat().st_size)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def damage_metadata(path):
    (path / ".metadata").write_bytes(b"garbage")


def damage_payload(path):
    # same size, scrambled bytes: only the load itself can notice
    shard = max(path.glob("*.distcp"), key=lambda p: p.stat().st_size)
    shard.write_bytes(bytes(reversed(shard.read_bytes())))


@pytest.mark.parametrize("damage", [damage_truncate, damage_metadata, damage_payload])
def test_damaged_newest_checkpoint_falls_back(tmp_path, damage, caplog):
    model, opt = make()
    ckpt = Checkpointer(tmp_path)
    train(model, opt, 1)
    ckpt.save(1, model, opt, extra={"at": 1})
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, opt, 1, start=1)
    ckpt.save(2, model, opt, extra={"at": 2})
    damage(tmp_path / "checkpoints/step-2")
    (tmp_path / "checkpoints/.step-3.partial").mkdir()  # a save cut off by a crash

    model2, opt2 = make()
    with caplog.at_level(logging.WARNING, logger="orchestrator.engine.checkpoint"):
        assert Checkpointer(tmp_path).load_latest(model2, opt2) == (1, {"at": 1})
    assert "step-2" in caplog.text and "skipping" in caplog.text
    assert not (tmp_path / "checkpoints/.step-3.partial").exists()
    for k, v in model2.state_dict().items():
        assert torch.equal(v, saved[k])


def test_async_save_is_not_visible_until_committed(tmp_path):
    model, opt = make()
    ckpt = Checkpointer(tmp_path, async_save=True, keep=1)
    ckpt.save(1, model, opt)
    ckpt.save(2, model, opt)  # waits for step 1 first
    ckpt.wait()
    assert complete_steps(tmp_path) == [2]
    assert not list((tmp_path / "checkpoints").glob(".*partial"))


def test_extra_that_json_cannot_hold_fails_at_save(tmp_path):
    model, opt = make()
    with pytest.raises(TypeError):
        Checkpointer(tmp_path, async_save=True).save(1, model, opt, extra={"bad": object()})
    assert complete_steps(tmp_path) == []


def test_async_save_holds_the_state_of_its_step_while_training_goes_on(tmp_path, monkeypatch):
    from orchestrator.engine.staging import ReusableStager

    copy = ReusableStager._copy

    def slow_copy(self, *args):  # a slow copy: training reaches optimizer.step() before it ends
        time.sleep(0.3)
        return copy(self, *args)

    monkeypatch.setattr(ReusableStager, "_copy", slow_copy)
    model, opt = make()
    train(model, opt, 2)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = Checkpointer(tmp_path, async_save=True)
    ckpt.save(2, model, opt)
    train(model, opt, 3, start=2)  # optimizer steps wait for the background copy, then change the weights
    ckpt.wait()
    model2, opt2 = make()
    assert Checkpointer(tmp_path).load_latest(model2, opt2)[0] == 2
    for k, v in model2.state_dict().items():
        assert torch.equal(v, snapshot[k])


def test_no_loadable_checkpoint_refuses_to_start_over(tmp_path):
    model, opt = make()
    Checkpointer(tmp_path).save(1, model, opt)
    damage_payload(tmp_path / "checkpoints/step-1")
    with pytest.raises(ConfigError, match="none loads") as err:
        Checkpointer(tmp_path).load_latest(*make())
    assert err.value.field == "--run-dir" and "step-1" in str(err.value)


def two_checkpoints(tmp_path):
    model, opt = make()
    ckpt = Checkpointer(tmp_path)
    for step in (1, 2):
        train(model, opt, 1, start=step)
        ckpt.save(step, model, opt)
    return tmp_path / "checkpoints/step-2"


def test_meta_json_records_every_file_size(tmp_path):
    newest = two_checkpoints(tmp_path)
    files = json.loads((newest / "meta.json").read_text())["files"]
    assert ".metadata" in files and any(name.endswith(".distcp") for name in files)
    assert files == {p.name: p.stat().st_size for p in newest.iterdir() if p.name != "meta.json"}
    assert newest_checkpoint(tmp_path) == (2, [])


def resize(path, delta):
    """Change the size of the step dir's biggest shard by `delta` bytes (None: delete it); returns its name."""
    shard = max(path.glob("*.distcp"), key=lambda p: p.stat().st_size)
    if delta is None:
        shard.unlink()
    else:
        with open(shard, "r+b") as f:
            f.truncate(shard.stat().st_size + delta)
    return shard.name


@pytest.mark.parametrize("delta, why", [(-100, "truncated shard"), (7, "damaged shard"), (None, "missing shard")])
def test_size_check_names_the_damaged_file(tmp_path, delta, why):
    name = resize(two_checkpoints(tmp_path), delta)
    step, skipped = newest_checkpoint(tmp_path)
    assert step == 1 and len(skipped) == 1 and skipped[0].startswith(f"step-2: {why} {name}")


def test_checkpoint_without_recorded_sizes_is_checked_from_dcp_metadata(tmp_path):
    """Checkpoints committed before meta.json had "files" still load, and a truncated shard is still found."""
    newest = two_checkpoints(tmp_path)
    for path in (newest, tmp_path / "checkpoints/step-1"):
        meta = json.loads((path / "meta.json").read_text())
        del meta["files"]
        (path / "meta.json").write_text(json.dumps(meta))
    assert newest_checkpoint(tmp_path) == (2, [])
    name = resize(newest, -100)
    step, skipped = newest_checkpoint(tmp_path)
    assert step == 1 and skipped[0].startswith(f"step-2: truncated shard {name} (")
    assert Checkpointer(tmp_path).load_latest(*make())[0] == 1


def test_the_supervisors_check_imports_no_torch(tmp_path):
    two_checkpoints(tmp_path)
    resize(tmp_path / "checkpoints/step-2", -100)
    code = ("import json, sys; from orchestrator.supervisor.loop import Supervisor; "
            "from orchestrator.engine.checkpoint_files import newest_checkpoint; "
            f"print(json.dumps([newest_checkpoint({str(tmp_path)!r}), 'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    (step, skipped), torch_imported = json.loads(out)
    assert step == 1 and skipped[0].startswith("step-2: truncated shard") and not torch_imported
