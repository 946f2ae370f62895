"""Warm restarts, the pure parts: the keeper protocol, when supervise chooses warm, the keeper's command line, and
in-memory snapshots restoring a model exactly (the multi-process behaviour: tests/integration/test_warm_restart.py)."""

import shutil

import pytest
import torch

from orchestrator.engine.warm import Assignment, event_line, parse_event
from orchestrator.errors import ConfigError
from orchestrator.launch.plan import LaunchSpec, build_plan
from orchestrator.hosts import Host
from orchestrator.supervisor.plan import SuperviseOptions, restart_mode


def test_event_lines_round_trip_and_other_lines_are_not_events():
    event = parse_event(event_line("rank_exit", rank=1, exitcode=-9))
    assert event["event"] == "rank_exit" and event["rank"] == 1 and event["exitcode"] == -9 and event["time"] > 0
    for text in ("hello", "orchestrator-warm not json", 'orchestrator-warm ["a list"]', 'orchestrator-warm {"x": 1}'):
        assert parse_event(text) is None


def test_assignments_round_trip():
    job = Assignment(generation=3, rank=5, local_rank=1, world_size=8)
    assert Assignment.parse(job.line()) == job and job.line().endswith(b"\n")


def engine(*args: str, launcher: str = "torchrun") -> LaunchSpec:
    return LaunchSpec(program=("orchestrator.engine", *args), module=True, run_id="r1", launcher=launcher)


@pytest.mark.parametrize("spec, opts, mode", [
    (engine("--config", "tiny"), {}, "warm"),
    (engine("--config", "tiny"), {"restart": "cold"}, "cold"),
    (engine("--config", "tiny"), {"via": "slurm"}, "warm"),
    (engine("--config", "tiny"), {"via": "slurm", "restart": "cold"}, "cold"),
    (engine("--engine", "deepspeed"), {}, "cold"),
    (engine(launcher="deepspeed"), {}, "cold"),
    (LaunchSpec(program=("train.py",), run_id="r1"), {}, "cold"),
    (LaunchSpec(program=("other.module",), module=True, run_id="r1"), {}, "cold"),
])
def test_auto_restarts_warm_only_for_the_torch_engine(spec, opts, mode):
    chosen, why = restart_mode(spec, SuperviseOptions(**opts))
    assert chosen == mode and why


def test_warm_that_cannot_be_had_is_a_config_error_naming_the_option():
    with pytest.raises(ConfigError) as info:
        restart_mode(LaunchSpec(program=("train.py",), run_id="r1"), SuperviseOptions(restart="warm"))
    assert info.value.field == "--restart" and "not the engine" in str(info.value)
    assert restart_mode(engine(), SuperviseOptions(restart="warm", via="slurm"))[0] == "warm"
    with pytest.raises(ConfigError):
        restart_mode(engine(launcher="deepspeed"), SuperviseOptions(restart="warm", via="slurm"))
    with pytest.raises(ConfigError):
        restart_mode(engine(), SuperviseOptions(restart="tepid"))


def test_the_warm_launcher_runs_a_keeper_per_node_with_its_ranks():
    plan = build_plan(engine("--config", "tiny", launcher="warm"), [Host("a", 2), Host("b", 2)])
    argv = plan.nodes[1].argv
    assert argv[1:3] == ("-m", "orchestrator.engine.keeper")
    assert {"--node-rank=1", "--nproc-per-node=2", "--first-rank=2", "--world-size=4", "--master-addr=a"} <= set(argv)
    assert argv[argv.index("--") + 1:] == ("--config", "tiny")
    with pytest.raises(ConfigError) as info:
        build_plan(LaunchSpec(program=("train.py",), run_id="r1", launcher="warm"), [Host("a", 1)])
    assert info.value.field == "--launcher"


