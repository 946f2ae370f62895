"""Peer copies of in-memory snapshots: each node keeper sends its ranks' newest snapshot files to one other node.

    server = ReplicaServer(snapshot_dir / "peers")          # holds copies sent to this node; .port to publish
    pusher = ReplicaPusher(snapshot_dir, ranks=[2, 3], successor=lambda: ("10.0.0.7", 41234))
    pusher.start()                                          # a thread: each new snapshot file goes to the successor
    fetch(("10.0.0.7", 41234), rank=2, into=snapshot_dir / "rank2")   # a spare taking node 1's place: [40, 41]

A node that is lost takes its /dev/shm snapshots with it; the copy its ring successor holds (keeper.py sends to
node_rank + 1) lets a spare restore the lost ranks from memory instead of the disk checkpoint. The pusher sends
only the newest file of each rank (a file that was replaced before it was sent is skipped), in a thread of the
keeper, so training never waits for it; the server keeps the newest KEEP copies per rank, written under a
temporary name and renamed, so a copy that exists is whole.

Wire format, one request per TCP connection: a JSON line, then bytes.
  {"op": "put", "rank": R, "step": S, "size": N} + N bytes          -> nothing
  {"op": "get", "rank": R}  -> {"files": [{"step": S, "size": N}, ...]} + the files' bytes in that order
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["ReplicaPusher", "ReplicaServer", "fetch", "local_address"]

log = logging.getLogger("orchestrator.engine.replica")

KEEP = 2
PUSH_POLL_S = 0.05
CONNECT_TIMEOUT_S = 5.0
_CHUNK = 1 << 20


def _steps(directory: Path) -> list[int]:
    """The steps of the complete snapshot files in `directory` (engine/snapshot.py names), oldest first."""
    from orchestrator.engine.snapshot import snapshot_steps

    return snapshot_steps(directory)


def _read_line(sock: socket.socket) -> dict:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("connection closed before the header")
        data += chunk
    return json.loads(data)


def _receive_file(sock: socket.socket, size: int, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as out:
        left = size
        while left:
            chunk = sock.recv(min(_CHUNK, left))
            if not chunk:
                raise ConnectionError(f"connection closed with {left} bytes of {path.name} to come")
            out.write(chunk)
            left -= len(chunk)
    os.replace(tmp, path)


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        root: Path = self.server.root  # type: ignore[attr-defined]
        try:
            head = _read_line(self.request)
            rank_dir = root / f"rank{int(head['rank'])}"
            if head["op"] == "put":
                rank_dir.mkdir(parents=True, exist_ok=True)
                _receive_file(self.request, int(head["size"]), rank_dir / f"step-{int(head['step'])}.pt")
                for old in _steps(rank_dir)[:-KEEP]:
                    (rank_dir / f"step-{old}.pt").unlink(missing_ok=True)
            elif head["op"] == "get":
                files = [(s, rank_dir / f"step-{s}.pt") for s in _steps(rank_dir)]
                blobs = [(s, p.read_bytes()) for s, p in files if p.exists()]
                header = {"files": [{"step": s, "size": len(b)} for s, b in blobs]}
                self.request.sendall(json.dumps(header).encode() + b"\n" + b"".join(b for _, b in blobs))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("replica request from %s failed: %s", self.client_address[0], exc)


class ReplicaServer(socketserver.ThreadingTCPServer):
    """Receives peer copies into ROOT/rank<R>/step-<S>.pt and serves them back; a daemon thread, any free port."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        super().__init__(("0.0.0.0", 0), _Handler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True,
                         name="replica-server").start()

    @property
    def port(self) -> int:
        return self.server_address[1]


class ReplicaPusher(threading.Thread):
    """Sends each rank's newest snapshot file under SNAPSHOT_DIR/rank<R>/ to successor() (host, port), or waits
    while it is None. Counts what it sent in .sent (rank -> newest step sent) for the keeper's news."""

    def __init__(self, snapshot_dir: Path, *, ranks: Callable[[], list[int]],
                 successor: Callable[[], tuple[str, int] | None]):
        super().__init__(daemon=True, name="replica-pusher")
        self.snapshot_dir, self.ranks, self.successor = Path(snapshot_dir), ranks, successor
        self.sent: dict[int, int] = {}
        self.stopping = threading.Event()
        self._failed_to: tuple[str, int] | None = None

    def run(self) -> None:
        while not self.stopping.wait(PUSH_POLL_S):
            target = self.successor()
            if target is None:
                continue
            for rank in self.ranks():
                steps = _steps(self.snapshot_dir / f"rank{rank}")
                if steps and steps[-1] > self.sent.get(rank, -1):
                    self._push(target, rank, steps[-1])

    def _push(self, target: tuple[str, int], rank: int, step: int) -> None:
        try:
            data = (self.snapshot_dir / f"rank{rank}" / f"step-{step}.pt").read_bytes()
        except FileNotFoundError:
            return  # replaced by a newer one meanwhile: the next round sends that
        try:
            with socket.create_connection(target, timeout=CONNECT_TIMEOUT_S) as sock:
                header = {"op": "put", "rank": rank, "step": step, "size": len(data)}
                sock.sendall(json.dumps(header).encode() + b"\n" + data)
        except OSError as exc:
            if self._failed_to != target:  # once per successor: it may be the node being replaced
                log.warning("snapshot copy of rank %d to %s:%d failed: %s", rank, *target, exc)
                self._failed_to = target
            return
        self._failed_to = None
        self.sent[rank] = step

    def stop(self) -> None:
        self.stopping.set()


def fetch(server: tuple[str, int], *, rank: int, into: Path) -> list[int]:
    """Copy rank `rank`'s snapshots held by the replica server into INTO/step-<S>.pt; the steps fetched."""
    into.mkdir(parents=True, exist_ok=True)
    with socket.create_connection(server, timeout=CONNECT_TIMEOUT_S) as sock:
        sock.sendall(json.dumps({"op": "get", "rank": rank}).encode() + b"\n")
        header = _read_line(sock)
        for entry in header["files"]:
            _receive_file(sock, int(entry["size"]), into / f"step-{int(entry['step'])}.pt")
    return [int(e["step"]) for e in header["files"]]


def local_address(toward: str, port: int) -> str:
    """This node's address on the route to `toward` (the master): what the other nodes can dial back."""
    family = socket.AF_INET6 if ":" in toward.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((toward.strip("[]"), port))  # UDP: no packet is sent, only the route is chosen
        return probe.getsockname()[0]
