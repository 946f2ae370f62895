"""On-demand dumps of torch's flight recorder: a rank writes the trace of its last collectives when the supervisor
asks, even while its main thread waits in a hung one.

    # the supervisor sets (launch env): TORCH_FR_BUFFER_SIZE=2000 TORCH_FR_DUMP_TEMP_FILE=RUN_DIR/flight-recorder/rank
    heartbeat.flight_recorder = arm(rank)   # the engine, in the main thread: the dump's path, or None (not armed)
    # then, on the rank's node: kill -USR2 PID  ->  RUN_DIR/flight-recorder/rank3 (torch's pickle, replaced atomically)
    python -m torch.distributed.flight_recorder.fr_trace RUN_DIR/flight-recorder -j     # torch's reader (NCCL dumps)

The recorder is torch's (gloo and NCCL process groups record every collective: sequence number, op, sizes, the
Python frames that called it, its state); TORCH_FR_BUFFER_SIZE entries are kept.
What this module adds is the trigger. A Python signal handler would run only when the main thread gets back to
the interpreter, which a rank blocked in a collective never does; so the handler is a no-op and the signal's
byte reaches a dumper thread through the wakeup fd, which CPython's C-level handler writes whatever the main
thread is doing. A rank announces its path in its heartbeat only once armed: SIGUSR2's default action ends a
process, so the supervisor signals only ranks that said they are ready for it.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

__all__ = ["BUFFER_ENV", "DUMP_SIGNAL", "FILE_ENV", "arm", "dump_path", "run_env"]

DUMP_SIGNAL = signal.SIGUSR2
BUFFER_ENV = ("TORCH_FR_BUFFER_SIZE", "TORCH_NCCL_TRACE_BUFFER_SIZE")
"""Entries the recorder keeps, 0 or unset: off (torch's names; the second is NCCL's older one, which torch 2.13
still reads but calls deprecated: a run's env gets the first)."""
FILE_ENV = ("TORCH_FR_DUMP_TEMP_FILE", "TORCH_NCCL_DEBUG_INFO_TEMP_FILE")
"""The dump file's prefix (the rank is appended); NCCL's watchdog writes there too on a collective's timeout."""
_armed: dict = {}
"""The process's dumper: {"path": where it dumps now, "sockets": its wakeup pair}; a process arms once."""


def run_env(prefix: str, given: dict[str, str], entries: int = 2000) -> dict[str, str]:
    """The launch env that turns the recorder on for a run (the supervisor's): `entries` kept per rank, dumps to
    PREFIX<rank>, and NCCL's own dump on a watchdog timeout; a variable in `given` (the user's --env) wins, and a
    buffer size given turns ours off."""
    env = {} if any(name in given for name in BUFFER_ENV) else {BUFFER_ENV[0]: str(entries)}
    env |= {} if any(name in given for name in FILE_ENV) else {FILE_ENV[0]: prefix}
    return env | ({} if "TORCH_NCCL_DUMP_ON_TIMEOUT" in given else {"TORCH_NCCL_DUMP_ON_TIMEOUT": "1"})


def dump_path(rank: int, environ=os.environ) -> str | None:
    """Where rank `rank` dumps (torch's own convention: the temp-file prefix + the rank), None when the recorder
    is off (no buffer) or no dump file is configured."""
    if not any(_positive(environ.get(name)) for name in BUFFER_ENV):
        return None
    prefix = next((environ[name] for name in FILE_ENV if environ.get(name)), None)
    return f"{prefix}{rank}" if prefix else None


def arm(rank: int) -> str | None:
    """Start the dumper (once per process; a later call moves it to `rank`); returns the dump path, or None when
    the recorder is off, this is not the main thread, or the wakeup fd is taken (e.g. an asyncio loop)."""
    path = dump_path(rank)
    if path is None or threading.current_thread() is not threading.main_thread():
        return None
    if _armed:
        _armed["path"] = path
        return path
    receive, send = socket.socketpair()
    send.setblocking(False)
    signal.signal(DUMP_SIGNAL, lambda *_: None)  # not SIG_DFL: the C handler must run (and must not end us)
    try:
        previous = signal.set_wakeup_fd(send.fileno(), warn_on_full_buffer=False)
    except ValueError:
        previous = -2
    if previous != -1:  # somebody else's wakeup fd: theirs stays
        if previous >= 0:
            signal.set_wakeup_fd(previous)
        signal.signal(DUMP_SIGNAL, signal.SIG_DFL)
        receive.close(), send.close()
        return None
    _armed.update(path=path, sockets=(receive, send))  # held: a closed socket ends the wakeups
    threading.Thread(target=_serve, args=(receive,), name="flight-recorder-dump", daemon=True).start()
    return path


def _serve(receive: socket.socket) -> None:
    while True:
        signals = receive.recv(64)
        if not signals:
            return
        if DUMP_SIGNAL in signals:
            # The dump takes and drops the GIL once per frame it symbolizes; a main thread spinning in Python holds
            # it for a whole switch interval each time (5 ms: seconds for a full recorder), so shorten it meanwhile.
            interval = sys.getswitchinterval()
            sys.setswitchinterval(1e-5)
            try:
                _write(_armed["path"])
            except Exception as exc:  # noqa: BLE001 - a failed dump must never take the rank down
                print(f"flight recorder dump failed: {exc}", flush=True)
            finally:
                sys.setswitchinterval(interval)


def _write(path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as out:
        out.write(_trace())
    os.replace(tmp, path)


def _trace() -> bytes:
    """The recorder's pickle: NCCL's where this rank's default group is NCCL (a CUDA build), else the generic one
    (gloo, and every other backend)."""
    import torch.distributed as dist
    from torch._C import _distributed_c10d as c10d

    nccl = getattr(c10d, "_dump_nccl_trace", None)
    if nccl is not None and dist.is_initialized() and dist.get_backend() == "nccl":
        return nccl()
    return c10d._dump_fr_trace()


def _positive(value: str | None) -> bool:
    try:
        return int(value or 0) > 0
    except ValueError:
        return False

