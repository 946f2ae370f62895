"""The output/input half of a running remote command, shared by the SSH and the local transport.

    class SshSession(ProcessStreams):     # self._proc: an asyncssh process or an asyncio subprocess
        ...
    async for line in session.stdout: ...
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator


class ProcessStreams:
    """stdout/stderr as decoded lines and stdin writes, over any process object with readline()-able streams."""

    _proc = None

    @property
    def stdout(self) -> AsyncIterator[str]:
        return lines(self._proc.stdout)

    @property
    def stderr(self) -> AsyncIterator[str]:
        return lines(self._proc.stderr)

    def send(self, data: bytes) -> None:
        self._proc.stdin.write(data)

    def end_input(self) -> None:
        """EOF on stdin, the session kept open: the agent's control channel ends, it stops the command, exits."""
        with contextlib.suppress(OSError):  # stdin already closed: the same end
            self._proc.stdin.write_eof()


async def lines(reader) -> AsyncIterator[str]:
    """Lines without their newline until EOF (b''; a real empty line is b'\\n'), undecodable bytes replaced."""
    while line := await reader.readline():
        yield line.decode("utf-8", "replace").rstrip("\n")
