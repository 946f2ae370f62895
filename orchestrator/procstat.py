"""What the kernel says of a local process, read from /proc/PID/stat (Linux; None elsewhere or once it is gone).

    process_state(pid)    # 'R', 'S', 'D', 'T' (stopped by a signal), 't' (stopped by a tracer), 'Z', ... or None
    process_start(pid)    # start time in clock ticks since boot; None when gone or a zombie: PID + start name
                          # one process for good (a recycled PID has another start time)
"""

# no `from __future__` import: rank_dump.py sends this module inline, in front of its own code (inline.py)
__all__ = ["process_start", "process_state"]


def _fields(pid: int) -> list[str] | None:
    """The stat fields after the command name (which may hold spaces and parentheses: split at the last ')')."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_state(pid: int) -> str | None:
    fields = _fields(pid)
    return fields[0] if fields else None


def process_start(pid: int) -> int | None:
    fields = _fields(pid)
    return None if not fields or fields[0] in "ZX" else int(fields[19])
