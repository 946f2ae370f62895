"""Recovery from a SIGKILL of one rank in two peer tools: nvidia-resiliency-ext's in-process restart and torchft.

The peer tools are not dependencies of this project; install them into a separate venv (a CPU torch is enough):

    python3 -m venv /tmp/peers-venv
    /tmp/peers-venv/bin/pip install torch==2.13.0              # the same torch as the project, CPU build
    echo torch==2.13.0 > /tmp/peers-constraints.txt             # so that nothing below replaces torch
    /tmp/peers-venv/bin/pip install --no-deps nvidia-resiliency-ext==0.4.1 torchft==0.2.0
    /tmp/peers-venv/bin/pip install -c /tmp/peers-constraints.txt numpy defusedxml nvidia-ml-py packaging psutil \
        pynvml pyyaml opentelemetry-api opentelemetry-sdk opentelemetry-exporter-otlp-proto-http

    /tmp/peers-venv/bin/python bench/recovery_peers.py --runs 3                 # both tools, interleaved
    /tmp/peers-venv/bin/python bench/recovery_peers.py --runs 1 --tools torchft --json

Every run trains the same MLP (data parallel over 2 ranks, gloo over loopback, OMP_NUM_THREADS=1, 300 steps,
each padded to at least 40 ms) on this machine. Once rank 1 has logged step 100 the driver SIGKILLs it and reads,
afterwards, the event lines every process wrote (time.time(), one clock: all processes are local):
  nvrx     nvidia_resiliency_ext.inprocess.Wrapper around the training function; 3 processes, 2 active and 1
           spare (rank assignment ShiftRanks + MaxActiveWorldSize(2)), so the spare takes the dead rank's place
           inside the running job, like supervise's standby. State restore: the survivor broadcasts its
           in-memory model/optimizer/step to the new group. Phases: detect (the survivor's collective raised, or
           the wrapper's RankShouldRestart, whichever first), abort (the wrapper called abort), ready (the new
           process group, spare included, formed), restored (broadcast done), resumed (first step after).
           Everything here is the wrapper's default (abort AbortTorchDistributed, no health check) but shorter
           monitoring intervals (0.1 s, defaults 1 s) and timeouts.
  torchft  one replica group per rank (each its own 1-process group), a Manager with ProcessGroupGloo, and a
           lighthouse (torchft._torchft.LighthouseServer, started by the driver). The survivor keeps training
           alone; the driver starts a fresh replica 1 right after the kill (torchft expects the scheduler to
           restart it), which joins the quorum and heals from the survivor over HTTP. Phases: detect (the
           survivor's step failed: should_commit False or an error; none when the kill fell between two
           steps), resumed (the survivor's first step committed alone), up (the replacement process has
           imported torch and built its model), ready (its first quorum), restored (its state loaded from the
           survivor), rejoined (its first committed step, 2 replicas again).
lost = the highest step committed before the kill - the step training resumed from (the steps trained twice).
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

STEPS, KILL_AT, STEP_S = 300, 100, 0.04
TOOLS = ("nvrx", "torchft")
PHASES = {"nvrx": ("detect", "abort", "ready", "restored", "resumed"),
          "torchft": ("detect", "resumed", "up", "ready", "restored", "rejoined")}


# ---------------------------------------------------------------- training (shared by both tools' workers)

def log_event(event: str, **fields) -> None:
    """One JSON line in this process's event file (PEERS_LOG), flushed at once: the driver reads it live."""
    line = json.dumps({"event": event, "time": time.time(), "pid": os.getpid(), **fields})
    with open(os.environ["PEERS_LOG"], "a") as f:
        f.write(line + "\n")


def build():
    import torch
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024),
                                torch.nn.ReLU(), torch.nn.Linear(1024, 10))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def batch(step: int, rank: int):
    import torch
    g = torch.Generator().manual_seed(step * 1000 + rank)
    return torch.randn(64, 512, generator=g), torch.randint(0, 10, (64,), generator=g)


def forward_backward(model, step: int, rank: int):
    """Forward and backward of one step, padded to STEP_S (the accelerator's share of a real step)."""
    import torch
    t0 = time.perf_counter()
    x, y = batch(step, rank)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    time.sleep(max(0.0, STEP_S - (time.perf_counter() - t0)))
    return loss.item()


# ---------------------------------------------------------------- nvidia-resiliency-ext in-process restart

