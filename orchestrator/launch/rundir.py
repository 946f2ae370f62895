"""Run ids and the run directory: where a launch keeps its plan, per-host logs and result.

    run_id = new_run_id()                       # orchestrator.contracts: '20261123-104501-3f9a2c'
    rd = RunDir(Path("runs") / run_id)
    rd.create()
    rd.write_json("plan.json", plan.to_json())  # redacted plan
    with rd.host_logs(["node1", "node2"]) as logs:
        logs.write("node1", "node1/0: hello")   # -> runs/<run_id>/logs/node1.log

Layout:
    runs/<run_id>/plan.json           the plan as printed by --json (secrets redacted)
    runs/<run_id>/hostfile            the DeepSpeed hostfile (deepspeed launcher only)
    runs/<run_id>/logs/<host>.log     every line from that host, with its host/rank prefix
    runs/<run_id>/result.json         per-host exit codes and the first failure
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

def log_name(host: str) -> str:
    """A file name for a host (host names are validated upstream; this only guards the path)."""
    return re.sub(r"[^A-Za-z0-9_.@:-]", "_", host).lstrip(".") or "_"


@dataclass(frozen=True)
class RunDir:
    path: Path

    def create(self) -> None:
        (self.path / "logs").mkdir(parents=True, exist_ok=True)

    def log_path(self, host: str) -> Path:
        return self.path / "logs" / f"{log_name(host)}.log"

    def write_json(self, name: str, data: object) -> Path:
        target = self.path / name
        target.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
        return target

    def write_text(self, name: str, text: str) -> Path:
        target = self.path / name
        target.write_text(text)
        return target

    @contextmanager
    def host_logs(self, hosts: list[str]):
        files: dict[str, IO[str]] = {h: open(self.log_path(h), "a", buffering=1) for h in hosts}
        try:
            yield HostLogs(files)
        finally:
            for f in files.values():
                f.close()


@dataclass
class HostLogs:
    files: dict[str, IO[str]]

    def write(self, host: str, line: str) -> None:
        self.files[host].write(line.rstrip("\n") + "\n")
