"""In-memory snapshots: every K steps each rank's own shard of the training state, in host memory that outlives it.

    snaps = Snapshots(Path(os.environ["ORCH_SNAPSHOT_DIR"]), rank=3, keep=2)   # /dev/shm, owned by the run
    stall_s = snaps.save(step, parts, optimizers, extra={"data": batches.state_dict()})  # every K steps
    snaps.newest()                   # 41: the newest complete snapshot of rank 3 (any process of rank 3 wrote it)
    extra = snaps.load(41, parts, optimizers)   # the same layout only: local shards are copied back as they were
    snaps.close()                    # waits for the last write

What a snapshot holds: this rank's local shard of every model and optimizer tensor (DTensors as their local
part), the non-tensor optimizer values, the data position (`extra`) and the RNG state, so the steps after a
restore train exactly what an uninterrupted run trains. Unlike a DCP checkpoint it does not reshard: it is for
a restart with the same world size and layout (the warm restart's case; a layout change goes through disk).

The save copies the tensors into host buffers in the calling thread, with one foreach copy into buffers
allocated by the first save and reused (on a GPU an asynchronous device-to-host copy into pinned memory that the
writer waits for; on CPU a memcpy: the stall), and writes the file in a background thread, so the next steps run
while it is written. The file is written under a temporary name and renamed, so a snapshot file that exists is
whole. One write is in flight at a time: a save that finds the previous write unfinished waits for it (counted in
its stall).

On disk: DIR/rank<R>/step-<S>.pt; the newest `keep` of each rank are kept (2 by default: during a recovery the
step every rank holds may be one older than one rank's newest). DIR lives in the node agent's per-run temp dir
on /dev/shm, which the agent removes however the run ends.
"""

from __future__ import annotations

import logging
import os
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from orchestrator.engine.checkpoint import STATE_DICT_OPTIONS, rng_state, set_rng_state

__all__ = ["Snapshots", "SNAPSHOT_DIR_ENV", "snapshot_steps"]

log = logging.getLogger("orchestrator.engine.snapshot")

SNAPSHOT_DIR_ENV = "ORCH_SNAPSHOT_DIR"
_FILE = re.compile(r"step-(\d+)\.pt\Z")


def snapshot_steps(directory: str | Path) -> list[int]:
    """The steps of the complete snapshot files in one rank's directory, oldest first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for name in names if (m := _FILE.match(name)))


def _local(value: Any) -> Any:
    """A DTensor's local shard, a plain tensor as is, anything else unchanged."""
    to_local = getattr(value, "to_local", None)
    return to_local() if callable(to_local) else value


