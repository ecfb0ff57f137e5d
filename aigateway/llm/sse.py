"""
An incremental parser for server-sent events, as the WHATWG HTML standard
defines the stream format.

The relay writes every chunk to the client first and only then shows it to
the parser, so parsing never holds a byte back; the parser keeps just the
unfinished line between chunks.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Event", "SSEParser"]


class Event(NamedTuple):
    """
    One dispatched event (a named tuple: a stream makes one per event, and
    a tuple is the cheapest value to make).

    @ivar event: the C{event:} field, or C{"message"} when there was none.
    @ivar data: the C{data:} lines joined with newlines.
    """

    data: str
    event: str = "message"
    id: str | None = None


class SSEParser:
    """
    Turns a byte stream, in chunks of any size, into L{Event}s.
    """

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._first = True

    def feed(self, chunk: bytes) -> list[Event]:
        """
        Parse one more chunk and return the events it completed.
        """
        buffer = self._pending + chunk
        if self._first and buffer:
            self._first = False
            if buffer.startswith(b"\xef\xbb\xbf"):
                buffer = buffer[3:]
        # A CR at the very end may be the first half of a CRLF: keep it.
        tail = b""
        if buffer.endswith(b"\r"):
            buffer, tail = buffer[:-1], b"\r"
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self._pending = lines.pop() + tail
        events: list[Event] = []
        # The lines are read here rather than one method call each: a
        # stream's every event passes through this loop.
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(Event("\n".join(data), self._event or "message", self._id))
                    data = self._data = []
                self._event = ""
                continue
            if line[0] == 0x3A:  # ":" starts a comment
                continue
            name, colon, value = line.partition(b":")
            if colon and value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                data.append(value.decode("utf-8", "replace"))
            elif name == b"event":
                self._event = value.decode("utf-8", "replace")
            elif name == b"id":
                text = value.decode("utf-8", "replace")
                if "\x00" not in text:
                    self._id = text
        return events

    def end(self) -> list[Event]:
        """
        The stream has ended: a line held back for a CR that might have
        been half of a CRLF is complete after all.
        """
        if not self._pending.endswith(b"\r"):
            return []
        return self.feed(b"\n")
