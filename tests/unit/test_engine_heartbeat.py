"""The heartbeat file a rank writes: the contract the supervisor reads (engine/heartbeat.py)."""

import json

from orchestrator.engine.heartbeat import Heartbeat, read_heartbeats


def test_compute_totals_appear_once_a_step_was_timed(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCH_HEARTBEAT_DIR", str(tmp_path))
    hb = Heartbeat.from_env(rank=3, local_rank=1, world_size=4)
    hb.compute_group = "pp1"
    hb.beat(step=0, status="starting")
    (beat,) = read_heartbeats(tmp_path).values()
    assert hb.timing and "compute_s" not in beat and beat["status"] == "starting"
    hb.add_compute(0.25)
    hb.add_compute(0.5)
    hb.beat(step=2)
    (beat,) = read_heartbeats(tmp_path).values()
    assert (beat["rank"], beat["step"], beat["compute_steps"], beat["compute_s"], beat["compute_group"]) == (
        3, 2, 2, 0.75, "pp1")
    assert json.loads(hb.path.read_text()) == beat


def test_timing_is_off_without_a_directory_or_when_told(tmp_path, monkeypatch):
    monkeypatch.delenv("ORCH_HEARTBEAT_DIR", raising=False)
    assert not Heartbeat.from_env(rank=0, local_rank=0, world_size=1).timing
    monkeypatch.setenv("ORCH_HEARTBEAT_DIR", str(tmp_path))
    monkeypatch.setenv("ORCH_STEP_TIMING", "0")
    assert not Heartbeat.from_env(rank=0, local_rank=0, world_size=1).timing
