"""Node-side image relay: receive an image tar, forward it to the next node while loading it into local docker.

    python3 -I -S -c "$(cat relay.py)" < control     # started by load.py over SSH; stdlib only
    # stdin, line 1:  {"image_id": "sha256:..", "tags": ["img:1"], "size": N, "token": "..", "socket": null}
    # stdout:         {"event": "ready", "have": false, "tagged": [], "error": null, "socket": "/run/docker.sock"}
    # stdin, line 2:  {"go": true, "source": "stdin" | "tcp", "upstream": "node2" | null}
    # stdout (tcp):   {"event": "listening", "address": "10.0.0.3", "port": 41234}
    # stdin, line 3:  {"next": {"address": "10.0.0.4", "port": 41234} | null}
    # then the data:  N bytes + one line {"sha256": ".."} on stdin (source stdin) or from the previous node
    #                 (source tcp, after the token line); forwarded byte for byte to `next`
    # stdout:         {"event": "progress", "bytes": n} ... {"event": "done", "error": null, "image_id": ..}

Loading goes through the Engine API on the node's socket (POST /images/load, chunked), the call the docker
SDK and `docker load` make, so nothing lands on disk but docker's own layers. A node that already has the
image id gets the tar's tags pointed at it (POST /images/{id}/tag), as `docker load` would retag, and loads
nothing. A failed local load does not stop the forwarding: the next nodes are unaffected. The sha256 of what
arrived is compared with the head's (sent after the data: the file's, or the digest the user expects) and the
loaded image id is looked up afterwards; when either check fails, what this load put into docker is removed
again. When stdin closes before the end (the head died or gave up), the relay exits at once.

A node fed over TCP listens on its own address on the route to its upstream (not the wildcard), and takes
the first connection that presents the load's token within TOKEN_TIMEOUT s; a wrong token or a silent
connection is dropped and does not stop the wait for the real upstream (ACCEPT_TIMEOUT s in all). A
neighbour that vanishes (power, cable) sends no FIN: TCP keepalives and TCP_USER_TIMEOUT end the node-to-node
connection after PEER_TIMEOUT s without an answer, while a slow but live neighbour (its window closed, its
probes answered) is waited for.
"""

import hashlib
import hmac
import http.client
import json
import os
import selectors
import socket
import sys
import threading
import time
from urllib.parse import quote, urlencode

CHUNK = 1 << 20
ACCEPT_TIMEOUT = 120  # seconds for the real upstream to connect and present the token
TOKEN_TIMEOUT = 5  # seconds a connection has to present the token before it is dropped
MAX_PENDING = 32  # connections waiting to present a token at once
PEER_TIMEOUT = 12  # seconds a neighbour may leave our packets unanswered before it counts as gone


def emit(**event):
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path, timeout=600):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def default_socket():
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        return host[len("unix://"):]
    rootless = os.path.join(os.environ.get("XDG_RUNTIME_DIR", f"/run/user/{os.getuid()}"), "docker.sock")
    return rootless if os.path.exists(rootless) else "/run/docker.sock"


