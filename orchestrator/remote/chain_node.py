"""Node side of a relay chain: receive a stream, forward it byte for byte to the next node, feed it to a sink.

    from orchestrator.remote.chain_node import serve     # in a node program (stdlib only, sent inline)
    serve(MySink())      # sink: ready(spec) -> dict, start(go), write(bytes), abort(), finish(sha, expected) -> dict

The protocol with the head (remote/chain.py), one JSON line each:
    # stdin, line 1:  {"token": "..", ...the sink's own fields}
    # stdout:         {"event": "ready", ...sink.ready(spec)}        e.g. {"have": true}: the head skips this node
    # stdin, line 2:  {"go": true, "source": "stdin" | "tcp", "upstream": "node2" | null, "size": N, ...}
    # stdout (tcp):   {"event": "listening", "address": "10.0.0.3", "port": 41234}
    # stdin, line 3:  {"next": {"address": "10.0.0.4", "port": 41234} | null}
    # then the data:  N bytes + one line {"sha256": ".."} on stdin (source stdin) or from the previous node
    #                 (source tcp, after the token line); forwarded byte for byte to `next`
    # stdout:         {"event": "progress", "bytes": n} ... {"event": "done", "error": null, ...sink.finish()}

A failing sink does not stop the forwarding: the next nodes are unaffected. The sha256 of what arrived is
handed to the sink's finish with the head's (sent after the data), which keeps or drops its result. When the
stream ends early, or stdin closes before the end (the head died or gave up), the sink's abort takes back
what it made and the program exits.

A node fed over TCP listens on its own address on the route to its upstream (not the wildcard), and takes
the first connection that presents the chain's token within TOKEN_TIMEOUT s; a wrong token or a silent
connection is dropped and does not stop the wait for the real upstream (ACCEPT_TIMEOUT s in all). A
neighbour that vanishes (power, cable) sends no FIN: TCP keepalives and TCP_USER_TIMEOUT end the node-to-node
connection after PEER_TIMEOUT s without an answer, while a slow but live neighbour (its window closed, its
probes answered) is waited for.
"""

import hashlib
import hmac
import json
import os
import selectors
import socket
import sys
import threading
import time

CHUNK = 1 << 20
ACCEPT_TIMEOUT = 120  # seconds for the real upstream to connect and present the token
TOKEN_TIMEOUT = 5  # seconds a connection has to present the token before it is dropped
MAX_PENDING = 32  # connections waiting to present a token at once
PEER_TIMEOUT = 12  # seconds a neighbour may leave our packets unanswered before it counts as gone


def emit(**event):
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def watch_peer(sock):
    """Fail reads and writes on `sock` once the other end stops answering (keepalives, unacknowledged data)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, PEER_TIMEOUT // 4)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, PEER_TIMEOUT // 4)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, PEER_TIMEOUT * 1000)
    return sock


def listen_address(upstream):
    """This node's address on its route to `upstream`: where the upstream connects (never the wildcard when
    known). A UDP connect sends nothing; it only picks the route and its source address. When the upstream's
    name does not resolve here, the address the head's SSH session reached this node at."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(upstream, 9, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(addr)
            return probe.getsockname()[0]
    except (OSError, TypeError, UnicodeError):
        ssh = os.environ.get("SSH_CONNECTION", "").split()
        return ssh[2] if len(ssh) == 4 else ""


