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
--join-timeout (stuck in a collective with a peer that vanished) is killed and replaced by a standby too. A rank
stopped by a signal (state T for STOPPED_GRACE_S) is reported at once (`rank_stopped`): the supervisor takes its
stacks and kills it as for a hang, without waiting for --hang-timeout.

A lost node (its keeper's beat stops for --node-timeout: the host died or its network went away) is replaced by
a spare keeper (`--spare`, started on each spare host with the attempt, its workers imported and waiting): node
0's keeper hands the spare the node's rank, the spare fetches the node's snapshots from the copy its ring
successor holds (replica.py: every keeper sends its ranks' newest snapshot files to node_rank + 1), and a new
generation forms with the spare in the lost node's place. Survivors that do not leave their collective with the
lost node within LOST_ACK_S are replaced by their standbys. Under `orchestrator supervise` the store lives on the
head (--store HOST:PORT) and the supervisor watches the beats, so any node may be lost, node 0 included; without
--store node 0's keeper hosts the store and watches, and its own loss ends the attempt (every keeper gives up),
as does a lost node when no spare is left.

The keeper gives up, exit 1, after --max-restarts warm restarts, and when a rank of a fresh run fails before
any generation formed; the supervisor then falls back to a cold restart from the disk checkpoint. Exit 2 when the
engine reports a configuration error; 0 when every rank of the node finished. Every line of a rank carries
torchrun's rank prefix (launch/torchrun.py), so `launch` shows `host/rank:` as with torchrun; the keeper's own
news are `orchestrator-warm {json}` lines (warm.py). SIGTERM/SIGINT/SIGHUP stop every worker (SIGKILL after 2 s),
and so does SIGUSR1: srun forwards it to its tasks as it is (SIGTERM or SIGINT to srun kill the step's processes
at once, before this keeper could remove its snapshots), so the supervisor stops a step with it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

from orchestrator.contracts import RUN_TMPDIR
from orchestrator.engine import warm
from orchestrator.engine.warm import GEN_KEY, READY_MARK, Assignment, done_key, event_line, joined_key
from orchestrator.launch.torchrun import PREFIX_ENV, RANK_PREFIX_TEMPLATE, rank_prefix
from orchestrator.procstat import process_state

__all__ = ["main"]

POLL_S = 0.02
STOP_GRACE_S = 2.0
FINISH_WAIT_S = 30.0
STARTUP_TIMEOUT_S = 300.0
"""How long a worker that is still importing (not yet ready) may take to join its generation."""
BEAT_S = 0.2
STOPPED_GRACE_S = 0.5
"""How long a rank may sit stopped by a signal (SIGSTOP, SIGTSTP: /proc state T) before the keeper reports it. A
stopped rank stalls every collective like any hang, but the kernel names it at once, long before the heartbeats'
--hang-timeout would (a tracer such as py-spy stops it as state t, which is not reported)."""
STANDBY_NICE = 10
"""How much lower a standby's CPU priority (and a spare node's, all of it) is than the ranks' until it becomes one
or STANDBY_LIFT_S have passed: its import and warm-up take only what the ranks leave, so a run's first step does not
wait for them (2 sandbox hosts and 2 spares sharing 2 cores: launch to first step ~19 s -> 7-11 s). Only where the
keeper may raise it back (root, or RLIMIT_NICE): a rank must never be left at a lower priority than its peers."""
STANDBY_LIFT_S = 2.0
"""How long after the ranks joined their generation (this node's; on a spare node the run's first one) the standbys
are raised to the ranks' priority: the ranks' imports are over, their model build and first step nearly so. Left low
until needed, a standby on a busy node may still be importing when a lost peer strands its rank (10-18 s to ready at
load ~15, instead of the 1 s the rank gets to leave its collective)."""
LOST_ACK_S = 1.0
"""After a node loss, how long a survivor may take to leave its collective with the lost node: gloo notices a peer
whose process died at once, but not one whose network went away, and waits for its timeout."""


class Worker:
    """One worker process: a rank once assigned, a standby until then."""

    def __init__(self, argv: list[str], env: dict[str, str], out: _Output, nice: int = 0):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=env)
        self.nice = nice
        if nice:
            _renice(self.proc.pid, os.getpriority(os.PRIO_PROCESS, 0) + nice)
        self.ready = threading.Event()
        self.rank: int | None = None
        self.local_rank = 0
        self.retired = False  # killed by the keeper after a replacement was already assigned
        self.stopped_since: float | None = None
        self.stop_reported = False
        threading.Thread(target=self._pump, args=(out,), daemon=True).start()

    def _pump(self, out: _Output) -> None:
        for line in self.proc.stdout:
            if line.rstrip(b"\n") == READY_MARK.encode():
                self.ready.set()
                continue
            prefix = rank_prefix(self.rank, self.local_rank, out.template) if self.rank is not None else ""
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

    def promote(self) -> None:
        """A standby becomes a rank (or its wait is lifted): back to the keeper's priority, every thread of it."""
        if self.nice:
            self.nice = 0
            _renice(self.proc.pid, os.getpriority(os.PRIO_PROCESS, 0))


class _Output:
    """Whole lines to stdout from several threads; a rank's lines start with the prefix torchrun would give them (the
    launcher's PREFIX_ENV: `[rank3]: ` under `launch --via slurm`, a marker the SSH launcher turns into `host/3: `)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.template = os.environ.get(PREFIX_ENV) or RANK_PREFIX_TEMPLATE

    def write(self, data: bytes) -> None:
        with self.lock:
            sys.stdout.buffer.write(data if data.endswith(b"\n") else data + b"\n")
            sys.stdout.buffer.flush()

    def event(self, event: str, **fields) -> None:
        self.write(event_line(event, **fields).encode())


class Keeper:
    def __init__(self, args: argparse.Namespace, engine_args: list[str]):
        self.args, self.out = args, _Output()
        self.node_rank: int | None = None if args.spare else args.node_rank
        self.ranks = [] if args.spare else list(range(args.first_rank, args.first_rank + args.nproc_per_node))
        base = os.environ.get(RUN_TMPDIR)
        self.snapshot_dir = Path(base) / "snapshots" if base else Path(tempfile.mkdtemp(prefix="orch-snapshots-",
                                                                                          dir=_memory_dir()))
        self.argv = [sys.executable, "-m", "orchestrator.engine.warm_worker", *engine_args]
        host, port = args.store.rsplit(":", 1) if args.store else (args.master_addr, args.master_port)
        self.store_addr, self.store_port = host, int(port)
        self.env = os.environ | {"MASTER_ADDR": self.store_addr, "MASTER_PORT": str(self.store_port),
                                 "PYTHONUNBUFFERED": "1", "ORCH_SNAPSHOT_DIR": str(self.snapshot_dir),
                                 "LOCAL_WORLD_SIZE": str(args.nproc_per_node)}
        if not args.spare:
            self.env["GROUP_RANK"] = str(args.node_rank)
        self.active: dict[int, Worker] = {}
        self.standbys: list[Worker] = []
        self.retired: list[Worker] = []  # killed after a replacement was assigned: reaped as they go
        self.pending: dict[int, tuple[int, float]] = {}  # rank -> (generation, deadline to leave the old one)
        self.done: set[int] = set()
        self.generation, self.restarts, self.formed = -1, 0, False
        self.formed_at: float | None = None  # when every rank of this node (a spare: of the run) joined the generation
        self.session_low = False  # a spare node's session waits at the standbys' priority
        self.stop_signal: int | None = None
        self.starting = True  # importing torch, dialing the store: a stop signal ends this at once (Stopped)
        self.successor: tuple[str, int] | None = None  # the replica server our snapshots go to
        self.next_beat = 0.0
        self.watch: warm.NodeWatch | None = None  # lost-node detection, where this keeper hosts the store
        self.standby_nice = STANDBY_NICE if _may_raise_priority() else 0

    # ---- the whole node ---------------------------------------------------------------------------------
    def run(self) -> int:
        a = self.args
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        try:
            if a.spare and self.standby_nice:  # the whole node waits at a lower priority, its own imports included
                _session_nice(self.standby_nice)
                self.session_low = True
            else:  # first: their imports overlap this keeper's own (torch, for the store)
                for rank in self.ranks:
                    self.active[rank] = self._spawn()
            return self._serve()
        finally:
            self._stop_all()
            shutil.rmtree(self.snapshot_dir, ignore_errors=True)

    def _serve(self) -> int:
        from torch.distributed import TCPStore

        from orchestrator.engine.replica import ReplicaPusher, ReplicaServer, local_address

        a = self.args
        self.replicas = ReplicaServer(self.snapshot_dir / "peers")
        pusher = ReplicaPusher(self.snapshot_dir, ranks=lambda: list(self.ranks), successor=lambda: self.successor)
        try:
            master = self.node_rank == 0 and not a.store
            self.store = TCPStore(self.store_addr, self.store_port, is_master=master, wait_for_workers=False,
                                  timeout=timedelta(seconds=a.store_timeout))
            self.address = a.master_addr if master else local_address(self.store_addr, self.store_port)
            if a.spare:
                code = self._wait_as_spare()
                if code is not None:
                    return code
            else:
                self._publish()
            self._top_up()
            if master:
                self.store.add(GEN_KEY, 0)
                self.watch = warm.NodeWatch(self.store, nnodes=a.nnodes, node_timeout=a.node_timeout,
                                            report=lambda e: self.out.event(**e))
            pusher.start()
            return self._watch()
        except (RuntimeError, OSError) as exc:  # torch's store errors are RuntimeErrors (DistError)
            self.out.event("give_up", reason=f"lost the run's store on {self.store_addr}:{self.store_port}: {exc}")
            return 1
        finally:
            pusher.stop()
            self.replicas.shutdown()
            self.replicas.server_close()

    def _watch(self) -> int:
        self.starting = False
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
            if self._beat(warm.beat_key(self.node_rank)):
                self._report_stopped()
                self._follow_successor()
                if self.watch is not None and (reason := self.watch.poll()) is not None:
                    self.out.event("give_up", reason=reason)
                    return 1
            generation = self.store.add(GEN_KEY, 0)
            if generation > self.generation:
                if self._replaced(generation):
                    return 0
                self._assign(generation)
            self._check_joins()
            self._top_up()
            self._lift_standbys()
            self.retired = [w for w in self.retired if w.proc.poll() is None]
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

    def _report_stopped(self) -> None:
        """Say once (a rank_stopped event) which ranks stayed stopped by a signal for STOPPED_GRACE_S: the
        supervisor treats it as a hang found now, with the usual stack dump and kill."""
        now = time.monotonic()
        for rank, worker in self.active.items():
            if rank in self.done or process_state(worker.proc.pid) != "T":
                worker.stopped_since, worker.stop_reported = None, False
            elif worker.stopped_since is None:
                worker.stopped_since = now
            elif not worker.stop_reported and now - worker.stopped_since >= STOPPED_GRACE_S:
                worker.stop_reported = True
                self.out.event("rank_stopped", rank=rank, pid=worker.proc.pid, generation=self.generation,
                               stopped_s=round(now - worker.stopped_since, 3))

    def _assign(self, generation: int) -> None:
        """Hand every rank of this node an assignment for `generation` (a standby where the worker is gone)."""
        self.generation, now, replaced = generation, time.monotonic(), {}
        self.formed_at = None
        leave_s = LOST_ACK_S if self.store.check([warm.lost_key(generation)]) else self.args.join_timeout
        for local_rank, rank in enumerate(self.ranks):
            if rank in self.done:
                continue
            worker = self.active.get(rank)
            if worker is None or worker.proc.poll() is not None:
                worker = self.active[rank] = self._take_standby()
                replaced[rank] = worker.proc.pid
            self._give(worker, rank, local_rank, generation, now + leave_s)
        if generation > 0:
            self.out.event("generation", generation=generation, node_rank=self.node_rank, replaced=replaced)

    def _give(self, worker: Worker, rank: int, local_rank: int, generation: int, deadline: float) -> None:
        worker.rank, worker.local_rank = rank, local_rank
        worker.send(Assignment(generation, rank, local_rank, self.args.world_size))
        self.pending[rank] = (generation, deadline if worker.ready.is_set() else time.monotonic() + STARTUP_TIMEOUT_S)

    def _replaced(self, generation: int) -> bool:
        """Node 0 called this node lost (its beats were late) and gave its place to a spare: step aside."""
        key = warm.lost_key(generation)
        if not self.store.check([key]) or json.loads(self.store.get(key)) != [self.node_rank, self.args.host]:
            return False  # (the spare in our place has the node rank too, not the host)
        self.out.event("replaced", node_rank=self.node_rank, generation=generation)
        return True

    def _check_joins(self) -> None:
        now = time.monotonic()
        for rank, (generation, deadline) in list(self.pending.items()):
            if self.store.check([joined_key(generation, rank)]):
                del self.pending[rank]
                self.formed = True
                if not self.pending:
                    self.formed_at = now
            elif now > deadline and not self.store.check([warm.ack_key(generation, rank)]):
                # still stuck in the old generation's collective (a peer that vanished): replace it
                stuck = self.active[rank]
                stuck.retired = True
                stuck.kill()
                self.retired.append(stuck)
                self.out.event("stuck", rank=rank, pid=stuck.proc.pid, generation=generation)
                worker = self.active[rank] = self._take_standby()
                self._give(worker, rank, stuck.local_rank, generation, now + self.args.join_timeout)

    # ---- nodes: beats, replicas, lost nodes and spares ------------------------------------------------------
    def _beat(self, key: str) -> bool:
        """Add 1 to `key` every BEAT_S; True when it did (the other per-beat chores run then too)."""
        now = time.monotonic()
        if now < self.next_beat:
            return False
        self.next_beat = now + BEAT_S
        self.store.add(key, 1)
        return True

    def _publish(self) -> None:
        self.store.set(warm.node_key(self.node_rank), json.dumps({
            "host": self.args.host, "first_rank": self.ranks[0], "nproc": len(self.ranks),
            "replica": [self.address, self.replicas.port]}))

    def _follow_successor(self) -> None:
        """Our snapshots go to the next node's keeper (whoever holds that node rank now)."""
        if self.args.nnodes < 2:
            return
        info = warm.node_info(self.store, (self.node_rank + 1) % self.args.nnodes)
        self.successor = (info["replica"][0], int(info["replica"][1])) if info else None

    def _wait_as_spare(self) -> int | None:
        """A spare keeper: standbys for a whole node, waiting until node 0 hands us a lost node's rank (None:
        we took it, go on as that node) or says the run is over (0)."""
        for _ in range(self.args.nproc_per_node):
            self.standbys.append(self._spawn(standby=True))
        self._top_up()
        spare = self.store.add(warm.SPARES_KEY, 1)
        self.store.set(warm.spare_key(spare, "host"), self.args.host)
        key = warm.spare_key(spare, "node")
        self.starting = False
        run_formed = [joined_key(0, rank) for rank in range(self.args.world_size)]
        while self.stop_signal is None:
            if self._beat(warm.spare_key(spare, "beat")) and self.formed_at is None and self.store.check(run_formed):
                self.formed_at = time.monotonic()
            self._lift_standbys()
            if self.store.check([key]):
                self._take_over(json.loads(self.store.get(key)), spare)
                return None
            if self.store.check([warm.FINISHED_KEY]):
                self.store.set(warm.spare_done_key(spare), "1")
                return 0
            time.sleep(POLL_S)
        return 128 + self.stop_signal

    def _take_over(self, node: dict, spare: int) -> None:
        """Become node `node['node_rank']`: its ranks, its snapshots (from its successor's copy), its place."""
        from orchestrator.engine.replica import fetch

        begin = time.monotonic()
        self._raise_session()
        self.node_rank = node["node_rank"]
        self.ranks = list(range(node["first_rank"], node["first_rank"] + node["nproc"]))
        self.env["GROUP_RANK"] = str(self.node_rank)
        self.formed = True  # the run's first generation formed long ago
        fetched, error = {}, None
        holder = warm.node_info(self.store, (self.node_rank + 1) % self.args.nnodes)
        if holder is not None and self.args.nnodes > 1:
            try:
                for rank in self.ranks:
                    fetched[rank] = fetch((holder["replica"][0], int(holder["replica"][1])), rank=rank,
                                          into=self.snapshot_dir / f"rank{rank}")
            except (OSError, ValueError) as exc:  # then the ranks restore from disk: slower, still right
                error = f"{type(exc).__name__}: {exc}"
        self._publish()
        self.out.event("spare_joined", node_rank=self.node_rank, spare=spare, lost_host=node.get("host"),
                       snapshots_from=holder.get("host") if holder else None, fetched=fetched, error=error,
                       seconds=round(time.monotonic() - begin, 3))

    # ---- standbys -------------------------------------------------------------------------------------------
    def _spawn(self, standby: bool = False) -> Worker:
        return Worker(self.argv, self.env, self.out, nice=self.standby_nice if standby else 0)

    def _take_standby(self) -> Worker:
        """A ready standby if there is one, else the one closest to ready, else a fresh worker."""
        self.standbys = [w for w in self.standbys if w.proc.poll() is None]
        ready = [w for w in self.standbys if w.ready.is_set()]
        worker = (ready or self.standbys or [None])[0] or self._spawn()
        if worker in self.standbys:
            self.standbys.remove(worker)
            worker.promote()
        return worker

    def _lift_standbys(self) -> None:
        """STANDBY_LIFT_S after the ranks joined their generation, the standbys (a spare node's session too) wait at
        the ranks' priority."""
        if self.formed_at is not None and time.monotonic() - self.formed_at >= STANDBY_LIFT_S:
            for worker in self.standbys:
                worker.promote()
            self._raise_session()

    def _raise_session(self) -> None:
        if self.session_low:
            _session_nice(-self.standby_nice)
            self.session_low = False

    def _top_up(self) -> None:
        self.standbys = [w for w in self.standbys if w.proc.poll() is None]
        while len(self.standbys) < self.args.standby:
            self.standbys.append(self._spawn(standby=True))

    # ---- the end --------------------------------------------------------------------------------------------
    def _finish(self) -> int:
        """Every local rank is done; node 0 keeps the store up until every node said so, then tells the spares
        still waiting that the run is over and waits for them to go."""
        self.store.set(done_key(self.node_rank), "1")
        if self.node_rank == 0:
            try:
                self.store.wait([done_key(n) for n in range(self.args.nnodes)], timedelta(seconds=FINISH_WAIT_S))
                self.store.set(warm.FINISHED_KEY, "1")
                spares = self.watch.waiting_spares() if self.watch is not None else []
                if spares:
                    self.store.wait([warm.spare_done_key(i) for i in spares], timedelta(seconds=FINISH_WAIT_S))
            except Exception:  # noqa: BLE001 - a node that never says so is not our rank's failure
                pass
        return 0

    def _stop_all(self) -> None:
        workers = [*self.active.values(), *self.standbys, *self.retired]
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
        if self.starting:  # the loops that check stop_signal have not begun (Slurm SIGKILLs KillWait later)
            raise Stopped(signum)


class Stopped(BaseException):
    """A stop signal while the keeper starts: run()'s cleanup runs, main() returns 128 + the signal (not an
    Exception: no `except Exception` on the way, in torch's imports either, may swallow it)."""


def _may_raise_priority() -> bool:
    """Whether this process may set a child's nice value back to its own (lowering a nice value needs root or a
    high enough RLIMIT_NICE: `ulimit -e`)."""
    if os.geteuid() == 0:
        return True
    soft = resource.getrlimit(resource.RLIMIT_NICE)[0]
    return soft == resource.RLIM_INFINITY or 20 - os.getpriority(os.PRIO_PROCESS, 0) <= soft


def _renice(pid: int, value: int) -> None:
    """Every thread of `pid` at nice `value` (Linux nice values are per thread; new threads inherit their creator's)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, value)
        except OSError:  # the thread (or the process) is gone, or not ours to raise: the next poll sees an exit
            pass


def _session_nice(change: int) -> None:
    """Move this session's CPU weight by `change` nice steps. With autogroups (Linux's default on desktops and many
    servers: each session, an SSH session included, shares the CPU as one), a process's nice value weighs only against
    its own session, so a spare node lowers its whole session while it waits."""
    path = Path("/proc/self/autogroup")
    try:
        now = int(path.read_text().split("nice")[1])
        path.write_text(str(max(-20, min(19, now + change))))
    except (OSError, ValueError, IndexError):  # no autogroups here: the processes' own nice values are what counts
        pass


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
    p.add_argument("--node-rank", type=int, default=-1)
    p.add_argument("--spare", action="store_true", help="a spare node: wait to take a lost node's place")
    p.add_argument("--host", default=socket.gethostname(), help="this node's name in the run's news")
    p.add_argument("--nproc-per-node", type=int, required=True)
    p.add_argument("--first-rank", type=int, default=0)
    p.add_argument("--world-size", type=int, required=True)
    p.add_argument("--master-addr", required=True)
    p.add_argument("--master-port", type=int, required=True)
    p.add_argument("--standby", type=int, default=1, help="spare workers kept imported and waiting (default 1)")
    p.add_argument("--max-restarts", type=int, default=20, help="warm restarts before giving up (default 20)")
    p.add_argument("--join-timeout", type=float, default=3.0,
                   help="seconds a worker may take to leave its broken generation before it is replaced (default 3)")
    p.add_argument("--node-timeout", type=float, default=2.0,
                   help="seconds without a node keeper's beat before node 0 calls the node lost (default 2)")
    p.add_argument("--store", metavar="HOST:PORT",
                   help="the run's TCPStore, hosted elsewhere (the supervisor on the head); default: node 0 hosts it "
                        "on --master-addr:--master-port")
    p.add_argument("--store-timeout", type=float, default=300.0)
    args = p.parse_args(argv)
    if not args.spare and args.node_rank < 0:
        p.error("--node-rank is required (or --spare)")
    return args, engine_args


def main(argv: list[str] | None = None) -> int:
    args, engine_args = parse_args(sys.argv[1:] if argv is None else argv)
    keeper = Keeper(args, engine_args)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, keeper.on_signal)
    try:
        return keeper.run()
    except Stopped:
        return 128 + keeper.stop_signal


if __name__ == "__main__":
    sys.exit(main())
