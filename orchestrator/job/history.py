"""Past and live runs from the head's run directory: listing, log files, and the launcher process of a run.

    record_start(Path("runs/R"), name="hello", hosts=["node1"], run_dir=Path("runs/R"), supervised=False)
    record_update(Path("runs/R"), slurm_job="42")   # the batch job of a job file submitted from outside Slurm
    record_end(Path("runs/R"), exit_code=0, restarts=0)
    [r.row() for r in list_runs(Path("runs"))]      # id, name, state, hosts, started, duration, exit, restarts
    run = find_run(Path("runs"), "2026")            # an id, a unique prefix of one, or "last"
    run.log_files(host="node1")                     # runs/R/logs/node1.log (supervised: then every attempt's)
    run.alive                                       # the recorded launcher process still runs (pid + start time)

`orchestrator up` writes RUN/job.json when it starts (the launcher's pid and the start time of that process, so a
reused pid is never mistaken for it) and adds exit_code/ended/restarts when it ends. Runs of plain `orchestrator
launch` (plan.json, result.json, no job.json) are listed too, without a name.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import procstat
from orchestrator.errors import ConfigError
from orchestrator.launch.rundir import log_name

JOB_RECORD = "job.json"


def process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` as recorded in a run's record (a string), or None when there is no such
    process (or only its exit status is left: a zombie, whose parent has not reaped it yet)."""
    start = procstat.process_start(pid)
    return None if start is None else str(start)


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def record_start(run: Path, *, name: str, hosts: list[str], run_dir: Path, supervised: bool, **extra) -> None:
    run.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    _write(run / JOB_RECORD, {"run_id": run.name, "name": name, "hosts": hosts, "pid": pid,
                              "pid_start": process_start(pid), "started": round(time.time(), 3),
                              "supervised": supervised, "run_dir": str(run_dir), **extra})


def record_update(run: Path, **fields) -> None:
    """Add fields to RUN/job.json (e.g. slurm_job, the batch job of a job file submitted from outside Slurm)."""
    _write(run / JOB_RECORD, _read(run / JOB_RECORD) | fields)


def record_end(run: Path, *, exit_code: int, restarts: int | None = None) -> None:
    record_update(run, exit_code=exit_code, ended=round(time.time(), 3), restarts=restarts)


@dataclass
class Run:
    path: Path
    record: dict = field(default_factory=dict)
    """job.json (runs of `up`), else what plan.json/result.json say."""

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def work_dir(self) -> Path:
        """Where the launcher keeps logs: this dir, or the supervised run's dir."""
        return Path(self.record.get("run_dir") or self.path)

    @property
    def alive(self) -> bool:
        pid = self.record.get("pid")
        return isinstance(pid, int) and self.record.get("exit_code") is None and \
            process_start(pid) is not None and process_start(pid) == self.record.get("pid_start")

    @property
    def state(self) -> str:
        code = self.record.get("exit_code")
        if code is None:
            if not self.alive:
                return "lost" if "pid" in self.record else "unknown"
            # a batch job submitted from the head gets its hosts when Slurm starts it (batch.py)
            return "pending" if self.record.get("slurm_job") and not self.record.get("hosts") else "running"
        return "done" if code == 0 else ("stopped" if 128 < code < 128 + 65 else "failed")  # 128+N: signal N

    def log_files(self, host: str | None = None) -> list[Path]:
        """Per-host logs in the order they were written: the run's own logs/ (its setup, and a plain run's
        ranks), then a supervised run's attempts, oldest first (one directory each, under its own run dir)."""
        pattern = f"{log_name(host)}.log" if host else "*.log"
        attempts = sorted((self.work_dir / "attempts").glob(f"*/logs/{pattern}"),
                          key=lambda p: (_attempt(p.parent.parent.name), p.name))
        return sorted((self.path / "logs").glob(pattern)) + attempts

    def row(self) -> dict:
        r = self.record
        started, ended = r.get("started"), r.get("ended")
        duration = (ended or time.time()) - started if started and (ended or self.alive) else None
        return {"id": self.id, "name": r.get("name") or "-", "state": self.state,
                "hosts": _fold(r.get("hosts") or []),
                "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "-",
                "duration": f"{duration:.0f}s" if duration is not None else "-",
                "exit": "-" if r.get("exit_code") is None else str(r["exit_code"]),
                "restarts": "-" if r.get("restarts") is None else str(r["restarts"])}


def _attempt(name: str) -> int:
    tail = name.rsplit("-a", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _fold(hosts: list[str]) -> str:
    from orchestrator.hosts import fold

    return fold(hosts) if hosts else "-"


def load_run(path: Path) -> Run | None:
    """A run directory as a Run, or None when it holds no run."""
    record = _read(path / JOB_RECORD)
    if record:
        return Run(path, record)
    plan = _read(path / "plan.json")
    if not plan:
        return None
    result = _read(path / "result.json")
    started = (path / "plan.json").stat().st_mtime
    ended = (path / "result.json").stat().st_mtime if result else None
    return Run(path, {"hosts": [n.get("host") for n in plan.get("nodes", [])], "started": started, "ended": ended,
                      "exit_code": result.get("exit_code")})


def list_runs(base: Path) -> list[Run]:
    """Every run under `base`, oldest first (run ids start with their UTC start time)."""
    if not base.is_dir():
        return []
    runs = [load_run(p) for p in sorted(base.iterdir()) if p.is_dir()]
    return sorted((r for r in runs if r is not None), key=lambda r: (r.record.get("started") or 0, r.id))


def find_run(base: Path, ref: str | None) -> Run:
    """The run `ref` names: its id, a unique prefix of one, or "last"/None (the newest)."""
    runs = list_runs(base)
    if not runs:
        raise ConfigError("RUN", ref, f"no runs in {base}; give --run-dir where `up` wrote them")
    if ref in (None, "last"):
        return runs[-1]
    named = [r for r in runs if r.id == ref] or [r for r in runs if r.record.get("name") == ref]
    if named:
        return named[-1]  # a job name picks its newest run
    matches = [r for r in runs if r.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ConfigError("RUN", ref, f"no such run or job name in {base}; `orchestrator jobs` lists them")
    raise ConfigError("RUN", ref, f"{len(matches)} runs start with it; give more of the id")
