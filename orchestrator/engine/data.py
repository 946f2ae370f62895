"""Training data: a deterministic global sample stream, sliced per data-parallel rank, resumable.

    batches = build_batches("synthetic", vocab_size=256, seed=0, global_batch=8, seq_len=32,
                            dp_rank=dp_rank, dp_size=dp_size)          # or a token file path
    inputs, labels = next(batches)        # LongTensor [global_batch // dp_size, seq_len] each
    extra["data"] = batches.state_dict()  # -> {"samples_seen": 8}; JSON-able, same on every rank
    batches.load_state_dict(extra["data"])

The global stream is a sequence of samples; sample i (seq_len + 1 tokens) depends only on the dataset,
the seed and i. Step s uses samples [s*G, (s+1)*G) of it (G = global batch) and dp rank r takes its
contiguous slice, so every parallel layout trains on exactly the same global batch, and the position
(`samples_seen`) stays valid when the layout changes between a checkpoint and the resume.

Token files are NumPy .npy arrays (uint16 or uint32; the .npy header records dtype and length) read
through a memory map; `write_token_file` / `orchestrator data prepare` make them with a byte-level
tokenizer (token = UTF-8 byte, vocab 256), and a sidecar `<file>.json` records tokenizer and vocab size.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from orchestrator.errors import ConfigError

__all__ = ["Batches", "SyntheticTokens", "TokenFile", "build_batches", "open_dataset", "write_token_file"]

log = logging.getLogger("orchestrator.engine.data")

BYTE_VOCAB = 256
_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads (seed, index) pairs over the generator seed space


def _sample_seed(seed: int, index: int) -> int:
    return (seed * _MIX + index) % (2**63)


class SyntheticTokens:
    """Learnable synthetic sequences: sample i is an arithmetic progression mod vocab (random start and
    stride drawn from a generator seeded by (seed, i)), so the loss falls and curves are meaningful."""

    def __init__(self, vocab_size: int, seed: int = 0):
        self.vocab_size, self.seed = vocab_size, seed

    def samples(self, start: int, count: int, length: int) -> torch.Tensor:
        rows = []
        for index in range(start, start + count):
            gen = torch.Generator().manual_seed(_sample_seed(self.seed, index))
            first, stride = torch.randint(0, self.vocab_size, (2,), generator=gen).tolist()
            stride = 1 + stride % 7
            rows.append((first + stride * torch.arange(length)) % self.vocab_size)
        return torch.stack(rows)


class TokenFile:
    """A memory-mapped .npy token array cut into non-overlapping windows of length+1 tokens; each epoch
    visits the windows in a fresh order drawn from (seed, epoch)."""

    def __init__(self, path: str | Path, seed: int = 0):
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError("--data", str(path), "no such file; make one with `orchestrator data prepare "
                                                   "TEXT_FILE -o OUT.npy`, or use --data synthetic")
        try:
            self.tokens = np.load(self.path, mmap_mode="r")
        except ValueError as exc:
            raise ConfigError("--data", str(path), f"not a .npy token file ({exc})") from exc
        if self.tokens.ndim != 1 or self.tokens.dtype not in (np.uint16, np.uint32):
            raise ConfigError("--data", str(path), f"expected a 1-D uint16/uint32 token array, found "
                                                   f"{self.tokens.dtype} with shape {self.tokens.shape}")
        self.seed = seed
        self.vocab_size = read_metadata(self.path).get("vocab_size")
        self._order: tuple[int, int, torch.Tensor] | None = None  # (epoch, windows, permutation) cache

    def _permutation(self, epoch: int, windows: int) -> torch.Tensor:
        if self._order is None or self._order[:2] != (epoch, windows):
            gen = torch.Generator().manual_seed(_sample_seed(self.seed, epoch))
            self._order = (epoch, windows, torch.randperm(windows, generator=gen))
        return self._order[2]

    def samples(self, start: int, count: int, length: int) -> torch.Tensor:
        stride = length - 1
        windows = (len(self.tokens) - 1) // stride
        if windows < 1:
            raise ConfigError("--data", str(self.path), f"holds {len(self.tokens)} tokens; a sample needs "
                                                        f"seq_len+1 = {length}; use more text or a shorter seq_len")
        rows = []
        for index in range(start, start + count):
            epoch, slot = divmod(index, windows)
            offset = int(self._permutation(epoch, windows)[slot]) * stride
            rows.append(torch.from_numpy(self.tokens[offset:offset + length].astype(np.int64)))
        return torch.stack(rows)


def open_dataset(data: str, *, vocab_size: int, seed: int = 0) -> SyntheticTokens | TokenFile:
    """`data` is "synthetic" or the path of a token file (ConfigError names --data if it is missing)."""
    if data == "synthetic":
        return SyntheticTokens(vocab_size, seed)
    dataset = TokenFile(data, seed)
    if dataset.vocab_size is not None and dataset.vocab_size > vocab_size:
        raise ConfigError("--data", data, f"its tokenizer has vocab {dataset.vocab_size} but the model's "
                                          f"vocab_size is {vocab_size}; use --set vocab_size={dataset.vocab_size}")
    return dataset


class Batches(Iterator[tuple[torch.Tensor, torch.Tensor]]):
    """This dp rank's (inputs, labels) for each step; labels are inputs shifted by one token."""

    def __init__(self, dataset: SyntheticTokens | TokenFile, *, global_batch: int, seq_len: int,
                 dp_rank: int = 0, dp_size: int = 1):
        if global_batch < 1 or global_batch % dp_size:
            raise ConfigError("global_batch", global_batch, f"must be a positive multiple of the data-parallel "
                                                            f"size {dp_size}")
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} outside [0, {dp_size})")
        self.dataset, self.global_batch, self.seq_len = dataset, global_batch, seq_len
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.samples_seen = 0

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        local = self.global_batch // self.dp_size
        start = self.samples_seen + self.dp_rank * local
        tokens = self.dataset.samples(start, local, self.seq_len + 1)
        self.samples_seen += self.global_batch
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def state_dict(self) -> dict[str, int]:
        return {"samples_seen": self.samples_seen}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["samples_seen"] % self.global_batch:
            log.warning("resuming data at sample %d, not a multiple of global_batch %d (global_batch changed?)",
                        state["samples_seen"], self.global_batch)
        self.samples_seen = int(state["samples_seen"])


