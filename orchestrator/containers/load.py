"""`images load`: stream an image tar to many nodes' docker, relayed node to node so the head sends it once.

    from orchestrator.containers.load import load_image
    results = load_image("img.tar", ["node1", "node2", "node3"], ssh=SshOptions(config="ssh_config"),
                         on_progress=lambda host, done, total: ..., mode="relay")
    results["node2"].status        # 'loaded' | 'skipped' (had the image id) | 'failed'
    results["node2"].error         # 'docker load: ... no space left on device' (per host; the others go on)

Plan, then act: the tar's manifest gives the image id (ConfigError before anything starts when the file is
missing or not an image). Every node gets the relay (relay.py, inline over SSH) which says whether its docker
already has the id (then it is skipped), or why its daemon cannot be reached. The nodes that need the image
form chains: the head writes the tar once into the first node's SSH stdin; each node forwards the stream over
TCP to the next (a one-time token opens the connection) while it loads it. The head's sha256 travels after
the data and every node compares its own; then each node looks its image id up.

mode: 'relay' (one chain: the head's uplink carries the tar once), 'parallel' (the head streams to every node
at once), 'sequential' (one node after the other): the last two are the baselines of bench/images.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncssh

from orchestrator.containers.image import ImageTar, read_image_tar
from orchestrator.errors import ConfigError
from orchestrator.inline import python_source
from orchestrator.remote.ssh import SshOptions, SshTransport, describe_error

log = logging.getLogger("orchestrator.containers.load")

RELAY = Path(__file__).with_name("relay.py")  # sent inline to every node
MODES = ("relay", "parallel", "sequential")
CHUNK = 1 << 20
KEEPALIVE_S, KEEPALIVE_COUNT = 5, 3  # a node whose SSH session answers nothing for ~15 s is lost
ProgressCallback = Callable[[str, int, int], None]  # (host, bytes loaded so far, total bytes)


@dataclass
class LoadResult:
    host: str
    status: str = "failed"
    """'loaded', 'skipped' (the node already had the image id) or 'failed'."""
    error: str | None = None
    seconds: float = 0.0
    image_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("loaded", "skipped")


def plan_chains(hosts: Sequence[str], mode: str) -> list[list[str]]:
    """Which nodes receive from whom (pure): each chain is fed by the head and passed on node to node."""
    if mode not in MODES:
        raise ConfigError("--mode", mode, f"use one of {', '.join(MODES)}")
    return [list(hosts)] if mode == "relay" and hosts else [[h] for h in hosts]


class _Node:
    """One node's relay session: JSON events on stdout, control (and, for a chain head, data) on stdin."""

    def __init__(self, host: str, conn: asyncssh.SSHClientConnection, proc: asyncssh.SSHClientProcess):
        self.host, self.conn, self.proc = host, conn, proc

    async def event(self) -> dict:
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                err = (await self.proc.stderr.read(4000)).decode("utf-8", "replace").strip()
                raise ConnectionError(f"relay ended without a result{': ' + err.splitlines()[-1] if err else ''}")
            try:
                return json.loads(line)
            except ValueError:
                log.debug("%s: %s", self.host, line)

    async def send(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        await self.proc.stdin.drain()

    def close(self) -> None:
        self.proc.close()
        self.conn.close()


async def _open(transport: SshTransport, host: str, python: str) -> _Node:
    kwargs = transport.connect_kwargs(host)
    if kwargs.pop("_insecure", False):
        log.warning("host key checking is OFF (StrictHostKeyChecking=no): hosts are not authenticated")
    if not kwargs["options"].keepalive_interval:  # ServerAliveInterval in the ssh config wins
        kwargs.update(keepalive_interval=KEEPALIVE_S, keepalive_count_max=KEEPALIVE_COUNT)
    conn = await asyncssh.connect(**kwargs)
    try:
        proc = await conn.create_process(f"{python} -I -S -c {shlex.quote(python_source(RELAY))}", encoding=None)
    except BaseException:
        conn.close()
        raise
    return _Node(host, conn, proc)


async def load_image_async(image: str | Path, hosts: Sequence[str], *, ssh: SshOptions | None = None,
                           mode: str = "relay", python: str = "python3", socket: str | None = None,
                           on_progress: ProgressCallback | None = None,
                           on_result: Callable[[LoadResult], None] | None = None,
                           connect_timeout: float = 30.0, sha256: str | None = None) -> dict[str, LoadResult]:
    """Load `image` on every host; every host gets a LoadResult, never first-error-wins.

    sha256: the digest the tar must have (published with it); without, the head's own reading is the truth."""
    tar = read_image_tar(image)
    plan_chains(hosts, mode)
    expected = check_sha256(sha256) if sha256 is not None else None
    if not hosts:
        raise ConfigError("--hosts", "", "name at least one host")
    transport = SshTransport(ssh or SshOptions())
    results = {h: LoadResult(h) for h in hosts}
    nodes: dict[str, _Node] = {}
    token = secrets.token_hex(16)
    t0 = time.monotonic()

    def finish(host: str, status: str, error: str | None = None, image_id: str | None = None) -> None:
        r = results[host]
        r.status, r.error, r.image_id, r.seconds = status, error, image_id, round(time.monotonic() - t0, 3)
        if on_result is not None:
            on_result(r)

    async def probe(host: str) -> dict | None:
        try:
            node = await asyncio.wait_for(_open(transport, host, python), connect_timeout)
            nodes[host] = node
            await node.send(json.dumps({"image_id": tar.image_id, "size": tar.size, "token": token,
                                        "socket": socket}).encode() + b"\n")
            return await asyncio.wait_for(node.event(), connect_timeout)
        except Exception as exc:  # noqa: BLE001 - this host's result; the others go on
            finish(host, "failed", f"unreachable: {describe_error(exc)}")
            return None

    try:
        ready = dict(zip(hosts, await asyncio.gather(*(probe(h) for h in hosts))))
        needed = []
        for host, ev in ready.items():
            if ev is None:
                continue
            if ev.get("error"):
                finish(host, "failed", ev["error"])
            elif ev.get("have"):
                finish(host, "skipped", image_id=tar.image_id)
                if on_progress:
                    on_progress(host, tar.size, tar.size)
            else:
                needed.append(host)
        for host in set(nodes) - set(needed):
            await nodes[host].send(b'{"go": false}\n')
        chains = plan_chains(needed, mode)
        if mode == "sequential":
            for chain in chains:
                await _feed_chain(tar, chain, nodes, ready, finish, on_progress, expected, results)
        else:
            await asyncio.gather(*(_feed_chain(tar, chain, nodes, ready, finish, on_progress, expected, results)
                                   for chain in chains))
    finally:
        for node in nodes.values():
            node.close()
        await transport.aclose()
    return results


def check_sha256(value: str) -> str:
    """'sha256:<64 hex>' or '<64 hex>' -> the hex digest; ConfigError otherwise."""
    digest = value.lower().removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ConfigError("--sha256", value, "give the tar's sha256 as 64 hex digits (sha256sum IMAGE.tar)")
    return digest


async def _feed_chain(tar: ImageTar, chain: list[str], nodes: dict[str, _Node], ready: dict[str, dict],
                      finish, on_progress: ProgressCallback | None, expected: str | None,
                      results: dict[str, LoadResult]) -> None:
    for i, host in enumerate(chain):
        nxt = f"{chain[i + 1]}:{ready[chain[i + 1]]['port']}" if i + 1 < len(chain) else None
        await nodes[host].send(json.dumps({"go": True, "source": "stdin" if i == 0 else "tcp",
                                           "next": nxt}).encode() + b"\n")

    lost: list[str] = []  # nodes whose session ended without a result: the chain broke there

    async def follow(host: str) -> None:
        node = nodes[host]
        try:
            while True:
                ev = await node.event()
                if ev["event"] == "progress" and on_progress:
                    on_progress(host, ev["bytes"], tar.size)
                elif ev["event"] == "done":
                    break
        except Exception as exc:  # noqa: BLE001
            lost.append(host)
            finish(host, "failed", describe_error(exc))
            return
        if ev.get("error"):
            finish(host, "failed", ev["error"])
        else:
            finish(host, "loaded", image_id=ev.get("image_id"))

    async def feed() -> None:
        digest = hashlib.sha256()
        head = nodes[chain[0]]
        try:
            with open(tar.path, "rb") as f:
                while data := await asyncio.to_thread(f.read, CHUNK):
                    digest.update(data)
                    await head.send(data)
            await head.send(json.dumps({"sha256": expected or digest.hexdigest()}).encode() + b"\n")
        except (OSError, asyncssh.Error) as exc:
            log.debug("%s: feeding stopped: %s", chain[0], exc)  # that node's follow() reports why

    await asyncio.gather(feed(), *(follow(h) for h in chain))
    for i, host in enumerate(chain):  # downstream of a lost node, say which one broke the stream
        cause = next((h for h in reversed(chain[:i]) if h in lost), None)
        if cause and results[host].status == "failed" and host not in lost:
            results[host].error += f" (upstream {cause} lost: {results[cause].error})"


def load_image(image: str | Path, hosts: Sequence[str], **kwargs) -> dict[str, LoadResult]:
    """Blocking load_image_async."""
    return asyncio.run(load_image_async(image, hosts, **kwargs))


def results_json(results: dict[str, LoadResult]) -> dict:
    return {"ok": all(r.ok for r in results.values()), "hosts": [asdict(r) | {"ok": r.ok} for r in results.values()]}
