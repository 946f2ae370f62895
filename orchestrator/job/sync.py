"""Code sync: a head directory to every node, content-addressed, so an unchanged tree costs one check per node.

    tree = read_tree(Path("."), exclude=("data/*",))   # files git would keep (or all but DEFAULT_IGNORE), never .git
    tree.digest                                        # sha256 over paths, modes and contents
    results = sync_tree(tree, ["node1", "node2"], ssh=SshOptions(config="ssh_config"), python="/opt/venv/bin/python")
    results["node1"].status, results["node1"].path     # 'sent' | 'unchanged' | 'failed', '/root/.cache/.../<digest>'

Which files: in a git work tree, `git ls-files -co --exclude-standard` (tracked and untracked, .gitignore
honoured); elsewhere every file but DEFAULT_IGNORE; then the job's `sync.exclude` globs (matched against the
relative path and against the file name). Every node runs receive.py (inline over SSH with the job's
interpreter): it answers whether DEST/<digest> exists; only nodes without it get a tar, over their own SSH
session, all nodes in parallel. A node names the newest copies it has; when the head knows one of them (it keeps
the file list and hashes of every tree it synced, under ~/.cache/orchestrator/manifests), the tar holds only the
files that changed since, and the node hard-links the others from that copy: editing one file of a large tree
sends one file. (The head sends the tar once per node that lacks it; the image relay's node-to-node chain would
send it once in all.)
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import ConfigError
from orchestrator.inline import python_source
from orchestrator.remote.ssh import SshOptions, SshTransport, describe_error

RECEIVER = Path(__file__).with_name("receive.py")
MANIFESTS = Path("~/.cache/orchestrator/manifests")
DEFAULT_IGNORE = (".git", "__pycache__", "*.pyc", ".venv", "venv", ".mypy_cache", ".pytest_cache", ".ipynb_checkpoints")


@dataclass(frozen=True)
class Tree:
    root: Path
    files: tuple[str, ...]
    """Relative POSIX paths, sorted."""
    digest: str
    manifest: dict[str, str] = field(default_factory=dict, compare=False)
    """rel -> 'kind:sha256' of each file (kind f, x or l): what a later sync compares against."""

    def tar_bytes(self, only: set[str] | None = None) -> bytes:
        """The files (or those in `only`) as one gzip'd tar (owner root: a node's unpack does not depend on head
        uids)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
            for rel in self.files:
                if only is not None and rel not in only:
                    continue
                info = tar.gettarinfo(str(self.root / rel), arcname=rel)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if info.isreg():
                    with open(self.root / rel, "rb") as fh:
                        tar.addfile(info, fh)
                else:
                    tar.addfile(info)
        return buf.getvalue()


def _excluded(rel: str, patterns: Sequence[str]) -> bool:
    parts = rel.split("/")
    if ".git" in parts:
        return True
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(parts[-1], p) or any(fnmatch.fnmatch(d, p) for d in parts[:-1])
               for p in patterns)


def _git_files(root: Path) -> list[str] | None:
    """The files git keeps in `root` (tracked + untracked, not ignored), or None when root is no git work tree."""
    try:
        inside = subprocess.run(["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"], capture_output=True,
                                text=True, timeout=30)
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return None
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "-co", "--exclude-standard", "-z"],
                                capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return [p for p in listed.stdout.decode().split("\0") if p]


def _walk(root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames if not _excluded(d, DEFAULT_IGNORE)]
        for name in filenames:
            found.append(name if rel_dir == "." else f"{rel_dir}/{name}")
    return [f for f in found if not _excluded(f, DEFAULT_IGNORE)]


def read_tree(root: Path, *, exclude: Sequence[str] = (), field: str = "workdir") -> Tree:
    """List and hash the tree under `root` (ConfigError when it is not a directory)."""
    if not root.is_dir():
        raise ConfigError(field, str(root), "give a directory on the head (relative to the job file), e.g. workdir: .")
    listed = _git_files(root)
    names = sorted(set(listed if listed is not None else _walk(root)))
    files, sha, manifest = [], hashlib.sha256(), {}
    for rel in names:
        if _excluded(rel, exclude):
            continue
        path = root / rel
        try:
            st = path.lstat()
        except FileNotFoundError:  # tracked by git but deleted in the work tree
            continue
        if stat.S_ISLNK(st.st_mode):
            content = os.readlink(path).encode()
        elif stat.S_ISREG(st.st_mode):
            content = path.read_bytes()
        else:
            continue
        kind = "l" if stat.S_ISLNK(st.st_mode) else ("x" if st.st_mode & 0o111 else "f")
        content_sha = hashlib.sha256(content)
        sha.update(f"{rel}\0{kind}\0{len(content)}\0".encode() + content_sha.digest())
        files.append(rel)
        manifest[rel] = f"{kind}:{content_sha.hexdigest()}"
    return Tree(root, tuple(files), sha.hexdigest(), manifest)


