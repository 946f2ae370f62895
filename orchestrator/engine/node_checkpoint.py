"""Node-local checkpoints: every rank keeps its own durable state on its own node, and a copy on the next node.

    ckpt = NodeCheckpoints(run_dir, rank=3, world_size=4, nproc_per_node=2, layout="pp=1 ... tp=2", keep=3)
    resumed = ckpt.load_latest(parts, optimizers)    # every rank: None on a fresh run, else (step, extra)
    ckpt.resume_source, ckpt.restored                # "peer", {"0": "local n1", ..., "3": "peer n1"}
    ckpt.save(step, parts, optimizers, extra={"data": batches.state_dict()})   # every rank, every K steps
    ckpt.close()

What `--checkpoint-local` selects: a run dir that is not on a file system every rank sees (`supervise
--no-shared-run-dir`) cannot hold DCP checkpoints (rank 0 writes the metadata of every rank's shards), so each rank
writes its own complete state instead, in the in-memory snapshots' per-rank format (snapshot.py: its local shards
of the model and optimizer, the data position, its RNG), to its own node:

    RUN_DIR/node-checkpoints/rank<R>/step-<S>.pt     rank R's state after step S (temp name, then renamed)
    RUN_DIR/node-checkpoints/rank<R>/committed.json  {"step", "layout"}: the newest step every rank had written
    RUN_DIR/node-checkpoints/peers/rank<P>/step-<S>.pt   copies of rank P's newest files, sent to this node by P

The copy goes to the rank with the same local rank on the next node (rank + nproc_per_node, wrapping), through
replica.py's pusher and server (a thread in each rank; training never waits for it), so the state of a lost node
survives on its successor. A save is synchronous: the file is written, then every rank agrees it was (one small
all-reduce) before committed.json moves on; the newest keep+1 files stay (keep: --keep-checkpoints).

The constructor is a collective (every rank, once the process group exists): on a restart every rank reports
what it holds (its own files, the peer copies on its node, its committed.json)
and all take the same decision (choose_restore): the newest step that every rank holds locally or as a peer
copy somewhere; a rank without it locally fetches it from the holder's server. Files newer than that step (a
branch the restart abandons) are removed. Nothing held anywhere: a fresh start. Files held but no step complete:
a fresh start if no step was ever committed (the first save was cut short), else a ConfigError naming the ranks
without state (their node is gone with its successor): the run does not silently start over. Files written with
another layout (world size or parallel dims) are a ConfigError too: per-rank files cannot be resharded.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError

__all__ = ["NodeCheckpoints", "Restore", "choose_restore", "NODE_CHECKPOINT_DIR"]

log = logging.getLogger("orchestrator.engine.node_checkpoint")

NODE_CHECKPOINT_DIR = "node-checkpoints"
_COMMITTED = "committed.json"


def _as_list(x: Any) -> list:  # a single module/optimizer may be passed bare, as to the Checkpointer
    return list(x) if isinstance(x, (list, tuple)) else [x]


@dataclass(frozen=True)
class Restore:
    step: int
    sources: dict[int, int | None]
    """rank -> None (its own file) or the rank whose node holds the peer copy it fetches."""


def choose_restore(holdings: list[dict], *, layout: str, directory: str) -> Restore | None:
    """The step every rank restores (the same answer on every rank: it sees every rank's holdings).

    holdings[r] is what rank r reported: {"host", "local": [steps], "peers": {rank: [steps]}, "committed":
    {"step", "layout"} or None}. None: a fresh start. ConfigError for another layout, or when some step was
    committed once but no step is held for every rank now."""
    for rank, held in enumerate(holdings):
        written = (held.get("committed") or {}).get("layout")
        if written is not None and written != layout:
            raise ConfigError("--checkpoint-local", directory,
                              f"rank {rank}'s node-local checkpoints (host {held['host']}) were written with layout "
                              f"'{written}', this run has '{layout}'; per-rank files cannot be resharded: restart "
                              f"with the same world size and parallel dims, or move {directory} away on every node "
                              f"to start over at step 0")
    available: list[dict[int, int | None]] = []  # rank -> {step: None (local) or holder rank}
    for rank, held in enumerate(holdings):
        where: dict[int, int | None] = {}
        for holder, other in enumerate(holdings):
            for step in other["peers"].get(rank, []):
                where.setdefault(step, holder)
        where.update(dict.fromkeys(held["local"]))  # its own file wins over a peer copy
        available.append(where)
    common = set.intersection(*(set(where) for where in available)) if available else set()
    if common:
        step = max(common)
        return Restore(step, {rank: where[step] for rank, where in enumerate(available)})
    if not any(held["local"] or any(held["peers"].values()) for held in holdings):
        return None
    if not any(held.get("committed") for held in holdings):
        log.warning("node-local checkpoints exist but the first save never completed on every rank: starting over")
        return None
    missing = [f"rank {rank} (host {holdings[rank]['host']}): {sorted(where) or 'none'}"
               for rank, where in enumerate(available)]
    raise ConfigError("--checkpoint-local", directory,
                      f"no step is held by every rank, locally or as a peer copy ({'; '.join(missing)}); a node was "
                      f"lost together with the node holding its copy: bring one of them back, or move {directory} "
                      f"away on every node to start over at step 0")


class NodeCheckpoints:
    """Save and resume one rank's node-local checkpoints (see the module docstring); the Checkpointer's methods."""

    def __init__(self, run_dir: str | Path, *, rank: int, world_size: int, nproc_per_node: int, layout: str,
                 keep: int = 3):
        from orchestrator.engine.replica import ReplicaPusher, ReplicaServer
        from orchestrator.engine.snapshot import Snapshots

        self.root = Path(run_dir) / NODE_CHECKPOINT_DIR
        self.rank, self.world_size, self.layout = rank, world_size, layout
        # keep + 1 files: `keep` committed ones stay while the newest is written
        self.snaps = Snapshots(self.root, rank=rank, keep=keep + 1 if keep > 0 else sys.maxsize)
        self.server = ReplicaServer(self.root / "peers")
        self.successor: tuple[str, int] | None = None
        self.pusher = ReplicaPusher(self.root, ranks=lambda: [rank], successor=lambda: self.successor)
        self.next_rank = (rank + nproc_per_node) % world_size if world_size > nproc_per_node else None
        self.resume_source, self.restored = "local", {}
        self.last_save_stall_s = self.last_wait_s = 0.0
        try:
            self.holdings = self._gather()  # a collective: every rank constructs this at the same point
            self.choice = choose_restore(self.holdings, layout=layout, directory=str(self.root))
        except BaseException:
            self.close()
            raise
        self._drop_newer(self.choice.step if self.choice else -1)  # before the copies start: none of them goes out
        if self.next_rank is not None:
            self.successor = self.addresses[self.next_rank]
        self.pusher.start()

    # ---- save -----------------------------------------------------------------------------------------
    def save(self, step: int, model_parts: Any, optimizers: Any, extra: dict | None = None) -> int:
        """Write this rank's state of `step`, wait until every rank has, commit; returns the committed step."""
        import torch
        import torch.distributed as dist

        begin = time.perf_counter()
        self.snaps.save(step, _as_list(model_parts), _as_list(optimizers), extra=extra or {})
        self.snaps.wait()
        done = torch.tensor([1])
        if self.world_size > 1:  # every rank's file exists before any rank calls the step committed
            dist.all_reduce(done, op=dist.ReduceOp.MIN)
        self._commit(step)
        self.last_save_stall_s = time.perf_counter() - begin
        return step

    def _commit(self, step: int) -> None:
        path = self.snaps.dir / _COMMITTED
        tmp = path.with_name(f".{_COMMITTED}.tmp")
        tmp.write_text(json.dumps({"step": step, "layout": self.layout}) + "\n")
        os.replace(tmp, path)

    def wait(self) -> None:
        self.snaps.wait()

    def close(self) -> None:
        """Stop the copy thread and the server; wait for the last write."""
        try:
            self.snaps.close()
        finally:
            self.pusher.stop()  # (a thread never started stops as well)
            self.server.shutdown()
            self.server.server_close()

    # ---- load -----------------------------------------------------------------------------------------
    def newest(self) -> int | None:
        """This rank's newest committed step (what a warm restart compares its memory snapshots with)."""
        committed = self.holdings[self.rank]["committed"]
        return committed["step"] if committed else None

    def load_latest(self, model_parts: Any, optimizers: Any) -> tuple[int, dict] | None:
        """Every rank: restore the newest step every rank holds (fetching a peer copy where needed); returns
        (step, extra), or None on a fresh start."""
        from orchestrator.engine.replica import fetch

        holdings, choice = self.holdings, self.choice
        if choice is None:
            return None
        holder = choice.sources[self.rank]
        if holder is not None:
            fetched = fetch(self.addresses[holder], rank=self.rank, into=self.snaps.dir)
            if choice.step not in fetched:
                raise ConfigError("--checkpoint-local", str(self.root), f"rank {self.rank} could not fetch step "
                                  f"{choice.step} from {holdings[holder]['host']} (got {fetched})")
            self._drop_newer(choice.step)
        extra = self.snaps.load(choice.step, _as_list(model_parts), _as_list(optimizers))
        self._commit(choice.step)
        self.restored = {str(r): f"{'local' if h is None else 'peer'} {holdings[r if h is None else h]['host']}"
                         for r, h in choice.sources.items()}
        self.resume_source = "peer" if any(h is not None for h in choice.sources.values()) else "local"
        log.info("restored step %d from %s", choice.step, self.restored[str(self.rank)])
        return choice.step, extra

    def _gather(self) -> list[dict]:
        import torch.distributed as dist

        from orchestrator.engine.replica import local_address
        from orchestrator.engine.snapshot import snapshot_steps

        master = os.environ.get("MASTER_ADDR")
        address = local_address(master, int(os.environ.get("MASTER_PORT", 0))) if master else "127.0.0.1"
        peers = self.root / "peers"
        held = {"host": socket.gethostname(), "address": [address, self.server.port], "local": self.snaps.steps(),
                "peers": {int(d.name[4:]): snapshot_steps(d) for d in (peers.glob("rank*") if peers.is_dir() else [])
                          if d.name[4:].isdigit()},
                "committed": self._read_committed()}
        everyone = [held]
        if self.world_size > 1:
            everyone = [None] * self.world_size
            dist.all_gather_object(everyone, held)
        self.addresses = [tuple(h["address"]) for h in everyone]
        return everyone

    def _read_committed(self) -> dict | None:
        try:
            return json.loads((self.snaps.dir / _COMMITTED).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _drop_newer(self, step: int) -> None:
        """Remove this rank's files, and the peer copies on this node, of steps after `step`: a restart from
        `step` abandons them (a later save of the same step writes it again)."""
        from orchestrator.engine.snapshot import snapshot_steps

        for directory in [self.snaps.dir, *(self.root / "peers").glob("rank*")]:
            for newer in [s for s in snapshot_steps(directory) if s > step]:
                (directory / f"step-{newer}.pt").unlink(missing_ok=True)
