"""Node-side code receiver: unpack a tar into DEST/<digest>, unless that version is already there, while the relay
chain forwards the tar to the next node.

    python3 -I -S -c "$(cat receive.py)" < control    # started by sync.py over SSH; stdlib only
    # the chain's protocol (remote/chain_node.py), with these fields:
    # stdin, line 1:  {"dest": "~/.cache/orchestrator/code", "digest": "..", "token": "..", "pin": true}
    # stdout:         {"event": "ready", "have": false, "path": "/root/.cache/orchestrator/code/<digest>",
    #                  "bases": [older digests], "error": null}
    # stdin, line 2:  {"go": true, ..., "size": N, "files": 20000, "base": null | D, "removed": [paths]}
    # stdout, last:   {"event": "done", "error": null | "sha256 mismatch ..", "path": .., "delta_failed": false}

A delta: with "base", the tar holds only the changed and new files; every other file of the copy DEST/<base>
except those in "removed" becomes a hard link in the new copy. The node knows its copies' file lists
(DEST/<digest>.files, written with each copy), so the head names only what changed; "bases" offers the newest
copies this node has (by modification time) for that. A copy that lacks one of its files fails the delta
(delta_failed: the head sends the whole tree again), and the new copy must hold "files" files.

In place: when no run holds DEST/<base> and no sync pinned it (job/inuse.py: a run's node agent holds a shared
lock on its working directory; "pin" keeps a copy this sync made or found for PIN_S s, until its run starts),
the copy itself becomes the new version, at a cost in changed files rather than in files: under its exclusive
lock its file list goes, it is renamed into the partial directory, the removed files and every file the tar
holds are unlinked (never written through: other copies share inodes), and the tar is unpacked into it. What a
run left in it (outputs, __pycache__: a directory modified after the file list was written) is removed; a copy
with a listed file rewritten since is linked instead. Once the list is gone the copy is no base any more, so a
failure after the move is a failed delta (the head sends the whole tree), never a half-moved copy on offer.

The directory appears with one rename, after the whole tar was checked and unpacked: a directory named after the
digest is always complete, which is what makes "it exists" the cheap check of an unchanged tree. When the stream
ends early or the head's session closes (the head died or gave up), the partial copy is removed and nothing
else is touched. Each receiver holds an exclusive lock on its partial directory: the next receiver removes the
ones nobody holds (their receiver was killed).
"""

import os
import re
import shutil
import tarfile
import tempfile
import threading

from orchestrator.job.inuse import Moved, hold, pin, pinned, take
from orchestrator.remote.chain_node import serve

BASES = 3
_DIGEST = re.compile(r"[0-9a-f]{64}\Z")


def file_list(root, digest):
    """The relative paths of the copy DEST/<digest>, as written with it (None: no list, not a base)."""
    try:
        with open(os.path.join(root, digest + ".files"), "rb") as fh:
            return [p.decode() for p in fh.read().split(b"\0") if p]
    except FileNotFoundError:
        return None


def bases(root):
    """The newest complete copies here that have a file list, newest first (a partial copy never has a digest for
    a name)."""
    try:
        names = [n for n in os.listdir(root) if _DIGEST.match(n) and os.path.isdir(os.path.join(root, n))
                 and os.path.exists(os.path.join(root, n + ".files"))]
    except FileNotFoundError:
        return []
    return sorted(names, key=lambda n: os.stat(os.path.join(root, n)).st_mtime, reverse=True)[:BASES]


def link_copy(base, tree, rels):
    """TREE/rel for every rel (sorted): a hard link to BASE/rel, or a copy where links do not work. One makedirs per
    directory: on 20,000 files the links are what costs."""
    made = None
    for rel in rels:
        parent = os.path.dirname(rel)
        if parent != made:
            os.makedirs(os.path.join(tree, parent), exist_ok=True)
            made = parent
        src, dst = os.path.join(base, rel), os.path.join(tree, rel)
        try:
            os.link(src, dst, follow_symlinks=False)
        except FileNotFoundError:
            raise LookupError("the copy %s lacks %s" % (os.path.basename(base), rel)) from None
        except OSError:
            shutil.copy2(src, dst, follow_symlinks=False)


