"""Pure decisions of the supervisor: who is to blame, which hosts run next, whether to go on at all.

    limits = Limits(min_nodes=2, max_nodes=4, max_restarts=5, no_progress_attempts=3)
    state = PolicyState()
    d = decide(["n1", "n2", "n3", "n4"], spares=["n5"], blame=Blame("n3", host_fault=True),
               health={"n1": "ok", "n2": "ok", "n3": "unreachable", "n4": "ok", "n5": "ok"},
               checkpoint_step=6, state=state, limits=limits)
    d.action, d.hosts, d.excluded, d.replaced    # 'relaunch', [n1, n2, n5, n4], {'n3': 'unreachable'}, {'n3': 'n5'}

No I/O here: the loop gathers facts (the failure, health results, the newest checkpoint) and applies the
Decision. Rules, in order:
1. a host that failed its health check is excluded; so is one blamed for `max_host_failures` host faults
   (killed by a signal, lost, hung) -- a program error (a Python exception, exit code 1) is not the host's fault,
   so a script that always crashes never empties the host list; a straggler (cause "straggler", named by
   straggler.py) is excluded only when a healthy spare is left to take its place after the hosts above: a slow
   node still beats a smaller run;
2. excluded hosts are replaced one for one from the healthy spares, in the order given;
3. when spares run out the run shrinks to the largest node count n with MIN <= n <= healthy hosts whose world
   size (n x procs per node) is a multiple of the model-parallel size (tp x pp) and, when the global batch is
   known, divides it: the data-parallel degree shrinks, the checkpoint reshards on load;
4. give up when `max_restarts` restarts are used, when `no_progress_attempts` attempts in a row ended without
   a new checkpoint, or when fewer than MIN healthy hosts are left;
5. otherwise relaunch after an exponential backoff (base x factor^(consecutive failures - 1), capped).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Blame", "Decision", "Limits", "PolicyState", "blame_from", "decide", "note_launch", "note_success",
           "replace_or_shrink", "shrink_target"]

OK = "ok"
STRAGGLER = "straggler"


@dataclass(frozen=True)
class Limits:
    min_nodes: int = 1
    max_nodes: int = 1_000_000
    max_restarts: int = 3
    no_progress_attempts: int = 3
    max_host_failures: int = 3
    nproc_per_node: int = 1
    model_parallel: int = 1
    """tp x pp: the world size must stay a multiple of it."""
    global_batch: int | None = None
    """When known, the data-parallel degree must divide it."""
    backoff_s: float = 1.0
    backoff_factor: float = 2.0
    backoff_max_s: float = 60.0


@dataclass(frozen=True)
class Blame:
    """The culprit of one failure (None host: unknown) and whether the host itself is suspect."""

    host: str | None
    host_fault: bool = False
    cause: str = ""


@dataclass
class PolicyState:
    """What the policy remembers across failures (the loop keeps one instance per supervised run)."""

    restarts: int = 0
    consecutive_failures: int = 0
    attempts_without_progress: int = 0
    best_checkpoint: int | None = None
    strikes: dict[str, int] = field(default_factory=dict)


@dataclass
class Decision:
    action: str
    """'relaunch' or 'give_up'."""
    hosts: list[str] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)
    replaced: dict[str, str] = field(default_factory=dict)
    shrunk: tuple[int, int] | None = None
    backoff_s: float = 0.0
    reason: str = ""


def blame_from(*, signal: str | None, kind: str, host: str | None) -> Blame:
    """Host faults: the rank was killed by a signal other than our own stop (SIGTERM/SIGINT), the node was
    lost or hung. A non-zero exit code (an exception) is the program's fault."""
    if kind in ("unreachable", "hang", "node_lost"):
        return Blame(host, host_fault=host is not None, cause=kind)
    if kind == STRAGGLER:  # slow, not failed: no strike; decide() swaps it for a spare when there is one
        return Blame(host, host_fault=False, cause=kind)
    if signal and signal not in ("SIGTERM", "SIGINT"):
        return Blame(host, host_fault=True, cause=f"killed by {signal}")
    return Blame(host, host_fault=False, cause=kind)


