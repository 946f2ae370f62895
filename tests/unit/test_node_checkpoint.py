"""Node-local checkpoints: which step a restart restores (choose_restore, pure), the layout-change and lost-state
errors, and the supervisor's reading of the engine's reports. The engine on sandbox hosts: tests/integration/
test_private_run_dir.py."""

import pytest

from orchestrator.engine.node_checkpoint import Restore, choose_restore
from orchestrator.errors import ConfigError
from orchestrator.supervisor.loop import local_checkpoint

LAYOUT = "world_size=2 pp=1 dp_replicate=1 dp_shard=2 tp=1 stages_per_rank=1"


def held(host, local=(), peers=None, committed=None, layout=LAYOUT):
    return {"host": host, "local": list(local), "peers": peers or {},
            "committed": None if committed is None else {"step": committed, "layout": layout}}


def choose(*holdings, layout=LAYOUT):
    return choose_restore(list(holdings), layout=layout, directory="/runs/r1/node-checkpoints")


def test_nothing_held_anywhere_is_a_fresh_start():
    assert choose(held("n1"), held("n2")) is None


def test_the_newest_step_every_rank_holds_locally():
    # rank 0 wrote step 30 before rank 1 died mid-write: 20 is the newest both hold
    assert choose(held("n1", [10, 20, 30], committed=20), held("n2", [10, 20], committed=20)) == \
        Restore(20, {0: None, 1: None})


def test_a_rank_without_its_files_takes_the_peer_copy_its_successor_holds():
    # n2 was replaced by a fresh spare: rank 1's state comes from the copy on rank 0's node
    restore = choose(held("n1", [10, 20], peers={1: [10, 20]}, committed=20), held("spare"))
    assert restore == Restore(20, {0: None, 1: 0})


def test_a_peer_copy_that_lags_limits_the_step():
    restore = choose(held("n1", [20, 30], peers={1: [10, 20]}, committed=30), held("spare"))
    assert restore == Restore(20, {0: None, 1: 0})


def test_its_own_file_wins_over_a_peer_copy():
    restore = choose(held("n1", [20], peers={1: [20]}, committed=20), held("n2", [20], peers={0: [20]}, committed=20))
    assert restore == Restore(20, {0: None, 1: None})


def test_a_first_save_that_never_completed_starts_over():
    assert choose(held("n1", [10]), held("n2")) is None


def test_state_lost_with_its_copy_is_an_error_not_a_silent_restart():
    with pytest.raises(ConfigError) as info:
        choose(held("n1", [10, 20], committed=20), held("spare"))
    message = str(info.value)
    assert info.value.field == "--checkpoint-local" and "rank 1 (host spare): none" in message
    assert "rank 0 (host n1): [10, 20]" in message and "move /runs/r1/node-checkpoints away on every node" in message


@pytest.mark.parametrize("written", [
    "world_size=4 pp=1 dp_replicate=1 dp_shard=4 tp=1 stages_per_rank=1",  # more ranks before
    "world_size=2 pp=1 dp_replicate=1 dp_shard=1 tp=2 stages_per_rank=1",  # same world, other dims
])
def test_another_layout_is_an_error_naming_the_fix(written):
    with pytest.raises(ConfigError) as info:
        choose(held("n1", [10], committed=10, layout=written), held("n2", [10], committed=10, layout=written))
    message = str(info.value)
    assert f"layout '{written}', this run has '{LAYOUT}'" in message
    assert "cannot be resharded" in message and "same world size and parallel dims" in message


def test_the_supervisor_follows_saves_and_restores_in_the_metrics():
    records = [{"step": 10, "local_checkpoint": 10}, {"step": 11}, {"step": 20, "local_checkpoint": 20},
               {"step": 11, "resumed_from": 10, "resume_source": "peer"}]
    assert local_checkpoint(records[:3], None) == 20
    assert local_checkpoint(records, None) == 10  # the restart from 10 dropped step 20's files
    assert local_checkpoint([{"step": 3, "resumed_from": 2, "resume_source": "memory"}], 20) == 20


@pytest.mark.parametrize(("flags", "field"), [
    ({"engine": "deepspeed"}, "--checkpoint-local"),
    ({"async_checkpoint": True}, "--async-checkpoint"),
])
def test_what_node_local_checkpoints_do_not_combine_with(flags, field):
    from orchestrator.engine.config import load_config

    assert load_config("tiny", checkpoint_local=True).train.checkpoint_local
    with pytest.raises(ConfigError) as info:
        load_config("tiny", checkpoint_local=True, **flags)
    assert info.value.field == field