def link_base(base, tree, rels):
    """link_copy under a shared lock on BASE: no other sync moves it meanwhile (LookupError when one did)."""
    try:
        fd = hold(base)
    except Moved:
        fd = None
    if fd is None:
        raise LookupError("the copy %s was taken by another sync" % os.path.basename(base))
    try:
        os.mkdir(tree)
        link_copy(base, tree, rels)
    finally:
        os.close(fd)


def move_copy(root, base, tree, listed, removed, sent):
    """Turn the copy ROOT/<base> into TREE, the new version minus the tar's files, in place: False (nothing
    touched) when a run holds it, a sync pinned it, or a run replaced one of its files. Its file list goes first:
    from then on it is no base, so a failure after the move costs one whole send, never a half-made copy."""
    path = os.path.join(root, base)
    fd = take(path)
    if fd is None:
        return False
    try:
        if pinned(path):
            return False
        made = os.stat(path + ".files").st_mtime_ns
        dirty = changed_dirs(path, listed, made)
        if dirty and edited(path, listed, dirty, made):
            return False
        for name in (".files", ".pin"):
            try:
                os.unlink(path + name)
            except FileNotFoundError:
                pass
        os.rename(path, tree)
    finally:
        os.close(fd)
    tidy(tree, listed, dirty)
    for rel in removed:
        _unlink(tree, rel)
        prune(tree, os.path.dirname(rel))
    for rel in sent:  # unlinked, never written through: other copies may share the inode
        _unlink(tree, rel)
    return True


def _dirs(listed):
    """Every directory of a copy (relative, "" for its top) from its file list."""
    dirs = {""}
    for parent in {rel.rpartition("/")[0] for rel in listed}:
        while parent not in dirs:
            dirs.add(parent)
            parent = parent.rpartition("/")[0]
    return dirs


def changed_dirs(copy, listed, made):
    """The directories of COPY modified after its file list was written (the list is written last): a run made
    or removed something there. LookupError for a directory that is gone."""
    dirty = []
    for rel in _dirs(listed):
        try:
            if os.lstat(os.path.join(copy, rel)).st_mtime_ns > made:
                dirty.append(rel)
        except FileNotFoundError:
            raise LookupError("the copy %s lacks %s/" % (os.path.basename(copy), rel)) from None
    return dirty


def edited(copy, listed, dirty, made):
    """Whether a listed file in a changed directory was written after the copy was made (replaced by a run)."""
    dirty = set(dirty)
    for rel in listed:
        if rel.rpartition("/")[0] in dirty:
            try:
                if os.lstat(os.path.join(copy, rel)).st_mtime_ns > made:
                    return True
            except FileNotFoundError:
                raise LookupError("the copy %s lacks %s" % (os.path.basename(copy), rel)) from None
    return False


def tidy(tree, listed, dirty):
    """Remove from the changed directories what is not the copy's (a run's outputs, __pycache__): the new version
    holds its files and nothing else, as a linked copy does."""
    if not dirty:
        return
    want = {rel: set() for rel in dirty}
    for rel in listed:
        parent, _, name = rel.rpartition("/")
        while True:
            if parent in want:
                want[parent].add(name)
            if not parent:
                break
            parent, _, name = parent.rpartition("/")
    for rel, names in want.items():
        for entry in os.scandir(os.path.join(tree, rel)):
            if entry.name not in names:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)


def _unlink(tree, rel):
    try:
        os.unlink(os.path.join(tree, rel))
    except FileNotFoundError:
        pass


def prune(tree, rel):
    """Remove TREE/rel and its parents while they are empty (a linked copy has no empty directories)."""
    while rel:
        try:
            os.rmdir(os.path.join(tree, rel))
        except OSError:
            return
        rel = os.path.dirname(rel)


def partial_dir(root):
    """A new partial directory under ROOT and the fd of its exclusive lock, held while its receiver lives; the
    partial directories nobody holds (their receiver was killed) are removed first. Under a lock on ROOT: no
    receiver sees another's partial directory before it is locked."""
    import fcntl

    rootfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(rootfd, fcntl.LOCK_EX)
            names = os.listdir(root)
        except OSError:  # no flock here: nothing tells a live receiver's directory from a dead one's
            names = []
        for name in names:
            if name.startswith(".partial-"):
                fd = take(os.path.join(root, name))
                if fd is not None:
                    os.rename(os.path.join(root, name), os.path.join(root, ".stale" + name[len(".partial"):]))
                    os.close(fd)
        tmp = tempfile.mkdtemp(prefix=".partial-", dir=root)
        held = take(tmp)
    finally:
        os.close(rootfd)
    for name in os.listdir(root):
        if name.startswith(".stale-"):  # renamed while locked; a sweep killed half-way leaves them too
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return tmp, held