def shrink_target(healthy: int, limits: Limits) -> int | None:
    """Largest node count the layout allows within MIN..min(MAX, healthy), or None."""
    for n in range(min(healthy, limits.max_nodes), limits.min_nodes - 1, -1):
        world = n * limits.nproc_per_node
        if world % limits.model_parallel:
            continue
        dp = world // limits.model_parallel
        if limits.global_batch is not None and limits.global_batch % dp:
            continue
        return n
    return None


def replace_or_shrink(active: list[str], *, excluded: dict[str, str], spares: list[str],
                      limits: Limits) -> tuple[list[str], dict[str, str], tuple[int, int] | None, str | None]:
    """Rules 2 and 3 (also for the hosts a pre-flight failed): (hosts, replaced, shrunk, None), or the reason to
    give up as the last item when fewer hosts are left than the layout needs."""
    spares = list(spares)
    hosts, replaced = [], {}
    for host in active:
        if host not in excluded:
            hosts.append(host)
        elif spares:
            replaced[host] = spares.pop(0)
            hosts.append(replaced[host])
    if len(hosts) == len(active):
        return hosts, replaced, None, None
    target = shrink_target(len(hosts), limits)
    if target is None:
        return hosts, replaced, None, (f"{len(hosts)} healthy hosts left; the layout needs {limits.min_nodes}..."
                                       f"{limits.max_nodes} nodes (model parallel {limits.model_parallel})")
    return hosts[:target], replaced, (len(active), target) if target != len(active) else None, None


def _progress(state: PolicyState, checkpoint_step: int | None) -> bool:
    made = checkpoint_step is not None and (state.best_checkpoint is None or checkpoint_step > state.best_checkpoint)
    if made:
        state.best_checkpoint = checkpoint_step
    return made


def note_launch(state: PolicyState, checkpoint_step: int | None) -> None:
    """Record the checkpoint an attempt starts from (progress is measured against it)."""
    if checkpoint_step is not None and (state.best_checkpoint is None or checkpoint_step > state.best_checkpoint):
        state.best_checkpoint = checkpoint_step


def decide(active: list[str], *, spares: list[str], blame: Blame, health: dict[str, str],
           checkpoint_step: int | None, state: PolicyState, limits: Limits) -> Decision:
    """What to do after a failed attempt (mutates `state`: strikes, counters)."""
    state.consecutive_failures += 1
    state.attempts_without_progress = 0 if _progress(state, checkpoint_step) else state.attempts_without_progress + 1
    if blame.host_fault and blame.host is not None:
        state.strikes[blame.host] = state.strikes.get(blame.host, 0) + 1

    excluded: dict[str, str] = {}
    for host in active:
        why = health.get(host, OK)
        if why != OK:
            excluded[host] = f"health check: {why}"
        elif state.strikes.get(host, 0) >= limits.max_host_failures:
            excluded[host] = f"{state.strikes[host]} host faults (limit {limits.max_host_failures})"

    healthy_spares = [s for s in spares if health.get(s, OK) == OK and s not in active]
    if (blame.cause == STRAGGLER and blame.host in active and blame.host not in excluded
            and len(healthy_spares) > len(excluded)):
        excluded[blame.host] = "straggler: slower than the median node"
    hosts, replaced, shrunk, short = replace_or_shrink(active, excluded=excluded, spares=healthy_spares,
                                                       limits=limits)
    if short:
        return Decision("give_up", hosts, excluded, replaced, reason=short)

    if state.restarts >= limits.max_restarts:
        return Decision("give_up", hosts, excluded, replaced, shrunk,
                        reason=f"max restarts reached ({limits.max_restarts}); last failure: {blame.cause}")
    if state.attempts_without_progress >= limits.no_progress_attempts:
        return Decision("give_up", hosts, excluded, replaced, shrunk,
                        reason=f"no new checkpoint in {state.attempts_without_progress} attempts "
                               f"(newest step {state.best_checkpoint}); last failure: {blame.cause}")
    state.restarts += 1
    backoff = min(limits.backoff_s * limits.backoff_factor ** (state.consecutive_failures - 1), limits.backoff_max_s)
    return Decision("relaunch", hosts, excluded, replaced, shrunk, backoff_s=backoff)


def note_success(state: PolicyState) -> None:
    """A step after a restart finished: the backoff starts over."""
    state.consecutive_failures = 0
