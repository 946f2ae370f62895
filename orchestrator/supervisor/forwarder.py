"""Node side of `supervise --no-shared-run-dir`: run the node's launcher, pass its output through, and send the
ranks' heartbeats (and the engine's metrics.jsonl lines) to the head as marked lines on the same output.

    # what each node runs instead of its launcher (the source travels inline, like the node agent):
    $ python -I -S -c "$(cat forwarder.py)" --every 0.2 --shared-if /head/run/heartbeat/.head-r1-a0 \\
          --metrics /data/run/metrics.jsonl -- python -m torch.distributed.run ... -m orchestrator.engine ...
    # env (from the agent): ORCH_RELAY_KEY=<nonce of the run>, ORCH_RUN_TMPDIR=<the agent's private temp dir>
    # under srun (no agent): ... --own-tmpdir -- python -m orchestrator.launch.slurm node -- ...: the forwarder
    #   makes its own private temp dir (under ORCH_RUN_TMPDIR or TMPDIR), gives it to the launcher as
    #   ORCH_RUN_TMPDIR and removes it when the launcher is gone
    # extra lines on stdout (or stderr), between whole lines of the launcher's:
    #   "\\x1frelay <nonce> hb node2-rank3 {...heartbeat JSON...}"     a rank's heartbeat file, when it changed
    #   "\\x1frelay <nonce> m {...metrics record...}"                  a new line of metrics.jsonl

Why: with no file system shared by the head and the nodes, the supervisor cannot read the heartbeat files or
metrics.jsonl the ranks write. The launcher's SSH session already reaches the head, so the records travel on it
(supervisor/relay.py takes them out of the stream and writes the head's RUN_DIR/heartbeat/ and metrics.jsonl, so
every reader there stays as it is).

How: the ranks get ORCH_HEARTBEAT_DIR=$ORCH_RUN_TMPDIR/heartbeat (node-local; the agent removes it with the
run); every --every seconds the forwarder sends each heartbeat file whose inode, mtime or size changed and each
complete line appended to --metrics since it started. A record goes out only where the launcher's stream is at
the start of a line (stdout, else stderr), so it never lands inside a line of the launcher's; it waits for the
next round otherwise. The nonce (removed from the launcher's env) keeps a program from forging records.
When --shared-if exists here, the head's run dir is this node's too: nothing is relayed and the launcher runs
with the env it was given (the ranks write into the shared directory, as without this program).
SIGTERM/SIGINT/SIGHUP (and SIGUSR1, Slurm's stop of the warm keepers) do not stop the forwarder: the agent
signals the whole process group (slurmstepd the whole step), so the launcher got them too, and its last lines
still pass. It exits once the launcher did (a process the launcher left behind may
hold the pipes: that is not waited for), with the launcher's exit code (128+N for signal N, what the agent
reports for either). Stdlib only: sent inline like the node agent, nothing to install.
"""

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

# Copies of orchestrator/contracts.py (this file travels alone): tests/unit/test_contracts.py keeps them equal.
HEARTBEAT_ENV = "ORCH_HEARTBEAT_DIR"
RUN_TMPDIR = "ORCH_RUN_TMPDIR"
RELAY_KEY_ENV = "ORCH_RELAY_KEY"
MARK = b"\x1frelay "  # \x1f as in torchrun's rank marker; \x1e would be a line break to str.splitlines
READ_LIMIT = 1 << 20  # of metrics.jsonl per round: a burst is spread over rounds, memory stays bounded


def _write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


class Stream:
    """One of the launcher's output streams, copied through as it comes; knows whether a line is open on it."""

    def __init__(self, fd):
        self.fd, self.at_line_start, self.broken = fd, True, False

    def copy(self, data):
        self.at_line_start = data.endswith(b"\n")
        if not self.broken:
            try:
                _write_all(self.fd, data)
            except OSError:  # the head is gone: the agent ends the run; keep draining the launcher till then
                self.broken = True


