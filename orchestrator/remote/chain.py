"""Head side of a relay chain: the head writes a stream once into the first node; each node forwards it to the next.

    nodes = {h: await open_node(transport, h, argv, {"token": token, ...}, timeout) for h in hosts}
    nodes["node1"].ready                  # the node's first event: whether it needs the stream at all
    for chain in plan_chains(needed, "relay"):
        notes = await feed_chain(chain, nodes, go={"size": n, ...}, chunks=..., finish=..., timeout=30)

The node program (argv: a sink module sent inline, its code in front: containers/relay.py for docker images,
job/receive.py for code trees) speaks remote/chain_node.py's protocol. Each node after the first listens on its
own address on the route to its upstream and takes the first connection that presents the chain's one-time
token. The head's sha256 travels after the data and every node compares its own. Every session runs over the
SSH transport (remote/ssh.py) with its options and host-key checks; closing it ends the node's program.

mode: 'relay' (one chain: the head's uplink carries the stream once), 'parallel' (a chain of one per node: the
head streams to every node at once), 'sequential' (one node after the other).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence

from orchestrator.errors import ConfigError
from orchestrator.remote.ssh import SshSession, SshTransport, describe_error

log = logging.getLogger("orchestrator.remote.chain")

MODES = ("relay", "parallel", "sequential")
Finish = Callable[[str, "dict | None", "str | None"], None]
"""finish(host, the node's done event or None, error or None): called once per node of a chain, as it ends."""


def plan_chains(hosts: Sequence[str], mode: str, *, field: str = "--mode") -> list[list[str]]:
    """Which nodes receive from whom (pure): each chain is fed by the head and passed on node to node."""
    if mode not in MODES:
        raise ConfigError(field, mode, f"use one of {', '.join(MODES)}")
    return [list(hosts)] if mode == "relay" and hosts else [[h] for h in hosts]


class Node:
    """One node's program: JSON events on stdout, control (and, for a chain's first node, data) on stdin.

    ready: its first event (the sink's answer to the spec line)."""

    def __init__(self, host: str, session: SshSession):
        self.host, self.session = host, session
        self.ready: dict = {}
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


async def open_node(transport: SshTransport, host: str, argv: Sequence[str], spec: dict, timeout: float) -> Node:
    """Start the node program, send the spec line and wait for its ready event (raises when it does not come)."""
    node = Node(host, await asyncio.wait_for(transport.open(host, list(argv)), timeout))
    try:
        await node.send_json(spec)
        node.ready = await asyncio.wait_for(node.event(), timeout)
    except BaseException:
        node.close()
        raise
    return node


async def feed_chain(chain: list[str], nodes: dict[str, Node], *, go: dict, chunks: AsyncIterator[bytes],
                     finish: Finish, expected: str | None = None,
                     on_progress: Callable[[str, int], None] | None = None, timeout: float = 30.0) -> dict[str, str]:
    """Stream `chunks` (go["size"] bytes in all) through `chain`: the head feeds the first node, each node the next.
    `go`: the sink's fields of the go line. expected: the sha256 the nodes must find (default: what was sent).
    -> {host: ' (upstream X lost: why)'} for the nodes that failed behind a node whose session was lost."""
    for i, host in enumerate(chain):  # each node after the first listens where its upstream will reach it
        await nodes[host].tell({**go, "go": True, "source": "stdin" if i == 0 else "tcp",
                                "upstream": chain[i - 1] if i else None})
    errors: dict[str, str] = {}

    def failed(host: str, error: str, event: dict | None = None) -> None:
        errors[host] = error
        finish(host, event, error)

    async def listening(host: str) -> dict | None:
        try:
            ev = await asyncio.wait_for(nodes[host].event(), timeout)
            if ev["event"] == "listening":
                return ev
            failed(host, ev.get("error") or f"relay answered {ev}", ev)
        except Exception as exc:  # noqa: BLE001 - this host's result; the chain closes over it
            failed(host, describe_error(exc))
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
                    on_progress(host, ev["bytes"])
                elif ev["event"] == "done":
                    break
        except Exception as exc:  # noqa: BLE001
            lost.append(host)
            failed(host, describe_error(exc))
            return
        if ev.get("error"):
            failed(host, ev["error"], ev)
        else:
            finish(host, ev, None)

    async def feed() -> None:
        digest = hashlib.sha256()
        head = nodes[chain[0]]
        try:
            async for data in chunks:
                digest.update(data)
                await head.send(data)
            await head.send_json({"sha256": expected or digest.hexdigest()})
        except Exception as exc:  # noqa: BLE001 - OSError or the SSH channel's: that node's follow() reports why
            log.debug("%s: feeding stopped: %s", chain[0], exc)

    await asyncio.gather(feed(), *(follow(h) for h in chain))
    notes = {}
    for i, host in enumerate(chain):  # downstream of a lost node, say which one broke the stream
        cause = next((h for h in reversed(chain[:i]) if h in lost), None)
        if cause and host in errors and host not in lost:
            notes[host] = f" (upstream {cause} lost: {errors[cause]})"
    return notes
