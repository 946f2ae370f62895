"""Node-side code receiver: unpack a tar from stdin into DEST/<digest>, unless that version is already there.

    python3 -I -S -c "$(cat receive.py)" DEST DIGEST      # started by sync.py over SSH; stdlib only
    # stdout: {"have": true | false, "path": "/root/.cache/orchestrator/code/<digest>", "bases": [older digests]}
    # stdin (when have is false): one line {"size": N, "sha256": "..", "base": null | D, "keep": [paths]},
    #   then N bytes of tar
    # stdout: {"done": true, "error": null}   or   {"done": false, "error": "sha256 mismatch"}

A delta: with "base", the files listed in "keep" are hard links to the same files of the copy DEST/<base> (the
head knows they are unchanged), and the tar holds only the changed and new files; "bases" offers the newest
copies this node has (by modification time) for that.

The directory appears with one rename, after the whole tar was checked and unpacked: a directory named after the
digest is always complete, which is what makes "it exists" the cheap check of an unchanged tree. When stdin
closes early (the head died or gave up), the partial copy is removed and nothing else is touched.
"""

import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile

CHUNK = 1 << 20
BASES = 3
_DIGEST = re.compile(r"[0-9a-f]{64}\Z")


def emit(**event):
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def bases(root):
    """The newest complete copies here, newest first (a partial copy never has a digest for a name)."""
    try:
        names = [n for n in os.listdir(root) if _DIGEST.match(n) and os.path.isdir(os.path.join(root, n))]
    except FileNotFoundError:
        return []
    return sorted(names, key=lambda n: os.stat(os.path.join(root, n)).st_mtime, reverse=True)[:BASES]


def link_copy(base, tree, keep):
    """TREE/rel for every rel in keep: a hard link to BASE/rel (a copy where links do not work)."""
    for rel in keep:
        src, dst = os.path.join(base, rel), os.path.join(tree, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
            continue
        try:
            os.link(src, dst)
        except FileNotFoundError:
            raise FileNotFoundError("the copy %s lacks %s" % (os.path.basename(base), rel)) from None
        except OSError:
            shutil.copy2(src, dst)


def receive(dest, digest):
    root = os.path.expanduser(dest)
    final = os.path.join(root, digest)
    if os.path.isdir(final):
        emit(have=True, path=final)
        return 0
    emit(have=False, path=final, bases=bases(root))
    stdin = sys.stdin.buffer
    header = json.loads(stdin.readline() or "{}")
    size = header.get("size", -1)
    os.makedirs(root, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".partial-", dir=root) as tmp:
        data = os.path.join(tmp, "code.tar")
        sha = hashlib.sha256()
        left = size
        with open(data, "wb") as out:
            while left > 0:
                block = stdin.read(min(CHUNK, left))
                if not block:
                    emit(done=False, error="the stream ended early")
                    return 1
                sha.update(block)
                out.write(block)
                left -= len(block)
        if sha.hexdigest() != header.get("sha256"):
            emit(done=False, error="sha256 mismatch: the copy was damaged on the way")
            return 1
        tree = os.path.join(tmp, "tree")
        if header.get("base"):
            link_copy(os.path.join(root, header["base"]), tree, header.get("keep") or [])
        with tarfile.open(data) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tree, filter="data")
            else:  # older Python: members were made on the head from a listed tree (no absolute or .. paths)
                tar.extractall(tree)
        try:
            os.rename(tree, final)
        except OSError:
            if not os.path.isdir(final):  # another sync of the same version won the race: that copy is as good
                raise
            shutil.rmtree(tree, ignore_errors=True)
    emit(done=True, error=None)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(receive(sys.argv[1], sys.argv[2]))
    except Exception as exc:  # one line for the head, which reports it per host
        emit(done=False, error="%s: %s" % (type(exc).__name__, exc))
        sys.exit(1)
