"""The output/input half of a running remote command, shared by the SSH and the local transport.

    class SshSession(ProcessStreams):     # self._proc: an asyncssh process or an asyncio subprocess
        ...
    async for line in session.stdout: ...     # Line: str, with .raw (exact bytes) and .partial (a long line goes on)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator


class ProcessStreams:
    """stdout/stderr as Lines and stdin writes, over any process object with read(n)-able streams."""

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


MAX_LINE = 1 << 20  # a longer line arrives in pieces of this size: memory stays bounded whatever a host prints
_READ = 1 << 16


class Line(str):
    """One output line as text (undecodable bytes shown as U+FFFD), with its exact bytes in .raw.

    partial: the line goes on in the next Line (it is longer than MAX_LINE); show the next one without a prefix.
    """

    raw: bytes
    partial: bool

    def __new__(cls, raw: bytes, partial: bool = False) -> Line:
        line = super().__new__(cls, raw.decode("utf-8", "replace"))
        line.raw, line.partial = raw, partial
        return line


def _utf8_cut(buf: bytearray, at: int) -> int:
    """`at`, or the start of a UTF-8 character that would end past it (a piece never splits a character)."""
    for start in range(at - 1, max(at - 4, -1), -1):
        if buf[start] >= 0xC0:  # a lead byte: 110xxxxx needs 2 bytes, 1110xxxx 3, 11110xxx 4
            size = 2 if buf[start] < 0xE0 else 3 if buf[start] < 0xF0 else 4
            return start if start + size > at else at
        if buf[start] < 0x80:  # ASCII: nothing open
            return at
    return at


async def lines(reader) -> AsyncIterator[Line]:
    """Lines without their newline until EOF; a line longer than MAX_LINE comes as partial pieces."""
    buf = bytearray()
    while chunk := await reader.read(_READ):
        buf += chunk
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            yield Line(bytes(buf[start:end]))
            start = end + 1
        del buf[:start]
        while len(buf) > MAX_LINE:  # more follows: this piece is not the end of the line
            cut = _utf8_cut(buf, MAX_LINE)
            yield Line(bytes(buf[:cut]), partial=True)
            del buf[:cut]
    if buf:
        yield Line(bytes(buf))
