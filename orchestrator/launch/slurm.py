"""Launch through Slurm: one torchrun (or warm keeper) per node of the current allocation, all started by one `srun`.

Head side, inside `salloc` or an sbatch script (what `launchers/srun-torchrun` and `launch --via slurm` run):

    alloc = slurm.require_allocation("--via slurm")
    plan = build_plan(spec, allocation_hosts(alloc, nproc_per_node=None))      # LAUNCH's pure planner
    srun_argv(plan, alloc, srun_options=["--exclusive"])
    # ['srun', '--nodes=4', '--ntasks=4', '--ntasks-per-node=1', '--kill-on-bad-exit=1', '--quit-on-interrupt',
    #  '--nodelist=node[1-4]', '--exclusive', PY, '-m', 'orchestrator.launch.slurm', 'node', '--',
    #  PY, '-m', 'torch.distributed.run', '--nnodes=4', '--node-rank=0', ...]
    rc = run_srun(argv, srun_env(plan))           # the env manifest rides in srun's environment, never in argv
    rc = run_via_slurm(plan, srun_options=[...])  # the same in one call: what `launch --via slurm` uses

Node side (what srun starts once per node): `python -m orchestrator.launch.slurm node -- <node 0's torchrun argv>`
puts SLURM_NODEID in --node-rank and runs torchrun in this process, so it can map how the ranks ended onto
the job exit-code contract (launchers/README.md). With the warm launcher (plan.launcher "warm": what `supervise`
runs for the engine) node 0's argv is its keeper's (engine/keeper.py): the node entry puts SLURM_NODEID in
--node-rank, node rank x --nproc-per-node in --first-rank and the Slurm node name in --host, gives the keeper a
private temp dir under ORCH_RUN_TMPDIR (/dev/shm under the supervisor: its snapshots live in memory and go with
the step) and runs it in this process; the keeper restarts a failed rank inside the step. When its working
directory is a synced code copy, the node entry holds a shared lock on it while the step runs (job/inuse.py: the
copy is not turned into a newer version under it).

    0  every rank finished
    1  restartable: a rank crashed, was killed, or this node was told to stop because another node failed
    2  do not requeue: a rank exited 2 (a configuration error; the same input would fail again)

srun returns the highest exit code of its tasks, so a configuration error on one node (2) outranks the peers
that --kill-on-bad-exit stopped (1). Anything else the job ends with (137 after SIGKILL, 143, node failure)
counts as restartable.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence

from orchestrator.contracts import CODE_PIN_ENV, RUN_TMPDIR
from orchestrator.engine.warm import event_line
from orchestrator.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, ConfigError
from orchestrator.hosts import Host, HostList, fold
from orchestrator.job.inuse import Moved, hold_run, pin_seconds, release
from orchestrator.launch.torchrun import PREFIX_ENV, RANK_PREFIX_TEMPLATE
from orchestrator.slurm import Allocation, require_allocation

log = logging.getLogger("orchestrator.launch.slurm")

EXIT_DONE, EXIT_RESTARTABLE, EXIT_NO_REQUEUE = EXIT_OK, EXIT_FAILURE, EXIT_USAGE
SRUN_FIXED = ("--ntasks-per-node=1", "--kill-on-bad-exit=1", "--quit-on-interrupt")
# Readable rank prefixes in the job log (torchrun --tee); Slurm users read that file, not our runner.
RANK_PREFIX = "[rank${rank}]: "
NODE_ENTRY = ("-m", "orchestrator.launch.slurm", "node", "--")
STEP_LAUNCHERS = ("torchrun", "warm")
TORCHRUN, KEEPER = ["-m", "torch.distributed.run"], ["-m", "orchestrator.engine.keeper"]


def allocation_hosts(alloc: Allocation, *, nproc_per_node: int | None) -> HostList:
    """The allocation's nodes as launch hosts: slots = --nproc-per-node, else the GPUs Slurm gave, else 1."""
    slots = nproc_per_node or alloc.gpus_per_node or 1
    return HostList(Host(name, slots) for name in alloc.nodes)


