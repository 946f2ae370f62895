"""Node side of `--launcher deepspeed`: run one rank's command with its rank marked on every line it prints.

    # what deepspeed.launcher.launch --no_python --no_local_rank starts per rank (RANK, LOCAL_RANK set by it):
    $ python -I -S -c "$(cat rankprefix.py)" 3 /venv/bin/python -u train.py --lr 3e-4
    # runs `/venv/bin/python -u train.py --local_rank=$LOCAL_RANK --lr 3e-4` (--local_rank=N goes after the
    # first 3 words, where DeepSpeed itself puts it); each line on its stdout or stderr comes out on the same
    # stream as "\\x1f$RANK/$LOCAL_RANK\\x1f<line>": torchrun's tee marker, which the runner turns into `host/rank: `.
    # A rank that fails adds one unmarked line on stderr (what launch.failures reads, like torchrun's report):
    #   orchestrator rank 3 (local rank 1) failed (exitcode: 7) at 2026-11-23T10:38:33.646000

Why: DeepSpeed's launcher starts every rank on its own stdout, so the ranks' lines reach the head mixed, with no
rank on them, and when one fails it logs only the last-spawned command. This process runs the rank's command as
its child and relays its stdout/stderr pipes, one write per whole line (lines of different ranks sharing the
launcher's pipe do not interleave); SIGINT/SIGTERM/SIGHUP are passed on to the child, and this process ends the
way the child did (same exit code, same signal), so DeepSpeed sees the rank's own exit. Exit codes follow
torchrun's report: -N for death by signal N. Stdlib only: sent inline like the node agent, nothing to install.
"""

import os
import select
import signal
import sys
import time


def _write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def relay(pairs, mark, exited):
    """Copy every read fd in `pairs` ({read fd: write fd}) line by line, each line prefixed with `mark`, until
    EOF, or until the pipes are quiet and exited() says the rank is gone (a background process it left may hold
    them open: that is not the rank, and DeepSpeed must see the rank end)."""
    partial = dict.fromkeys(pairs, b"")
    while partial:
        ready, _, _ = select.select(list(partial), [], [], 0.2)
        if not ready and exited():
            break
        for fd in ready:
            chunk = os.read(fd, 65536)
            lines = (partial[fd] + chunk).split(b"\n")
            partial[fd] = lines.pop()
            if not chunk:  # EOF: a last line without its newline still goes out
                rest = partial.pop(fd)
                lines += [rest] if rest else []
            for line in lines:
                _write_all(pairs[fd], mark + line + b"\n")
    for fd, rest in partial.items():  # the rank is gone but something still holds the pipes: flush what came
        if rest:
            _write_all(pairs[fd], mark + rest + b"\n")


def _run_child(argv, out_w, err_w, fds):
    try:
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        for fd in fds:
            os.close(fd)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # Python ignores SIGPIPE; exec would keep that
        os.execvp(argv[0], argv)
    except BaseException as exc:  # noqa: BLE001 - whatever failed, the child must not return into the relay
        _write_all(2, ("cannot run %r: %s\n" % (argv[0], exc)).encode())
    os._exit(127)


def main(args):
    at, argv = int(args[0]), args[1:]
    rank, local_rank = os.environ.get("RANK", "?"), os.environ.get("LOCAL_RANK", "0")
    argv = argv[:at] + ["--local_rank=" + local_rank] + argv[at:]
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    child = os.fork()
    if child == 0:
        _run_child(argv, out_w, err_w, (out_r, out_w, err_r, err_w))
    os.close(out_w)
    os.close(err_w)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: os.kill(child, signum))
    statuses = []

    def exited():
        if not statuses:
            pid, status = os.waitpid(child, os.WNOHANG)
            if pid:
                statuses.append(status)
        return bool(statuses)

    try:
        relay({out_r: 1, err_r: 2}, ("\x1f%s/%s\x1f" % (rank, local_rank)).encode(), exited)
    except OSError:  # the launcher's stdout is gone: nothing left to relay to
        pass
    status = statuses[0] if statuses else os.waitpid(child, 0)[1]
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # the child is reaped: nothing to pass them to
        signal.signal(sig, signal.SIG_IGN)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    if code:
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)) + ".%06d" % (now % 1 * 1e6)
        try:
            _write_all(2, ("orchestrator rank %s (local rank %s) failed (exitcode: %d) at %s\n"
                           % (rank, local_rank, code, stamp)).encode())
        except OSError:
            pass
    if code < 0:  # end the way the rank did: DeepSpeed (and whoever waits on it) sees the same signal
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code & 0xFF)


if __name__ == "__main__":
    main(sys.argv[1:])
