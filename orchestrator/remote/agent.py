"""Node-side agent: runs one command of a run under the run's token, and kills all of it when the head goes away.

    # what orchestrator.remote.fanout does for every remote process (the source travels inline, no install):
    $ ssh node3 python3 -I -S -c "$(cat agent.py)" --run-id r42
    # then on its stdin the command, length-prefixed, NUL-separated (argv and env cannot hold NUL):
    #   "<nbytes>\n" + "<cwd>\0<argc>\0<argv...>\0<NAME=value>\0..."      (see encode_spec)
    # ...and stdin stays open: it is the control channel. Teardown of a whole run on a node:
    $ ssh node3 python3 -I -S -c "$(cat agent.py)" --run-id r42 --teardown
    {"signalled": 3, "remaining": 0}

Why it exists: killing an ssh client that has no tty leaves the remote processes running. The agent is a
dead-man switch: when its stdin closes (head killed, connection lost) or it gets SIGHUP/SIGTERM/SIGINT, it kills
the command's session AND every process whose environment carries this agent's token (children that setsid'd
too): SIGTERM, then SIGKILL after a grace, all within 5 s. When the command exits on its own, what it left
behind is killed too: the agent is a child subreaper, so double-forked daemons are still its descendants and
the cheap walk of its own process tree finds them (the /proc/*/environ scan is for the abnormal exits).

The command gets ORCH_RUN_ID=<run id> (teardown kills by it: another run's processes, with another id,
survive) and ORCH_RUN_AGENT=<agent pid> (what this agent kills: another agent of the same run on the same
machine keeps its own). A command whose env holds ORCH_RUN_TMPDIR=<base> (what `orchestrator launch` sends)
gets a private temp dir, <base>/orch-<run id>-<agent pid>, as TMPDIR and ORCH_RUN_TMPDIR; the agent removes it
once the command and what it left behind are gone, however the command ended (torchrun's per-rank files, the
ranks' temp files). Only a SIGKILL of the agent itself leaves it behind. While the command runs in a synced code
copy, the agent holds a shared lock on it (job/inuse.py), so the copy is never turned into a newer version under
it; with ORCH_CODE_PIN_S=<s> the copy stays pinned that long after the command (the run's next step follows). Env and
argv come on stdin, never on the command line: nothing to quote, and values do not show in the node's process
list. Stdlib only, Python 3.6+: this file (with job/inuse.py in front) is the whole program on the node, started
once per host per command, so it imports little (no json, no enum-based `signal`): on a busy node every
millisecond of start-up is paid by every host.
"""

import os
import select
import sys
import time

from orchestrator.job.inuse import Moved, hold_run, pin_seconds, release

try:
    import _signal as signal  # the C module: same functions and constants, without importing enum
except ImportError:  # pragma: no cover - other interpreters
    import signal

# Copies of orchestrator/contracts.py (this file travels alone): tests/unit/test_contracts.py keeps them equal.
RUN_TOKEN = "ORCH_RUN_ID"
AGENT_TOKEN = "ORCH_RUN_AGENT"
RUN_TMPDIR = "ORCH_RUN_TMPDIR"
CODE_PIN_ENV = "ORCH_CODE_PIN_S"
GRACE_S = 2.0  # SIGTERM first; SIGKILL what is still there after this
DEADLINE_S = 4.5  # give up (and report what remains) before the 5 s promise runs out
EXIT_NO_SPEC = 255  # the head went away before saying what to run


def _environ_has(pid, entries):
    try:
        with open("/proc/%d/environ" % pid, "rb") as f:
            fields = f.read().split(b"\0")
    except OSError:  # gone, a zombie, or not ours to read
        return False
    return all(e in fields for e in entries)


