"""The node keeper: one per node, it runs the node's ranks of the engine and restarts a failed one in about a second.

    python -m orchestrator.engine.keeper --nnodes 2 --node-rank 1 --nproc-per-node 2 --first-rank 2 \\
        --world-size 4 --master-addr node1 --master-port 29500 -- --config tiny --run-dir /shared/r1

What `orchestrator launch --launcher warm` (and `supervise` for the engine) starts on each node instead of
torchrun. It keeps the node's ranks as warm workers (warm_worker.py) plus --standby spare workers that have
already imported torch and the engine and wait. Node 0's keeper hosts the run's TCPStore on --master-port.

When a rank's process dies (or is killed: a hang the supervisor resolved), the keeper bumps the generation
counter in the store (warm.py); every keeper then gives each of its ranks an assignment for the new generation:
surviving workers left their broken process group and join the new one in-process, the dead rank's place goes
to a standby. Every rank then restores the newest in-memory snapshot all ranks hold (engine/snapshot.py, in
$ORCH_RUN_TMPDIR/snapshots: the node agent's per-run temp dir, on /dev/shm under the supervisor), so at most
one snapshot interval is lost, and training goes on. A worker that does not join a new generation within
--join-timeout (stuck in a collective with a peer that vanished) is killed and replaced by a standby too.

The keeper gives up, exit 1, after --max-restarts warm restarts, and when a rank of a fresh run fails before
any generation formed; the supervisor then falls back to a cold restart from the disk checkpoint. Exit 2 when the
engine reports a configuration error; 0 when every rank of the node finished. Every line of a rank carries
torchrun's rank prefix (launch/torchrun.py), so `launch` shows `host/rank:` as with torchrun; the keeper's own
news are `orchestrator-warm {json}` lines (warm.py). SIGTERM/SIGINT/SIGHUP stop every worker (SIGKILL after 2 s).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

from orchestrator.contracts import RUN_TMPDIR
from orchestrator.engine.warm import GEN_KEY, READY_MARK, Assignment, done_key, event_line, joined_key
from orchestrator.launch.torchrun import rank_prefix

__all__ = ["main"]

POLL_S = 0.02
STOP_GRACE_S = 2.0
FINISH_WAIT_S = 30.0
STARTUP_TIMEOUT_S = 300.0
"""How long a worker that is still importing (not yet ready) may take to join its generation."""


class Worker:
    """One worker process: a rank once assigned, a standby until then."""

    def __init__(self, argv: list[str], env: dict[str, str], out: _Output):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=env)
        self.ready = threading.Event()
        self.rank: int | None = None
        self.local_rank = 0
        self.retired = False  # killed by the keeper after a replacement was already assigned
        threading.Thread(target=self._pump, args=(out,), daemon=True).start()

    def _pump(self, out: _Output) -> None:
        for line in self.proc.stdout:
            if line.rstrip(b"\n") == READY_MARK.encode():
                self.ready.set()
                continue
            prefix = rank_prefix(self.rank, self.local_rank) if self.rank is not None else ""
            out.write(prefix.encode() + line)

    def send(self, job: Assignment) -> None:
        try:
            self.proc.stdin.write(job.line())
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # it died: its exit is handled by the next poll

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)


class _Output:
    """Whole lines to stdout from several threads."""

    def __init__(self):
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self.lock:
            sys.stdout.buffer.write(data if data.endswith(b"\n") else data + b"\n")
            sys.stdout.buffer.flush()

    def event(self, event: str, **fields) -> None:
        self.write(event_line(event, **fields).encode())


class Keeper:
    def __init__(self, args: argparse.Namespace, engine_args: list[str]):
        self.args, self.out = args, _Output()
        self.ranks = list(range(args.first_rank, args.first_rank + args.nproc_per_node))
        base = os.environ.get(RUN_TMPDIR)
        self.snapshot_dir = Path(base) / "snapshots" if base else Path(tempfile.mkdtemp(prefix="orch-snapshots-",
                                                                                          dir=_memory_dir()))
        self.argv = [sys.executable, "-m", "orchestrator.engine.warm_worker", *engine_args]
        self.env = os.environ | {"MASTER_ADDR": args.master_addr, "MASTER_PORT": str(args.master_port),
                                 "PYTHONUNBUFFERED": "1", "ORCH_SNAPSHOT_DIR": str(self.snapshot_dir),
                                 "LOCAL_WORLD_SIZE": str(args.nproc_per_node), "GROUP_RANK": str(args.node_rank)}
        self.active: dict[int, Worker] = {}
        self.standbys: list[Worker] = []
        self.pending: dict[int, tuple[int, float]] = {}  # rank -> (generation, join deadline)
        self.done: set[int] = set()
        self.generation, self.restarts, self.formed = -1, 0, False
        self.stop_signal: int | None = None

    # ---- the whole node ---------------------------------------------------------------------------------
    def run(self) -> int:
        from torch.distributed import TCPStore

        a = self.args
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.store = TCPStore(a.master_addr, a.master_port, is_master=a.node_rank == 0, wait_for_workers=False,
                                  timeout=timedelta(seconds=a.store_timeout))
            for rank in self.ranks:
                self.active[rank] = self._spawn()
            self._top_up()
            if a.node_rank == 0:
                self.store.add(GEN_KEY, 0)
            return self._watch()
        finally:
            self._stop_all()
            shutil.rmtree(self.snapshot_dir, ignore_errors=True)

    def _watch(self) -> int:
        while self.stop_signal is None:
            for rank, worker in list(self.active.items()):
                code = worker.proc.poll()
                if code is None or rank in self.done:
                    continue
                if code == 0:
                    self.done.add(rank)
                    continue
                if (result := self._failed(rank, worker, code)) is not None:
                    return result
            if len(self.done) == len(self.ranks):
                return self._finish()
            try:
                generation = self.store.add(GEN_KEY, 0)
                if generation > self.generation:
                    self._assign(generation)
                self._check_joins()
            except (RuntimeError, OSError) as exc:  # torch's store errors are RuntimeErrors (DistError)
                self.out.event("give_up", reason=f"lost the run's store on {self.args.master_addr} (node 0): {exc}")
                return 1
            self._top_up()
            time.sleep(POLL_S)
        return 128 + self.stop_signal

    def _failed(self, rank: int, worker: Worker, code: int) -> int | None:
        """A rank's worker exited with `code`: start a new generation, or the keeper's own exit code."""
        del self.active[rank]
        if worker.retired:
            return None
        self.out.event("rank_exit", rank=rank, pid=worker.proc.pid, exitcode=code, generation=self.generation)
        if code == 2:
            self.out.event("give_up", reason=f"rank {rank} reported a configuration error (exit 2)")
            return 2
        if not self.formed:
            self.out.event("give_up", reason=f"rank {rank} failed before the first generation formed")
            return 1
        self.restarts += 1
        if self.restarts > self.args.max_restarts:
            self.out.event("give_up", reason=f"more than {self.args.max_restarts} warm restarts")
            return 1
        self._assign(self.store.add(GEN_KEY, 1))
        return None

    def _assign(self, generation: int) -> None:
        """Hand every rank of this node an assignment for `generation` (a standby where the worker is gone)."""
        self.generation, now, replaced = generation, time.monotonic(), {}
        for local_rank, rank in enumerate(self.ranks):
            if rank in self.done:
                continue
            worker = self.active.get(rank)
            if worker is None or worker.proc.poll() is not None:
                worker = self.active[rank] = self._take_standby()
                replaced[rank] = worker.proc.pid
            self._give(worker, rank, local_rank, generation, now)
        if generation > 0:
            self.out.event("generation", generation=generation, node_rank=self.args.node_rank, replaced=replaced)

    def _give(self, worker: Worker, rank: int, local_rank: int, generation: int, now: float) -> None:
        worker.rank, worker.local_rank = rank, local_rank
        worker.send(Assignment(generation, rank, local_rank, self.args.world_size))
        timeout = self.args.join_timeout if worker.ready.is_set() else STARTUP_TIMEOUT_S
        self.pending[rank] = (generation, now + timeout)

    def _check_joins(self) -> None:
        now = time.monotonic()
        for rank, (generation, deadline) in list(self.pending.items()):
            if self.store.check([joined_key(generation, rank)]):
                del self.pending[rank]
                self.formed = True
            elif now > deadline:  # still stuck in the old generation's collective: replace it
                stuck = self.active[rank]
                stuck.retired = True
                stuck.kill()
                self.out.event("stuck", rank=rank, pid=stuck.proc.pid, generation=generation)
                worker = self.active[rank] = self._take_standby()
                self._give(worker, rank, stuck.local_rank, generation, now)

    # ---- standbys -------------------------------------------------------------------------------------------
    def _spawn(self) -> Worker:
        return Worker(self.argv, self.env, self.out)

    def _take_standby(self) -> Worker:
        """A ready standby if there is one, else the one closest to ready, else a fresh worker."""
        self.standbys = [w for w in self.standbys if w.proc.poll() is None]
        ready = [w for w in self.standbys if w.ready.is_set()]
        worker = (ready or self.standbys or [None])[0] or self._spawn()
        if worker in self.standbys:
            self.standbys.remove(worker)
        return worker

    def _top_up(self) -> None:
        self.standbys = [w for w in self.standbys if w.proc.poll() is None]
        while len(self.standbys) < self.args.standby:
            self.standbys.append(self._spawn())

    # ---- the end --------------------------------------------------------------------------------------------
    def _finish(self) -> int:
        """Every local rank is done; node 0 keeps the store up until every node said so."""
        self.store.set(done_key(self.args.node_rank), "1")
        if self.args.node_rank == 0:
            try:
                self.store.wait([done_key(n) for n in range(self.args.nnodes)], timedelta(seconds=FINISH_WAIT_S))
            except Exception:  # noqa: BLE001 - a node that never says so is not our rank's failure
                pass
        return 0

    def _stop_all(self) -> None:
        workers = [*self.active.values(), *self.standbys]
        for worker in workers:
            worker.kill(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for worker in workers:
            try:
                worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.proc.wait()

    def on_signal(self, signum: int, _frame) -> None:
        self.stop_signal = signum


def _memory_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" in argv:
        cut = argv.index("--")
        argv, engine_args = argv[:cut], argv[cut + 1:]
    else:
        engine_args = []
    p = argparse.ArgumentParser(prog="python -m orchestrator.engine.keeper", description=__doc__.split("\n\n")[0])
    p.add_argument("--nnodes", type=int, required=True)
    p.add_argument("--node-rank", type=int, required=True)
    p.add_argument("--nproc-per-node", type=int, required=True)
    p.add_argument("--first-rank", type=int, required=True)
    p.add_argument("--world-size", type=int, required=True)
    p.add_argument("--master-addr", required=True)
    p.add_argument("--master-port", type=int, required=True)
    p.add_argument("--standby", type=int, default=1, help="spare workers kept imported and waiting (default 1)")
    p.add_argument("--max-restarts", type=int, default=20, help="warm restarts before giving up (default 20)")
    p.add_argument("--join-timeout", type=float, default=5.0,
                   help="seconds a worker may take to join a new generation before it is replaced (default 5)")
    p.add_argument("--store-timeout", type=float, default=300.0)
    return p.parse_args(argv), engine_args


def main(argv: list[str] | None = None) -> int:
    args, engine_args = parse_args(sys.argv[1:] if argv is None else argv)
    keeper = Keeper(args, engine_args)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, keeper.on_signal)
    return keeper.run()


if __name__ == "__main__":
    sys.exit(main())