def nvrx_worker() -> None:
    import torch
    import torch.distributed as dist
    from nvidia_resiliency_ext import inprocess

    class LoggedAbort(inprocess.abort.AbortTorchDistributed):
        """The default abort, timed."""

        def __call__(self, state):
            log_event("abort", iteration=state.iteration)
            return super().__call__(state)

    model, opt = build()
    progress = {"step": 0}
    # The training group's store, shared by every restart (the wrapper keeps its own on MASTER_PORT).
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]) + 1,
                          int(os.environ["WORLD_SIZE"]), is_master=os.environ["RANK"] == "0", multi_tenant=True,
                          wait_for_workers=True, use_libuv=True)
    fast = timedelta(milliseconds=100)

    @inprocess.Wrapper(abort=LoggedAbort(), health_check=None,
                       rank_assignment=inprocess.Compose(inprocess.rank_assignment.MaxActiveWorldSize(2),
                                                         inprocess.rank_assignment.ShiftRanks()),
                       monitor_thread_interval=fast, monitor_process_interval=fast, heartbeat_interval=fast,
                       progress_watchdog_interval=fast, last_call_wait=fast, soft_timeout=timedelta(seconds=20),
                       hard_timeout=timedelta(seconds=30), heartbeat_timeout=timedelta(seconds=5),
                       barrier_timeout=timedelta(seconds=60), completion_timeout=timedelta(seconds=60))
    def train(call_wrapper: inprocess.CallWrapper = None):
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        it = call_wrapper.iteration
        dist.init_process_group("gloo", store=dist.PrefixStore(f"it{it}", store), rank=rank, world_size=world,
                                timeout=timedelta(seconds=30))
        log_event("ready", rank=rank, iteration=it)
        # The survivor (active rank 0 after ShiftRanks) holds the newest state: everyone takes it.
        with torch.no_grad():
            step = torch.tensor([progress["step"]])
            dist.broadcast(step, 0)
            for p in model.parameters():
                dist.broadcast(p, 0)
            sd = opt.state_dict()
            dist.broadcast_object_list(objs := [sd], 0)
            opt.load_state_dict(objs[0])
        progress["step"] = start = int(step)
        log_event("restored", rank=rank, iteration=it, step=start)
        flat = None
        try:
            for step in range(start + 1, STEPS + 1):
                opt.zero_grad()
                loss = forward_backward(model, step, rank)
                flat = torch.cat([p.grad.flatten() for p in model.parameters()])
                dist.all_reduce(flat)
                off = 0
                for p in model.parameters():
                    p.grad.copy_(flat[off:off + p.numel()].view_as(p) / world)
                    off += p.numel()
                opt.step()
                progress["step"] = step
                log_event("step", rank=rank, iteration=it, step=step, loss=loss,
                          **({"resumed_from": start} if step == start + 1 and it > 0 else {}))
                call_wrapper.ping()
        except BaseException as e:
            log_event("detect", rank=rank, iteration=it, error=f"{type(e).__name__}: {e}"[:300])
            raise
        dist.destroy_process_group()

    log_event("start", rank=int(os.environ["RANK"]))
    train()
    log_event("exit")


def nvrx_run(work: Path, n: int) -> tuple[list, dict]:
    port = 29500 + 10 * (n % 50)
    procs = {}
    for rank in range(3):
        env = os.environ | {"OMP_NUM_THREADS": "1", "RANK": str(rank), "WORLD_SIZE": "3",
                            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                            "PEERS_LOG": str(work / f"rank{rank}.jsonl")}
        procs[rank] = subprocess.Popen([sys.executable, __file__, "worker", "nvrx"], env=env,
                                       stdout=open(work / f"rank{rank}.log", "w"), stderr=subprocess.STDOUT)
    return list(procs.values()), {"victim": procs[1], "victim_log": work / "rank1.jsonl"}


# ---------------------------------------------------------------- torchft

