"""Head side of `supervise --no-shared-run-dir`: heartbeats and metrics lines that come back over SSH.

    relay = Relay(key, Path("runs/r1"), node_metrics="runs/r1/metrics.jsonl", every=0.2)
                                                         # one per supervised run; key also goes to the nodes' env
    plan = forward_plan(plan, relay)                     # each node's launcher under the forwarder (attempt_plan)
    relay.forwarder(python, plan.run_id, own_tmpdir=True)    # the same as an argv prefix (an srun step's task)
    relay.mark(plan.run_id)                              # just before the launch
    transport = RelayTransport(SshTransport(opts), relay)    # its sessions' relay lines never reach the run's output
    relay.take("\\x1frelay <key> hb node2-rank1 {...}")        # True: written to runs/r1/heartbeat/node2-rank1.json

Each node's launcher runs under forwarder.py, which sends the ranks' heartbeat files (node-local, in the agent's
temp dir, or under srun in one of its own) and the lines the engine appends to its metrics.jsonl as marked lines on
the launcher's own output: its SSH session, or the srun step's output (supervisor/slurm.py takes them out there).
Here they are taken out of that stream before anything else sees it (logs, the terminal, the detectors) and
written where a shared run dir would have them: RUN_DIR/heartbeat/<host>-rank<N>.json (replaced atomically,
like the ranks do) and RUN_DIR/metrics.jsonl. So detect.py, straggler.py, hangdump.py, `orchestrator status`
and `plot` read the same files either way. The marker is how a node finds out that the head's run dir is its
own too (a shared file system after all): then it relays nothing and its ranks write there directly.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import replace
from pathlib import Path

from orchestrator.inline import python_source
from orchestrator.launch.plan import LaunchPlan

__all__ = ["Relay", "RelayTransport", "forward_plan", "head_marker"]

log = logging.getLogger("orchestrator.supervisor.relay")

_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}-rank\d{1,9}\Z")  # heartbeat.py's <hostname>-rank<RANK>
MARK = "\x1frelay "  # forwarder.py's


def head_marker(run_dir: Path, run_id: str) -> Path:
    """The file the head writes before attempt `run_id`; a node that sees it shares the head's run dir."""
    return (run_dir / "heartbeat" / f".head-{run_id}").resolve()


def forward_plan(plan: LaunchPlan, relay: Relay) -> LaunchPlan:
    """The plan with every node's launcher started by the forwarder (pure)."""
    def wrapped(nodes):
        return tuple(replace(n, argv=(*relay.forwarder(n.python, plan.run_id), *n.argv)) for n in nodes)

    return replace(plan, nodes=wrapped(plan.nodes), spares=wrapped(plan.spares))


def _json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


class Relay:
    """Takes the forwarders' lines out of a run's output and writes them into the head's run dir."""

    def __init__(self, key: str, run_dir: Path, *, node_metrics: str | None = None, every: float = 0.2):
        self.prefix = f"{MARK}{key} "
        self.beats, self.metrics = run_dir / "heartbeat", run_dir / "metrics.jsonl"
        self.node_metrics, self.every = node_metrics, every

    def forwarder(self, python: str, run_id: str, *, own_tmpdir: bool = False) -> list[str]:
        """The argv prefix that starts a node's launcher (the rest of the argv) under the forwarder for attempt
        `run_id` (pure); own_tmpdir: no agent gives the run a temp dir there (an srun task)."""
        options = ["--every", f"{self.every:g}", "--shared-if", str(head_marker(self.beats.parent, run_id))]
        options += (["--metrics", self.node_metrics] if self.node_metrics else []) + (
            ["--own-tmpdir"] if own_tmpdir else [])
        return [python, "-I", "-S", "-c", python_source(Path(__file__).with_name("forwarder.py")), *options, "--"]

    def mark(self, run_id: str) -> None:
        self.beats.mkdir(parents=True, exist_ok=True)
        head_marker(self.beats.parent, run_id).touch()

    def take(self, line: str) -> bool:
        """True when `line` is a relay record (written, or dropped when malformed): not output of the run."""
        if not line.startswith(self.prefix):
            return False
        kind, _, rest = line[len(self.prefix):].partition(" ")
        try:
            if kind == "hb":
                self._beat(*rest.partition(" ")[::2])
            elif kind == "m" and _json_object(rest):
                with self.metrics.open("a") as f:
                    f.write(rest + "\n")
            else:
                log.debug("relay: dropped a malformed record: %.200r", line)
        except OSError as exc:  # the head's disk: the run goes on, its detectors see old data
            log.warning("relay: cannot write %s: %s", exc.filename, exc.strerror)
        return True

    def _beat(self, stem: str, record: str) -> None:
        if not _STEM.match(stem) or not _json_object(record):
            log.debug("relay: dropped a malformed heartbeat of %.100r", stem)
            return
        tmp = self.beats / f".{stem}.relay.tmp"
        tmp.write_text(record)
        os.replace(tmp, self.beats / f"{stem}.json")


class _Session:
    """A transport session whose stdout and stderr lines pass relay.take first."""

    def __init__(self, session, take):
        self._session, self._take = session, take

    @property
    def stdout(self):
        return self._lines(self._session.stdout)

    @property
    def stderr(self):
        return self._lines(self._session.stderr)

    async def _lines(self, lines):
        async for line in lines:
            if not self._take(line):
                yield line

    def __getattr__(self, name: str):
        return getattr(self._session, name)


class RelayTransport:
    """A transport (remote/fanout.py's Transport) whose sessions hand relay lines to `relay` instead of the caller."""

    def __init__(self, inner, relay: Relay):
        self.inner, self.relay = inner, relay

    def prepare(self, hosts) -> None:
        if hasattr(self.inner, "prepare"):
            self.inner.prepare(hosts)

    async def open(self, host: str, argv):
        return _Session(await self.inner.open(host, argv), self.relay.take)

    async def aclose(self) -> None:
        await self.inner.aclose()
