"""Code sync: a head directory to every node, content-addressed, so an unchanged tree costs one check per node.

    tree = read_tree(Path("."), exclude=("data/*",))   # files git would keep (or all but DEFAULT_IGNORE), never .git
    tree.digest                                        # sha256 over paths, modes and contents
    results = sync_tree(tree, ["node1", "node2"], ssh=SshOptions(config="ssh_config"), python="/opt/venv/bin/python")
    results["node1"].status, results["node1"].path     # 'sent' | 'unchanged' | 'failed', '/root/.cache/.../<digest>'
    sync_tree(tree, hosts, mode="parallel")            # the head sends to every node itself (no chain)

Which files: in a git work tree, `git ls-files -co --exclude-standard` (tracked and untracked, .gitignore
honoured); elsewhere every file but DEFAULT_IGNORE; then the job's `sync.exclude` globs (matched against the
relative path and against the file name). Every node runs receive.py (inline over SSH with the job's
interpreter): it answers whether DEST/<digest> exists; the nodes without it get the tar through the relay chain
of `images load` (remote/chain.py): the head writes it once into the first node's session, and each node
stores it while it forwards it byte for byte to the next, then checks and unpacks it (mode='parallel': the
head sends it to every node).
A node names the newest copies it has; when the head knows one of them (it keeps the file list and hashes of
every tree it synced, under ~/.cache/orchestrator/manifests), the tar holds only the files that changed since,
with the list of those removed, and the node hard-links the others from that copy: editing one file of a large
tree sends one file. When no run holds that copy (job/inuse.py), the node turns it into the new version in place
instead (unlink what changed, unpack the rest): a cost in changed files, not in files. A chain carries one stream, so it gets a delta when all its nodes have the same base;
nodes with different bases get one stream per base (plan_bases). The head re-reads only the files whose stat
changed since the last sync of that directory (a hash cache under ~/.cache/orchestrator/hashes, as git's
index), so an unchanged tree costs its stats.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import hashlib
import io
import json
import os
import re
import secrets
import stat
import subprocess
import tarfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import ConfigError
from orchestrator.inline import python_source
from orchestrator.remote.chain import Node, feed_chain, open_node, plan_chains
from orchestrator.remote.ssh import SshOptions, SshTransport, describe_error

RECEIVER = Path(__file__).with_name("receive.py")
MANIFESTS = Path("~/.cache/orchestrator/manifests")
HASHES = Path("~/.cache/orchestrator/hashes")
HASHED_TREES = 32
RACY_S = 2.0
"""A file changed this recently is not cached: a write in the same timestamp tick as the read could leave its stat
unchanged (git's "racy clean" files)."""
SYNC_MODES = ("relay", "parallel")
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
    """Whether a glob of `patterns` matches the relative path, the file name or a directory on the way (or it is
    in .git)."""
    parts = rel.split("/")
    if ".git" in parts:
        return True
    match = _globs(tuple(patterns))
    return match is not None and (match(rel) is not None or any(match(part) is not None for part in parts))


@functools.lru_cache(maxsize=32)
def _globs(patterns: tuple[str, ...]):
    """One compiled regex for all the globs (fnmatch per pattern and file costs seconds on 20,000 files)."""
    return re.compile("|".join(fnmatch.translate(p) for p in patterns)).match if patterns else None


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


def read_tree(root: Path, *, exclude: Sequence[str] = (), field: str = "workdir",
              cache: Path | None = HASHES) -> Tree:
    """List and hash the tree under `root` (ConfigError when it is not a directory). `cache`: where the hashes of
    files whose stat did not change are kept between calls (None: read every file)."""
    if not root.is_dir():
        raise ConfigError(field, str(root), "give a directory on the head (relative to the job file), e.g. workdir: .")
    listed = _git_files(root)
    names = sorted(set(listed if listed is not None else _walk(root)))
    files, sha, manifest = [], hashlib.sha256(), {}
    hashes, base = _HashCache(root, cache), str(root)
    for rel in names:
        if _excluded(rel, exclude):
            continue
        path = os.path.join(base, rel)  # str, not Path: 20,000 Path objects cost more than the stats
        try:
            st = os.lstat(path)
        except FileNotFoundError:  # tracked by git but deleted in the work tree
            continue
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(path).encode()
            size, content_sha = len(target), hashlib.sha256(target).hexdigest()
        elif stat.S_ISREG(st.st_mode):
            size, content_sha = hashes.file(path, rel, st)
        else:
            continue
        kind = "l" if stat.S_ISLNK(st.st_mode) else ("x" if st.st_mode & 0o111 else "f")
        sha.update(f"{rel}\0{kind}\0{size}\0".encode() + bytes.fromhex(content_sha))
        files.append(rel)
        manifest[rel] = f"{kind}:{content_sha}"
    hashes.save()
    return Tree(root, tuple(files), sha.hexdigest(), manifest)


class _HashCache:
    """rel -> (size, sha256) of the files whose stat (size, times, inode, mode) is the one they had when last read,
    as git's index does: re-hashing an unchanged 100 MB tree costs its stats, not a read of every byte."""

    def __init__(self, root: Path, directory: Path | None):
        self.path = (directory.expanduser() / f"{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:32]}.json"
                     if directory is not None else None)
        try:
            self.old = json.loads(self.path.read_text()) if self.path is not None else {}
        except (OSError, ValueError):
            self.old = {}
        self.new: dict[str, list] = {}
        self.now = time.time()

    def file(self, path: str, rel: str, st: os.stat_result) -> tuple[int, str]:
        key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode]
        entry = self.old.get(rel)
        if isinstance(entry, list) and entry[:-1] == key:
            size, digest = st.st_size, entry[-1]
        else:
            with open(path, "rb") as fh:
                content = fh.read()
            size, digest = len(content), hashlib.sha256(content).hexdigest()
        if self.now - max(st.st_mtime, st.st_ctime) > RACY_S:
            self.new[rel] = key + [digest]
        return size, digest

    def save(self) -> None:
        if self.path is None or self.new == self.old:
            return
        if not _write_cache(self.path, self.new):
            return
        try:
            kept = sorted(self.path.parent.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
            for stale in kept[HASHED_TREES:]:  # one file per tree ever synced: keep the recent ones
                stale.unlink()
        except OSError:
            pass


def _write_cache(path: Path, data) -> bool:
    """Write a head-side cache file atomically; False when it could not be (the caches are only optimisations:
    without them a sync reads every file, or sends the whole tree)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
        return True
    except OSError:
        return False


def save_manifest(tree: Tree, directory: Path = MANIFESTS) -> None:
    """Remember the tree's files on the head, so that a later sync can send only what changed since."""
    path = directory.expanduser() / f"{tree.digest}.json"
    if not path.exists():
        _write_cache(path, tree.manifest)


def load_manifest(digest: str, directory: Path = MANIFESTS) -> dict[str, str] | None:
    try:
        return json.loads((directory.expanduser() / f"{digest}.json").read_text())
    except (OSError, ValueError):
        return None


def delta(tree: Tree, base: dict[str, str]) -> tuple[list[str], list[str]]:
    """(the files changed or new since the copy whose manifest is `base`, the files it has that the tree lost)."""
    changed = [rel for rel in tree.files if base.get(rel) != tree.manifest.get(rel)]
    return changed, [rel for rel in base if rel not in tree.manifest]


def known_base(bases: Sequence[str], load: Callable[[str], dict[str, str] | None]) -> str | None:
    """The first of a node's copies whose manifest the head has."""
    return next((b for b in bases if isinstance(b, str) and load(b) is not None), None)


def plan_bases(offers: dict[str, list[str]], load: Callable[[str], dict[str, str] | None],
               mode: str = "relay") -> dict[str | None, list[str]]:
    """base -> the nodes that get the tree as a delta from it (None: the whole tree), in `offers`' order (pure but
    for `load`). A chain carries one stream, so in relay mode a base that every node has (and the head knows) makes
    one delta for all; otherwise each node's own newest known base groups it, one stream per group."""
    hosts = list(offers)
    if mode == "relay" and hosts:
        common = next((b for b in offers[hosts[0]] if all(b in offers[h] for h in hosts) and load(b) is not None),
                      None)
        if common is not None:
            return {common: hosts}
    groups: dict[str | None, list[str]] = {}
    for host in hosts:
        groups.setdefault(known_base(offers[host], load), []).append(host)
    return groups


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


async def sync_tree_async(tree: Tree, hosts: Sequence[str], *, ssh: SshOptions | None = None, python: str = "python3",
                          dest: str = "~/.cache/orchestrator/code", timeout: float = 600.0, mode: str = "relay",
                          connect_timeout: float = 30.0, pin: bool = True,
                          on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, SyncResult]:
    """Bring `tree` to DEST/<digest> on every host; every host gets a result, never first-error-wins.

    mode: 'relay' (the head sends each stream once, node to node), 'parallel' (to every node from the head).
    pin: code will run from the copy: no other sync turns it into a newer version for PIN_S s (job/inuse.py), by
    when the run holds it itself. False when nothing runs from it (a benchmark).
    on_progress(host, bytes received, bytes in all)."""
    if mode not in SYNC_MODES:
        raise ConfigError("mode", mode, f"use one of {', '.join(SYNC_MODES)}")
    transport = SshTransport(ssh or SshOptions())
    transport.prepare(hosts)
    argv = [python, "-I", "-S", "-c", python_source(RECEIVER)]
    manifest = functools.cache(load_manifest)  # each base's read once, not once per node that offers it
    payloads: dict[str | None, tuple[dict, bytes]] = {}  # base -> (the go line's fields, the tar): built once
    results = {h: SyncResult(h) for h in hosts}
    save_manifest(tree)

    def payload(base: str | None) -> tuple[dict, bytes]:
        if base not in payloads:
            changed, removed = delta(tree, manifest(base)) if base else (tree.files, [])
            data = tree.tar_bytes(only=set(changed)) if base else tree.tar_bytes()
            payloads[base] = {"size": len(data), "files": len(tree.files), "base": base, "removed": removed}, data
        return payloads[base]

    async def one_round(hosts: list[str], deltas: bool) -> list[str]:
        """Sync `hosts`; -> those whose copy could not take a delta (to be sent the whole tree)."""
        nodes: dict[str, Node] = {}
        spec = {"dest": dest, "digest": tree.digest, "token": secrets.token_hex(16), "pin": pin}

        async def probe(host: str) -> None:
            try:
                nodes[host] = await open_node(transport, host, argv, spec, connect_timeout)
            except Exception as exc:  # noqa: BLE001 - this host's result; the others go on
                results[host].error = describe_error(exc) if not isinstance(exc, ConnectionError) else str(exc)

        retry: list[str] = []
        try:
            await asyncio.gather(*(probe(h) for h in hosts))
            offers = {}
            for host, node in ((h, nodes[h]) for h in hosts if h in nodes):  # the chain in the caller's order
                r = results[host]
                r.path, r.error = node.ready.get("path"), node.ready.get("error")
                if r.error is None and node.ready.get("have"):
                    r.status = "unchanged"
                elif r.error is None:
                    offers[host] = (node.ready.get("bases") or []) if deltas else []
            for host in set(nodes) - set(offers):
                await nodes[host].tell({"go": False})

            def finish(host: str, event: dict | None, error: str | None) -> None:
                r = results[host]
                r.status, r.error = ("failed", error) if error else ("sent", None)
                if (event or {}).get("delta_failed") and r.delta_from:
                    retry.append(host)

            async def feed(base: str | None, chain: list[str]) -> dict[str, str]:
                go, data = payload(base)
                for host in chain:
                    results[host].delta_from = base
                return await feed_chain(chain, nodes, go=go, chunks=_chunks(data), finish=finish,
                                        timeout=connect_timeout, on_progress=(
                                            lambda h, n: on_progress(h, n, go["size"])) if on_progress else None)

            streams = [(base, chain) for base, group in plan_bases(offers, manifest, mode).items()
                       for chain in plan_chains(group, mode)]
            for notes in await asyncio.gather(*(feed(base, chain) for base, chain in streams)):
                for host, note in notes.items():
                    results[host].error += note
        finally:
            for node in nodes.values():
                node.close()
        return retry

    async def both_rounds() -> None:
        if again := await one_round(list(hosts), deltas=True):  # a copy changed under us: the whole tree
            await one_round(again, deltas=False)

    try:
        await asyncio.wait_for(both_rounds(), timeout)
    except asyncio.TimeoutError:
        pass  # every host without a result says so below
    finally:
        await transport.aclose()
    for r in results.values():
        if r.status == "failed" and r.error is None:
            r.error = f"no result in {timeout:g} s"
        if r.status != "sent":
            r.delta_from = None
    return results


async def _chunks(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield view[start:start + size]


def sync_tree(tree: Tree, hosts: Sequence[str], **kwargs) -> dict[str, SyncResult]:
    """Blocking sync_tree_async."""
    return asyncio.run(sync_tree_async(tree, hosts, **kwargs))
