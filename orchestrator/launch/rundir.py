"""Run ids and the run directory: where a launch keeps its plan, per-host logs and result.

    run_id = new_run_id()                       # orchestrator.contracts: '20261123-104501-3f9a2c'
    rd = RunDir(Path("runs") / run_id)
    rd.create()
    rd.write_json("plan.json", plan.to_json())  # redacted plan
    with rd.host_logs(["node1", "node2"]) as logs:
        logs.write("node1", "node1/0: hello")   # -> runs/<run_id>/logs/node1.log (a full disk: one warning)

Layout (every file 0600: the plan lists the env, logs may echo it):
    runs/<run_id>/plan.json           the plan as printed by --json (secrets redacted)
    runs/<run_id>/hostfile            the DeepSpeed hostfile (deepspeed launcher only)
    runs/<run_id>/logs/<host>.log     every line from that host, with its host/rank prefix
    runs/<run_id>/result.json         per-host exit codes and the first failure
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from orchestrator.errors import ConfigError

log = logging.getLogger("orchestrator.launch.rundir")


def log_name(host: str) -> str:
    """A file name for a host (host names are validated upstream; this only guards the path)."""
    return re.sub(r"[^A-Za-z0-9_.@:-]", "_", host).lstrip(".") or "_"


def _private(path: Path, mode: str):
    """open() for a run-dir file, readable by its owner only (0600 whatever the umask): the plan names the env."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC), 0o600)
    os.fchmod(fd, 0o600)  # an older file of the same run keeps no wider mode
    return os.fdopen(fd, mode, buffering=0 if "b" in mode else -1)  # logs unbuffered: `tail -f` sees every line


@dataclass(frozen=True)
class RunDir:
    path: Path

    def create(self) -> None:
        """Make RUN_DIR/logs; ConfigError (exit 2, before anything starts) when it cannot be made."""
        try:
            (self.path / "logs").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError("--run-dir", str(self.path),
                              f"cannot create it ({exc.strerror}); pick a writable directory with a shorter name")

    def log_path(self, host: str) -> Path:
        return self.path / "logs" / f"{log_name(host)}.log"

    def write_json(self, name: str, data: object) -> Path:
        return self.write_text(name, json.dumps(data, indent=2, sort_keys=False) + "\n")

    def write_text(self, name: str, text: str) -> Path:
        """Whole or not at all (a full disk leaves no truncated file): written aside, then renamed."""
        target, partial = self.path / name, self.path / f".{name}.partial"
        try:
            with _private(partial, "w") as f:
                f.write(text)
            partial.replace(target)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            exc.filename = str(target)
            raise
        return target

    @contextmanager
    def host_logs(self, hosts: list[str]):
        logs = HostLogs({h: self.log_path(h) for h in hosts})
        try:
            yield logs
        finally:
            logs.close()


class HostLogs:
    """Appends each host's lines to its log, byte for byte (str lines carry undecodable bytes as surrogates).

    A log that cannot be written (disk full, file too large) is dropped with one warning naming the file and
    the error: the run, and its output on the terminal, go on without it.
    """

    def __init__(self, paths: dict[str, Path]):
        self.paths = paths
        self.warned = False
        # every host's log exists from the start, empty for a host that prints nothing: it took part
        self.files: dict[str, IO[bytes] | None] = {h: self._guard(h, lambda p=p: _private(p, "ab"))
                                                   for h, p in paths.items()}

    def write(self, host: str, line: str | bytes, *, end: bytes = b"\n") -> None:
        """Append `line` and `end` (b"" while a long line goes on in the next call)."""
        f = self.files[host]
        if f is not None:
            data = line if isinstance(line, bytes) else line.encode("utf-8", "surrogateescape")
            if self._guard(host, lambda: f.write(data + end)) is None:
                self._drop(host)

    def _guard(self, host: str, action):
        try:
            return action()
        except OSError as exc:
            if not self.warned:
                self.warned = True
                log.warning("cannot write %s (%s: %s); the run goes on, without this host log", self.paths[host],
                            errno.errorcode.get(exc.errno, exc.errno), exc.strerror)
            else:
                log.debug("cannot write %s: %s", self.paths[host], exc)
            return None

    def _drop(self, host: str) -> None:
        f, self.files[host] = self.files[host], None
        try:
            f.close()
        except OSError:
            pass  # the data it could not flush is what the warning was about

    def close(self) -> None:
        for host, f in list(self.files.items()):
            if f is not None:
                self._guard(host, f.flush)
                self._drop(host)
