"""`images load`: stream an image tar to many nodes' docker, relayed node to node so the head sends it once.

    from orchestrator.containers.load import load_image
    results = load_image("img.tar", ["node1", "node2", "node3"], ssh=SshOptions(config="ssh_config"),
                         on_progress=lambda host, done, total: ..., mode="relay")
    results["node2"].status        # 'loaded' | 'tagged' (had the image id, not every tag) | 'skipped' | 'failed'
    results["node2"].error         # 'docker load: ... no space left on device' (per host; the others go on)

Plan, then act: the tar's manifest gives the image id (ConfigError before anything starts when the file is
missing or not an image). Every node gets the relay (relay.py, inline over SSH) which says whether its docker
already has the id, or why its daemon cannot be reached; a node that has the id under other tags gets the
tar's tags pointed at it ('tagged'), one that has them all is 'skipped'. The nodes that need the image form
chains: the head writes the tar once into the first node's SSH stdin; each node forwards the stream over TCP
to the next while it loads it. A node listens on its own address on the route to its upstream, and takes the
first connection that presents this load's one-time token (others are dropped). The head's sha256 travels
after the data and every node compares its own; then each node looks its image id up. Every relay runs over
the SSH transport (remote/ssh.py) with its options and host-key checks.

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
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.containers.image import ImageTar, read_image_tar
from orchestrator.errors import ConfigError
from orchestrator.inline import python_source
from orchestrator.remote.ssh import SshOptions, SshSession, SshTransport, describe_error

log = logging.getLogger("orchestrator.containers.load")

RELAY = Path(__file__).with_name("relay.py")  # sent inline to every node
MODES = ("relay", "parallel", "sequential")
CHUNK = 1 << 20
ProgressCallback = Callable[[str, int, int], None]  # (host, bytes loaded so far, total bytes)


@dataclass
class LoadResult:
    host: str
    status: str = "failed"
    """'loaded', 'tagged' (the node had the image id: the tar's tags were added), 'skipped' (it had the id
    and every tag) or 'failed'."""
    error: str | None = None
    seconds: float = 0.0
    image_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("loaded", "tagged", "skipped")


def plan_chains(hosts: Sequence[str], mode: str) -> list[list[str]]:
    """Which nodes receive from whom (pure): each chain is fed by the head and passed on node to node."""
    if mode not in MODES:
        raise ConfigError("--mode", mode, f"use one of {', '.join(MODES)}")
    return [list(hosts)] if mode == "relay" and hosts else [[h] for h in hosts]


class _Node:
    """One node's relay session: JSON events on stdout, control (and, for a chain head, data) on stdin."""

    def __init__(self, host: str, session: SshSession):
        self.host, self.session = host, session
        self._lines = aiter(session.stdout)

    async def event(self) -> dict:
        async for line in self._lines:
            try:
                return json.loads(line)
            except ValueError:
                log.debug("%s: %s", self.host, line)
        err = await asyncio.wait_for(_last_line(self.session.stderr), 5)
        raise ConnectionError(f"relay ended without a result{': ' + err if err else ''}")

    async def send(self, data: bytes) -> None:
        self.session.send(data)
        await self.session.drain()

    async def send_json(self, message: dict) -> None:
        await self.send(json.dumps(message).encode() + b"\n")

    async def tell(self, message: dict) -> None:
        """A control line; a session already gone is not an error here: reading its next event says why."""
        try:
            await self.send_json(message)
        except Exception as exc:  # noqa: BLE001 - OSError or the SSH channel's
            log.debug("%s: control line not sent: %s", self.host, exc)

    def close(self) -> None:
        self.session.close()


async def _last_line(lines) -> str:
    last = ""
    async for line in lines:
        last = line.strip() or last
    return last


async def _open(transport: SshTransport, host: str, python: str) -> _Node:
    session = await transport.open(host, [python, "-I", "-S", "-c", python_source(RELAY)])
    return _Node(host, session)


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
            await node.send_json({"image_id": tar.image_id, "tags": list(tar.tags), "size": tar.size,
                                  "token": token, "socket": socket})
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
            elif ev.get("have"):  # the id is there; the relay pointed any missing tag of the tar at it
                finish(host, "tagged" if ev.get("tagged") else "skipped", image_id=tar.image_id)
                if on_progress:
                    on_progress(host, tar.size, tar.size)
            else:
                needed.append(host)
        for host in set(nodes) - set(needed):
            await nodes[host].tell({"go": False})
        chains = plan_chains(needed, mode)
        if mode == "sequential":
            for chain in chains:
                await _feed_chain(tar, chain, nodes, finish, on_progress, expected, results, connect_timeout)
        else:
            await asyncio.gather(*(_feed_chain(tar, chain, nodes, finish, on_progress, expected, results,
                                               connect_timeout) for chain in chains))
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


async def _feed_chain(tar: ImageTar, chain: list[str], nodes: dict[str, _Node], finish,
                      on_progress: ProgressCallback | None, expected: str | None, results: dict[str, LoadResult],
                      timeout: float) -> None:
    for i, host in enumerate(chain):  # each node after the first listens where its upstream will reach it
        await nodes[host].tell({"go": True, "source": "stdin" if i == 0 else "tcp",
                                "upstream": chain[i - 1] if i else None})

    async def listening(host: str) -> dict | None:
        try:
            ev = await asyncio.wait_for(nodes[host].event(), timeout)
            if ev["event"] == "listening":
                return ev
            finish(host, "failed", ev.get("error") or f"relay answered {ev}")
        except Exception as exc:  # noqa: BLE001 - this host's result; the chain closes over it
            finish(host, "failed", describe_error(exc))
        return None

    listens = dict(zip(chain[1:], await asyncio.gather(*(listening(h) for h in chain[1:]))))
    chain = [h for i, h in enumerate(chain) if i == 0 or listens[h] is not None]
    for i, host in enumerate(chain):
        nxt = listens[chain[i + 1]] if i + 1 < len(chain) else None
        to = {"address": nxt["address"] or chain[i + 1], "port": nxt["port"]} if nxt else None  # "": by name
        await nodes[host].tell({"next": to})

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
            await head.send_json({"sha256": expected or digest.hexdigest()})
        except Exception as exc:  # noqa: BLE001 - OSError or the SSH channel's: that node's follow() reports why
            log.debug("%s: feeding stopped: %s", chain[0], exc)

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
