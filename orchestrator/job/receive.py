"""Node-side code receiver: unpack a tar into DEST/<digest>, unless that version is already there, while the relay
chain forwards the tar to the next node.

    python3 -I -S -c "$(cat receive.py)" < control    # started by sync.py over SSH; stdlib only
    # the chain's protocol (remote/chain_node.py), with these fields:
    # stdin, line 1:  {"dest": "~/.cache/orchestrator/code", "digest": "..", "token": ".."}
    # stdout:         {"event": "ready", "have": false, "path": "/root/.cache/orchestrator/code/<digest>",
    #                  "bases": [older digests], "error": null}
    # stdin, line 2:  {"go": true, ..., "size": N, "files": 20000, "base": null | D, "removed": [paths]}
    # stdout, last:   {"event": "done", "error": null | "sha256 mismatch ..", "path": .., "delta_failed": false}

A delta: with "base", the tar holds only the changed and new files; every other file of the copy DEST/<base>
except those in "removed" becomes a hard link in the new copy. The node knows its copies' file lists
(DEST/<digest>.files, written with each copy), so the head names only what changed; "bases" offers the newest
copies this node has (by modification time) for that. A copy that lacks one of its files fails the delta
(delta_failed: the head sends the whole tree again), and the new copy must hold "files" files.

The directory appears with one rename, after the whole tar was checked and unpacked: a directory named after the
digest is always complete, which is what makes "it exists" the cheap check of an unchanged tree. When the stream
ends early or the head's session closes (the head died or gave up), the partial copy is removed and nothing
else is touched.
"""

import os
import re
import shutil
import tarfile
import tempfile
import threading

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


class TreeSink:
    """The chain's sink on a node: the stream is stored in a partial directory, checked, unpacked, renamed."""

    def __init__(self):
        self.lock = threading.Lock()  # the head's session closing (another thread) vs the unpack
        self.tmp = self.out = None
        self.aborted = False

    def ready(self, spec):
        self.root = os.path.expanduser(spec["dest"])
        self.final = os.path.join(self.root, spec["digest"])
        have = os.path.isdir(self.final)
        return {"have": have, "path": self.final, "bases": [] if have else bases(self.root), "error": None}

    def start(self, go):
        self.go = go
        os.makedirs(self.root, exist_ok=True)
        with self.lock:
            self.tmp = tempfile.mkdtemp(prefix=".partial-", dir=self.root)
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
            finally:
                self.cleanup()

    def unpack(self):
        tree = os.path.join(self.tmp, "tree")
        os.mkdir(tree)
        base = self.go.get("base")
        with tarfile.open(os.path.join(self.tmp, "code.tar")) as tar:
            members = tar.getmembers()
            files = [m.name for m in members if not m.isdir()]
            if base:
                listed = file_list(self.root, base)
                if listed is None:
                    raise LookupError("the copy %s has no file list" % base)
                skip = set(self.go.get("removed") or ()).union(files)  # a sent file is never written through a link
                linked = [rel for rel in listed if rel not in skip]
                link_copy(os.path.join(self.root, base), tree, linked)
                files += linked
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tree, members, filter="data")
            else:  # older Python: members were made on the head from a listed tree (no absolute or .. paths)
                tar.extractall(tree, members)
        if len(files) != self.go.get("files", len(files)):
            raise LookupError("the new copy holds %d files, the tree %d" % (len(files), self.go["files"]))
        with open(os.path.join(self.tmp, "files"), "wb") as fh:
            fh.write(b"\0".join(sorted(p.encode() for p in files)))
        os.replace(os.path.join(self.tmp, "files"), self.final + ".files")  # a list without its copy is never used
        try:
            os.rename(tree, self.final)
        except OSError:
            if not os.path.isdir(self.final):  # another sync of the same version won the race: that copy is as good
                raise
        return {"error": None, "path": self.final}


if __name__ == "__main__":
    serve(TreeSink())
