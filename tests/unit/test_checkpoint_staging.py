"""The async checkpoint stager: torch's failure when a stager is reused after close() (what torch 2.11's
DefaultStager does to itself after every save), ReusableStager surviving many saves with the same buffers,
and repeated async saves of the engine's own model resuming exactly."""

import pytest
import torch
from torch.distributed.checkpoint._state_dict_stager import StateDictStager

from orchestrator.engine.checkpoint import Checkpointer
from orchestrator.engine.config import load_config
from orchestrator.engine.loss import cross_entropy
from orchestrator.engine.model import Transformer, init_weights
from orchestrator.engine.staging import ReusableStager

PLAIN = (int, float, str, bool, type(None))


def test_a_closed_torch_stager_fails_on_any_dict_with_keyerror_type():
    """torch 2.11's DefaultStager._stage() closes its StateDictStager after every copy; the next save
    copies the top-level dict through __reduce_ex__, whose arguments hold the class `dict`."""
    stager = StateDictStager(pin_memory=False, share_memory=False)
    state = {"w": torch.ones(3), "lr": 1e-3}
    assert torch.equal(stager.stage(state)["w"], state["w"])
    stager.close()
    with pytest.raises(KeyError, match="<class 'type'>"):
        stager.stage(state)


def test_reusable_stager_copies_every_save_into_the_same_buffers():
    stager = ReusableStager(pin_memory=torch.cuda.is_available())
    weight = torch.zeros(1000)
    state = {"model": {"w": weight}, "optim": {"param_groups.w.lr": 1e-3, "param_groups.w.betas": (0.9, 0.95)}}
    pointers = set()
    try:
        for save in range(4):
            weight.fill_(save)
            staged = stager.stage(state).result()
            weight.fill_(-1)  # training goes on: the staged copy keeps the value of its save
            assert torch.equal(staged["model"]["w"], torch.full((1000,), float(save)))
            assert staged["optim"] == state["optim"]
            pointers.add(staged["model"]["w"].data_ptr())
    finally:
        stager.close()
    assert len(pointers) == 1  # allocated (and pinned, on CUDA) once


def _engine_model(seed=0):
    cfg = load_config("tiny")
    model = Transformer(cfg.model)
    init_weights(model, cfg=cfg.model, seed=seed)
    return cfg, model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def _train(cfg, model, opt, steps, start=0):
    losses = []
    for step in range(start, start + steps):
        tokens = torch.randint(0, cfg.model.vocab_size, (2, cfg.model.seq_len + 1),
                               generator=torch.Generator().manual_seed(step))
        loss = cross_entropy(model(tokens[:, :-1]), tokens[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_engine_state_is_tensors_and_plain_data():
    cfg, model, opt = _engine_model()
    _train(cfg, model, opt, 1)

    def check(value, where):
        if isinstance(value, dict):
            for k, v in value.items():
                assert isinstance(k, str), where
                check(v, f"{where}.{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                check(v, f"{where}[{i}]")
        else:
            assert isinstance(value, (torch.Tensor, *PLAIN)), f"{where}: {type(value).__name__}"

    check(Checkpointer._state(model, opt), "state")


def test_repeated_async_saves_resume_like_the_uninterrupted_run(tmp_path):
    cfg, model, opt = _engine_model()
    reference = _train(cfg, model, opt, 8)
    cfg, model, opt = _engine_model()
    ckpt = Checkpointer(tmp_path, async_save=True, keep=2)
    for step in (2, 4, 6):  # one stager, three saves, training between them
        _train(cfg, model, opt, 2, start=step - 2)
        ckpt.save(step, model, opt, extra={"data": {"samples_seen": step}})
    ckpt.close()
    cfg, model2, opt2 = _engine_model(seed=1)  # different weights: the load must overwrite them
    step, extra = Checkpointer(tmp_path).load_latest(model2, opt2)
    assert (step, extra) == (6, {"data": {"samples_seen": 6}})
    assert _train(cfg, model2, opt2, 2, start=6) == pytest.approx(reference[6:], abs=1e-5)
