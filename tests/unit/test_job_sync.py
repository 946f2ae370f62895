"""Which files a job's workdir sync carries and its content digest (the node side is in test_up.py), and the
node-side receiver run locally on a tar stream."""

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from orchestrator.inline import python_source
from orchestrator.job import inuse
from orchestrator.job.setup import setup_argv
from orchestrator.job.sync import RECEIVER, delta, load_manifest, plan_bases, read_tree, save_manifest


def make(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_plain_dir_skips_default_ignores_and_excludes(tmp_path):
    make(tmp_path, {"train.py": "x", "pkg/m.py": "y", "pkg/__pycache__/m.pyc": "z", ".git/HEAD": "h",
                    ".venv/bin/python": "p", "data/big.bin": "b", "out.log": "l"})
    tree = read_tree(tmp_path, exclude=("data", "*.log"))
    assert tree.files == ("pkg/m.py", "train.py")


def test_git_tree_honours_gitignore_and_keeps_untracked(tmp_path):
    make(tmp_path, {"train.py": "x", ".gitignore": "ckpt/\n", "ckpt/model.pt": "w", "new.py": "n"})
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "add", "train.py", ".gitignore"], check=True)
    assert read_tree(tmp_path).files == (".gitignore", "new.py", "train.py")


def test_digest_follows_content_and_names_only(tmp_path):
    make(tmp_path, {"a.py": "1"})
    first = read_tree(tmp_path).digest
    (tmp_path / "a.py").touch()  # same content, new mtime: same version
    assert read_tree(tmp_path).digest == first
    (tmp_path / "a.py").write_text("2")
    assert read_tree(tmp_path).digest != first
    (tmp_path / "a.py").write_text("1")
    (tmp_path / "a.py").chmod(0o755)  # the exec bit is part of the version
    assert read_tree(tmp_path).digest != first


def receiver(dest, digest, data=None, *, size=None, sha=None, pin=False, **go):
    """receive.py as the first node of a chain of one, fed `data` (None: only asked whether it has the version)."""
    lines = [{"dest": str(dest), "digest": digest, "token": "t", "pin": pin}]
    if data is None:
        lines.append({"go": False})
    else:
        lines += [{"go": True, "source": "stdin", "upstream": None, "size": len(data) if size is None else size,
                   **go}, {"next": None}]
    stdin = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    if data is not None:
        stdin += data + json.dumps({"sha256": sha or hashlib.sha256(data).hexdigest()}).encode() + b"\n"
    out = subprocess.run([sys.executable, "-I", "-S", "-c", python_source(RECEIVER)], input=stdin,
                         capture_output=True, timeout=60)
    events = [json.loads(line) for line in out.stdout.splitlines()]
    return [e for e in events if e["event"] != "progress"], out.returncode


def test_receiver_unpacks_once_then_reports_have(tmp_path):
    src = tmp_path / "src"
    make(src, {"train.py": "print(1)\n", "pkg/m.py": "y"})
    tree = read_tree(src)
    events, rc = receiver(tmp_path / "code", tree.digest, tree.tar_bytes(), files=2)
    assert rc == 0 and events[0]["have"] is False and events[-1]["event"] == "done" and events[-1]["error"] is None
    assert (tmp_path / "code" / tree.digest / "pkg" / "m.py").read_text() == "y"
    assert (tmp_path / "code" / f"{tree.digest}.files").read_bytes() == b"pkg/m.py\0train.py"
    events, rc = receiver(tmp_path / "code", tree.digest)
    assert rc == 0 and events == [{"event": "ready", "have": True, "path": str(tmp_path / "code" / tree.digest),
                                   "bases": [], "error": None}]


def test_receiver_refuses_damaged_or_short_streams_and_leaves_nothing(tmp_path):
    src = tmp_path / "src"
    make(src, {"train.py": "print(1)\n"})
    tree = read_tree(src)
    data = tree.tar_bytes()
    events, rc = receiver(tmp_path / "code", tree.digest, data, sha="0" * 64)
    assert "sha256 mismatch" in events[-1]["error"]
    events, rc = receiver(tmp_path / "code", tree.digest, data, size=len(data) + 1000)
    assert "upstream closed" in events[-1]["error"]
    assert list((tmp_path / "code").iterdir()) == []