def save_manifest(tree: Tree, directory: Path = MANIFESTS) -> None:
    """Remember the tree's files on the head, so that a later sync can send only what changed since."""
    directory = directory.expanduser()
    path = directory / f"{tree.digest}.json"
    if path.exists():
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(tree.manifest))
        os.replace(tmp, path)
    except OSError:
        pass  # only an optimisation: the next sync sends the whole tree


def load_manifest(digest: str, directory: Path = MANIFESTS) -> dict[str, str] | None:
    try:
        return json.loads((directory.expanduser() / f"{digest}.json").read_text())
    except (OSError, ValueError):
        return None


def delta(tree: Tree, bases: Sequence[str], directory: Path = MANIFESTS, *,
          load: Callable[[str], dict[str, str] | None] | None = None) -> tuple[str | None, list[str]]:
    """(the first of a node's copies the head knows, the files the node may link from it) or (None, []).
    load(digest): a manifest (default: load_manifest from `directory`; a sync passes one that reads each once)."""
    load = load or (lambda digest: load_manifest(digest, directory))
    base = known_base(bases, load)
    if base is None:
        return None, []
    known = load(base)
    return base, [rel for rel in tree.files if known.get(rel) == tree.manifest.get(rel)]


def known_base(bases: Sequence[str], load: Callable[[str], dict[str, str] | None]) -> str | None:
    """The first of a node's copies whose manifest the head has."""
    return next((b for b in bases if isinstance(b, str) and load(b) is not None), None)


@dataclass
class SyncResult:
    host: str
    status: str = "failed"
    """'sent', 'unchanged' (the node had this version) or 'failed'."""
    path: str | None = None
    """The code directory on the node (absolute)."""
    error: str | None = None
    delta_from: str | None = None
    """The node's copy that the unchanged files were linked from (only the changed files were sent)."""

    @property
    def ok(self) -> bool:
        return self.status in ("sent", "unchanged")


async def _event(session) -> dict:
    async for line in session.stdout:
        try:
            return json.loads(line)
        except ValueError:
            continue
    last = ""
    async for line in session.stderr:
        last = line.strip() or last
    raise ConnectionError(f"receiver ended without an answer{': ' + last if last else ''}")


async def sync_tree_async(tree: Tree, hosts: Sequence[str], *, ssh: SshOptions | None = None, python: str = "python3",
                          dest: str = "~/.cache/orchestrator/code", timeout: float = 600.0) -> dict[str, SyncResult]:
    """Bring `tree` to DEST/<digest> on every host (parallel); every host gets a result, never first-error-wins."""
    transport = SshTransport(ssh or SshOptions())
    transport.prepare(hosts)
    argv = [python, "-I", "-S", "-c", python_source(RECEIVER), dest, tree.digest]
    payloads: dict[str | None, bytes] = {}  # base -> header line + tar: built once per base
    manifest = functools.cache(load_manifest)  # each base's read once, not once per node that offers it
    save_manifest(tree)

    def payload(base: str | None) -> bytes:
        if base not in payloads:
            _, keep = delta(tree, [base], load=manifest) if base else (None, [])
            data = tree.tar_bytes(only=set(tree.files) - set(keep)) if base else tree.tar_bytes()
            header = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "base": base, "keep": keep}
            payloads[base] = json.dumps(header).encode() + b"\n" + data
        return payloads[base]

    async def one(host: str) -> SyncResult:
        result = SyncResult(host)
        base = None
        for attempt in range(2):  # a delta the node cannot apply (its copy changed): once more, the whole tree
            try:
                session = await transport.open(host, argv)
            except Exception as exc:  # noqa: BLE001 - this host's result; the others go on
                result.error = describe_error(exc)
                return result
            try:
                first = await _event(session)
                result.path = first.get("path")
                if first.get("have"):
                    result.status = "unchanged"
                    return result
                base = known_base(first.get("bases") or [], manifest) if attempt == 0 else None
                session.send(payload(base))
                await session.drain()
                done = await _event(session)
                result.status, result.error = ("sent", None) if done.get("done") else ("failed", done.get("error"))
                result.delta_from = base
            except Exception as exc:  # noqa: BLE001
                result.error = describe_error(exc) if not isinstance(exc, ConnectionError) else str(exc)
            finally:
                session.close()
            if result.ok or base is None:
                return result
        return result

    try:
        results = await asyncio.wait_for(asyncio.gather(*(one(h) for h in hosts)), timeout)
    finally:
        await transport.aclose()
    return {r.host: r for r in results}


def sync_tree(tree: Tree, hosts: Sequence[str], **kwargs) -> dict[str, SyncResult]:
    """Blocking sync_tree_async."""
    return asyncio.run(sync_tree_async(tree, hosts, **kwargs))
