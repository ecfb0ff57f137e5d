"""
Tests for L{aigateway.testing.eventstream}: what it writes is what
botocore's event stream decoder reads.
"""

from __future__ import annotations

import json

from botocore.eventstream import (  # type: ignore[import-untyped]
    ChecksumMismatch,
    EventStreamBuffer,
)
from twisted.trial.unittest import SynchronousTestCase

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