def test_a_changed_tree_sends_only_its_changes_and_links_the_rest_from_a_pinned_copy(tmp_path):
    src, code, manifests = tmp_path / "src", tmp_path / "code", tmp_path / "manifests"
    make(src, {"train.py": "print(1)\n", "pkg/m.py": "y", "old.py": "o"})
    first = read_tree(src)
    assert receiver(code, first.digest, first.tar_bytes(), pin=True)[0][-1]["error"] is None  # a run will start
    save_manifest(first, manifests)
    (src / "train.py").write_text("print(2)\n")
    (src / "old.py").unlink()
    make(src, {"new.py": "n"})
    second = read_tree(src)
    events, _ = receiver(code, second.digest)  # what the node offers
    assert events[0]["have"] is False and events[0]["bases"] == [first.digest]
    load = functools.partial(load_manifest, directory=manifests)
    assert plan_bases({"n1": events[0]["bases"], "n2": []}, load) == {first.digest: ["n1"], None: ["n2"]}
    changed, removed = delta(second, load(first.digest))
    assert changed == ["new.py", "train.py"] and removed == ["old.py"]
    events, rc = receiver(code, second.digest, second.tar_bytes(only=set(changed)), base=first.digest,
                          removed=removed, files=3)
    assert rc == 0 and events[-1]["error"] is None
    new = code / second.digest
    assert sorted(str(p.relative_to(new)) for p in new.rglob("*") if p.is_file()) == ["new.py", "pkg/m.py", "train.py"]
    assert (new / "train.py").read_text() == "print(2)\n"
    assert (new / "pkg/m.py").stat().st_ino == (code / first.digest / "pkg/m.py").stat().st_ino  # linked, not sent
    assert (code / first.digest / "train.py").read_text() == "print(1)\n"  # the old copy is untouched
    # a copy that lost a file it should share: the node says so (the head sends all) and keeps nothing half-made
    (code / first.digest / "pkg/m.py").unlink()
    (src / "train.py").write_text("print(3)\n")
    third = read_tree(src)
    events, rc = receiver(code, third.digest, third.tar_bytes(only={"train.py"}), base=first.digest, removed=[],
                          files=3)
    assert "lacks pkg/m.py" in events[-1]["error"] and events[-1]["delta_failed"] and not (code / third.digest).exists()
    assert sorted(p.name for p in code.iterdir()) == sorted([first.digest, second.digest, f"{first.digest}.files",
                                                             f"{first.digest}.pin", f"{second.digest}.files"])


def test_a_chain_gets_one_delta_when_all_its_nodes_share_a_base():
    known = {"a": {}, "b": {}}.get
    assert plan_bases({"n1": ["b", "a"], "n2": ["a"], "n3": ["x", "a"]}, known) == {"a": ["n1", "n2", "n3"]}
    assert plan_bases({"n1": ["b"], "n2": ["a"], "n3": []}, known) == {"b": ["n1"], "a": ["n2"], None: ["n3"]}
    assert plan_bases({"n1": ["b", "a"], "n2": ["a"]}, known, "parallel") == {"b": ["n1"], "a": ["n2"]}


def test_setup_runs_once_per_version_and_script(tmp_path):
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}

    def run(script, digest):
        return subprocess.run(setup_argv(script=script, digest=digest), cwd=tmp_path, env=env, capture_output=True,
                              text=True)

    assert run("echo ran >> count", "d1").returncode == 0
    assert "skipped" in run("echo ran >> count", "d1").stdout
    assert run("echo ran >> count", "d2").returncode == 0  # new code: runs again
    assert (tmp_path / "count").read_text().count("ran") == 2
    failed = run("false; echo never", "d3")
    assert failed.returncode != 0 and "never" not in failed.stdout
    assert run("echo ok", "d3").returncode == 0  # a failure left no marker; a changed script runs