class Relay:
    """Changed heartbeat files and new metrics lines, as marked lines on whichever stream is between lines."""

    def __init__(self, key, streams, beats, metrics):
        self.prefix = MARK + key.encode() + b" "
        self.streams, self.beats, self.metrics = streams, beats, metrics
        self.sent = {}  # heartbeat file name -> (inode, mtime, size) as last sent
        self.offset = _size(metrics)  # lines already there belong to earlier attempts

    def _emit(self, payload):
        for stream in self.streams:
            if stream.at_line_start:
                stream.copy(self.prefix + payload + b"\n")
                return True
        return False

    def round(self):
        for name in sorted(os.listdir(self.beats)):
            if not name.endswith(".json") or name.startswith("."):  # .name.pid.tmp: a beat being written
                continue
            try:
                st = os.stat(os.path.join(self.beats, name))
                with open(os.path.join(self.beats, name), "rb") as f:
                    data = f.read().strip()
            except OSError:  # replaced or removed between listdir and open: the next round sees the new one
                continue
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
            if self.sent.get(name) == seen or b"\n" in data:
                continue
            if not self._emit(b"hb " + name[:-len(".json")].encode() + b" " + data):
                return
            self.sent[name] = seen
        self._metrics()

    def _metrics(self):
        size = _size(self.metrics)
        if size < self.offset:  # truncated or replaced: start over
            self.offset = 0
        if size == self.offset:
            return
        with open(self.metrics, "rb") as f:
            f.seek(self.offset)
            data = f.read(min(size - self.offset, READ_LIMIT))
        for line in data.split(b"\n")[:-1]:  # the last piece is a line still being written (or b"")
            if line.strip() and not self._emit(b"m " + line):
                return
            self.offset += len(line) + 1


def _size(path):
    try:
        return os.stat(path).st_size if path else 0
    except OSError:
        return 0


def parse(args):
    """(every, shared_if, metrics or None, own_tmpdir, launcher argv) from the command line."""
    at = args.index("--")
    flags = [a for a in args[:at] if a == "--own-tmpdir"]
    pairs = [a for a in args[:at] if a != "--own-tmpdir"]
    opts = dict(zip(pairs[::2], pairs[1::2]))
    return float(opts["--every"]), opts["--shared-if"], opts.get("--metrics"), bool(flags), args[at + 1:]


def main(args):
    every, shared_if, metrics, own_tmpdir, argv = parse(args)
    env = dict(os.environ)
    key = env.pop(RELAY_KEY_ENV, "")
    own = None
    if own_tmpdir:  # under srun: no agent made a temp dir for this run on this node
        own = env[RUN_TMPDIR] = tempfile.mkdtemp(prefix="orch-relay-", dir=env.get(RUN_TMPDIR))
    try:
        return _forward(env, key, every, shared_if, metrics, argv)
    finally:
        if own is not None:
            shutil.rmtree(own, ignore_errors=True)


def _forward(env, key, every, shared_if, metrics, argv):
    beats = None if os.path.exists(shared_if) else os.path.join(env[RUN_TMPDIR], "heartbeat")
    if beats is not None:
        env[HEARTBEAT_ENV] = beats
        os.makedirs(beats, exist_ok=True)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):  # the launcher got it too
        signal.signal(sig, lambda signum, frame: None)
    try:
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    except OSError as exc:
        _write_all(2, ("orchestrator forwarder: cannot run '%s': %s\n" % (argv[0], exc)).encode())
        return 127
    streams = {child.stdout.fileno(): Stream(1), child.stderr.fileno(): Stream(2)}
    relay = Relay(key, list(streams.values()), beats, metrics) if beats is not None else None
    due = time.monotonic()
    while streams:
        ready, _, _ = select.select(list(streams), [], [], max(0.0, due - time.monotonic()))
        for fd in ready:
            data = os.read(fd, 65536)
            if data:
                streams[fd].copy(data)
            else:
                del streams[fd]
        if time.monotonic() >= due:
            if relay is not None:
                relay.round()
            due = time.monotonic() + every
        if not ready and child.poll() is not None:  # quiet and gone: whatever still holds the pipes is not it
            break
    code = child.wait()
    if relay is not None:  # the ranks' last beats ("done", "failed") and metrics lines
        for stream in relay.streams:
            if not stream.at_line_start:  # the launcher is gone mid-line: end it, or the records could not go
                stream.copy(b"\n")
        relay.round()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