def srun_argv(plan, alloc: Allocation, *, srun_options: Sequence[str] = (), wrap: Sequence[str] = ()) -> list[str]:
    """One srun step over the plan's nodes, starting the node entry with node 0's torchrun argv (after `wrap`, a
    program that runs the rest of its argv: the supervisor's forwarder). Pure."""
    if plan.launcher not in STEP_LAUNCHERS:
        raise ConfigError("--launcher", plan.launcher, "--via slurm runs torchrun or the warm keeper; use --launcher "
                          "torchrun")
    first = plan.nodes[0]
    for field, values in (("--nproc-per-node", {n.nproc for n in plan.nodes}),
                          ("--python", {n.python for n in plan.nodes}), ("--workdir", {n.workdir for n in plan.nodes})):
        if len(values) > 1:
            raise ConfigError(field, sorted(map(str, values)), "one srun starts the same command on every node; "
                              "give one value for all nodes")
    outside = [h for h in plan.hosts if h not in alloc.nodes]
    if outside:
        raise ConfigError("--hosts", fold(outside), f"not in Slurm job {alloc.job_id} ({fold(alloc.nodes)}); "
                          "pick nodes of the allocation")
    if any(n.env for n in plan.nodes):
        raise ConfigError("--include", "slots", "under Slurm the allocation decides the GPUs; drop the slot lists")
    for opt in srun_options:
        if opt.split("=", 1)[0] in ("--ntasks-per-node", "--kill-on-bad-exit", "-n", "--ntasks", "-N", "--nodes",
                                    "-w", "--nodelist"):
            raise ConfigError("--srun-opt", opt, "the launcher sets it (one task per node on the plan's nodes); "
                              "choose nodes with --hosts/--exclude instead")
    chdir = [f"--chdir={first.workdir}"] if first.workdir else []
    # With spare keepers the step must outlive a node failure Slurm declares: a spare took the node's place.
    survive = ["--no-kill"] if plan.spares else []
    return ["srun", f"--nodes={len(plan.nodes)}", f"--ntasks={len(plan.nodes)}", *SRUN_FIXED, *survive,
            f"--nodelist={fold(plan.hosts, last_axis_only=True)}", *chdir, *srun_options,
            *wrap, first.python, *NODE_ENTRY, *first.argv]


def spare_srun_argv(spare, alloc: Allocation, *, srun_options: Sequence[str] = (),
                    wrap: Sequence[str] = ()) -> list[str]:
    """A warm spare keeper's own one-node srun step (plan.spares[i]): a running step cannot take in a node, so
    each spare waits in a step of its own, on the same store, to take a lost node's place. Pure."""
    if spare.host not in alloc.nodes:
        raise ConfigError("--spare-hosts", spare.host, f"not in Slurm job {alloc.job_id} ({fold(alloc.nodes)}); "
                          "pick spare nodes of the allocation")
    chdir = [f"--chdir={spare.workdir}"] if spare.workdir else []
    return ["srun", "--nodes=1", "--ntasks=1", *SRUN_FIXED, f"--nodelist={spare.host}", *chdir, *srun_options,
            *wrap, spare.python, *NODE_ENTRY, *spare.argv]


def srun_env(plan, base: Mapping[str, str] = os.environ, *, marker: bool = False) -> dict[str, str]:
    """srun's environment: the caller's (srun forwards it, as Slurm users expect) plus the env manifest; for the
    warm keepers also ORCH_RUN_TMPDIR, the base of each node's private temp dir (where their snapshots go). Rank
    lines start with RANK_PREFIX for a person, or with torchrun.py's marker (`marker`) for a reader that takes
    the rank from each line (the supervisor)."""
    keeper = {RUN_TMPDIR: plan.launcher_env[RUN_TMPDIR]} if plan.launcher == "warm" else {}
    return {**base, **plan.env.values, **keeper, PREFIX_ENV: RANK_PREFIX_TEMPLATE if marker else RANK_PREFIX}


def run_srun(argv: list[str], env: Mapping[str, str]) -> int:
    """Run the srun step in the foreground; Ctrl-C ends the step (srun --quit-on-interrupt) and returns 130."""
    proc = subprocess.Popen(argv, env=dict(env))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)  # the terminal sent it too; this covers a signal aimed at us alone
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise


def run_via_slurm(plan, *, srun_options: Sequence[str] = (), alloc: Allocation | None = None) -> int:
    """`launch --via slurm`: run the plan as one srun step of the enclosing allocation; returns srun's exit code.

    ConfigError (exit 2, nothing started) outside an allocation or when the plan does not fit one srun step.
    """
    alloc = alloc or require_allocation("--via slurm")
    return run_srun(srun_argv(plan, alloc, srun_options=srun_options), srun_env(plan))


