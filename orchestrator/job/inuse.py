"""Whether a node's code copy is in use: a run holds a shared lock on its copy's directory while it lives, and a
sync pins the copy it made (or found) until its run starts. The receiver turns a copy into the next version in
place only when it can lock it exclusively and no pin is fresh; otherwise it links a new copy.

    fd = hold(path)                # shared flock on the directory, kept while fd is open (None: no such directory)
    fd = hold_run(cwd)             # the same for a run's working directory, when it is a synced copy (else None)
    release(fd, path, pin_s=30)    # the command ended: close; a synced copy stays pinned pin_s s (0: not)
    fd = take(path)                # exclusive, non-blocking: None while anything holds the copy
    pin(path); pinned(path)        # DEST/<digest>.pin: its mtime is when the pin ends (PIN_S s from now)

Why a lock and a pin: the lock lives with the process that runs the code (node agent, Slurm node entry), so a
killed run frees its copy at once; the pin covers the seconds in which no such process exists yet: between the
sync and the setup (the sync's pin), the setup and the launch, and between a supervisor's attempts (the agent
pins the copy as its command ends when the run asks for it, contracts.CODE_PIN_ENV). A run that ended leaves
no pin: the next version may take its copy at once. Node code, stdlib only: it travels inline in agent.py and
receive.py.
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


def hold_run(cwd):
    """hold() of a run's working directory when it is a synced copy (is_copy), else None: no lock is taken on any
    other directory (a file system such as NFS may not support it, or hang on it)."""
    return hold(cwd) if cwd and is_copy(cwd) else None


def pin_seconds(value):
    """CODE_PIN_ENV's value (str or bytes) in seconds; 0 when unset or not a number."""
    try:
        return float(value or 0)
    except ValueError:
        return 0.0


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


def pin(path, seconds=PIN_S):
    """Keep the copy `path` from being moved for `seconds` (a run is about to start in it); a longer pin that is
    already there stays."""
    name = path.rstrip("/") + ".pin"
    until = time.time() + seconds
    if _pin_end(name) >= until:
        return
    with open(name, "w"):
        pass
    os.utime(name, (until, until))


def _pin_end(name):
    try:
        return os.stat(name).st_mtime
    except OSError:
        return 0.0


def pinned(path):
    return _pin_end(path.rstrip("/") + ".pin") > time.time()


def release(fd, path, pin_s=0.0):
    """The command in `path` ended: a synced copy stays pinned `pin_s` s when the run goes on (the launch after a
    setup, a supervisor's next attempt), then the lock goes."""
    if fd is None:
        return
    try:
        if pin_s > 0 and is_copy(path):
            pin(path, pin_s)
    except OSError:
        pass  # a read-only cache: the lock was the protection that mattered
    finally:
        os.close(fd)