class TreeSink:
    """The chain's sink on a node: the stream is stored in a partial directory, checked, unpacked, renamed."""

    def __init__(self):
        self.lock = threading.Lock()  # the head's session closing (another thread) vs the unpack
        self.tmp = self.out = self.held = None
        self.aborted = False

    def ready(self, spec):
        self.root = os.path.expanduser(spec["dest"])
        self.final = os.path.join(self.root, spec["digest"])
        self.pin = spec.get("pin", False)
        have = self.claim()
        return {"have": have, "path": self.final, "bases": [] if have else bases(self.root), "error": None}

    def claim(self):
        """Whether the copy is here; with "pin", pinned under a shared lock (a receiver moving it finishes first,
        and then it is not here)."""
        if not os.path.isdir(self.final):
            return False
        if not self.pin:
            return True
        try:
            fd = hold(self.final)
        except Moved:
            return False
        if fd is None:
            return False
        try:
            pin(self.final)
        finally:
            os.close(fd)
        return True

    def start(self, go):
        self.go = go
        os.makedirs(self.root, exist_ok=True)
        with self.lock:
            self.tmp, self.held = partial_dir(self.root)
            self.out = open(os.path.join(self.tmp, "code.tar"), "wb")

    def write(self, data):
        with self.lock:
            if not self.aborted:
                self.out.write(data)

    def abort(self):
        with self.lock:
            self.aborted = True
            self.cleanup()

    def cleanup(self):
        if self.out is not None:
            self.out.close()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if self.held is not None:
            os.close(self.held)
            self.held = None

    def finish(self, sha, expected):
        with self.lock:
            if self.aborted:
                return {"error": "aborted", "path": self.final}
            try:
                self.out.close()
                if sha != expected:
                    return {"error": "sha256 mismatch: the copy was damaged on the way", "path": self.final}
                return self.unpack()
            except LookupError as exc:
                return {"error": str(exc), "path": self.final, "delta_failed": True}
            except Exception as exc:  # noqa: BLE001 - a delta may have used its base up: the head sends all
                return {"error": "unpack failed: %s" % exc, "path": self.final, "delta_failed": bool(self.go.get("base"))}
            finally:
                self.cleanup()

    def unpack(self):
        tree = os.path.join(self.tmp, "tree")
        base = self.go.get("base")
        with tarfile.open(os.path.join(self.tmp, "code.tar")) as tar:
            members = tar.getmembers()
            files = [m.name for m in members if not m.isdir()]
            if base:
                listed = file_list(self.root, base)
                if listed is None:
                    raise LookupError("the copy %s has no file list" % base)
                removed = self.go.get("removed") or ()
                skip = set(removed).union(files)  # a sent file is never written through a link
                kept = [rel for rel in listed if rel not in skip]
                if not move_copy(self.root, base, tree, listed, removed, files):
                    link_base(os.path.join(self.root, base), tree, kept)
                files += kept
            else:
                os.mkdir(tree)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tree, members, filter="data")
            else:  # older Python: members were made on the head from a listed tree (no absolute or .. paths)
                tar.extractall(tree, members)
        if len(files) != self.go.get("files", len(files)):
            raise LookupError("the new copy holds %d files, the tree %d" % (len(files), self.go["files"]))
        with open(os.path.join(self.tmp, "files"), "wb") as fh:
            fh.write(b"\0".join(sorted(p.encode() for p in files)))
        os.replace(os.path.join(self.tmp, "files"), self.final + ".files")  # a list without its copy is never used
        if self.pin:
            pin(self.final)  # before the copy appears: no other sync can take it before its run starts
        try:
            os.rename(tree, self.final)
        except OSError:
            if not os.path.isdir(self.final):  # another sync of the same version won the race: that copy is as good
                raise
        return {"error": None, "path": self.final}


if __name__ == "__main__":
    serve(TreeSink())