def maybe_requeue(rc: int, *, max_restarts: int, environ: Mapping[str, str] = os.environ) -> bool:
    """After a restartable failure in a batch job, ask Slurm to requeue it (at most `max_restarts` times).

    Exit 0 and 2 are never requeued: done, or a configuration error that would fail the same way again.
    """
    restarts = int(environ.get("SLURM_RESTART_COUNT") or 0)
    job_id = environ.get("SLURM_JOB_ID")
    if rc in (EXIT_DONE, EXIT_NO_REQUEUE) or not job_id or restarts >= max_restarts:
        if rc not in (EXIT_DONE, EXIT_NO_REQUEUE):
            log.warning("job %s: exit %d, not requeued (%d of %d restarts used)", job_id, rc, restarts, max_restarts)
        return False
    log.warning("job %s: restartable failure (exit %d): requeue %d of %d", job_id, rc, restarts + 1, max_restarts)
    out = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if out.returncode:
        log.error("job %s: scontrol requeue failed: %s (was it submitted with --requeue?)", job_id, out.stderr.strip())
    return out.returncode == 0


# ---- node side --------------------------------------------------------------------------------------------
def node_torchrun_args(argv: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """[PY, -m, torch.distributed.run, ...node 0's args] -> torchrun's args with this node's --node-rank."""
    if list(argv[1:3]) != TORCHRUN:
        raise ConfigError("node argv", list(argv[:3]), "expected PYTHON -m torch.distributed.run ...")
    args = list(argv[3:])
    return _with_options(args, {"--node-rank": str(_node_id(args, environ))})


def node_keeper_args(argv: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """[PY, -m, orchestrator.engine.keeper, ...node 0's args] -> the keeper's args for this node: --node-rank from
    SLURM_NODEID, --first-rank = node rank x --nproc-per-node, --host the Slurm node name (the supervisor's name
    for it); a spare keeper's (--spare, in its own one-node step) gets --host only. The engine's args after '--'
    pass unchanged."""
    if list(argv[1:3]) != KEEPER:
        raise ConfigError("node argv", list(argv[:3]), "expected PYTHON -m orchestrator.engine.keeper ...")
    args = list(argv[3:])
    cut = args.index("--") if "--" in args else len(args)
    own, engine = args[:cut], args[cut:]
    host = environ.get("SLURMD_NODENAME") or socket.gethostname()
    if "--spare" in own:  # its node rank comes with the lost node it replaces
        return _with_options(own, {"--host": host}) + engine
    node_id = _node_id(own, environ)
    nproc = _option(own, "--nproc-per-node")
    if nproc is None or not nproc.isdigit():
        raise ConfigError("--nproc-per-node", nproc, "the keeper's argv names its ranks per node")
    return _with_options(own, {"--node-rank": str(node_id), "--first-rank": str(node_id * int(nproc)),
                               "--host": host}) + engine


def _node_id(args: Sequence[str], environ: Mapping[str, str]) -> int:
    """This task's node rank in the step (SLURM_NODEID), checked against the argv's --nnodes."""
    node_id = environ.get("SLURM_NODEID")
    if node_id is None or not node_id.isdigit():
        raise ConfigError("SLURM_NODEID", node_id, "the node entry runs under srun, one task per node")
    nnodes = _option(args, "--nnodes")
    step_nodes = environ.get("SLURM_STEP_NUM_NODES") or environ.get("SLURM_NNODES")
    if nnodes and step_nodes and nnodes != step_nodes:
        raise ConfigError("--nnodes", nnodes, f"the srun step has {step_nodes} nodes; start one task per node")
    return int(node_id)


def _option(args: Sequence[str], name: str) -> str | None:
    return next((a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")), None)


def _with_options(args: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """args with each `--name=...` of `values` set to its value (the plans render every option as --name=value)."""
    return [f"{a.split('=', 1)[0]}={values[a.split('=', 1)[0]]}" if a.split("=", 1)[0] in values else a
            for a in args]


def exit_code_for(failure_codes: Sequence[int]) -> int:
    """The node's exit code from its failed ranks' exit codes (negative: killed by that signal)."""
    return EXIT_NO_REQUEUE if EXIT_USAGE in failure_codes else EXIT_RESTARTABLE


def node_main(argv: Sequence[str]) -> int:
    """Run this node's torchrun (or warm keeper) in-process and return the contract's exit code."""
    keeper = list(argv[1:3]) == KEEPER
    args = node_keeper_args(argv, os.environ) if keeper else node_torchrun_args(argv, os.environ)
    # srun stops the other nodes with SIGTERM when one fails (--kill-on-bad-exit). torchrun (the keeper) handles
    # it while it runs; before that, and once its ranks are gone, a SIGTERM must not end this process as "143",
    # which would outrank a peer's 2 in srun's exit code.
    signal.signal(signal.SIGTERM, _stopped_by_slurm)
    signal.signal(signal.SIGUSR1, _stopped_by_slurm)  # the supervisor's stop (the keeper's own handler takes over)
    cwd = os.getcwd()
    try:
        held = hold_run(cwd)  # srun's --chdir: a synced code copy is not turned into another version under the step
    except Moved as exc:
        log.error("node %s: %s: %s; sync again", os.environ.get("SLURMD_NODENAME", "?"), cwd, exc.strerror)
        return EXIT_RESTARTABLE
    tmp = private_tmpdir(os.environ.get(RUN_TMPDIR) if keeper else None)
    code = EXIT_RESTARTABLE
    try:
        code = _run_keeper(args) if keeper else _run_torchrun(args)
        return code
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        shutil.rmtree(tmp, ignore_errors=True)
        release(held, cwd, pin_seconds(os.environ.get(CODE_PIN_ENV)))  # a supervisor's next step follows
        if keeper:  # all of this node's run is gone: the supervisor ends a step that waits on a lost node only
            print(event_line("node_exit", code=code), flush=True)


def private_tmpdir(base: str | None = None) -> str:
    """A temp dir for this node's step under `base` (default: TMPDIR's), TMPDIR and ORCH_RUN_TMPDIR until node_main
    removes it: torchrun's per-rank files, the keeper's snapshots and the ranks' temp files go there, not into the
    node's /tmp (or /dev/shm) for good (what the node agent does for SSH launches)."""
    step = f"{os.environ.get('SLURM_JOB_ID', 'job')}.{os.environ.get('SLURM_STEP_ID', 'step')}"
    tmp = tempfile.mkdtemp(prefix=f"orch-slurm-{step}-", dir=base)
    os.environ["TMPDIR"] = os.environ[RUN_TMPDIR] = tmp
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    return tmp


def _run_torchrun(args: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    try:
        torchrun_main(args)
    except ChildFailedError as exc:
        codes = [f.exitcode for f in exc.failures.values()]
        log.error("node %s: ranks failed with exit codes %s", os.environ.get("SLURMD_NODENAME", "?"), codes)
        return exit_code_for(codes)
    except SignalException as exc:  # Slurm stops this step (another node failed, scancel, Ctrl-C on srun)
        log.warning("node %s: stopped by %s; ranks terminated", os.environ.get("SLURMD_NODENAME", "?"), exc.sigval)
        return EXIT_RESTARTABLE
    return EXIT_DONE


def _run_keeper(args: list[str]) -> int:
    """The keeper's exit code on the contract: 0 done, 2 a configuration error, anything else (gave up, stopped by
    Slurm's SIGTERM: 143) restartable."""
    from orchestrator.engine.keeper import main as keeper_main

    code = keeper_main(args)
    if code not in (EXIT_DONE, EXIT_NO_REQUEUE, EXIT_RESTARTABLE):
        log.warning("node %s: keeper stopped (exit %d); ranks terminated", os.environ.get("SLURMD_NODENAME", "?"), code)
        return EXIT_RESTARTABLE
    return code


def _stopped_by_slurm(signum, frame) -> None:
    raise SystemExit(EXIT_RESTARTABLE)


def _entry(argv: list[str]) -> int:
    if argv[:2] != ["node", "--"]:
        print("usage: python -m orchestrator.launch.slurm node -- PYTHON -m torch.distributed.run ... "
              "(or PYTHON -m orchestrator.engine.keeper ...)", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="[orch] %(levelname)s %(name)s: %(message)s")
    try:
        return node_main(argv[2:])
    except ConfigError as exc:  # same wording as cli/main.py; this entry is srun's, not the user's
        print(f"orchestrator: {exc.kind}: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    code = _entry(sys.argv[1:])
    # Skip interpreter shutdown: it puts SIGTERM back to its default action (and can take a while with torch
    # loaded), so srun's SIGTERM to the surviving nodes would turn this node's exit code into 143.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