def find_tokened(entries):
    """PIDs (other than this process) whose environment holds every `entries` item (b"NAME=value")."""
    me = os.getpid()
    return {int(n) for n in os.listdir("/proc") if n.isdigit() and int(n) != me and _environ_has(int(n), entries)}


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def become_subreaper():
    """PR_SET_CHILD_SUBREAPER: orphans of the command (double-forked, setsid'd) re-parent to the agent.

    Through _ctypes, not ctypes: the ctypes package costs a few ms of start-up on every host."""
    try:
        import _ctypes

        class Function(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL  # returns a C int

        class Libc:
            _handle = _ctypes.dlopen(None, os.RTLD_NOW)

        return Function(("prctl", Libc))(36, 1, 0, 0, 0) == 0
    except (ImportError, OSError, AttributeError, TypeError):
        return False


def descendants(root):
    """Every live process below `root`, from /proc/PID/task/TID/children (cheap: reads only our tree)."""
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        try:
            tids = os.listdir("/proc/%d/task" % pid)
        except OSError:
            continue
        for tid in tids:
            try:
                with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            todo.extend(k for k in kids if k not in found)
            found.update(kids)
    return found


def reap(child, statuses):
    """Reap every exited child (orphans re-parent to us as subreaper); keep the command's wait status."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == child:
            statuses.append(status)


def kill_run(entries, pgid=0, scan=True, subreaper=False, child=0, statuses=None):
    """Kill the process group `pgid`, our descendants (when subreaper) and, when `scan` (or no subreaper),
    every process whose environment holds `entries`: SIGTERM, SIGKILL after GRACE_S. Return how many remain."""
    statuses = [] if statuses is None else statuses
    start = time.monotonic()
    sig = signal.SIGTERM
    while True:
        reap(child, statuses)
        pids = descendants(os.getpid()) if subreaper else set()
        if scan or not subreaper:
            pids |= find_tokened(entries)
        pids = {p for p in pids if _alive(p)}
        if pgid:
            try:
                os.killpg(pgid, sig)
            except OSError:
                pgid = 0  # the group is empty
        if not pids and not pgid:
            return 0
        if time.monotonic() - start > DEADLINE_S:
            return len(pids) or 1
        if time.monotonic() - start > GRACE_S:
            sig = signal.SIGKILL
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        time.sleep(0.05)


def signal_exit_code(signum):
    """What a command stopped by signal `signum` reports: 128 + N (orchestrator.contracts.signal_exit_code)."""
    return 128 + signum


def _exit_code(status):
    if os.WIFSIGNALED(status):
        return signal_exit_code(os.WTERMSIG(status))
    return os.WEXITSTATUS(status)


def encode_spec(argv, env, cwd):
    """The command as the head sends it on stdin (used by orchestrator.remote.fanout; decode_spec reverses it)."""
    fields = [cwd or "", str(len(argv))] + list(argv) + ["%s=%s" % kv for kv in sorted(env.items())]
    payload = "\0".join(fields).encode("utf-8", "surrogateescape")
    return b"%d\n" % len(payload) + payload


def decode_spec(payload):
    fields = payload.split(b"\0")
    argc = int(fields[1])
    env = dict(item.split(b"=", 1) for item in fields[2 + argc:])
    return {"cwd": fields[0], "argv": fields[2:2 + argc], "env": env}


def _read_spec():
    """The command from stdin (see encode_spec); None when stdin closed first."""
    data = b""
    while b"\n" not in data or len(data) < data.index(b"\n") + 1 + int(data.split(b"\n", 1)[0]):
        chunk = os.read(0, 65536)
        if not chunk:
            return None
        data += chunk
    size, rest = data.split(b"\n", 1)
    return decode_spec(rest[:int(size)])


def _exec_child(spec, env):
    """In the forked child: new session, stdin from /dev/null, default signal dispositions, exec."""
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        # exec keeps ignored signals ignored: Python's own (SIGPIPE, SIGXFSZ) and what the agent inherited
        # (a head started as a background job ignores SIGINT/SIGQUIT; a local run passes that on)
        for number in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGQUIT):
            signal.signal(number, signal.SIG_DFL)
        if spec["cwd"]:
            os.chdir(spec["cwd"])
        os.execvpe(spec["argv"][0], spec["argv"], env)
    except BaseException as exc:  # noqa: BLE001 - whatever failed, the child must not return into the agent
        name = spec["argv"][0].decode("utf-8", "replace")
        os.write(2, ("orchestrator agent: cannot run '%s': %s\n" % (name, exc)).encode("utf-8", "replace"))
    os._exit(127)


def make_run_tmpdir(env, run_id):
    """When env asks for it (ORCH_RUN_TMPDIR=<base>): create <base>/orch-<run id>-<pid>, point TMPDIR at it."""
    base = env.get(RUN_TMPDIR.encode())
    if not base:
        return None
    path = os.path.join(base, b"orch-%s-%d" % (run_id.encode(), os.getpid()))
    os.mkdir(path, 0o700)
    env[RUN_TMPDIR.encode()] = env[b"TMPDIR"] = path
    return path


def remove_tree(path):
    if path:
        import shutil  # only here: most commands ask for no temp dir, and every millisecond of start-up counts

        shutil.rmtree(path, ignore_errors=True)


def run(run_id):
    spec = _read_spec()
    if spec is None:
        return EXIT_NO_SPEC
    env = dict(os.environb)
    env.update(spec["env"])
    env[RUN_TOKEN.encode()] = run_id.encode()
    env[AGENT_TOKEN.encode()] = str(os.getpid()).encode()
    cwd = os.fsdecode(spec["cwd"])
    try:
        held = hold_run(cwd)  # a synced code copy is not turned into another version under the run
    except Moved as exc:
        sys.stderr.write("orchestrator agent: %s: %s; sync again\n" % (cwd, exc.strerror))
        return 127
    try:
        tmpdir = make_run_tmpdir(env, run_id)
    except OSError as exc:
        release(held, cwd)
        sys.stderr.write("orchestrator agent: cannot create the run's temp dir: %s\n" % exc)
        return 127
    try:
        return _supervise(spec, env)
    finally:
        remove_tree(tmpdir)  # after _supervise: the command and everything it left behind are gone by now
        release(held, cwd, pin_seconds(env.get(CODE_PIN_ENV.encode())))


def _supervise(spec, env):
    """Start the command, then wait for it to end or for a stop (signal, control channel closed): its exit code."""
    mine = [b"%s=%s" % (k.encode(), env[k.encode()]) for k in (RUN_TOKEN, AGENT_TOKEN)]

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: stop.append(signum))
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # only to wake select via the wakeup fd

    subreaper = become_subreaper()
    child = os.fork()
    if child == 0:
        _exec_child(spec, env)
    statuses = []
    watch = [0, wake_r]
    while True:
        reap(child, statuses)
        if statuses:  # the command ended: kill what it left behind (its tree is ours), report its code
            kill_run(mine, pgid=child, scan=False, subreaper=subreaper)
            return _exit_code(statuses[0])
        if stop:
            kill_run(mine, pgid=child, subreaper=subreaper, child=child, statuses=statuses)
            return signal_exit_code(stop[0])
        try:
            ready, _, _ = select.select(watch, [], [], 1.0)
        except InterruptedError:
            continue
        if wake_r in ready:
            os.read(wake_r, 512)
        if 0 in ready and not os.read(0, 65536):  # control channel closed: the head is gone
            kill_run(mine, pgid=child, subreaper=subreaper, child=child, statuses=statuses)
            return EXIT_NO_SPEC


def teardown(run_id):
    """Kill every process of `run_id` on this machine and verify; exit 0 when none remains."""
    entries = [("%s=%s" % (RUN_TOKEN, run_id)).encode()]
    signalled = len(find_tokened(entries))
    remaining = kill_run(entries)
    sys.stdout.write('{"signalled": %d, "remaining": %d}\n' % (signalled, remaining))
    return 0 if remaining == 0 else 1


def main(args):
    if len(args) < 2 or args[0] != "--run-id" or not args[1]:
        sys.stderr.write("usage: agent --run-id ID [--teardown]   (the command comes on stdin, see encode_spec)\n")
        return 2
    if args[2:] == ["--teardown"]:
        return teardown(args[1])
    return run(args[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
