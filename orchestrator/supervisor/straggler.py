"""Straggler detection: name a node whose ranks are persistently slower than the median node's, from heartbeats.

    options = StragglerOptions(threshold=1.10, steps=50, action="replace")   # ConfigError on bad values
    detector = StragglerDetector(options)
    for found in detector.observe(read_heartbeats(d)):      # every poll; a node is named once
        found.host, found.slowdown, found.to_event()         # 'node3', 1.52, the "straggler" event's fields
    watch = StragglerWatch(options, events=log, checkpoint=lambda: newest_checkpoint(run_dir)[0], attempt=0, spares=1)
    watch.poll(beats)                                        # the loop's hook: a Straggler when it is time to stop

What is compared: every rank's heartbeat carries running totals of the time spent in a rank-local section of
its steps (the engine's optimizer step: no collectives) and of the steps timed (engine/heartbeat.py). Whole
step times cannot name anyone: in synchronous training the fast ranks wait in collectives for the slow one,
so every rank's step takes as long. Only ranks doing the same local work are compared: the ranks of one
`compute_group` (one pipeline stage of the engine: stages hold different layers).

How: the detector differences the totals into windows of at least steps/5 steps (all ranks, the same span of
steps: they train in lock step). In each window a node's mean local time per step (its ranks of a group
pooled) is divided by the median node's of that group (the lower median: with 2 nodes the faster one is the
reference); a node's slowdown is its largest over the groups. A node is named when every one of its windows of
the last `steps` steps (at least 3 windows) has a slowdown >= threshold: it was that slow throughout. A one-off
spike (a GC pause, one slow write) lifts one window, and a burst of outside load on a shared machine a few, and
neither names anyone (judged by "most windows" instead, the windows of a 30-minute clean run on the 2-core test
machine gave 51 alarm episodes at the default threshold, by "every window" none; docs/benchmarks/straggler.md);
a checkpoint slows every rank alike, which the ratio cancels. A node slowed in only some steps (pauses in 1
step of 10) is named once every window of `steps` had one. Means, not medians, within a window: a CPU quota
pauses a process for whole CFS periods and such a pause falls in a short section in only some steps (measured
on a 20% quota: the optimizer step's median unchanged, its mean 4x). The threshold must sit above the
section's noise between healthy ranks (docs/benchmarks/straggler.md).

Actions: "replace" -- once named, and when the run has a spare: under warm restarts over SSH with spare keepers, a spare
takes the node's place in-run at once, restoring its ranks from the in-memory snapshots as for a lost node
(supervisor/warm.py; at most a step lost); otherwise the attempt is stopped as soon as a checkpoint newer than
the naming step is committed, and the policy swaps the node for a spare (policy.py); the run loses at most the
steps since that checkpoint. "name" -- events only. "off" -- no detection, and the
ranks are told not to time anything (ORCH_STEP_TIMING=0).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.errors import ConfigError

__all__ = ["ACTIONS", "Straggler", "StragglerDetector", "StragglerOptions", "StragglerWatch"]

ACTIONS = ("replace", "name", "off")
MIN_WINDOWS = 3
"""Windows a verdict needs at the least: a median over fewer is one window's say."""
_TIMED = ("training", "checkpointing")


