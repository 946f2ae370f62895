"""The async checkpoint stager: copies the state to CPU in a background thread, reusing its buffers.

    stager = ReusableStager(pin_memory=torch.cuda.is_available())
    response = dcp.async_save(state, checkpoint_id=path, async_stager=stager)   # any number of saves
    ...
    stager.close()                                                                # after the last save

Why not torch's DefaultStager: in torch 2.11 (and 2.12) DefaultStager._stage() ends by calling
StateDictStager.close(), which clears the stager's deep-copy dispatch table. The next stage() with the same
DefaultStager then copies the top-level dict through its __reduce_ex__ (the table has no entry for dict any
more), whose arguments hold the class `dict`, and the branch for class objects indexes the emptied table:
`KeyError: <class 'type'>`. So a DefaultStager cannot be reused across saves there, and a fresh one per save
would pin fresh host buffers every time. This stager drives torch's StateDictStager itself and closes it
only in close(), so the (pinned, on CUDA) host buffers are allocated once and refilled on every save.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any

import torch
from torch.distributed.checkpoint._state_dict_stager import StateDictStager
from torch.distributed.checkpoint.staging import AsyncStager

__all__ = ["ReusableStager"]


class ReusableStager(AsyncStager):
    """An AsyncStager for dcp.async_save: stage() returns a Future of the CPU copy; safe to reuse."""

    # dcp.async_save must not wait for the copy: the caller waits on the staging future (before the
    # optimizer changes any parameter), so the copy overlaps the next forward/backward.
    _synchronize_after_execute = False

    def __init__(self, *, pin_memory: bool):
        cuda = pin_memory and torch.cuda.is_available()
        self._stager = StateDictStager(pin_memory=cuda, share_memory=False)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-stage")
        # On CUDA the device-to-host copies run on a stream of their own, without blocking the compute stream.
        self._stream = torch.cuda.Stream() if cuda else None

    def stage(self, state_dict: dict[str, Any], **_: Any) -> Future:
        ready = None
        if self._stream is not None:
            # The copy must see every kernel queued so far on the compute stream (the last optimizer step).
            ready = torch.cuda.current_stream().record_event()
        return self._executor.submit(self._copy, state_dict, ready)

    def _copy(self, state_dict: dict[str, Any], ready: Any) -> dict[str, Any]:
        with torch.cuda.stream(self._stream) if self._stream is not None else nullcontext():
            if ready is not None:
                self._stream.wait_event(ready)
            staged = self._stager.stage(state_dict, non_blocking=self._stream is not None)
        if self._stream is not None:
            self._stream.synchronize()
        return staged

    def synchronize_staging(self) -> None:
        """Unused: the caller waits on the Future that stage() returned."""

    def close(self) -> None:
        """Finish the copy in flight and free the host buffers (pinned memory is unpinned with them)."""
        self._executor.shutdown(wait=True)
        self._stager.close()
