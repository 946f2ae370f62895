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
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.containers.image import read_image_tar
from orchestrator.errors import ConfigError
from orchestrator.inline import python_source
from orchestrator.remote.chain import MODES, Node, feed_chain, open_node, plan_chains
from orchestrator.remote.ssh import SshOptions, SshTransport, describe_error

RELAY = Path(__file__).with_name("relay.py")  # sent inline to every node
CHUNK = 1 << 20
ProgressCallback = Callable[[str, int, int], None]  # (host, bytes loaded so far, total bytes)
__all__ = ["MODES", "LoadResult", "check_sha256", "load_image", "load_image_async", "plan_chains", "results_json"]


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
    nodes: dict[str, Node] = {}
    token = secrets.token_hex(16)
    t0 = time.monotonic()

    def finish(host: str, status: str, error: str | None = None, image_id: str | None = None) -> None:
        r = results[host]
        r.status, r.error, r.image_id, r.seconds = status, error, image_id, round(time.monotonic() - t0, 3)
        if on_result is not None:
            on_result(r)

    argv = [python, "-I", "-S", "-c", python_source(RELAY)]
    spec = {"image_id": tar.image_id, "tags": list(tar.tags), "token": token, "socket": socket}

    async def probe(host: str) -> dict | None:
        try:
            nodes[host] = await open_node(transport, host, argv, spec, connect_timeout)
            return nodes[host].ready
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

        def done(host: str, event: dict | None, error: str | None) -> None:
            if error:
                finish(host, "failed", error)
            else:
                finish(host, "loaded", image_id=(event or {}).get("image_id"))

        def feed(chain: list[str]):
            return feed_chain(chain, nodes, go={"size": tar.size}, chunks=_read(tar.path), finish=done,
                              expected=expected, timeout=connect_timeout,
                              on_progress=(lambda h, n: on_progress(h, n, tar.size)) if on_progress else None)

        chains = plan_chains(needed, mode)
        if mode == "sequential":
            notes = [await feed(chain) for chain in chains]
        else:
            notes = await asyncio.gather(*(feed(chain) for chain in chains))
        for host, note in ((h, n) for chain_notes in notes for h, n in chain_notes.items()):
            results[host].error += note
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


async def _read(path: Path) -> AsyncIterator[bytes]:
    with open(path, "rb") as f:
        while data := await asyncio.to_thread(f.read, CHUNK):
            yield data


def load_image(image: str | Path, hosts: Sequence[str], **kwargs) -> dict[str, LoadResult]:
    """Blocking load_image_async."""
    return asyncio.run(load_image_async(image, hosts, **kwargs))


def results_json(results: dict[str, LoadResult]) -> dict:
    return {"ok": all(r.ok for r in results.values()), "hosts": [asdict(r) | {"ok": r.ok} for r in results.values()]}