class Snapshots:
    """One rank's snapshots in `directory`/rank<R>/ (see the module docstring)."""

    def __init__(self, directory: str | Path, *, rank: int, keep: int = 2):
        self.dir = Path(directory) / f"rank{rank}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rank, self.keep = rank, max(1, keep)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot-writer")
        self._pending: Future | None = None
        self._layout: tuple[list[int], list[dict], list[torch.Tensor]] | None = None
        self._buffers: list[torch.Tensor] = []  # host copies, reused by every save of the same layout

    # ---- save -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def save(self, step: int, model_parts: list, optimizers: list, *, extra: dict) -> float:
        """Snapshot `step`; returns the seconds the caller was held (the copy, and waiting on the last write)."""
        begin = time.perf_counter()
        self.wait()
        layout, sources = self._state_layout(model_parts, optimizers)
        buffers = self._host_buffers(sources)
        torch._foreach_copy_(buffers, sources, non_blocking=True)
        copied = torch.cuda.Event() if any(t.is_cuda for t in sources) else None
        if copied is not None:
            copied.record()
        it = iter(buffers)  # the same walk as _state_layout's: each tensor's place gets its buffer
        parts = [{name: {k: next(it) if isinstance(v, torch.Tensor) else v for k, v in entry[name].items()}
                  for name in ("model", "optim")} for entry in layout]
        state = {"step": step, "extra": extra, "rng": rng_state(), "parts": parts}
        self._pending = self._writer.submit(self._write, step, state, copied)
        return time.perf_counter() - begin

    def _state_layout(self, model_parts: list, optimizers: list) -> tuple[list[dict], list[torch.Tensor]]:
        """Every part's state dict with local shards, and its tensors in order. Kept between saves: parameters
        and optimizer state are updated in place, so the same tensors hold every later step's values (walking
        the state dicts costs more than the copy on a small model); rebuilt when the optimizer state grows."""
        sizes = [len(opt.state) for opt in optimizers]
        if self._layout is None or self._layout[0] != sizes:
            layout, sources = [], []
            for part, opt in zip(model_parts, optimizers):
                entry = {}
                for name, sd in zip(("model", "optim"), get_state_dict(part, opt, options=STATE_DICT_OPTIONS)):
                    entry[name] = {k: _local(v) for k, v in sd.items()}
                    sources += [v for v in entry[name].values() if isinstance(v, torch.Tensor)]
                layout.append(entry)
            self._layout = (sizes, layout, sources)
        return self._layout[1], self._layout[2]

    def _host_buffers(self, sources: list[torch.Tensor]) -> list[torch.Tensor]:
        same = len(self._buffers) == len(sources) and all(
            b.shape == s.shape and b.dtype == s.dtype for b, s in zip(self._buffers, sources))
        if not same:
            pin = torch.cuda.is_available() and any(t.is_cuda for t in sources)
            self._buffers = [torch.empty(s.shape, dtype=s.dtype, device="cpu", pin_memory=pin) for s in sources]
        return self._buffers

    def _write(self, step: int, state: dict, copied) -> None:
        if copied is not None:
            copied.synchronize()
        tmp = self.dir / f".step-{step}.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.dir / f"step-{step}.pt")
        for old in self.steps()[:-self.keep]:
            (self.dir / f"step-{old}.pt").unlink(missing_ok=True)

    def wait(self) -> None:
        """Block until the last write is in memory; re-raise its failure."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """wait(), then stop the writer thread."""
        try:
            self.wait()
        finally:
            self._writer.shutdown()

    # ---- find and load --------------------------------------------------------------------------------
    def steps(self) -> list[int]:
        """The steps of this rank's complete snapshots, oldest first."""
        return snapshot_steps(self.dir)

    def newest(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    @torch.no_grad()
    def load(self, step: int, model_parts: list, optimizers: list) -> dict:
        """Restore snapshot `step` into freshly built parts/optimizers of the same layout; returns its `extra`."""
        state = torch.load(self.dir / f"step-{step}.pt", weights_only=False)
        if len(state["parts"]) != len(model_parts):
            raise ValueError(f"snapshot of step {step} has {len(state['parts'])} model parts, this rank {len(model_parts)}")
        for part, opt, saved in zip(model_parts, optimizers, state["parts"]):
            # get_state_dict also creates the optimizer state of a fresh optimizer
            model_sd, optim_sd = get_state_dict(part, opt, options=STATE_DICT_OPTIONS)
            set_state_dict(part, opt, options=STATE_DICT_OPTIONS, model_state_dict=_fill(model_sd, saved["model"]),
                           optim_state_dict=_fill(optim_sd, saved["optim"]))
        set_rng_state(state["rng"])
        return state["extra"]


def _fill(template: dict, saved: dict) -> dict:
    """The template (a fresh state dict of the same layout) with the saved values copied into its tensors."""
    missing = template.keys() - saved.keys()
    if missing:
        raise ValueError(f"snapshot lacks {len(missing)} entries, e.g. {sorted(missing)[0]!r}: another model?")
    out = {}
    for key, value in template.items():
        local = _local(value)
        if isinstance(local, torch.Tensor):
            local.copy_(saved[key])
            out[key] = value
        else:
            out[key] = saved[key]
    return out