def torchft_worker() -> None:
    import torch
    import torch.distributed as dist
    from torchft import Manager, ProcessGroupGloo
    from torchft.optim import OptimizerWrapper

    replica = int(os.environ["REPLICA"])
    log_event("start", rank=replica)
    model, opt = build()
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)

    def load_state_dict(sd):
        model.load_state_dict(sd["model"])
        opt.load_state_dict(sd["optim"])
        log_event("restored", rank=replica)

    manager = Manager(pg=ProcessGroupGloo(timeout=timedelta(seconds=5)), min_replica_size=1,
                      load_state_dict=load_state_dict,
                      state_dict=lambda: {"model": model.state_dict(), "optim": opt.state_dict()},
                      replica_id=f"peer{replica}", rank=0, world_size=1, store_addr="127.0.0.1",
                      store_port=store.port, lighthouse_addr=os.environ["LIGHTHOUSE"],
                      timeout=timedelta(seconds=5), quorum_timeout=timedelta(seconds=30))
    optim = OptimizerWrapper(manager, opt)
    first_quorum = True
    while manager.current_step() < STEPS:
        before = manager.current_step()
        optim.zero_grad()  # starts the quorum (async); a healing replica loads the survivor's state here
        step = before + 1
        loss = forward_backward(model, step, replica)
        participants = manager.num_participants()
        if first_quorum:
            log_event("quorum", rank=replica, participants=participants, step=manager.current_step())
            first_quorum = False
        flat = torch.cat([p.grad.flatten() for p in model.parameters()])
        manager.allreduce(flat).wait()  # averages over the participants; errors are reported to the manager
        off = 0
        for p in model.parameters():
            p.grad.copy_(flat[off:off + p.numel()].view_as(p))
            off += p.numel()
        optim.step()  # commits only when every participant's step went through
        if manager.current_step() > before:
            log_event("step", rank=replica, step=manager.current_step(), loss=loss, participants=participants)
        else:
            log_event("failed", rank=replica, step=step, participants=participants,
                      error=str(manager.errored())[:300] if manager.errored() else None)
    manager.shutdown(wait=False)
    log_event("exit")


def torchft_run(work: Path, n: int, lighthouse: str) -> tuple[list, dict]:
    def start(replica: int, tag: str):
        env = os.environ | {"OMP_NUM_THREADS": "1", "REPLICA": str(replica), "LIGHTHOUSE": lighthouse,
                            "PEERS_LOG": str(work / f"rank{replica}{tag}.jsonl")}
        return subprocess.Popen([sys.executable, __file__, "worker", "torchft"], env=env,
                                stdout=open(work / f"rank{replica}{tag}.log", "w"), stderr=subprocess.STDOUT)
    procs = [start(0, ""), start(1, "")]
    return procs, {"victim": procs[1], "victim_log": work / "rank1.jsonl", "replace": lambda: start(1, "-new")}


# ---------------------------------------------------------------- driver

