"""Node-side image relay: load an image tar into local docker while the chain forwards it to the next node.

    python3 -I -S -c "$(cat relay.py)" < control     # started by load.py over SSH; stdlib only
    # the chain's protocol (remote/chain_node.py), with these fields:
    # stdin, line 1:  {"image_id": "sha256:..", "tags": ["img:1"], "token": "..", "socket": null}
    # stdout:         {"event": "ready", "have": false, "tagged": [], "error": null, "socket": "/run/docker.sock"}
    # stdout, last:   {"event": "done", "error": null, "image_id": .., "sha256": .., "forward_error": null}

Loading goes through the Engine API on the node's socket (POST /images/load, chunked), the call the docker
SDK and `docker load` make, so nothing lands on disk but docker's own layers. A node that already has the
image id gets the tar's tags pointed at it (POST /images/{id}/tag), as `docker load` would retag, and loads
nothing. A failed local load does not stop the forwarding: the next nodes are unaffected. The sha256 of what
arrived is compared with the head's (sent after the data: the file's, or the digest the user expects) and the
loaded image id is looked up afterwards; when either check fails, what this load put into docker is removed
again. When stdin closes before the end (the head died or gave up), the load is cut short and the relay exits.
"""

import http.client
import json
import os
import socket
from urllib.parse import quote, urlencode

from orchestrator.remote.chain_node import serve


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


class DockerSink:
    """The chain's sink on a node: `docker load` of the stream, checked and taken back when a check fails."""

    def __init__(self):
        self.spec, self.sock_path, self.loader = {}, None, None

    def ready(self, spec):
        self.spec = spec
        self.sock_path = spec.get("socket") or default_socket()
        have, tagged, error = False, [], None
        try:
            have = has_image(self.sock_path, spec["image_id"])
        except OSError as exc:
            error = f"docker daemon not reachable at {self.sock_path}: {exc.strerror or exc}"
        if have:
            try:
                tagged = apply_tags(self.sock_path, spec["image_id"], spec.get("tags") or [])
            except OSError as exc:
                error = str(exc)
        return {"have": have, "tagged": tagged, "error": error, "socket": self.sock_path}

    def start(self, go):
        self.loader = Loader(self.sock_path)

    def write(self, data):
        self.loader.write(data)

    def abort(self):
        if self.loader is not None:
            self.loader.abort()

    def finish(self, sha, expected):
        image_id = self.spec["image_id"]
        error = self.loader.finish()
        if error is None and expected != sha:
            error = f"sha256 mismatch: received {sha}, expected {expected}"
        found = False
        try:
            found = has_image(self.sock_path, image_id)
        except OSError as exc:
            error = error or f"docker daemon not reachable after load: {exc}"
        if error is None and not found:
            error = f"loaded, but image {image_id} is not on this node (the tar holds another image?)"
        if error is not None and (found or self.loader.loaded):
            # this node did not have the image (else it was skipped): whatever this load made goes again
            left = [f"{ref}: {why}" for ref in self.loader.loaded + ([image_id] if found else [])
                    if (why := remove_image(self.sock_path, ref))]
            found = False
            error += "; image removed" if not left else f"; could not remove {', '.join(left)}"
        return {"error": error, "image_id": image_id if found else None}


if __name__ == "__main__":
    serve(DockerSink())