@dataclass(frozen=True)
class StragglerOptions:
    threshold: float = 1.10
    """A node is slow when its local time per step is at least this multiple of the median node's."""
    steps: int = 50
    """...in every window of this many steps in a row."""
    action: str = "replace"
    """'replace' (from the spares, at the next checkpoint), 'name' (events only) or 'off'."""

    def __post_init__(self):
        if not self.threshold > 1.0:
            raise ConfigError("--straggler-threshold", self.threshold,
                              "use a ratio above 1, e.g. 1.10 (10% slower than the median node)")
        if self.steps < 2 * MIN_WINDOWS:
            raise ConfigError("--straggler-steps", self.steps,
                              f"use at least {2 * MIN_WINDOWS}, so a one-off slow step never names a node")
        if self.action not in ACTIONS:
            raise ConfigError("--straggler-action", self.action, f"use one of {', '.join(ACTIONS)}")

    @property
    def window(self) -> int:
        """Steps per window: five windows span `steps`."""
        return max(1, self.steps // 5)


@dataclass(frozen=True, kw_only=True)
class Straggler:
    """A node named slow: its slowdown (the smallest over the windows that named it) and what it was measured on."""

    host: str
    slowdown: float
    step: int
    """The step the ranks had reached when it was named."""
    steps: int
    """Steps covered by the windows that named it."""
    ranks: list[int]
    compute_ms: float
    """Its mean local time per step over those windows (the first group's, in ms)."""
    median_ms: float
    """The median node's, over the same windows."""
    windows: list[tuple[int, float]] = field(default_factory=list)
    """(steps, slowdown) of each of those windows, oldest first."""

    def describe(self) -> str:
        """'1.52x the median node's local compute time over 50 steps (9.12 vs 6.00 ms per step), named at step 80'"""
        return (f"{self.slowdown:.2f}x the median node's local compute time over {self.steps} steps "
                f"({self.compute_ms:.2f} vs {self.median_ms:.2f} ms per step), named at step {self.step}")

    def to_event(self) -> dict:
        return {"host": self.host, "slowdown": round(self.slowdown, 3), "step": self.step, "steps": self.steps,
                "ranks": self.ranks, "compute_ms": round(self.compute_ms, 3), "median_ms": round(self.median_ms, 3),
                "windows": [list(w) for w in self.windows]}


@dataclass
class _Window:
    steps: int
    slowdown: float
    compute_ms: float
    median_ms: float


@dataclass
class StragglerDetector:
    """Windows and verdicts of one attempt (the rank totals restart with every attempt's processes)."""

    options: StragglerOptions
    named: dict[str, Straggler] = field(default_factory=dict)
    _start: dict[str, tuple[int, float]] = field(default_factory=dict)
    _history: dict[str, list[_Window]] = field(default_factory=dict)

    def observe(self, beats: dict[str, dict]) -> list[Straggler]:
        """Feed one poll's heartbeats (read_heartbeats()); returns the nodes named by this poll."""
        samples = {key: b for key, b in beats.items()
                   if b.get("status") in _TIMED and isinstance(b.get("compute_steps"), int) and b.get("host")}
        # Ranks appeared or finished, or a rank's totals went back (a warm restart's new process): windows start
        # over for everyone.
        if set(samples) != set(self._start) or any(_totals(b)[0] < self._start[k][0] for k, b in samples.items()):
            self._start = {key: _totals(b) for key, b in samples.items()}
            return []
        if not samples or min(_totals(b)[0] - self._start[key][0] for key, b in samples.items()) < self.options.window:
            return []
        self._close_window(samples)
        return self._verdicts(max(int(b.get("step", 0)) for b in samples.values()), samples)

    def _close_window(self, samples: dict[str, dict]) -> None:
        # (group, host) -> [seconds, steps] over the window; one node's ranks of a group pooled
        spent: dict[tuple[str, str], list[float]] = {}
        for key, beat in samples.items():
            steps, seconds = _totals(beat)
            total = spent.setdefault((str(beat.get("compute_group", "")), beat["host"]), [0.0, 0])
            total[0] += seconds - self._start[key][1]
            total[1] += steps - self._start[key][0]
        steps_in_window = min(_totals(b)[0] - self._start[k][0] for k, b in samples.items())
        self._start = {key: _totals(b) for key, b in samples.items()}
        worst: dict[str, _Window] = {}
        for group in sorted({g for g, _ in spent}):
            means = {host: s / n for (g, host), (s, n) in spent.items() if g == group and n > 0}
            if len(means) < 2:  # nobody to compare with
                continue
            reference = statistics.median_low(means.values())
            if reference <= 0:
                continue
            for host, mean in means.items():
                window = _Window(steps_in_window, mean / reference, mean * 1e3, reference * 1e3)
                if host not in worst or window.slowdown > worst[host].slowdown:
                    worst[host] = window
        keep = 2 * self.options.steps // self.options.window + MIN_WINDOWS
        for host, window in worst.items():
            history = self._history.setdefault(host, [])
            history.append(window)
            del history[:-keep]

    def windows(self, host: str) -> list[_Window]:
        """The host's kept windows (steps, slowdown, compute_ms, median_ms), oldest first."""
        return list(self._history.get(host, []))

    def recent(self, host: str) -> list[_Window] | None:
        """The host's newest windows that cover the last `steps` steps (at least 3), oldest first; None before."""
        recent, covered = [], 0
        for window in reversed(self._history.get(host, [])):
            if covered >= self.options.steps and len(recent) >= MIN_WINDOWS:
                break
            recent.append(window)
            covered += window.steps
        return recent[::-1] if covered >= self.options.steps and len(recent) >= MIN_WINDOWS else None

    def slowdown(self, host: str) -> float | None:
        """The host's slowdown now: the smallest over recent(), so every one of those windows was at least that
        slow (None before there are enough windows)."""
        recent = self.recent(host)
        return min(w.slowdown for w in recent) if recent else None

    def slowdowns(self) -> dict[str, float]:
        """Every host's slowdown now, where there are enough windows."""
        return {host: value for host in self._history if (value := self.slowdown(host)) is not None}

    def _verdicts(self, step: int, samples: dict[str, dict]) -> list[Straggler]:
        found = []
        for host in self._history:
            slowdown = self.slowdown(host)
            if host in self.named or slowdown is None or slowdown < self.options.threshold:
                continue
            recent = self.recent(host)
            ranks = sorted(int(b["rank"]) for b in samples.values() if b["host"] == host and "rank" in b)
            self.named[host] = Straggler(
                host=host, slowdown=slowdown, step=step, steps=sum(w.steps for w in recent), ranks=ranks,
                compute_ms=statistics.fmean(w.compute_ms for w in recent),
                median_ms=statistics.fmean(w.median_ms for w in recent),
                windows=[(w.steps, round(w.slowdown, 3)) for w in recent])
            found.append(self.named[host])
        return found


def _totals(beat: dict) -> tuple[int, float]:
    return int(beat["compute_steps"]), float(beat.get("compute_s") or 0.0)


class StragglerWatch:
    """One attempt's straggler detection as the supervisor loop drives it: names stragglers in events.jsonl and,
    under action "replace" with a spare, says when to stop the attempt (a checkpoint newer than the naming)."""

    def __init__(self, options: StragglerOptions, *, events, checkpoint: Callable[[], int | None], attempt: int,
                 spares: int, at_once: bool = False):
        """checkpoint(): the newest checkpoint's step or None (the supervisor's: the run dir's DCP checkpoints,
        else the node-local ones the engine reported). at_once: a straggler to replace is handed out as soon as it
        is named, for a swap in-run (warm restarts with spare keepers: the spare restores the node's ranks from
        their in-memory snapshots), not at the next checkpoint."""
        self.options, self.events, self.checkpoint, self.attempt = options, events, checkpoint, attempt
        self.detector = StragglerDetector(options)
        self.spares, self.at_once = spares, at_once
        self.pending: Straggler | None = None
        """The first straggler named while a replacement is possible: swapped out at once or at the next
        checkpoint."""

    @property
    def replace(self) -> bool:
        """A straggler named now may be swapped for a spare."""
        return self.options.action == "replace" and self.spares > 0

    def poll(self, beats: dict[str, dict]) -> Straggler | None:
        """Feed one poll's heartbeats; returns the straggler to replace once its checkpoint is committed."""
        if self.options.action == "off":
            return None
        for found in self.detector.observe(beats):
            plan = "name"
            if self.replace and self.pending is None:
                self.pending, plan = found, "replace in-run" if self.at_once else "replace at the next checkpoint"
            elif self.options.action == "replace":
                plan = "name (no spare left)" if self.pending is None else "name (one replacement at a time)"
            self.events.emit("straggler", attempt=self.attempt, **found.to_event(),
                             threshold=self.options.threshold, action=plan)
        if self.pending is None:
            return None
        if self.at_once:
            return self.pending  # the loop swaps it in-run and says so (warm.py)
        checkpoint = self.checkpoint()  # only while a replacement waits: a directory scan
        if checkpoint is None or checkpoint <= self.pending.step:
            return None
        last = max((b["steps"] for b in beats.values() if b.get("steps")), default=None)
        if last is not None and checkpoint >= last:
            self.pending = None  # the checkpoint of the last step: the run is ending anyway, nothing to swap
            return None
        self.events.emit("failure", attempt=self.attempt, kind="straggler", host=self.pending.host,
                         checkpoint_step=checkpoint)
        return self.pending

    def swapped(self) -> None:
        """The pending straggler was swapped for a spare in-run: one spare fewer; the next one named may be too."""
        self.spares -= 1
        self.pending = None

    def at_next_checkpoint(self) -> None:
        """No swap in-run was possible: the pending straggler waits for the next checkpoint (a cold swap)."""
        self.at_once = False