def events(work: Path) -> list[dict]:
    out = []
    for path in sorted(work.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            out.append(json.loads(line) | {"file": path.stem})
    return sorted(out, key=lambda e: e["time"])


def last_step(path: Path) -> int:
    if not path.exists():
        return 0
    text = path.read_text()
    lines = text[:text.rfind("\n") + 1].splitlines()  # a worker may be halfway through its last line
    steps = [json.loads(line).get("step", 0) for line in lines if '"event": "step"' in line]
    return max(steps, default=0)


def run_one(tool: str, root: Path, n: int, lighthouse: str | None) -> dict:
    work = root / f"{tool}-{n}"
    work.mkdir(parents=True)
    launched = time.time()
    procs, ctl = nvrx_run(work, n) if tool == "nvrx" else torchft_run(work, n, lighthouse)
    killed_at = None
    deadline = launched + 300
    try:
        while time.time() < deadline and any(p.poll() is None for p in procs):
            if killed_at is None and last_step(ctl["victim_log"]) >= KILL_AT:
                os.kill(ctl["victim"].pid, signal.SIGKILL)
                killed_at = time.time()
                if "replace" in ctl:
                    procs.append(ctl["replace"]())
            time.sleep(0.005)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    evs = events(work)
    steps = [e for e in evs if e["event"] == "step"]
    row = {"tool": tool, "run": n, "dir": str(work), "completed": False, "killed_at_step": None}
    row |= {k: None for k in PHASES[tool]} | {"lost": None, "step_ms": None}
    if not killed_at:
        return row
    before = [e["step"] for e in steps if e["time"] <= killed_at]
    row["killed_at_step"], row["killed_at"] = max(before, default=None), killed_at
    pre = [e["time"] for e in steps if e["file"] == "rank0" and e["step"] <= KILL_AT]
    row["step_ms"] = 1000 * (pre[-1] - pre[9]) / (len(pre) - 10) if len(pre) > 20 else None
    after = [e for e in evs if e["time"] > killed_at]

    def first(pred):
        hit = next((e for e in after if pred(e)), None)
        return (hit["time"] - killed_at, hit) if hit else (None, None)

    if tool == "nvrx":
        row["detect"], _ = first(lambda e: e["event"] == "detect")
        row["abort"], _ = first(lambda e: e["event"] == "abort")
        ready = [e for e in after if e["event"] == "ready"]
        restored = [e for e in after if e["event"] == "restored"]
        row["ready"] = max(e["time"] for e in ready[:2]) - killed_at if len(ready) >= 2 else None
        row["restored"] = max(e["time"] for e in restored[:2]) - killed_at if len(restored) >= 2 else None
        row["resumed"], hit = first(lambda e: e["event"] == "step" and "resumed_from" in e)
        row["lost"] = row["killed_at_step"] - hit["resumed_from"] if hit else None
        final = {e["step"] for e in steps if e.get("iteration", 0) == (hit or {}).get("iteration", -1)}
        row["completed"] = bool(hit) and final >= set(range(hit["resumed_from"] + 1, STEPS + 1))
    else:
        row["detect"], _ = first(lambda e: e["file"] == "rank0" and e["event"] == "failed")
        # A step rank 0 logs just after the kill may have been committed with rank 1 before it died: the
        # survivor has resumed at its first step committed alone.
        row["resumed"], hit = first(lambda e: e["file"] == "rank0" and e["event"] == "step"
                                    and e["participants"] == 1)
        row["up"], _ = first(lambda e: e["file"] == "rank1-new" and e["event"] == "start")
        row["ready"], _ = first(lambda e: e["file"] == "rank1-new" and e["event"] == "quorum")
        row["restored"], _ = first(lambda e: e["file"] == "rank1-new" and e["event"] == "restored")
        row["rejoined"], _ = first(lambda e: e["file"] == "rank1-new" and e["event"] == "step"
                                   and e["participants"] == 2)
        row["lost"] = row["killed_at_step"] - (hit["step"] - 1) if hit else None
        row["completed"] = {e["step"] for e in steps} >= set(range(1, STEPS + 1))  # committed by some replica
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated subset of {','.join(TOOLS)}")
    ap.add_argument("--json", action="store_true", help="print every run as JSON too")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so that `timeout` still stops every worker
    tools = [t for t in args.tools.split(",") if t in TOOLS]
    root = Path(f"/tmp/orch-bench-recovery-peers-{os.getpid()}")
    lighthouse = None
    if "torchft" in tools:
        root.mkdir(parents=True)
        server = subprocess.Popen([sys.executable, __file__, "lighthouse"], stdout=subprocess.PIPE, text=True,
                                  stderr=open(root / "lighthouse.log", "w"))
        lighthouse = server.stdout.readline().strip()
    rows = []
    print(f"load average at start: {os.getloadavg()}", flush=True)
    try:
        for n in range(args.runs):
            for tool in tools:
                row = run_one(tool, root, n, lighthouse)
                rows.append(row)
                print(json.dumps(row) if args.json else f"{tool} run {n}: done ({row['dir']})", flush=True)
    finally:
        if lighthouse:
            server.kill()
            server.wait()
    print(f"load average at end: {os.getloadavg()}")
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    print(f"\nrecovery from SIGKILL of rank 1 at step >= {KILL_AT} (2 ranks, gloo, loopback), "
          f"medians of {args.runs} run(s), seconds after the kill")
    for tool in tools:
        mine = [r for r in rows if r["tool"] == tool]
        med = {k: statistics.median(v) if (v := [r[k] for r in mine if r[k] is not None]) else None
               for k in (*PHASES[tool], "lost", "step_ms")}
        print(f"{tool:<8} completed {sum(r['completed'] for r in mine)}/{len(mine)}  "
              + "  ".join(f"{k} {fmt(med[k])}" for k in PHASES[tool])
              + f"  lost {fmt(med['lost'])}  step_ms {fmt(med['step_ms'])}")
    return 0


def lighthouse() -> None:
    """torchft's lighthouse: prints its address, serves until killed (its log goes to stderr)."""
    from torchft._torchft import LighthouseServer
    # Fast quorum ticks; a replica missing heartbeats for 1 s is left out of the next quorum.
    server = LighthouseServer(bind="[::]:0", min_replicas=1, join_timeout_ms=100, quorum_tick_ms=50,
                              heartbeat_timeout_ms=1000)
    print(server.address(), flush=True)
    signal.pause()


if __name__ == "__main__":
    if sys.argv[1:2] == ["lighthouse"]:
        lighthouse()
    elif sys.argv[1:2] == ["worker"]:
        import faulthandler
        faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints a hung worker's stacks to its .log
        {"nvrx": nvrx_worker, "torchft": torchft_worker}[sys.argv[2]]()
    else:
        sys.exit(main())
