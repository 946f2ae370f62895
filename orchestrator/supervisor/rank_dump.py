"""Node side of a hang's dump: every rank's Python stack (py-spy) and, from the ranks that armed it, torch's flight
recorder; one JSON line per rank on stdout.

    $ python -I -S -c "$(cat rank_dump.py)" 15 4242 4243=/runs/r1/flight-recorder/rank1
    {"pid": 4242, "threads": [...py-spy's threads, frames without locals...]}
    {"pid": 4243, "threads": [...], "flight": {"pg_status": {...}, "pg_config": {...}, "entries": {...}}}
    # or {"pid": P, "error": "py-spy not found next to ..."}, {"pid": P, ..., "flight_error": "no dump within 15 s"}

TIMEOUT: seconds for the whole script (each py-spy is killed when it is up). `PID=PATH`: the rank dumps its
flight recorder to PATH on SIGUSR2 (engine/flight_recorder.py; its heartbeat said so); the signal goes only to
a rank running or sleeping (not stopped, not a zombie: it could not answer), and the answer is the file once it
is newer than the signal. `py-spy dump --nonblocking` never pauses a rank, and reads a stopped one all the same.
The flight recorder part sent back is its summary: per process group its status (last collective enqueued,
started, completed) and its last LAST_ENTRIES collectives with the frames that called them; the whole pickle
stays at PATH for torch's own reader (python -m torch.distributed.flight_recorder.fr_trace DIR).
"""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

from orchestrator.procstat import process_state

LAST_ENTRIES = 4
FRAMES = 12
KEEP = ("name", "filename", "short_filename", "line")
ENTRY = ("collective_seq_id", "profiling_name", "state", "retired", "input_sizes", "is_p2p")


def short_filename(filename):
    """py-spy's short name for a frame of an installed package (the path below site-packages), else the file's."""
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return os.path.basename(filename)


def summary(dump):
    """The part of a flight recorder dump the head reads: per process group, status and last entries."""
    entries = {}
    for entry in dump.get("entries") or []:
        group = str((entry.get("process_group") or [entry.get("pg_id")])[0])
        kept = {k: entry.get(k) for k in ENTRY}
        kept["frames"] = [{"name": f.get("name"), "filename": f.get("filename"), "line": f.get("line"),
                           "short_filename": short_filename(str(f.get("filename") or ""))}
                          for f in (entry.get("frames") or [])[:FRAMES]]
        entries.setdefault(group, []).append(kept)
    return {"pg_status": dump.get("pg_status") or {},
            "pg_config": {str(k): {"desc": v.get("desc"), "ranks": v.get("ranks")}
                          for k, v in (dump.get("pg_config") or {}).items() if isinstance(v, dict)},
            "entries": {group: items[-LAST_ENTRIES:] for group, items in entries.items()}}


def ask_flight(targets):
    """Signal every armed rank that can answer; pid -> (path, mtime before) of those asked, pid -> why not."""
    asked, refused = {}, {}
    for pid, path in targets.items():
        state = process_state(pid) or "gone"
        if state in ("T", "t", "Z", "gone"):
            refused[pid] = "no flight recorder dump: the process is %s" % {"T": "stopped", "t": "stopped by a tracer",
                                                                           "Z": "a zombie"}.get(state, state)
            continue
        try:
            before = os.stat(path).st_mtime_ns
        except OSError:
            before = 0
        try:
            os.kill(pid, signal.SIGUSR2)
        except OSError as exc:
            refused[pid] = "no flight recorder dump: %s" % exc
            continue
        asked[pid] = (path, before)
    return asked, refused


def collect_flight(asked, deadline):
    """pid -> summary, or why there is none, once each asked rank's file is newer than the signal."""
    out = {}
    while asked:
        for pid, (path, before) in list(asked.items()):
            try:
                if os.stat(path).st_mtime_ns > before:
                    with open(path, "rb") as f:
                        out[pid] = summary(pickle.load(f))
                    del asked[pid]
            except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ValueError):
                continue  # not written yet
        if asked and time.monotonic() >= deadline:
            for pid in asked:
                out[pid] = "no flight recorder dump within %s s" % sys.argv[1]
            break
        time.sleep(0.05)
    return out


def py_spy(pids, deadline):
    """pid -> py-spy's threads, or why there are none; all dumps run at once."""
    spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    spy = spy if os.access(spy, os.X_OK) else shutil.which("py-spy")
    if spy is None:
        return dict.fromkeys(pids, "py-spy not found next to %s or on PATH" % sys.executable)
    procs = [(pid, subprocess.Popen([spy, "dump", "--pid", str(pid), "--json", "--nonblocking"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)) for pid in pids]
    out = {}
    for pid, proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            out[pid] = "py-spy timed out after %s s" % sys.argv[1]
            continue
        try:
            threads = json.loads(stdout)
        except ValueError:
            why = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
            out[pid] = "py-spy: " + (why[0] if why else "exit %d" % proc.returncode)
            continue
        for thread in threads:
            thread["frames"] = [{k: f.get(k) for k in KEEP} for f in thread.get("frames") or []]
        out[pid] = threads
    return out


def main():
    deadline = time.monotonic() + float(sys.argv[1])
    targets = [arg.partition("=") for arg in sys.argv[2:]]
    pids = [int(pid) for pid, _, _ in targets]
    asked, refused = ask_flight({int(pid): path for pid, _, path in targets if path})
    stacks = py_spy(pids, deadline)
    flight = {**refused, **collect_flight(asked, deadline)}
    for pid in pids:
        record = {"pid": pid}
        record["threads" if isinstance(stacks[pid], list) else "error"] = stacks[pid]
        if pid in flight:
            record["flight" if isinstance(flight[pid], dict) else "flight_error"] = flight[pid]
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