def test_the_hash_cache_skips_unchanged_files_and_rereads_changed_ones(tmp_path, monkeypatch):
    import json

    from orchestrator.job import sync

    monkeypatch.setattr(sync, "RACY_S", -1.0)  # files written just now may be cached
    src, cache = tmp_path / "src", tmp_path / "hashes"
    make(src, {"a.py": "1", "b.py": "2"})
    first = read_tree(src, cache=cache)
    (path,) = cache.glob("*.json")
    entries = json.loads(path.read_text())
    assert set(entries) == {"a.py", "b.py"} and read_tree(src, cache=cache).digest == first.digest
    entries["a.py"][-1] = "0" * 64  # a stale hash for an unchanged stat is believed: proof the file was not read
    path.write_text(json.dumps(entries))
    assert read_tree(src, cache=cache).manifest["a.py"] == "f:" + "0" * 64
    (src / "a.py").write_text("1")  # rewritten (same content, new ctime): read again
    assert read_tree(src, cache=cache).digest == first.digest == read_tree(src, cache=None).digest


def two_versions(tmp_path, **first_go):
    """A node's copy of a first tree, and a second tree's delta from it: (code dir, first, second, send(**go))."""
    src, code, manifests = tmp_path / "src", tmp_path / "code", tmp_path / "manifests"
    make(src, {"train.py": "1", "pkg/m.py": "y", "pkg/sub/k.py": "k", "old/gone.py": "o", "old/deep/g.py": "g"})
    first = read_tree(src, cache=None)
    assert receiver(code, first.digest, first.tar_bytes(), **first_go)[0][-1]["error"] is None
    save_manifest(first, manifests)
    (src / "train.py").write_text("2")
    shutil.rmtree(src / "old")
    make(src, {"new/n.py": "n"})
    second = read_tree(src, cache=None)
    changed, removed = delta(second, load_manifest(first.digest, manifests))
    assert changed == ["new/n.py", "train.py"] and removed == ["old/deep/g.py", "old/gone.py"]

    def send(**go):
        return receiver(code, second.digest, second.tar_bytes(only=set(changed)), base=first.digest, removed=removed,
                        **{"files": len(second.files), **go})
    return code, first, second, send


def listing(root):
    """Every entry under root, directories with a trailing slash."""
    return sorted(str(p.relative_to(root)) + ("/" if p.is_dir() else "") for p in root.rglob("*"))


def test_a_copy_no_run_holds_becomes_the_new_version_in_place(tmp_path):
    code, first, second, send = two_versions(tmp_path)
    old = code / first.digest
    inode = (old / "pkg/m.py").stat().st_ino
    os.link(old / "train.py", tmp_path / "shared")  # another copy's link to the same inode
    time.sleep(0.05)  # what a run leaves in its copy comes later than the copy (the clock's tick)
    make(old, {"pkg/__pycache__/m.pyc": "c", "out.log": "run output"})
    events, rc = send()
    assert rc == 0 and events[-1]["error"] is None, events
    new = code / second.digest
    assert listing(code) == sorted([second.digest + "/", f"{second.digest}.files"] + [
        f"{second.digest}/{p}" for p in ("new/", "new/n.py", "pkg/", "pkg/m.py", "pkg/sub/", "pkg/sub/k.py",
                                         "train.py")])  # the old copy, its list, the run's files, old/: gone
    assert (new / "pkg/m.py").stat().st_ino == inode  # moved, not linked or copied
    assert (new / "train.py").read_text() == "2" and (tmp_path / "shared").read_text() == "1"  # never written through
    assert (code / f"{second.digest}.files").read_bytes() == b"\0".join(f.encode() for f in second.files)
    third_events, _ = receiver(code, "f" * 64)
    assert third_events[0]["bases"] == [second.digest]  # the new copy is the next one's base