def _model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _train(model, opt, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        x = torch.randn(4, 8)  # from the global RNG: the snapshot must restore it too
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_a_snapshot_restores_model_optimizer_rng_and_extra_exactly(tmp_path):
    from orchestrator.engine.snapshot import Snapshots

    model, opt = _model_and_optimizer(0)
    _train(model, opt, 3)
    snaps = Snapshots(tmp_path, rank=0, keep=2)
    for step in (3, 4, 5):  # the same state under three steps: only the newest two stay
        stall = snaps.save(step, [model], [opt], extra={"data": {"position": step}})
    snaps.wait()
    assert snaps.steps() == [4, 5] and snaps.newest() == 5 and stall >= 0
    expected = _train(model, opt, 4)

    fresh, fresh_opt = _model_and_optimizer(1)  # other weights, no optimizer state yet
    torch.randn(100)  # and the RNG moved on
    assert snaps.load(5, [fresh], [fresh_opt]) == {"data": {"position": 5}}
    assert _train(fresh, fresh_opt, 4) == expected


def test_a_snapshot_of_another_model_is_refused(tmp_path):
    from orchestrator.engine.snapshot import Snapshots

    model, opt = _model_and_optimizer(0)
    snaps = Snapshots(tmp_path, rank=0)
    snaps.save(1, [model], [opt], extra={})
    snaps.close()
    other = torch.nn.Linear(3, 3)
    with pytest.raises(ValueError, match="snapshot lacks"):
        snaps.load(1, [other], [torch.optim.AdamW(other.parameters())])


class _Events:
    def __init__(self):
        self.emitted = []

    def emit(self, event, **fields):  # EventLog.emit's signature: "kind" is a field of some events
        self.emitted.append((event, fields))


class _Runner:
    def __init__(self, reach):
        self.reach, self.asked = reach, None

    async def kill_pids(self, pids, *, timeout):
        self.asked = pids
        return [h for h in pids if h in self.reach]


def _attempt():
    from orchestrator.supervisor.diagnosis import Attempt

    plan = build_plan(engine("--config", "tiny", launcher="warm"), [Host("a", 1), Host("b", 1)])
    return Attempt(0, plan, launched_at=0.0)


def test_keeper_lines_become_failure_diagnosis_restart_and_resumed_events():
    from orchestrator.launch.output import OutputLine
    from orchestrator.supervisor.warm import WarmRestarts

    events, attempt = _Events(), _attempt()
    warm = WarmRestarts(events, _Runner(()), hang_timeout=3)

    def line(host, text):
        warm.on_line(attempt, OutputLine(host, None, "stdout", text, text.encode()))

    line("b", event_line("rank_exit", rank=1, pid=77, exitcode=-9, generation=0))
    line("a", event_line("left", rank=0, generation=0, pid=5))
    for host in ("a", "b"):  # every keeper reports the new generation: one event
        line(host, event_line("generation", generation=1, node_rank=0, replaced={"1": 78}))
    line("b", event_line("joined", rank=1, generation=1, pid=78))
    line("a", "an ordinary line")
    warm.on_step(attempt, {"step": 41, "loss": 1.0, "step_time_s": 0.1, "resumed_from": 40,
                           "resume_source": "memory"}, seen_at=100.0, previous_step=41, step_seen={40: 98.0})
    kinds = [k for k, _ in events.emitted]
    assert kinds == ["failure", "diagnosis", "warm_restart", "warm_resumed"]
    failure, diagnosis = events.emitted[0][1], events.emitted[1][1]
    assert (failure["host"], failure["rank"], failure["local_rank"], failure["signal"]) == ("b", 1, 0, "SIGKILL")
    assert diagnosis["cause"] == "killed" and diagnosis["action"] == "warm_restart"
    resumed = events.emitted[3][1]
    assert resumed["steps_lost"] == 1 and resumed["time_lost_s"] == 1.9
    assert {"exit", "left", "joined", "first_step_seen"} <= set(resumed["phases"])


def test_a_hang_kills_only_the_stopped_rank_and_says_whether_every_host_was_reached():
    import asyncio

    from orchestrator.supervisor.warm import WarmRestarts

    stalled = [{"host": "a", "pid": 5}, {"host": "b", "pid": 6}]
    events, runner = _Events(), _Runner({"a", "b"})
    warm = WarmRestarts(events, runner, hang_timeout=3)
    assert asyncio.run(warm.kill_hung(_attempt(), stalled, {"a": {5: "S"}, "b": {6: "T"}}))
    assert runner.asked == {"b": [6]} and warm.hang_check_paused(__import__("time").time())
    # nothing stopped (a deadlock): every stalled rank is killed
    runner = _Runner({"a", "b"})
    warm = WarmRestarts(_Events(), runner, hang_timeout=3)
    assert asyncio.run(warm.kill_hung(_attempt(), stalled, {"a": {5: "S"}, "b": {6: "S"}}))
    assert runner.asked == {"a": [5], "b": [6]}
    # nothing stopped, but the stacks show rank 1 elsewhere while rank 0 waits in a collective: only rank 1
    runner, attempt = _Runner({"a", "b"}), _attempt()
    attempt.stacks = {"culprit_ranks": [1], "groups": [{"waiting": True, "ranks": [0]}, {"waiting": False, "ranks": [1]}]}
    warm = WarmRestarts(_Events(), runner, hang_timeout=3)
    ranked = [{"host": "a", "pid": 5, "rank": 0}, {"host": "b", "pid": 6, "rank": 1}]
    assert asyncio.run(warm.kill_hung(attempt, ranked, {"a": {5: "S"}, "b": {6: "R"}}))
    assert runner.asked == {"b": [6]}
    # a host that did not answer the probe (a lost node): nothing is killed, the attempt restarts cold
    runner = _Runner({"a"})
    warm = WarmRestarts(_Events(), runner, hang_timeout=3)
    assert not asyncio.run(warm.kill_hung(_attempt(), stalled, {"a": {5: "S"}}))
    assert runner.asked is None


def test_a_keeper_reports_a_rank_stopped_by_a_signal_once_after_the_grace(monkeypatch):
    import signal
    import subprocess
    import time
    from types import SimpleNamespace

    from orchestrator.engine import keeper

    args, _ = keeper.parse_args(["--nnodes", "1", "--node-rank", "0", "--nproc-per-node", "1", "--world-size", "1",
                                 "--master-addr", "127.0.0.1", "--master-port", "1"])
    k = keeper.Keeper(args, [])
    seen = []
    k.out = SimpleNamespace(event=lambda event, **fields: seen.append((event, fields)))
    child = subprocess.Popen(["sleep", "30"])
    try:
        k.active = {0: SimpleNamespace(proc=child, stopped_since=None, stop_reported=False)}
        k._report_stopped()
        assert seen == []  # running
        child.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while keeper.process_state(child.pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.01)
        monkeypatch.setattr(keeper, "STOPPED_GRACE_S", 0.05)
        k._report_stopped()
        assert seen == []  # stopped, but not yet for the grace
        time.sleep(0.1)
        k._report_stopped()
        k._report_stopped()
        assert [(e, f["rank"], f["pid"]) for e, f in seen] == [("rank_stopped", 0, child.pid)]
        child.send_signal(signal.SIGCONT)  # resumed: a later stop is news again
        time.sleep(0.05)
        k._report_stopped()
        assert k.active[0].stop_reported is False
    finally:
        child.kill()
        child.wait()
        shutil.rmtree(k.snapshot_dir, ignore_errors=True)


def test_a_rank_reported_stopped_is_handed_to_the_hang_check_once():
    from orchestrator.launch.output import OutputLine
    from orchestrator.supervisor.warm import WarmRestarts

    attempt, warm = _attempt(), WarmRestarts(_Events(), _Runner(()), hang_timeout=3)
    beats = {"b-rank1": {"host": "b", "rank": 1, "pid": 6, "status": "training"},
             "a-rank0": {"host": "a", "rank": 0, "pid": 5, "status": "training"}}
    assert warm.stopped_ranks(beats) == []
    text = event_line("rank_stopped", rank=1, pid=6, generation=0, stopped_s=0.6)
    warm.on_line(attempt, OutputLine("b", None, "stdout", text, text.encode()))
    assert warm.stopped_ranks(beats) == [beats["b-rank1"]]
    assert warm.stopped_ranks(beats) == []  # handled once


def test_a_rank_its_keeper_killed_as_stuck_is_no_hang_while_its_standby_starts():
    from orchestrator.launch.output import OutputLine
    from orchestrator.supervisor.warm import WarmRestarts

    attempt, warm = _attempt(), WarmRestarts(_Events(), _Runner(()), hang_timeout=3)
    stale = [{"host": "a", "rank": 0, "pid": 5, "status": "training"}]  # its last beat, before the node loss
    assert warm.still_stalled(stale) == stale
    text = event_line("stuck", rank=0, pid=5, generation=1)
    warm.on_line(attempt, OutputLine("a", None, "stdout", text, text.encode()))
    assert warm.still_stalled(stale) == []
    assert warm.still_stalled([{"host": "a", "rank": 0, "pid": 9, "status": "training"}])  # its standby's own beats


def test_spare_hosts_get_spare_keepers_and_only_under_the_warm_launcher():
    spec = engine("--config", "tiny", launcher="warm")
    plan = build_plan(spec, [Host("a", 1), Host("b", 1)], [Host("s", 1)])
    assert plan.hosts == ["a", "b"] and plan.world_size == 2 and [n.host for n in plan.started] == ["a", "b", "s"]
    argv = plan.spares[0].argv
    assert "--spare" in argv and "--host=s" in argv and not any(a.startswith("--node-rank") for a in argv)
    assert {"--nnodes=2", "--world-size=2", "--master-addr=a"} <= set(argv)
    assert "spare" in plan.describe()[-1] and plan.to_json()["spares"][0]["host"] == "s"
    torchrun = build_plan(engine("--config", "tiny"), [Host("a", 1)], [Host("s", 1)])
    assert torchrun.spares == ()


def test_replica_server_keeps_the_newest_copies_and_serves_them_back(tmp_path):
    import time

    from orchestrator.engine.replica import ReplicaPusher, ReplicaServer, fetch

    server = ReplicaServer(tmp_path / "peer")
    try:
        mine = tmp_path / "mine" / "rank3"
        mine.mkdir(parents=True)
        pusher = ReplicaPusher(tmp_path / "mine", ranks=lambda: [3], successor=lambda: ("127.0.0.1", server.port))
        pusher.start()
        for step in (1, 2, 3):
            (mine / f"step-{step}.pt").write_bytes(bytes([step]) * 1000)
            deadline = time.time() + 10
            while pusher.sent.get(3) != step and time.time() < deadline:
                time.sleep(0.01)
        pusher.stop()
        held = lambda: sorted(p.name for p in (tmp_path / "peer" / "rank3").iterdir())  # noqa: E731
        deadline = time.time() + 10  # sent is not yet stored: the server writes and prunes in its own thread
        while held() != ["step-2.pt", "step-3.pt"] and time.time() < deadline:
            time.sleep(0.01)
        assert held() == ["step-2.pt", "step-3.pt"]
        spare = tmp_path / "spare" / "rank3"
        assert fetch(("127.0.0.1", server.port), rank=3, into=spare) == [2, 3]
        assert (spare / "step-3.pt").read_bytes() == bytes([3]) * 1000
        assert fetch(("127.0.0.1", server.port), rank=9, into=tmp_path / "none") == []
    finally:
        server.shutdown()
        server.server_close()


def test_a_lost_node_becomes_failure_diagnosis_and_replace_and_the_spare_stays_for_the_next_attempt(tmp_path):
    import json

    from orchestrator.launch.output import OutputLine
    from orchestrator.supervisor.runner import AttemptResult
    from orchestrator.supervisor.warm import WarmRestarts

    beats = tmp_path / "heartbeat"
    beats.mkdir()
    for host, rank in (("a", 0), ("b", 1)):
        (beats / f"{host}-rank{rank}.json").write_text(json.dumps({"host": host, "rank": rank}))
    events, attempt = _Events(), _attempt()
    warm = WarmRestarts(events, _Runner(()), hang_timeout=3, heartbeat_dir=beats)
    text = event_line("node_lost", node_rank=1, host="b", silent_s=2.1, spare="s", generation=1)
    warm.on_line(attempt, OutputLine("a", None, "stdout", text, text.encode()))
    kinds = [k for k, _ in events.emitted]
    assert kinds == ["failure", "diagnosis", "replace"]
    assert events.emitted[1][1]["cause"] == "node_lost" and events.emitted[1][1]["action"] == "warm_replace"
    assert [p.name for p in beats.iterdir()] == ["a-rank0.json"]  # the lost rank's beat would look like a hang
    hosts, spares = [Host("a", 1), Host("b", 1)], [Host("s", 1), Host("t", 1)]
    assert [h.name for h in warm.apply_swaps(attempt, hosts, spares)] == ["a", "s"] and [s.name for s in spares] == ["t"]
    attempt.result = AttemptResult(exit_code=255, unreachable={"b": "connection lost"})
    assert warm.survived(attempt)
    attempt.result = AttemptResult(exit_code=255, unreachable={"a": "connection lost"})
    assert not warm.survived(attempt)


def test_an_unreachable_stalled_host_waits_for_the_spare_keepers_once():
    import asyncio

    from orchestrator.supervisor.warm import WarmRestarts

    plan = build_plan(engine("--config", "tiny", launcher="warm"), [Host("a", 1), Host("b", 1)], [Host("s", 1)])
    from orchestrator.supervisor.diagnosis import Attempt

    attempt, runner = Attempt(0, plan, launched_at=0.0), _Runner({"a"})
    warm = WarmRestarts(_Events(), runner, hang_timeout=3)
    stalled = [{"host": "a", "pid": 5}, {"host": "b", "pid": 6}]
    assert asyncio.run(warm.kill_hung(attempt, stalled, {"a": {5: "S"}}))  # the keepers may replace b
    assert runner.asked is None  # the survivor waiting for b is not killed: its keeper replaces it
    assert not asyncio.run(warm.kill_hung(attempt, stalled, {"a": {5: "S"}}))  # still gone: cold


def test_stacks_are_dumped_where_the_ranks_run_after_in_run_replacements():
    import asyncio

    from orchestrator.supervisor.hangdump import dump_ranks

    class Dumper:
        async def dump_stacks(self, pids, *, python, timeout, flight):
            self.asked = {h: (p, python(h)) for h, p in pids.items()}
            return {h: {pid: {"threads": []} for pid in p} for h, p in pids.items()}

    plan = build_plan(engine("--config", "tiny", launcher="warm"), [Host("a", 1), Host("b", 1)], [Host("s", 1)])
    runner = Dumper()
    beats = {"x": {"rank": 0, "pid": 5}, "y": {"rank": 1, "pid": 6}}
    dumps = asyncio.run(dump_ranks(runner, plan, beats, timeout=1, swaps={"b": "s"}))
    assert runner.asked == {"a": ([5], "python3"), "s": ([6], "python3")}  # b was lost: s runs rank 1
    assert [(d.rank, d.host) for d in dumps] == [(0, "a"), (1, "s")]


def test_a_standby_waits_at_a_lower_priority_on_every_thread_and_is_raised_back_when_it_becomes_a_rank():
    import os
    import sys

    from orchestrator.engine import keeper

    if not keeper._may_raise_priority():
        pytest.skip("lowering a nice value needs root or RLIMIT_NICE")
    # a "standby" with a second thread, started before and after the keeper lowers it (threads inherit nice)
    program = ("import threading, time; threading.Thread(target=time.sleep, args=(30,), daemon=True).start(); "
               "print('orchestrator-warm-ready', flush=True); time.sleep(30)")
    out = keeper._Output()
    worker = keeper.Worker([sys.executable, "-c", program], dict(os.environ), out, nice=keeper.STANDBY_NICE)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        assert worker.ready.wait(10)

        def nices() -> set[int]:
            return {os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir(f"/proc/{worker.proc.pid}/task")}

        assert len(os.listdir(f"/proc/{worker.proc.pid}/task")) == 2
        assert nices() == {base + keeper.STANDBY_NICE}
        worker.promote()
        assert nices() == {base}
        rank = keeper.Worker([sys.executable, "-c", "pass"], dict(os.environ), out)  # a rank from the start
        assert rank.nice == 0 and rank.proc.wait() == 0
    finally:
        worker.kill()
        worker.proc.wait()


def test_standbys_are_raised_to_the_ranks_priority_once_the_ranks_joined_a_while_ago():
    import os
    import sys
    import time

    from orchestrator.engine import keeper

    if not keeper._may_raise_priority():
        pytest.skip("lowering a nice value needs root or RLIMIT_NICE")
    program = "print('orchestrator-warm-ready', flush=True); import time; time.sleep(30)"
    standby = keeper.Worker([sys.executable, "-c", program], dict(os.environ), keeper._Output(),
                            nice=keeper.STANDBY_NICE)
    node = keeper.Keeper.__new__(keeper.Keeper)  # only what _lift_standbys reads
    node.standbys, node.session_low, base = [standby], False, os.getpriority(os.PRIO_PROCESS, 0)
    try:
        for formed_at in (None, time.monotonic()):  # a generation forming, one just formed: the standby stays low
            node.formed_at = formed_at
            node._lift_standbys()
            assert os.getpriority(os.PRIO_PROCESS, standby.proc.pid) == base + keeper.STANDBY_NICE
        node.formed_at = time.monotonic() - keeper.STANDBY_LIFT_S
        node._lift_standbys()
        assert os.getpriority(os.PRIO_PROCESS, standby.proc.pid) == base and standby.nice == 0
    finally:
        standby.kill()
        standby.proc.wait()


def test_a_straggler_is_swapped_for_a_beating_spare_keeper_in_run_and_its_beats_are_left_out(tmp_path):
    import json

    from orchestrator.engine import warm as keys
    from orchestrator.supervisor.straggler import Straggler
    from orchestrator.supervisor.warm import HeadStore, WarmRestarts

    store = HeadStore("127.0.0.1", nnodes=2, on_event=lambda e: None, on_give_up=lambda r: None)
    try:
        store.store.set(keys.node_key(1), json.dumps({"host": "b", "first_rank": 1, "nproc": 1}))
        events, attempt = _Events(), _attempt()
        warm = WarmRestarts(events, _Runner(()), hang_timeout=3, heartbeat_dir=tmp_path)
        slow = Straggler(host="b", slowdown=8.5, step=89, steps=50, ranks=[1], compute_ms=100.0, median_ms=12.0)
        assert not warm.swap_straggler(attempt, slow, store)  # no spare keeper yet: the caller swaps it cold
        spare = store.store.add(keys.SPARES_KEY, 1)
        store.store.set(keys.spare_key(spare, "host"), "s")
        store.store.add(keys.spare_key(spare, "beat"), 1)
        assert warm.swap_straggler(attempt, slow, store)
        assert json.loads(store.store.get(keys.lost_key(1))) == [1, "b"]  # b's keeper reads it and steps aside
        assert attempt.swaps == {"b": "s"} and [k for k, _ in events.emitted] == ["failure", "diagnosis", "replace"]
        assert events.emitted[1][1]["action"] == "warm_replace" and events.emitted[1][1]["spare"] == "s"
        assert warm.live({"a-rank0": {"host": "a"}, "b-rank1": {"host": "b"}}) == {"a-rank0": {"host": "a"}}
    finally:
        store.close()


def test_a_straggler_watch_at_once_hands_it_out_without_a_checkpoint_and_falls_back_to_one():
    from orchestrator.supervisor.straggler import StragglerOptions, StragglerWatch

    watch = StragglerWatch(StragglerOptions(), events=_Events(), checkpoint=lambda: None, attempt=0, spares=1,
                           at_once=True)
    watch.pending = object()
    assert watch.poll({}) is watch.pending  # no checkpoint was committed
    watch.at_next_checkpoint()
    assert watch.poll({}) is None  # now it waits for one
    watch.swapped()
    assert watch.pending is None and not watch.replace  # the only spare is used
