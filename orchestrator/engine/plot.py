"""Plot a run: loss and throughput over steps, restarts marked.

    history = read_history("runs/t1")          # metrics.jsonl (+ events.jsonl when the supervisor wrote one)
    path = plot_run("runs/t1")                 # -> runs/t1/training.png

A run that resumed has several segments in metrics.jsonl (each resumed segment's first line carries
"resumed_from"); steps between the checkpoint and the failure appear twice, once per attempt. Each
segment is drawn on its own so the re-trained steps show as an overlap, and every restart is a dashed
vertical line at the step it resumed from. Restarts come from the supervisor's events.jsonl when it
exists (its restart/resume events carry the reason), else from the metrics' "resumed_from".
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import ConfigError

__all__ = ["History", "Restart", "plot_run", "read_history"]

log = logging.getLogger("orchestrator.engine.plot")

_RESTART_KINDS = ("restart", "relaunch", "resume")
_STEP_KEYS = ("resumed_step", "resume_step", "resumed_from", "checkpoint_step", "from_step", "step")
_REASON_KEYS = ("cause", "reason", "message")


@dataclass
class Restart:
    step: int | None
    """The step training resumed from (None when the event does not say)."""
    label: str = ""


@dataclass
class History:
    segments: list[list[dict]] = field(default_factory=list)
    """metrics.jsonl split at each resume, in file order."""
    restarts: list[Restart] = field(default_factory=list)


def _jsonl(path: Path) -> list[dict]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a live run may be mid-line; anything else is worth a word
            log.warning("%s:%d: not JSON, skipped", path, number)
    return records


def _event_restarts(events: list[dict]) -> list[Restart]:
    restarts = []
    for event in events:
        kind = str(event.get("event") or event.get("kind") or event.get("type") or "").lower()
        if not any(word in kind for word in _RESTART_KINDS):
            continue
        step = next((event[k] for k in _STEP_KEYS if isinstance(event.get(k), int)), None)
        reason = next((str(event[k]) for k in _REASON_KEYS if event.get(k)), "")
        restarts.append(Restart(step, f"{kind}: {reason}" if reason else kind))
    return restarts


def read_history(run_dir: str | Path) -> History:
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise ConfigError("RUN_DIR", str(run_dir), "holds no metrics.jsonl; give the --run-dir of a training run")
    history = History()
    for record in _jsonl(metrics):
        if not isinstance(record.get("step"), int):
            continue
        if "resumed_from" in record or not history.segments:
            history.segments.append([])
        history.segments[-1].append(record)
    resumed = [Restart(seg[0]["resumed_from"], "resumed") for seg in history.segments if "resumed_from" in seg[0]]
    events = run_dir / "events.jsonl"
    from_events = _event_restarts(_jsonl(events)) if events.is_file() else []
    # Events name the cause; metrics know the step. Pair them in order where the event gives no step.
    for i, restart in enumerate(from_events):
        if restart.step is None and i < len(resumed):
            restart.step = resumed[i].step
    history.restarts = from_events or resumed
    return history


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write a PNG (default RUN_DIR/training.png) of loss and tokens/s over steps; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    history = read_history(run_dir)
    if not history.segments:
        raise ConfigError("RUN_DIR", str(run_dir), "metrics.jsonl has no step records yet")
    out = Path(out) if out else run_dir / "training.png"
    fig, (ax_loss, ax_tput) = plt.subplots(2, 1, sharex=True, figsize=(9, 6.5), constrained_layout=True)
    for i, segment in enumerate(history.segments):
        steps = [r["step"] for r in segment]
        label = "attempt 1" if i == 0 else f"attempt {i + 1}"
        color = f"C{i % 10}"
        ax_loss.plot(steps, [r.get("loss") for r in segment], color=color, lw=1.4, label=label)
        ax_tput.plot(steps, [r.get("tokens_per_s") for r in segment], color=color, lw=1.0, marker=".", ms=3)
    for n, restart in enumerate(r for r in history.restarts if r.step is not None):
        for ax in (ax_loss, ax_tput):
            ax.axvline(restart.step, color="crimson", ls="--", lw=1,
                       label=("restart" if n == 0 else None) if ax is ax_loss else None)
        ax_loss.annotate(restart.label, (restart.step, 1), xycoords=("data", "axes fraction"), rotation=90,
                         xytext=(3, -4), textcoords="offset points", va="top", ha="left", fontsize=7,
                         color="crimson")
    last = history.segments[-1][-1]
    ax_loss.set_title(f"{run_dir.name}: step {last['step']}, loss {last.get('loss', float('nan')):.4f}, "
                      f"{len(history.restarts)} restart(s)")
    ax_loss.set_ylabel("loss")
    ax_tput.set_ylabel("tokens/s")
    ax_tput.set_xlabel("step")
    ax_tput.set_ylim(bottom=0)
    for ax in (ax_loss, ax_tput):
        ax.grid(alpha=0.3)
    if len(history.segments) > 1 or history.restarts:
        ax_loss.legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
