"""The relay chain's node-side pieces that need no docker (remote/chain_node.py: who may feed a node, where it
listens) and how the image relay splits tags."""

import socket
import threading

from orchestrator.containers import relay
from orchestrator.remote import chain_node

TOKEN = "ab" * 16


def _listener() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0))


def _connect(listener: socket.socket, data: bytes | None) -> socket.socket:
    conn = socket.create_connection(listener.getsockname(), timeout=5)
    if data:
        conn.sendall(data)
    return conn


def test_wrong_token_and_silent_connections_are_dropped_and_the_real_upstream_is_taken():
    listener = _listener()
    wrong = _connect(listener, b"cd" * 16 + b"\n")
    silent = _connect(listener, None)
    prefix = _connect(listener, TOKEN[:8].encode())  # a right prefix, then gone: no oracle, no acceptance
    prefix.close()
    real = []
    timer = threading.Timer(0.3, lambda: real.append(_connect(listener, TOKEN.encode() + b"\n" + b"DATA")))
    timer.start()
    try:
        conn = chain_node.accept_upstream(listener, TOKEN, deadline=10)
        assert conn is not None
        assert conn.recv(4) == b"DATA"  # nothing past the token line was consumed
        assert wrong.recv(1) == b""  # dropped by the relay
        assert conn.getpeername() == real[0].getsockname()
    finally:
        timer.join()
        for s in (wrong, silent, *real, listener):
            s.close()


def test_no_upstream_before_the_deadline_is_none():
    listener = _listener()
    silent = _connect(listener, None)
    try:
        assert chain_node.accept_upstream(listener, TOKEN, deadline=0.3) is None
    finally:
        silent.close()
        listener.close()


def test_listen_address_is_the_source_address_of_the_route_to_the_upstream(monkeypatch):
    assert chain_node.listen_address("127.0.0.1") == "127.0.0.1"
    monkeypatch.setenv("SSH_CONNECTION", "10.0.0.1 50000 10.0.0.7 22")
    assert chain_node.listen_address("no-such-host.invalid") == "10.0.0.7"  # where the head's SSH reached this node
    monkeypatch.delenv("SSH_CONNECTION")
    assert chain_node.listen_address("no-such-host.invalid") == ""  # the head then gives the upstream our name


def test_tag_refs_split_like_docker():
    assert relay.split_ref("orch-test:cpu") == ("orch-test", "cpu")
    assert relay.split_ref("registry:5000/team/img:v2") == ("registry:5000/team/img", "v2")
    assert relay.split_ref("registry:5000/team/img") == ("registry:5000/team/img", "latest")
    assert relay.split_ref("img") == ("img", "latest")