def accept_upstream(listener, token, deadline=ACCEPT_TIMEOUT):
    """The first connection that sends `token` + newline within token_s of connecting; others (a wrong token,
    silence, an early close) are dropped and the wait goes on, for up to `deadline` s in all (None then). The token is
    compared only once all its bytes are in, so a connection learns nothing from when it is dropped."""
    want = token.encode() + b"\n"
    end = time.monotonic() + deadline
    pending = {}  # connection -> (its deadline, the bytes it sent)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    listener.setblocking(False)

    def drop(conn):
        sel.unregister(conn)
        del pending[conn]
        conn.close()

    try:
        while (now := time.monotonic()) < end:
            for conn in [c for c, (t, _) in pending.items() if t <= now]:
                drop(conn)
            wait = min([end, *(t for t, _ in pending.values())]) - now
            for key, _ in sel.select(max(wait, 0.01)):
                if key.fileobj is listener:
                    try:
                        conn, _ = listener.accept()
                    except OSError:
                        continue
                    if len(pending) >= MAX_PENDING:  # a flood: the oldest has had the longest to speak
                        drop(min(pending, key=lambda c: pending[c][0]))
                    conn.setblocking(False)
                    pending[conn] = (time.monotonic() + TOKEN_TIMEOUT, b"")
                    sel.register(conn, selectors.EVENT_READ)
                    continue
                conn = key.fileobj
                if conn not in pending:
                    continue
                try:
                    data = conn.recv(len(want) - len(pending[conn][1]))
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                got = pending[conn][1] + data
                if not data or (len(got) == len(want) and not hmac.compare_digest(got, want)):
                    drop(conn)
                elif len(got) == len(want):
                    sel.unregister(conn)
                    del pending[conn]
                    conn.setblocking(True)
                    return conn
                else:
                    pending[conn] = (pending[conn][0], got)
        return None
    finally:
        for conn in pending:
            conn.close()
        sel.close()


def watch_stdin_eof(control, sink):
    """The head's session is our lifeline: when it closes, take back what the sink made and stop everything."""
    control.read()
    sink.abort()
    os._exit(3)


def receive(source, size, forward, sink, report):
    """Copy exactly `size` bytes from `source` to forward and the sink; then the trailer line. -> (sha, trailer)."""
    digest, got, last = hashlib.sha256(), 0, 0.0
    while got < size:
        data = source.read(min(CHUNK, size - got))
        if not data:
            raise EOFError(f"upstream closed after {got} of {size} bytes")
        got += len(data)
        digest.update(data)
        forward(data)
        sink.write(data)
        if time.monotonic() - last > 0.3:
            last = time.monotonic()
            report(got)
    report(got)
    trailer = source.readline()
    forward(trailer)
    return digest.hexdigest(), json.loads(trailer or b"{}")


def serve(sink):
    control = sys.stdin.buffer
    spec = json.loads(control.readline())
    emit(event="ready", **sink.ready(spec))
    go = json.loads(control.readline() or b"{}")
    if not go.get("go"):
        return
    listener = None
    if go["source"] == "tcp":
        address = listen_address(go.get("upstream"))
        listener = socket.create_server((address, 0), family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                                        backlog=16)
        emit(event="listening", address=address, port=listener.getsockname()[1])  # "": the head names us
    nxt_at = json.loads(control.readline() or b"{}").get("next")
    if listener is not None:
        threading.Thread(target=watch_stdin_eof, args=(control, sink), daemon=True).start()
        conn = accept_upstream(listener, spec["token"])
        listener.close()
        if conn is None:
            emit(event="done", error=f"no upstream presented this chain's token in {ACCEPT_TIMEOUT} s")
            return
        watch_peer(conn).settimeout(600)
        source = conn.makefile("rb")
    else:
        source = control
    nxt, forward_error = None, []
    if nxt_at:  # a next node we cannot reach is its failure (it waits for us in vain), not this node's
        try:
            nxt = watch_peer(socket.create_connection((nxt_at["address"], nxt_at["port"]), timeout=60))
            nxt.sendall(spec["token"].encode() + b"\n")
        except OSError as exc:
            forward_error.append(f"connect to {nxt_at['address']}:{nxt_at['port']}: {exc}")

    def forward(data):
        if nxt is not None and not forward_error:
            try:
                nxt.sendall(data)
            except OSError as exc:
                forward_error.append(str(exc))

    t0 = time.monotonic()
    sink.start(go)
    try:
        sha, trailer = receive(source, go["size"], forward, sink, lambda n: emit(event="progress", bytes=n))
    except (EOFError, OSError, ValueError) as exc:
        sink.abort()
        emit(event="done", error=f"transfer failed: {exc}")
        return
    finally:
        if nxt is not None:
            nxt.close()
    done = sink.finish(sha, trailer.get("sha256"))
    emit(event="done", **done, sha256=sha, seconds=round(time.monotonic() - t0, 3),
         forward_error=forward_error[0] if forward_error else None)