def api(sock_path, method, path):
    conn = UnixHTTP(sock_path, timeout=30)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def watch_peer(sock):
    """Fail reads and writes on `sock` once the other end stops answering (keepalives, unacknowledged data)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, PEER_TIMEOUT // 4)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, PEER_TIMEOUT // 4)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, PEER_TIMEOUT * 1000)
    return sock


def has_image(sock_path, image_id):
    status, body = api(sock_path, "GET", f"/images/{image_id}/json")
    if status == 200:
        return True
    if status == 404:
        return False
    raise OSError(f"docker answered {status}: {body[:200]!r}")


def remove_image(sock_path, ref):
    """Take back what a failed load left (an image that is not the expected one, or of unverified bytes)."""
    status, body = api(sock_path, "DELETE", f"/images/{ref}?force=1")
    return None if status in (200, 404) else f"{status} {body[:200]!r}"


def split_ref(ref):
    """'repo[:port]/name:tag' -> (repo, tag); no tag means 'latest', as in docker."""
    repo, sep, tag = ref.rpartition(":")
    return (repo, tag) if sep and "/" not in tag else (ref, "latest")


def apply_tags(sock_path, image_id, refs):
    """Point each of `refs` at image_id (POST /images/{id}/tag) unless it already does; -> the refs applied."""
    applied = []
    for ref in refs:
        status, body = api(sock_path, "GET", f"/images/{quote(ref, safe='/:@')}/json")
        if status == 200 and json.loads(body).get("Id") == image_id:
            continue
        repo, tag = split_ref(ref)
        status, body = api(sock_path, "POST", f"/images/{image_id}/tag?{urlencode({'repo': repo, 'tag': tag})}")
        if status not in (200, 201):
            raise OSError(f"docker tag {image_id} {ref}: {status} {body[:200]!r}")
        applied.append(ref)
    return applied


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


class Loader:
    """POST /images/load with a chunked body; remembers the first error and then swallows further data.

    loaded: what docker says it loaded (tags, or ids for untagged images), to remove it when a check fails."""

    def __init__(self, sock_path):
        self.error = None
        self.loaded = []
        self.conn = UnixHTTP(sock_path)
        self.conn.putrequest("POST", "/images/load?quiet=1")
        self.conn.putheader("Content-Type", "application/x-tar")
        self.conn.putheader("Transfer-Encoding", "chunked")
        self.conn.endheaders()

    def write(self, data):
        if self.error is None:
            try:
                self.conn.send(b"%x\r\n%s\r\n" % (len(data), data))
            except OSError as exc:  # docker closed the request (disk full, bad tar): its answer says why
                self.error = f"docker stopped reading: {exc}"

    def abort(self):
        """Cut the request short: docker sees a truncated tar and drops this load (it would wait for the rest)."""
        self.conn.close()

    def finish(self):
        try:
            if self.error is None:
                self.conn.send(b"0\r\n\r\n")
            resp = self.conn.getresponse()
            body = resp.read().decode("utf-8", "replace")
        except OSError as exc:
            return self.error or f"docker load: {exc}"
        finally:
            self.conn.close()
        messages = []
        for line in body.splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                messages.append(line)
                continue
            stream = msg.get("stream", "") if isinstance(msg, dict) else ""
            for prefix in ("Loaded image ID: ", "Loaded image: "):
                if stream.startswith(prefix):
                    self.loaded.append(stream[len(prefix):].strip())
            if isinstance(msg, dict) and (msg.get("error") or msg.get("message")) and resp.status != 200:
                messages.append(msg.get("error") or msg.get("message"))
            elif isinstance(msg, dict) and msg.get("error"):
                messages.append(msg["error"])
        if resp.status != 200 or messages:
            return "docker load: " + ("; ".join(m.strip() for m in messages if m.strip()) or f"HTTP {resp.status}")
        return self.error


def watch_stdin_eof(control):
    """The head's session is our lifeline: when it closes, stop everything."""
    control.read()
    os._exit(3)


def receive(source, size, forward, loader, report):
    """Copy exactly `size` bytes from `source` to forward and loader; then the trailer line. -> (sha, trailer)."""
    digest, got, last = hashlib.sha256(), 0, 0.0
    while got < size:
        data = source.read(min(CHUNK, size - got))
        if not data:
            raise EOFError(f"upstream closed after {got} of {size} bytes")
        got += len(data)
        digest.update(data)
        forward(data)
        loader.write(data)
        if time.monotonic() - last > 0.3:
            last = time.monotonic()
            report(got)
    report(got)
    trailer = source.readline()
    forward(trailer)
    return digest.hexdigest(), json.loads(trailer or b"{}")


def main():
    control = sys.stdin.buffer
    spec = json.loads(control.readline())
    sock_path = spec.get("socket") or default_socket()
    have, tagged, error = False, [], None
    try:
        have = has_image(sock_path, spec["image_id"])
    except OSError as exc:
        error = f"docker daemon not reachable at {sock_path}: {exc.strerror or exc}"
    if have:
        try:
            tagged = apply_tags(sock_path, spec["image_id"], spec.get("tags") or [])
        except OSError as exc:
            error = str(exc)
    emit(event="ready", have=have, tagged=tagged, error=error, socket=sock_path)
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
        threading.Thread(target=watch_stdin_eof, args=(control,), daemon=True).start()
        conn = accept_upstream(listener, spec["token"])
        listener.close()
        if conn is None:
            emit(event="done", error=f"no upstream presented this load's token in {ACCEPT_TIMEOUT} s")
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
    loader = Loader(sock_path)
    try:
        sha, trailer = receive(source, spec["size"], forward, loader, lambda n: emit(event="progress", bytes=n))
    except (EOFError, OSError, ValueError) as exc:
        loader.abort()
        emit(event="done", error=f"transfer failed: {exc}")
        return
    finally:
        if nxt is not None:
            nxt.close()
    error = loader.finish()
    if error is None and trailer.get("sha256") != sha:
        error = f"sha256 mismatch: received {sha}, expected {trailer.get('sha256')}"
    found = False
    try:
        found = has_image(sock_path, spec["image_id"])
    except OSError as exc:
        error = error or f"docker daemon not reachable after load: {exc}"
    if error is None and not found:
        error = f"loaded, but image {spec['image_id']} is not on this node (the tar holds another image?)"
    if error is not None and (found or loader.loaded):
        # this node did not have the image (else it was skipped): whatever this load made goes again
        left = [f"{ref}: {why}" for ref in loader.loaded + ([spec["image_id"]] if found else [])
                if (why := remove_image(sock_path, ref))]
        found = False
        error += "; image removed" if not left else f"; could not remove {', '.join(left)}"
    emit(event="done", error=error, sha256=sha, image_id=spec["image_id"] if found else None,
         seconds=round(time.monotonic() - t0, 3), forward_error=forward_error[0] if forward_error else None)


if __name__ == "__main__":
    main()
