"""Pure supervisor decisions: exclusion, replacement, shrink, give-up rules, backoff, blame."""

from orchestrator.supervisor.policy import Blame, Limits, PolicyState, blame_from, decide, note_launch, shrink_target

OK = "ok"


def _decide(active, *, spares=(), blame=Blame(None), health=None, checkpoint=None, state=None, **limits):
    state = state if state is not None else PolicyState()
    health = health or {}
    return decide(list(active), spares=list(spares), blame=blame, health=health, checkpoint_step=checkpoint,
                  state=state, limits=Limits(**limits)), state


def test_rank_killed_relaunches_the_same_hosts_with_backoff():
    d, state = _decide(["n1", "n2"], blame=Blame("n2", host_fault=True), checkpoint=3, backoff_s=1.5)
    assert d.action == "relaunch" and d.hosts == ["n1", "n2"] and not d.excluded
    assert d.backoff_s == 1.5 and state.restarts == 1 and state.strikes == {"n2": 1}


def test_unhealthy_host_replaced_by_spare_in_place():
    d, _ = _decide(["n1", "n2", "n3"], spares=["s1", "s2"], health={"n2": "unreachable: timed out", "s1": OK},
                   min_nodes=1, max_nodes=3)
    assert d.excluded == {"n2": "health check: unreachable: timed out"}
    assert d.replaced == {"n2": "s1"} and d.hosts == ["n1", "s1", "n3"] and d.shrunk is None


def test_unhealthy_spare_is_skipped():
    d, _ = _decide(["n1", "n2"], spares=["s1", "s2"], health={"n2": "check failed", "s1": "unreachable"})
    assert d.replaced == {"n2": "s2"}


def test_no_spare_shrinks_within_min():
    d, _ = _decide(["n1", "n2", "n3", "n4"], health={"n4": "unreachable"}, min_nodes=2, max_nodes=4,
                   nproc_per_node=2, global_batch=8)
    # 3 nodes x 2 = dp 6 does not divide the batch of 8: shrink to 2 nodes (dp 4)
    assert d.action == "relaunch" and d.shrunk == (4, 2) and d.hosts == ["n1", "n2"]


def test_shrink_below_min_gives_up():
    d, _ = _decide(["n1", "n2"], health={"n2": "unreachable"}, min_nodes=2, max_nodes=2)
    assert d.action == "give_up" and "1 healthy hosts left" in d.reason


def test_shrink_target_respects_model_parallel():
    assert shrink_target(3, Limits(min_nodes=1, max_nodes=4, nproc_per_node=1, model_parallel=2)) == 2
    assert shrink_target(5, Limits(min_nodes=1, max_nodes=4, nproc_per_node=2)) == 4
    assert shrink_target(1, Limits(min_nodes=2, max_nodes=4)) is None


def test_repeated_host_faults_exclude_the_host():
    state = PolicyState()
    for _ in range(2):
        d, state = _decide(["n1", "n2", "n3"], spares=["s1"], blame=Blame("n2", host_fault=True), state=state,
                           max_host_failures=2, max_restarts=10, no_progress_attempts=10, checkpoint=None)
    assert d.excluded == {"n2": "2 host faults (limit 2)"} and d.replaced == {"n2": "s1"}


def test_program_errors_never_exclude_hosts():
    state = PolicyState()
    for _ in range(5):
        d, state = _decide(["n1"], blame=blame_from(signal=None, kind="crash", host="n1"), state=state,
                           max_host_failures=1, max_restarts=10, no_progress_attempts=10)
    assert not d.excluded and d.hosts == ["n1"]


def test_max_restarts_gives_up_with_reason():
    state = PolicyState()
    actions = []
    for _ in range(3):
        d, state = _decide(["n1"], blame=Blame("n1", cause="crash"), state=state, max_restarts=2,
                           no_progress_attempts=10)
        actions.append(d.action)
    assert actions == ["relaunch", "relaunch", "give_up"]
    assert "max restarts reached (2)" in d.reason and "crash" in d.reason


def test_no_progress_stops_before_max_restarts():
    state = PolicyState()
    note_launch(state, 6)
    actions = []
    for _ in range(3):
        d, state = _decide(["n1"], checkpoint=6, state=state, max_restarts=100, no_progress_attempts=3)
        actions.append(d.action)
    assert actions == ["relaunch", "relaunch", "give_up"] and "no new checkpoint in 3 attempts" in d.reason


def test_new_checkpoint_resets_no_progress():
    state = PolicyState()
    note_launch(state, 3)
    _decide(["n1"], checkpoint=3, state=state, no_progress_attempts=2)
    d, state = _decide(["n1"], checkpoint=6, state=state, no_progress_attempts=2)
    assert d.action == "relaunch" and state.attempts_without_progress == 0


def test_backoff_grows_and_caps():
    state = PolicyState()
    waits = []
    for _ in range(5):
        d, state = _decide(["n1"], state=state, backoff_s=1, backoff_factor=2, backoff_max_s=5, max_restarts=10,
                           no_progress_attempts=10)
        waits.append(d.backoff_s)
    assert waits == [1, 2, 4, 5, 5]


def test_blame():
    assert blame_from(signal="SIGKILL", kind="killed", host="n1").host_fault
    assert not blame_from(signal="SIGTERM", kind="killed", host="n1").host_fault
    assert not blame_from(signal=None, kind="crash", host="n1").host_fault
    assert blame_from(signal=None, kind="hang", host="n1").host_fault
    assert not blame_from(signal=None, kind="hang", host=None).host_fault


STRAGGLER = blame_from(signal=None, kind="straggler", host="n2")


def test_a_straggler_is_swapped_for_a_healthy_spare_without_a_strike():
    d, state = _decide(["n1", "n2", "n3"], spares=["s1", "s2"], blame=STRAGGLER, health={"s1": "unreachable"},
                       checkpoint=40)
    assert d.action == "relaunch" and d.excluded == {"n2": "straggler: slower than the median node"}
    assert d.replaced == {"n2": "s2"} and d.hosts == ["n1", "s2", "n3"] and not state.strikes


def test_a_straggler_stays_when_no_spare_is_left_for_it():
    """A slow node beats a smaller run; a spare goes to a host that failed its health check first."""
    d, _ = _decide(["n1", "n2", "n3"], spares=["s1"], blame=STRAGGLER, health={"n3": "unreachable"},
                   min_nodes=1)
    assert d.excluded == {"n3": "health check: unreachable"} and d.hosts == ["n1", "n2", "s1"]
    d, _ = _decide(["n1", "n2"], spares=["s1"], blame=STRAGGLER, health={"s1": "unreachable"})
    assert d.action == "relaunch" and not d.excluded and d.hosts == ["n1", "n2"]
