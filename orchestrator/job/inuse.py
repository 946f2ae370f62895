"""Whether a node's code copy is in use: a run holds a shared lock on its copy's directory while it lives, and a
sync pins the copy it made (or found) until its run starts. The receiver turns a copy into the next version in
place only when it can lock it exclusively and no pin is fresh; otherwise it links a new copy.

    fd = hold(path)                # shared flock on the directory, kept while fd is open (None: no such directory)
    release(fd, path)              # the run ended: close, and pin a synced copy (a restart may follow)
    fd = take(path)                # exclusive, non-blocking: None while anything holds the copy
    pin(path); pinned(path)        # DEST/<digest>.pin, fresh for PIN_S s after it was written

Why a lock and a pin: the lock lives with the process that runs the code (node agent, Slurm node entry), so a
killed run frees its copy at once; the pin covers the seconds in which no such process exists yet: between the
sync and the setup, the setup and the launch, and between a supervisor's attempts. Node code, stdlib only: it
travels inline in agent.py and receive.py.
"""

import errno
import os
import time

PIN_S = 30.0
HEX = frozenset("0123456789abcdef")


class Moved(OSError):
    """The copy was taken for a newer version between the run's chdir and its lock."""


def _open_dir(path):
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None


def _same(fd, path):
    """Whether `path` still names the directory open as `fd` (not moved away meanwhile)."""
    try:
        st, held = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def hold(path):
    """A shared lock on the directory `path` for as long as the returned fd is open; None when there is no such
    directory (the caller's chdir reports it). Waits while a receiver moves the copy, then raises Moved."""
    import fcntl

    fd = _open_dir(path)
    if fd is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:  # a file system without flock: take() fails there too, so no copy is ever moved on it
        return fd
    if not _same(fd, path):
        os.close(fd)
        raise Moved(errno.ENOENT, "the code copy was turned into a newer version while the run started", path)
    return fd


def take(path):
    """An exclusive lock on the directory `path` (fd), or None while a run or a sync holds it (or no flock here)."""
    import fcntl

    fd = _open_dir(path)
    if fd is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    if not _same(fd, path):
        os.close(fd)
        return None
    return fd


def is_copy(path):
    """Whether `path` is a synced copy: named after a digest, with its file list beside it."""
    path = path.rstrip("/")
    name = os.path.basename(path)
    return len(name) == 64 and HEX.issuperset(name) and os.path.exists(path + ".files")


def pin(path):
    """Keep the copy `path` from being moved for PIN_S s (a run is about to start in it)."""
    name = path.rstrip("/") + ".pin"
    with open(name, "w"):
        pass
    os.utime(name)


def pinned(path, within=PIN_S):
    try:
        return time.time() - os.stat(path.rstrip("/") + ".pin").st_mtime < within
    except OSError:
        return False


def release(fd, path):
    """End of a run in `path`: a synced copy stays pinned a while (the next attempt, or the launch after a setup),
    then the lock goes."""
    if fd is None:
        return
    try:
        if is_copy(path):
            pin(path)
    except OSError:
        pass  # a read-only cache: the lock was the protection that mattered
    finally:
        os.close(fd)
