"""Committed checkpoints on disk: which exist and whether one is complete and undamaged, without importing torch.

    complete_steps("runs/t1")                                   # [20, 40]: the committed step-N/ dirs
    checkpoint_problem(Path("runs/t1/checkpoints/step-40"))     # None, or 'truncated shard __0_0.distcp (...)'
    newest_checkpoint(Path("runs/t1"))                          # (20, ['step-40: truncated shard ...'])
    meta["files"] = file_sizes(step_dir)                        # the writer, at commit (checkpoint.py)

At commit the writer lists every file of the step dir with its size in meta.json ("files"); the check stats
those files and compares: missing, shorter ("truncated") or otherwise resized ("damaged") means skip it. That
is a stat per file and no torch import, so the supervisor runs it between attempts on a busy head. Same-size
corruption is left to the load itself. Checkpoints committed before meta.json had "files" are checked as
before: DCP's own metadata gives the bytes each shard must hold (that imports torch, on first use only).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

from orchestrator.contracts import parse_step_dir, step_dir_name

__all__ = ["checkpoint_problem", "complete_steps", "file_sizes", "newest_checkpoint", "step_path"]

META = "meta.json"


def step_path(run_dir: str | Path, step: int) -> Path:
    """RUN_DIR/checkpoints/step-N: where the committed checkpoint of `step` lives."""
    return Path(run_dir) / "checkpoints" / step_dir_name(step)


def complete_steps(run_dir: str | Path) -> list[int]:
    """Steps of the committed checkpoints under run_dir/checkpoints, ascending (no validation: see below)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(step for step in map(parse_step_dir, os.listdir(root)) if step is not None)


def file_sizes(path: Path) -> dict[str, int]:
    """Every file under the step dir `path` (but meta.json) with its size: what meta.json records at commit."""
    sizes = {}
    for folder, _, names in os.walk(path):
        for name in names:
            full = Path(folder, name)
            relative = full.relative_to(path).as_posix()
            if relative != META:
                sizes[relative] = full.stat().st_size
    return dict(sorted(sizes.items()))


def checkpoint_problem(path: Path) -> str | None:
    """Why this committed checkpoint cannot be loaded (missing/truncated files, bad metadata), or None."""
    try:
        meta = json.loads((path / META).read_text())
        files = meta.get("files")
        if files is not None and not (isinstance(files, dict) and all(
                isinstance(k, str) and isinstance(v, int) for k, v in files.items())):
            raise ValueError(f"'files' is not a map of names to sizes: {files!r:.80}")
    except Exception as exc:  # noqa: BLE001 - any unreadable meta.json means "skip this checkpoint"
        return f"unreadable metadata ({type(exc).__name__}: {exc})"
    if files is not None:
        return _size_problem(path, files, exact=True)
    if meta.get("format") == "deepspeed":  # written before "files": meta.json is its only commit marker
        return None
    return _dcp_problem(path)


def newest_checkpoint(run_dir: str | Path) -> tuple[int | None, list[str]]:
    """(the newest intact checkpoint's step or None, why each newer committed one was skipped)."""
    skipped = []
    for step in reversed(complete_steps(run_dir)):
        why = checkpoint_problem(step_path(run_dir, step))
        if why is None:
            return step, skipped
        skipped.append(f"{step_dir_name(step)}: {why}")
    return None, skipped


def _size_problem(path: Path, sizes: dict[str, int], *, exact: bool) -> str | None:
    """exact: each file must have the recorded size; else (DCP's needs) at least the bytes it must hold."""
    for name, size in sizes.items():
        try:
            actual = (path / name).stat().st_size
        except FileNotFoundError:
            return f"missing shard {name}"
        if actual < size:
            return f"truncated shard {name} ({actual} of {size} bytes)"
        if exact and actual != size:
            return f"damaged shard {name} ({actual} bytes, {size} written)"
    return None


def _dcp_problem(path: Path) -> str | None:
    """The check for checkpoints without recorded sizes: DCP's metadata names each shard's byte ranges."""
    try:
        import torch.distributed.checkpoint as dcp

        metadata = dcp.FileSystemReader(str(path)).read_metadata()
    except Exception as exc:  # noqa: BLE001 - any unreadable metadata means "skip this checkpoint"
        return f"unreadable metadata ({type(exc).__name__}: {exc})"
    needed: dict[str, int] = defaultdict(int)
    for info in (metadata.storage_data or {}).values():
        needed[info.relative_path] = max(needed[info.relative_path], info.offset + info.length)
    return _size_problem(path, needed, exact=False)