def build_batches(data: str, *, vocab_size: int, seed: int, global_batch: int, seq_len: int,
                  dp_rank: int = 0, dp_size: int = 1) -> Batches:
    return Batches(open_dataset(data, vocab_size=vocab_size, seed=seed), global_batch=global_batch,
                   seq_len=seq_len, dp_rank=dp_rank, dp_size=dp_size)


def read_metadata(path: str | Path) -> dict:
    """The sidecar `<token file>.json` ({} when absent)."""
    sidecar = Path(f"{path}.json")
    return json.loads(sidecar.read_text()) if sidecar.is_file() else {}


def write_token_file(text_path: str | Path, out: str | Path, *, dtype: str = "uint16",
                     chunk_bytes: int = 1 << 24) -> dict:
    """Tokenize a text file byte by byte into an .npy token file (+ `<out>.json`); returns the metadata.

    Streams in chunks so the text never has to fit in memory twice.
    """
    text_path, out = Path(text_path), Path(out)
    if dtype not in _DTYPES:
        raise ConfigError("--dtype", dtype, f"use one of {', '.join(_DTYPES)}")
    if not text_path.is_file():
        raise ConfigError("TEXT_FILE", str(text_path), "no such file")
    size = text_path.stat().st_size
    if size < 2:
        raise ConfigError("TEXT_FILE", str(text_path), "holds fewer than 2 bytes; nothing to train on")
    out.parent.mkdir(parents=True, exist_ok=True)
    tokens = np.lib.format.open_memmap(out, mode="w+", dtype=_DTYPES[dtype], shape=(size,))
    with text_path.open("rb") as src:
        for offset in range(0, size, chunk_bytes):
            chunk = np.frombuffer(src.read(chunk_bytes), dtype=np.uint8)
            tokens[offset:offset + len(chunk)] = chunk
    tokens.flush()
    del tokens
    meta = {"tokenizer": "bytes", "vocab_size": BYTE_VOCAB, "dtype": dtype, "num_tokens": size,
            "source": text_path.name}
    Path(f"{out}.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta
