"""A warm worker: a rank process that survives its process group, or a standby that becomes a rank in one step.

    python -m orchestrator.engine.warm_worker ENGINE_ARGS       # started by keeper.py, never by hand

Started with the engine's arguments (those of `orchestrator train`), it parses the config, imports torch and
the engine (seconds: what a standby has already paid when it is needed), prints READY_MARK, then reads
Assignments (warm.py) on stdin. For each newer generation it joins that generation's process group on the
run's store, trains (the engine restores the newest in-memory snapshot every rank holds, else the newest disk
checkpoint), and exits 0 when training is done. When the generation breaks (a peer died: the collective
raises), it leaves the group and waits for the next assignment, which its keeper sends once the generation
counter moves; if none comes within ORPHAN_WAIT_S the failure was its own and it exits 1. A configuration error
exits 2 before any assignment, as the engine does under torchrun.
"""

from __future__ import annotations

import gc
import logging
import os
import select
import sys
import traceback
from datetime import timedelta

from orchestrator.engine.warm import Assignment, READY_MARK, ack_key, acks_key, event_line, joined_key

__all__ = ["main"]

log = logging.getLogger("orchestrator.engine.warm_worker")

ORPHAN_WAIT_S = 10.0
"""How long a worker whose generation broke waits for a new assignment before it calls the failure its own."""
STORE_TIMEOUT = timedelta(seconds=60)
PEER_POLL_S = 0.02


class _Lines:
    """Lines from a file descriptor, with a timeout (select on the raw fd: no buffered reader in between)."""

    def __init__(self, fd: int):
        self.fd, self.buffer, self.closed = fd, b"", False

    def next(self, timeout: float | None) -> bytes | None:
        """The next line; None at EOF or when nothing came within `timeout` seconds (None: wait forever)."""
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([self.fd], [], [], timeout)
            if not ready:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self.closed = True
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line


def _say(event: str, **fields) -> None:
    print(event_line(event, pid=os.getpid(), **fields), flush=True)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[orch] %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    import click

    from orchestrator.errors import EXIT_USAGE, OrchestratorError

    try:
        cfg = _config(sys.argv[1:] if argv is None else argv)
    except OrchestratorError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except click.ClickException as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    import torch.distributed as dist

    from orchestrator.engine.train import train

    _warm_up(train)
    print(READY_MARK, flush=True)
    lines, store, generation = _Lines(sys.stdin.fileno()), None, -1
    timeout, detail, newer = None, "", None
    while (raw := newer or lines.next(timeout)) is not None:
        job, newer = Assignment.parse(raw), None
        if job.generation <= generation:
            continue  # a stale assignment: a newer one was sent before this worker got to read it
        generation, timeout = job.generation, None
        os.environ.update(RANK=str(job.rank), LOCAL_RANK=str(job.local_rank), WORLD_SIZE=str(job.world_size))
        try:
            if store is None:
                store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                      timeout=STORE_TIMEOUT)
            store.set(ack_key(generation, job.rank), "1")  # out of the old generation: the keeper need not kill us
            if (newer := _await_peers(store, job, lines)) is not None:
                continue  # another rank failed before this generation formed: on to the next one
            backend = "cpu:gloo,cuda:nccl" if _cuda() else "gloo"
            dist.init_process_group(backend, store=dist.PrefixStore(f"warm/{generation}/pg/", store),
                                    rank=job.rank, world_size=job.world_size, timeout=STORE_TIMEOUT)
            store.set(joined_key(generation, job.rank), "1")
            _say("joined", generation=generation, rank=job.rank)
            summary = train(cfg)
        except OrchestratorError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return exc.exit_code
        except Exception as exc:  # noqa: BLE001 - a broken generation, or this rank's own failure (see ORPHAN_WAIT_S)
            _say("left", generation=generation, rank=job.rank, error=f"{type(exc).__name__}: {str(exc)[:300]}")
            detail = traceback.format_exc()
            _leave_group()
            timeout = ORPHAN_WAIT_S
            del exc
            gc.collect()
            continue
        if job.rank == 0 and summary.get("losses"):
            print(f"trained steps {summary['first_step']}-{summary['last_step']} ({summary['layout']}): "
                  f"final loss {summary['losses'][-1]:.6f}", file=sys.stderr, flush=True)
        return 0
    print(detail, file=sys.stderr, flush=True)  # a broken generation and no new one came: our own failure
    return 1  # (or stdin closed: the keeper is gone)


def _await_peers(store, job: Assignment, lines: _Lines) -> bytes | None:
    """Wait until every rank of the generation took its assignment (then the group forms at once), reading stdin
    meanwhile: a newer assignment (a rank failed before this generation formed) is returned instead. Waiting in
    init_process_group would not see it, and the keeper would have to kill this worker to move it on."""
    count = acks_key(job.generation)
    store.add(count, 1)
    while store.add(count, 0) < job.world_size:
        raw = lines.next(PEER_POLL_S)
        if raw is not None and Assignment.parse(raw).generation > job.generation:
            return raw
        if lines.closed:
            raise ConnectionError("stdin closed: the keeper is gone")
    return None


def _warm_up(train) -> None:
    """Train one step of the tiny model in a world of one, quietly: the first model build, sharding, optimizer
    step and snapshot of a process pay for lazy imports and first calls (3 s on a busy CPU; 0.1 s after)."""
    import tempfile

    import torch.distributed as dist

    from orchestrator.contracts import HEARTBEAT_ENV
    from orchestrator.engine.config import load_config
    from orchestrator.engine.snapshot import SNAPSHOT_DIR_ENV

    saved = {k: os.environ.pop(k, None) for k in (HEARTBEAT_ENV, SNAPSHOT_DIR_ENV, "RANK", "LOCAL_RANK", "WORLD_SIZE")}
    quiet = logging.getLogger("orchestrator")
    level, quiet.level = quiet.level, logging.WARNING
    try:
        with tempfile.TemporaryDirectory(prefix="orch-warm-up-") as scratch:
            os.environ[SNAPSHOT_DIR_ENV] = scratch
            tiny = load_config("tiny", steps=1, run_dir=scratch, snapshot_every=1)
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
            train(tiny)  # destroys its process group at the end
    finally:
        quiet.setLevel(level)
        os.environ.pop(SNAPSHOT_DIR_ENV, None)
        os.environ.update({k: v for k, v in saved.items() if v is not None})


def _config(argv: list[str]):
    """The EngineConfig of `orchestrator train ARGV` (same options, same validation)."""
    from orchestrator.cli.train import train_command
    from orchestrator.engine.config import load_config

    params = train_command.make_context("train", list(argv)).params
    params.pop("print_config", None)
    params.pop("local_rank", None)
    cfg = load_config(params.pop("config_name"), overrides=params.pop("overrides"), **params)
    if not cfg.train.snapshot_every:  # a warm restart restores a snapshot: every step's unless told otherwise
        cfg.train.snapshot_every = 1
    return cfg


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _leave_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as exc:  # noqa: BLE001 - the group is broken anyway; a new one is formed next
            log.warning("leaving the broken process group: %s", exc)


if __name__ == "__main__":
    sys.exit(main())
