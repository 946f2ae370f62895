"""Sharded, reshardable, crash-safe checkpoints on torch.distributed.checkpoint (DCP).

    ckpt = Checkpointer(run_dir, keep=3, async_save=args.async_checkpoint)   # every rank, after init
    start = 0
    resumed = ckpt.load_latest(model_parts, optimizers)      # every rank; None on a fresh run
    if resumed:
        start, extra = resumed
        batches.load_state_dict(extra["data"])
    for step in range(start + 1, steps + 1):
        ...                                                   # train step `step`
        if step % every == 0 or step == steps:
            ckpt.save(step, model_parts, optimizers, extra={"data": batches.state_dict()})
    ckpt.close()                                              # before exit: the last async save is committed

`model_parts` are this rank's modules (the pipeline stages it holds; one module without PP) and
`optimizers` one optimizer per part, in the same order (a single module/optimizer may be passed bare).
Parameter names must not depend on the layout (layers keep their global index under PP), so the model
and optimizer state (optimizer state flattened to parameter names) load into any dp/tp/pp layout:
DCP reshards on load. `extra` is global, JSON-able state (data position, anything the loop wants back);
rank 0's copy is stored. Each rank's RNG state is stored too and restored when the same rank existed.

On disk (run_dir/checkpoints/):
    step-40/            complete: DCP shards, .metadata, meta.json {format, step, extra, world_size, time, files}
    .step-50.partial/   being written (or abandoned by a crash): never loaded, removed on the next start
A save is written under the partial name and renamed to step-N/ by rank 0 only after DCP's metadata is
written (which DCP does after every rank finished its shards), so step-N/ exists only when complete.
meta.json's "files" holds the size of every file of step-N/, so a checkpoint's completeness is checked without
torch (checkpoint_files.py: what the supervisor runs on the head). load_latest() tries complete checkpoints
newest first and skips one whose files are missing, truncated or unreadable, with a warning (and refuses to start over when none loads). The run dir must be on a file
system every rank sees (DCP's rule: rank 0 writes the metadata, every rank its shards). keep-last-K
deletes older complete checkpoints only after a newer one is committed, so keep=1 is safe with async
saves. Async saves copy the state in a background thread (the next optimizer step waits for that copy
through a step pre-hook), then write on their own gloo group, so they never interleave with the training
collectives; the train loop only calls close() before it exits. The copy goes into host buffers (pinned on
CUDA) that are allocated by the first save and refilled by every later one (staging.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import warnings
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from orchestrator.contracts import step_dir_name
from orchestrator.engine.checkpoint_files import checkpoint_problem, complete_steps, file_sizes
from orchestrator.engine.staging import ReusableStager
from orchestrator.errors import ConfigError

__all__ = ["Checkpointer", "STATE_DICT_OPTIONS", "rng_state", "set_rng_state"]

log = logging.getLogger("orchestrator.engine.checkpoint")

_PARTIAL_DIR = re.compile(r"^\.step-(\d+)\.partial$")
STATE_DICT_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)
"""Optimizer state flattened to parameter names: what makes a state dict independent of the layout."""
# One-process runs pass no_dist=True on purpose; DCP still warns about it on every save and load.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def _as_list(x: Any) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


class Checkpointer:
    """Save and resume one run's checkpoints. Construct and call save/load_latest on every rank."""

    def __init__(self, run_dir: str | Path, *, keep: int = 0, async_save: bool = False):
        self.root = Path(run_dir) / "checkpoints"
        self.keep, self.async_save = keep, async_save
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        # Async saves talk on their own gloo group: the default group is busy with training collectives.
        self._group = dist.new_group(backend="gloo") if self.distributed and async_save else None
        # Async staging: the copy of the state is taken in a background thread while the next step's
        # forward/backward runs; a pre-hook on every optimizer makes step() wait for the copy before it
        # changes any parameter (no call for the train loop to remember). The stager keeps its buffers
        # between saves. On a GPU it copies into pinned memory without blocking the compute stream.
        self._stager = ReusableStager(pin_memory=torch.cuda.is_available()) if async_save else None
        self._staging: Future | None = None
        self._hooks: list = []
        self._pending: Future | None = None
        self._committed: Future | None = None
        self.last_save_stall_s = 0.0  # time the save held training up: the call, plus an optimizer step's wait
        self.last_wait_s = 0.0  # time the last save() waited for the previous async save to finish

    # ---- save -------------------------------------------------------------------------------------
    @torch.no_grad()
    def save(self, step: int, model_parts: Any, optimizers: Any, extra: dict | None = None) -> None:
        """Checkpoint `step`. Sync: returns once step-N/ is committed. Async: returns at once; the copy, the
        write and the commit finish in the background (the next optimizer step waits for the copy only;
        wait() joins everything; the next save waits first)."""
        begin = time.perf_counter()
        self.wait()
        self.last_wait_s = time.perf_counter() - begin  # the previous async save was still being written
        begin = time.perf_counter()
        state = self._state(model_parts, optimizers)
        state["rng"] = self._rng_state()
        # Serialised now so a value JSON cannot hold fails here, not later in the background commit; the commit
        # adds the files' sizes.
        meta = json.dumps({"format": "dcp", "step": step, "extra": extra or {}, "world_size": self.world_size,
                           "time": time.time()})
        partial = self.root / f".{step_dir_name(step)}.partial"  # DCP's writer creates it on every rank
        if self.async_save:
            response = dcp.async_save(state, checkpoint_id=str(partial), process_group=self._group,
                                      async_stager=self._stager, no_dist=not self.distributed)
            self._staging, self._pending = response.staging_completion, response.upload_completion
            self._hooks = [opt.register_step_pre_hook(self._before_optimizer_step) for opt in _as_list(optimizers)]
            self._committed = committed = Future()
            self._pending.add_done_callback(lambda fut: self._commit_after(fut, committed, step, partial, meta))
        else:
            dcp.save(state, checkpoint_id=str(partial), no_dist=not self.distributed)
            if self.rank == 0:
                self._commit(step, partial, meta)
        self.last_save_stall_s = time.perf_counter() - begin
        log.info("checkpoint step %d %s in %.2fs", step, "staged" if self.async_save else "saved",
                 self.last_save_stall_s)

    def wait(self) -> None:
        """Block until the pending async save is written and committed; re-raise its failure."""
        self._wait_staged()
        pending, committed, self._pending, self._committed = self._pending, self._committed, None, None
        if pending is not None:
            pending.result()
            committed.result()

    def close(self) -> None:
        """wait(), then free the async stager's host buffers; a later save() is not allowed."""
        try:
            self.wait()
        finally:
            if self._stager is not None:
                self._stager.close()
                self._stager = None

    def _wait_staged(self) -> None:
        staging, self._staging = self._staging, None
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if staging is not None:
            staging.result()

    def _before_optimizer_step(self, *_: Any) -> None:
        begin = time.perf_counter()
        self._wait_staged()
        self.last_save_stall_s += time.perf_counter() - begin

    def _commit_after(self, fut: Future, committed: Future, step: int, partial: Path, meta: str) -> None:
        # Runs in DCP's writer thread when the async save finishes; only a successful one is committed.
        try:
            if fut.exception() is None and self.rank == 0:
                self._commit(step, partial, meta)
            committed.set_result(None)
        except Exception as exc:  # noqa: BLE001 - handed to wait()
            committed.set_exception(exc)

    def _commit(self, step: int, partial: Path, meta: str) -> None:
        # Every rank's shards are closed by now (DCP writes .metadata last, after gathering every rank's writes).
        meta = json.dumps(json.loads(meta) | {"files": file_sizes(partial)})
        (partial / "meta.json").write_text(meta + "\n")
        final = self.root / step_dir_name(step)
        if final.exists():  # the same step saved again (a rerun past an old checkpoint): replace it
            shutil.rmtree(final)
        os.replace(partial, final)
        log.info("checkpoint step %d committed: %s", step, final)
        if self.keep > 0:
            for old in complete_steps(self.root.parent)[:-self.keep]:
                shutil.rmtree(self.root / step_dir_name(old), ignore_errors=True)

    # ---- load -------------------------------------------------------------------------------------
    def newest(self) -> int | None:
        """The newest committed step on disk (None: none); what a warm restart compares its snapshots with."""
        steps = complete_steps(self.root.parent)
        return steps[-1] if steps else None

    @torch.no_grad()
    def load_latest(self, model_parts: Any, optimizers: Any) -> tuple[int, dict] | None:
        """Load the newest complete, intact checkpoint into model_parts/optimizers (any layout).

        Returns (step, extra), or None when no checkpoint was ever committed. Incomplete (partial
        directories, removed here: no save runs yet), truncated or unreadable ones are skipped with a
        warning. When checkpoints exist but none loads, raises ConfigError instead of silently starting
        over (a failed load may also have half-filled the model).
        """
        steps = self._committed_newest_first() if self.rank == 0 else None
        steps = self._from_rank0(steps)  # every rank tries the same checkpoints in the same order
        failures = []
        for step in steps:
            path = self.root / step_dir_name(step)
            problem = self._from_rank0(checkpoint_problem(path) if self.rank == 0 else None)
            if problem is None:
                try:
                    extra = self._load(path, model_parts, optimizers)
                    log.info("resumed from %s", path)
                    return step, extra
                # DCP gathers read errors and raises one CheckpointException (a BaseException) on every rank
                except (Exception, dcp.CheckpointException) as exc:  # noqa: BLE001
                    lines = str(exc).strip().splitlines() or [""]  # DCP's message opens with every traceback
                    problem = f"cannot load it ({type(exc).__name__}: {lines[-1]})"
            log.warning("skipping checkpoint %s: %s", path, problem)
            failures.append(f"{step_dir_name(step)}: {problem}")
        if failures:
            raise ConfigError("--run-dir", str(self.root.parent), f"holds checkpoints but none loads ("
                              f"{'; '.join(failures)}); move {self.root} away to start over")
        return None

    def _from_rank0(self, value: Any) -> Any:
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _committed_newest_first(self) -> list[int]:
        if self.root.is_dir():
            for name in os.listdir(self.root):
                if _PARTIAL_DIR.match(name):
                    log.warning("removing incomplete checkpoint %s", self.root / name)
                    shutil.rmtree(self.root / name, ignore_errors=True)
        return list(reversed(complete_steps(self.root.parent)))

    def _load(self, path: Path, model_parts: Any, optimizers: Any) -> dict:
        parts, optims = _as_list(model_parts), _as_list(optimizers)
        state, keys = self._state(parts, optims, with_keys=True)
        stored = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
        rng = {k: v for k, v in self._rng_state().items() if f"rng.{k}" in stored}
        state["rng"] = rng
        dcp.load(state, checkpoint_id=str(path), no_dist=not self.distributed)
        # DCP fills tensors in place but replaces non-tensor values (e.g. lr) in `state`: split from it.
        for part, optim, (model_keys, optim_keys) in zip(parts, optims, keys):
            set_state_dict(part, optim, options=STATE_DICT_OPTIONS,
                           model_state_dict={k: state["model"][k] for k in model_keys},
                           optim_state_dict={k: state["optim"][k] for k in optim_keys})
        self._set_rng_state(state["rng"])
        return json.loads((path / "meta.json").read_text())["extra"]

    # ---- state ------------------------------------------------------------------------------------
    @staticmethod
    def _state(model_parts: Any, optimizers: Any, with_keys: bool = False):
        """{"model": ..., "optim": ...} merged over the parts (names do not collide: each parameter lives in
        one part); with_keys also returns each part's (model keys, optimizer keys) to split them again."""
        parts, optims = _as_list(model_parts), _as_list(optimizers)
        if len(parts) != len(optims):
            raise ValueError(f"one optimizer per model part expected: {len(parts)} parts, {len(optims)} optimizers")
        model, optim, keys = {}, {}, []
        for part, opt in zip(parts, optims):
            model_sd, optim_sd = get_state_dict(part, opt, options=STATE_DICT_OPTIONS)
            model.update(model_sd)
            optim.update(optim_sd)
            keys.append((list(model_sd), list(optim_sd)))
        state = {"model": model, "optim": optim}
        return (state, keys) if with_keys else state

    def _rng_state(self) -> dict[str, torch.Tensor]:
        # Per-rank keys: only the rank that wrote one reads it back (same rank count or more).
        return {f"rank{self.rank}.{k}": v for k, v in rng_state().items()}

    def _set_rng_state(self, rng: dict[str, torch.Tensor]) -> None:
        mine = f"rank{self.rank}."
        set_rng_state({k.removeprefix(mine): v for k, v in rng.items() if k.startswith(mine)})


def rng_state() -> dict[str, torch.Tensor]:
    """This process's RNG state: {"cpu": ..., "cuda": ... (when there is a GPU)}."""
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    return rng


def set_rng_state(rng: dict[str, torch.Tensor]) -> None:
    """Restore what rng_state() returned (each part present)."""
    if "cpu" in rng:
        torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