@pytest.mark.parametrize("why", ["a run holds it", "a sync pinned it", "a run replaced a file"])
def test_a_copy_in_use_is_linked_from_and_left_as_it_was(tmp_path, why):
    code, first, second, send = two_versions(tmp_path)
    old = code / first.digest
    before = listing(old)
    held = inuse.hold(str(old)) if why == "a run holds it" else None
    if why == "a sync pinned it":
        assert receiver(code, first.digest, pin=True)[0][0]["have"]
    elif why == "a run replaced a file":
        time.sleep(0.05)
        (old / "pkg/sub/k.py").unlink()
        (old / "pkg/sub/k.py").write_text("k")
    try:
        events, rc = send()
    finally:
        if held is not None:
            os.close(held)
    assert rc == 0 and events[-1]["error"] is None, events
    assert listing(old) == before and (old / "train.py").read_text() == "1"
    assert (code / first.digest / "pkg/m.py").stat().st_ino == (code / second.digest / "pkg/m.py").stat().st_ino
    assert listing(code / second.digest) == [p for p in listing(code / second.digest) if not p.startswith("old")]


def test_a_delta_that_fails_after_the_move_leaves_no_base_and_the_whole_tree_follows(tmp_path):
    code, first, second, send = two_versions(tmp_path)
    events, rc = send(files=99)  # the unpacked copy does not hold what the head says: after the move
    assert "holds 4 files, the tree 99" in events[-1]["error"] and events[-1]["delta_failed"], events
    assert listing(code) == []  # the base was used up: no half-moved copy, no list offering it, no partial
    ready, _ = receiver(code, second.digest)
    assert ready[0] == {"event": "ready", "have": False, "path": str(code / second.digest), "bases": [], "error": None}
    events, rc = receiver(code, second.digest, second.tar_bytes(), files=len(second.files))  # what the head does next
    assert events[-1]["error"] is None and (code / second.digest / "new/n.py").read_text() == "n"


def test_a_receiver_removes_the_partial_copies_of_killed_receivers_only(tmp_path):
    src, code = tmp_path / "src", tmp_path / "code"
    make(src, {"train.py": "1"})
    tree = read_tree(src, cache=None)
    data = tree.tar_bytes()
    lines = [{"dest": str(code), "digest": tree.digest, "token": "t"},
             {"go": True, "source": "stdin", "upstream": None, "size": len(data) + 10}, {"next": None}]
    killed = subprocess.Popen([sys.executable, "-I", "-S", "-c", python_source(RECEIVER)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
    killed.stdin.write(b"".join(json.dumps(line).encode() + b"\n" for line in lines) + data)
    killed.stdin.flush()
    try:
        assert wait_until(lambda: any(code.glob(".partial-*/code.tar")))
    finally:
        killed.kill()
        killed.wait()
    (dead,) = code.glob(".partial-*")
    live = code / ".partial-live"
    live.mkdir()
    held = inuse.take(str(live))  # a receiver still at work
    try:
        events, rc = receiver(code, tree.digest, data, files=1)
    finally:
        os.close(held)
    assert events[-1]["error"] is None and not dead.exists() and live.exists()
    assert sorted(p.name for p in code.iterdir()) == sorted([".partial-live", tree.digest, f"{tree.digest}.files"])


def wait_until(condition, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_hold_waits_for_a_move_and_then_refuses_the_moved_copy(tmp_path):
    copy = tmp_path / ("a" * 64)
    copy.mkdir()
    taken = inuse.take(str(copy))
    assert taken is not None and inuse.take(str(copy)) is None
    outcome = []

    def start_run():
        try:
            outcome.append(inuse.hold(str(copy)))
        except inuse.Moved as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=start_run)
    waiter.start()
    time.sleep(0.1)
    assert outcome == []  # waits while the receiver holds the copy
    copy.rename(tmp_path / "moved")
    os.close(taken)
    waiter.join(5)
    assert isinstance(outcome[0], inuse.Moved)
    (tmp_path / "b").mkdir()
    held = inuse.hold(str(tmp_path / "b"))
    assert inuse.take(str(tmp_path / "b")) is None
    os.close(held)
