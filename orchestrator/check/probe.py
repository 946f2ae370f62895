"""The node side of `orchestrator check`: measures one node (or one end of a link) and prints one JSON line.

    $ python3 -c "$(cat probe.py)" node --workdir /srv/job --cpu-reps 2
    {"python": "3.11.2", "disk": {"free_bytes": ...}, "cpu_s": 0.081, "nvidia_smi": null, ..., "time": 1712.3}
    $ python3 -c "$(cat probe.py)" net --rank 0 --master node1 --port 31007 --size-mb 4 --budget-s 1 --timeout-s 30
    {"import_s": 1.42, "torch": "2.3.0", "backend": "gloo", "lat_us": 210.5, "bw_gbps": 0.61, "iters": 7}

Sent inline by orchestrator.check.runner (python -c SOURCE) and run under the node agent like any remote
command, so it dies with its session. Stdlib only, except `net`, which imports torch: that import is timed, and
it is the point (the run will import it too). Every wait is bounded: the rendezvous and every collective get
`--timeout-s`, so a dead peer ends the probe with an error instead of hanging it.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

SMI_GPUS = "index,name,pci.bus_id,memory.total,ecc.errors.uncorrected.volatile.total"  # the install gate's query
SMI_CLOCKS = "index,clocks.sm,clocks.max.sm,clocks_throttle_reasons.active"
CPU_LOOP = 750000  # iterations per repetition: ~0.1 s on a current core, several CFS periods when throttled


def _disk(workdir):
    """Free space where the run writes, and whether a small file can really be written and synced there."""
    path = workdir or os.path.expanduser("~")
    out = {"path": path}
    try:
        usage = shutil.disk_usage(path)
        out.update(free_bytes=usage.free, total_bytes=usage.total)
        probe = os.path.join(path, ".orch-check-%d" % os.getpid())
        try:
            with open(probe, "wb") as f:
                f.write(b"\0" * (1 << 20))
                f.flush()
                os.fsync(f.fileno())
        finally:
            if os.path.exists(probe):
                os.unlink(probe)
    except OSError as exc:
        out["error"] = exc.strerror or str(exc)
    return out


def _cpu(reps):
    """Seconds of the fastest of `reps` runs of a fixed pure-Python loop (the fastest: a busy neighbour once does
    not make a node slow; a throttled or slower CPU is slow every time)."""
    best = None
    for _ in range(reps):
        start = time.perf_counter()
        acc = 0
        for i in range(CPU_LOOP):
            acc = (acc + i * i) % 1000003
        took = time.perf_counter() - start
        best = took if best is None else min(best, took)
    return best


def _smi(query):
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=" + query, "--format=csv,noheader,nounits"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=30)
    except subprocess.TimeoutExpired:
        return {"rc": 124, "stdout": "", "stderr": "nvidia-smi timed out after 30 s"}
    return {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


def node(args):
    has_smi = shutil.which("nvidia-smi") is not None
    doc = {"python": sys.version.split()[0], "executable": sys.executable, "disk": _disk(args.workdir),
           "cpu_s": _cpu(args.cpu_reps), "nvidia_smi": _smi(SMI_GPUS) if has_smi else None,
           "clocks": _smi(SMI_CLOCKS) if has_smi else None}
    doc["time"] = time.time()  # last: the head compares it with when this line arrives
    print(json.dumps(doc), flush=True)
    return 0


class Round:
    """Barriers shared by every probe of a round: a TCPStore counter per phase on the round's first node
    (ADDR:PORT:COUNT:IS_MASTER), so all pairs measure the same thing at the same time and share the fabric (and,
    on one machine, the CPUs) alike. Bounded: a probe that never comes costs the others `timeout`, not a hang."""

    PHASES = ("ready", "latency-done", "done")

    def __init__(self, spec, timeout):
        self.store, self.count, self.timeout, self.passed, self.master = None, 0, timeout, set(), False
        if spec:
            from datetime import timedelta

            import torch.distributed as dist

            addr, port, count, is_master = spec.rsplit(":", 3)
            self.count, self.master = int(count), is_master == "1"
            self.store = dist.TCPStore(addr, int(port), self.count, self.master, timedelta(seconds=timeout),
                                       wait_for_workers=False)

    def reach(self, phase, count=None):
        self.passed.add(phase)
        if self.store is None:
            return
        self.store.add(phase, 1)
        deadline = time.monotonic() + self.timeout
        while self.store.add(phase, 0) < (count or self.count) and time.monotonic() < deadline:
            time.sleep(0.02)

    def finish(self):
        """The last phase. The master (it serves the store) leaves only after every other probe has said it
        will not ask again: nobody polls a store that is gone."""
        self.reach("done")
        if self.store is not None:
            if self.master:
                self.reach("bye", self.count)
            else:
                self.store.add("bye", 1)

    def leave(self):
        """After a failure: count in at the phases not reached, so the others do not wait for this probe (and
        the store's master stays until the last probe is through)."""
        try:
            for phase in self.PHASES[:-1]:
                if phase not in self.passed:
                    self.reach(phase)
            self.finish()
        except Exception:  # noqa: BLE001 - the store itself is gone: nobody is waiting on it
            pass


def _measure(torch, dist, args, device, sync, rnd, doc):
    """Latency (lower quartile of small all_reduces, spread over time), then bus bandwidth of `--size-mb`
    all_reduces."""
    tiny = torch.ones(1, device=device)
    for _ in range(5):  # warm-up: connections and buffers
        dist.all_reduce(tiny)
    sync()
    lats = []
    for _ in range(args.lat_reps):
        time.sleep(0.005)  # spread over ~0.2 s: one busy moment of the node's CPUs does not make every sample
        t = time.perf_counter()
        dist.all_reduce(tiny)
        sync()
        lats.append(time.perf_counter() - t)
    lats.sort()
    doc["lat_us"] = round(lats[len(lats) // 4] * 1e6, 1)  # lower quartile: a wake-up delay is not the link's
    rnd.reach("latency-done")  # no pair's bulk traffic under another pair's latency test
    big = torch.ones(int(args.size_mb * (1 << 20)) // 4, device=device)
    dist.all_reduce(big[: max(1, big.numel() // 16)])  # warm-up at a sixteenth: cheap even on a slow link
    sync()
    flag = torch.ones(1, device=device)
    iters, spent = 0, 0.0
    while True:
        t = time.perf_counter()
        dist.all_reduce(big)
        sync()
        spent += time.perf_counter() - t
        iters += 1
        # rank 0 decides when to stop (the time budget); both ranks must run the same number of collectives
        flag.fill_(1.0 if args.rank == 0 and (spent >= args.budget_s or iters >= args.max_iters) else 0.0)
        dist.all_reduce(flag)
        if flag.item() > 0:
            break
    # bus bandwidth as nccl-tests counts it: algbw * 2(n-1)/n, which for n=2 is the algorithm bandwidth
    doc.update(bw_gbps=round(big.numel() * 4 * iters / spent / 1e9, 4), iters=iters)


def net(args):
    doc = {"rank": args.rank}
    start = time.perf_counter()
    try:
        import torch
        import torch.distributed as dist
    except Exception as exc:  # noqa: BLE001 - any import failure is the finding
        doc["import_error"] = "%s: %s" % (type(exc).__name__, exc)
        print(json.dumps(doc), flush=True)
        return 1
    doc.update(import_s=round(time.perf_counter() - start, 3), torch=torch.__version__,
               cuda_devices=torch.cuda.device_count())
    backend = args.backend
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    doc["backend"] = backend
    device = torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")

    def sync():
        if backend == "nccl":
            torch.cuda.synchronize()

    rnd = None
    try:
        from datetime import timedelta

        if backend == "nccl":
            torch.cuda.set_device(device)
        rnd = Round(args.barrier, args.timeout_s)
        rnd.reach("ready")
        dist.init_process_group(backend, init_method="tcp://%s:%d" % (args.master, args.port), rank=args.rank,
                                world_size=2, timeout=timedelta(seconds=args.timeout_s))
        _measure(torch, dist, args, device, sync, rnd, doc)
        dist.destroy_process_group()
    except Exception as exc:  # noqa: BLE001 - a failed rendezvous or collective is this link's finding
        doc["error"] = "%s: %s" % (type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
        print(json.dumps(doc), flush=True)
        if rnd is not None:
            rnd.leave()
        return 1
    print(json.dumps(doc), flush=True)
    try:
        rnd.finish()
    except Exception:  # noqa: BLE001 - the figures are out; a store gone early only ends the wait
        pass
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="orch-check-probe")
    sub = parser.add_subparsers(dest="mode")
    p_node = sub.add_parser("node")
    p_node.add_argument("--workdir", default=None)
    p_node.add_argument("--cpu-reps", type=int, default=2)
    p_net = sub.add_parser("net")
    p_net.add_argument("--rank", type=int, required=True)
    p_net.add_argument("--master", required=True)
    p_net.add_argument("--port", type=int, required=True)
    p_net.add_argument("--backend", default="auto")
    p_net.add_argument("--size-mb", type=float, default=4.0)
    p_net.add_argument("--budget-s", type=float, default=1.0)
    p_net.add_argument("--max-iters", type=int, default=20)
    p_net.add_argument("--lat-reps", type=int, default=30)
    p_net.add_argument("--timeout-s", type=float, default=30.0)
    p_net.add_argument("--barrier", default=None, help="ADDR:PORT:COUNT:IS_MASTER")
    args = parser.parse_args(argv)
    return node(args) if args.mode == "node" else net(args)


if __name__ == "__main__":
    sys.exit(main())
