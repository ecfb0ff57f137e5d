"""
Tests for L{aigateway.testing.eventstream}: what it writes is what
botocore's event stream decoder reads; and for
L{aigateway.llm.bedrock.EventStreamReader}: it reads what botocore reads.
"""

from __future__ import annotations

import json
import struct
import zlib

import botocore.eventstream  # type: ignore[import-untyped]
from botocore.eventstream import (  # type: ignore[import-untyped]
    ChecksumMismatch,
    EventStreamBuffer,
)
from twisted.trial.unittest import SynchronousTestCase

from aigateway.llm.bedrock import EventStreamReader
from aigateway.testing.eventstream import encodeMessage, event, exception


def decode(data: bytes) -> list[tuple[dict[str, object], bytes]]:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return [(message.headers, message.payload) for message in buffer]


class EncoderTests(SynchronousTestCase):
    """
    L{encodeMessage}, L{event} and L{exception} against botocore's decoder.
    """

    def test_event(self) -> None:
        """
        An event's headers and payload come back as they were written.
        """
        payload = json.dumps({"delta": {"text": "héllo"}}, ensure_ascii=False).encode("utf-8")
        self.assertEqual(decode(event("contentBlockDelta", payload)), [(
            {":event-type": "contentBlockDelta", ":content-type": "application/json",
             ":message-type": "event"}, payload)])

    def test_exception(self) -> None:
        """
        An exception message names its type.
        """
        [(headers, payload)] = decode(exception("throttlingException", b'{"message":"x"}'))
        self.assertEqual(headers[":message-type"], "exception")
        self.assertEqual(headers[":exception-type"], "throttlingException")
        self.assertEqual(payload, b'{"message":"x"}')

    def test_several(self) -> None:
        """
        Messages written one after another are read one after another, an
        empty payload and no headers included.
        """
        data = encodeMessage({}, b"") + encodeMessage({"a": "b"}, b"xyz")
        self.assertEqual(decode(data), [({}, b""), ({"a": "b"}, b"xyz")])

    def test_checksums(self) -> None:
        """
        The CRCs written are the ones the decoder checks: a flipped payload
        byte fails them.
        """
        data = bytearray(event("messageStart", b'{"role":"assistant"}'))
        data[-6] ^= 0x40
        self.assertRaises(ChecksumMismatch, decode, bytes(data))


def encodeTyped(headers: list[tuple[str, int, object]], payload: bytes) -> bytes:
    """
    A message with headers of any type: (name, type, value).
    """
    encoded = b""
    for name, kind, value in headers:
        raw = name.encode("utf-8")
        encoded += struct.pack(">B", len(raw)) + raw + struct.pack(">B", kind)
        if kind in (6, 7):
            data = value.encode("utf-8") if isinstance(value, str) else value
            assert isinstance(data, bytes)
            encoded += struct.pack(">H", len(data)) + data
        elif kind == 9:
            assert isinstance(value, bytes)
            encoded += value
        elif kind > 1:
            encoded += struct.pack({2: ">b", 3: ">h", 4: ">i", 5: ">q", 8: ">q"}[kind], value)
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def readBoth(pieces: list[bytes]) -> tuple[tuple[list[object], object], tuple[list[object], object]]:
    """
    What botocore's buffer and L{EventStreamReader} read of C{pieces}, fed
    one after another: the messages, and the failure (class name and text).
    """
    theirs: list[object] = []
    ours: list[object] = []
    theirError: object = None
    ourError: object = None
    buffer = EventStreamBuffer()
    reader = EventStreamReader(botocore.eventstream)
    for piece in pieces:
        if theirError is None:
            buffer.add_data(piece)
            try:
                theirs.extend((m.headers, m.payload) for m in buffer)
            except Exception as e:
                theirError = (type(e).__name__, str(e))
        if ourError is None:
            reader.add(piece)
            try:
                ours.extend(reader)
            except botocore.eventstream.ParserError as e:
                ourError = (type(e).__name__, str(e))
    return (theirs, theirError), (ours, ourError)


class EventStreamReaderTests(SynchronousTestCase):
    """
    L{aigateway.llm.bedrock.EventStreamReader} reads what botocore's
    C{EventStreamBuffer} reads, and fails where it fails.
    """

    def messages(self) -> bytes:
        return b"".join([
            event("messageStart", b'{"role":"assistant"}'),
            encodeTyped([(":message-type", 7, "event"), ("t", 0, None), ("f", 1, None),
                         ("b", 2, -5), ("s", 3, 300), ("i", 4, -70000), ("l", 5, 2 ** 40),
                         ("ts", 8, 1700000000000), ("u", 9, bytes(range(16))),
                         ("raw", 6, b"\x00\xff"), ("é", 7, "ünï")], b'{"x":1}'),
            encodeMessage({}, b""),
            event("contentBlockDelta", b'{"delta":{"text":"h\xc3\xa9"},"contentBlockIndex":0}'),
            exception("throttlingException", b"{}"),
        ])

    def test_sameMessagesAnyCut(self) -> None:
        """
        Messages of every header type, fed whole, cut at every byte in two,
        and one byte at a time, come out as botocore reads them.
        """
        data = self.messages()
        cuts = [[data], [data[i:i + 1] for i in range(len(data))]]
        cuts += [[data[:i], data[i:]] for i in range(len(data))]
        for pieces in cuts:
            theirs, ours = readBoth(pieces)
            self.assertEqual(ours, theirs)
            self.assertEqual(len(ours[0]), 5)

    def test_sameFailures(self) -> None:
        """
        Every single byte of the stream changed, fed whole or in two pieces,
        gives botocore's messages before the damage and then botocore's
        failure, by class and text.
        """
        data = self.messages()
        for at in range(len(data)):
            for flip in (0x01, 0x80):
                broken = bytearray(data)
                broken[at] ^= flip
                damaged = bytes(broken)
                for pieces in ([damaged], [damaged[:at + 1], damaged[at + 1:]]):
                    theirs, ours = readBoth(pieces)
                    self.assertEqual(ours, theirs, (at, flip))

    def test_limits(self) -> None:
        """
        Headers or a payload longer than botocore allows fail as in
        botocore, before the frame is complete.
        """
        for total, headers in ((200 * 1024, 129 * 1024), (25 * 1024 * 1024, 0)):
            prelude = struct.pack(">II", total, headers)
            prelude += struct.pack(">I", zlib.crc32(prelude))
            theirs, ours = readBoth([prelude])
            self.assertEqual(ours, theirs)
            self.assertIsNotNone(ours[1])

    def test_duplicateHeader(self) -> None:
        """
        A header named twice fails as in botocore.
        """
        data = encodeTyped([("a", 7, "x"), ("a", 7, "y")], b"")
        theirs, ours = readBoth([data])
        self.assertEqual(ours, theirs)
        self.assertEqual(ours[1][0], "DuplicateHeader")  # type: ignore[index]

    def test_unreadableHeaders(self) -> None:
        """
        Headers of an unknown type, or cut short, inside a frame whose
        checksums hold, fail as a damaged frame (botocore raises no error of
        its own there).
        """
        for headers in (b"\x01a\x0a", b"\x01a\x07\x00\x09abc", b"\x05ab"):
            total = 12 + len(headers) + 4
            prelude = struct.pack(">II", total, len(headers))
            prelude += struct.pack(">I", zlib.crc32(prelude))
            message = prelude + headers
            message += struct.pack(">I", zlib.crc32(message))
            reader = EventStreamReader(botocore.eventstream)
            reader.add(message)
            self.assertRaises(botocore.eventstream.ParserError, list, reader)
