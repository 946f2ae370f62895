"""Node side of `--launcher deepspeed`: run one rank's command with its rank marked on every line it prints.

    # what deepspeed.launcher.launch --no_python --no_local_rank starts per rank (RANK, LOCAL_RANK set by it):
    $ python -I -S -c "$(cat rankprefix.py)" 3 /venv/bin/python -u train.py --lr 3e-4
    # runs `/venv/bin/python -u train.py --local_rank=$LOCAL_RANK --lr 3e-4` (--local_rank=N goes after the
    # first 3 words, where DeepSpeed itself puts it); each line on its stdout or stderr comes out on the same
    # stream as "\\x1f$RANK/$LOCAL_RANK\\x1f<line>": torchrun's tee marker, which the runner turns into `host/rank: `.

Why: DeepSpeed's launcher starts every rank on its own stdout, so the ranks' lines reach the head mixed, with no
rank on them. This process execs the rank's command (DeepSpeed keeps waiting on and signalling the PID it
started: exit codes and signals stay the rank's own); a forked child relays the command's stdout/stderr pipes,
one write per whole line (lines of different ranks sharing the launcher's pipe do not interleave). The relay
ignores SIGINT/SIGTERM/SIGHUP and ends at EOF, so a dying rank's last lines (its traceback) still get out.
Stdlib only: this file is sent inline like the node agent; nothing needs to be installed on the nodes.
"""

import os
import select
import signal
import sys


def _write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def relay(pairs, mark):
    """Copy every read fd in `pairs` ({read fd: write fd}) line by line, each line prefixed with `mark`, to EOF."""
    partial = dict.fromkeys(pairs, b"")
    while partial:
        ready, _, _ = select.select(list(partial), [], [])
        for fd in ready:
            chunk = os.read(fd, 65536)
            lines = (partial[fd] + chunk).split(b"\n")
            partial[fd] = lines.pop()
            if not chunk:  # EOF: a last line without its newline still goes out
                last = partial.pop(fd)
                lines += [last] if last else []
            for line in lines:
                _write_all(pairs[fd], mark + line + b"\n")


def main(args):
    at, argv = int(args[0]), args[1:]
    local_rank = os.environ.get("LOCAL_RANK", "0")
    argv = argv[:at] + ["--local_rank=" + local_rank] + argv[at:]
    mark = ("\x1f%s/%s\x1f" % (os.environ.get("RANK", "?"), local_rank)).encode()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    if os.fork() == 0:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        os.close(out_w)
        os.close(err_w)
        try:
            relay({out_r: 1, err_r: 2}, mark)
        except OSError:  # the launcher's stdout is gone: nothing left to relay to
            pass
        os._exit(0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    for fd in (out_r, out_w, err_r, err_w):
        os.close(fd)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # Python ignores SIGPIPE; exec would keep that
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        _write_all(2, ("cannot run %r: %s\n" % (argv[0], exc)).encode())
    os._exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
