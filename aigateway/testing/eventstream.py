"""
The AWS event stream framing (C{application/vnd.amazon.eventstream}), as
Bedrock's C{ConverseStream} sends it: the encoder the fake LLM and the tests
use to write what a real Bedrock writes.

A message is a prelude (total length, headers length, the prelude's CRC32),
the headers, the payload and the CRC32 of everything before it; every
number is big-endian.  Only string headers (type 7) are written, which is
all Bedrock's events carry.
"""

from __future__ import annotations

import struct
import zlib
from typing import Mapping

__all__ = ["encodeMessage", "event", "exception"]

_STRING = 7


def encodeMessage(headers: Mapping[str, str], payload: bytes) -> bytes:
    """
    One event stream message.

    @param headers: header names and string values, in order.
    @param payload: the message's payload bytes.
    """
    encoded = b"".join(
        struct.pack(">B", len(name.encode("utf-8"))) + name.encode("utf-8")
        + struct.pack(">BH", _STRING, len(value.encode("utf-8"))) + value.encode("utf-8")
        for name, value in headers.items()
    )
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(eventType: str, payload: bytes) -> bytes:
    """
    An C{event} message of type C{eventType} with a JSON payload.
    """
    return encodeMessage(
        {":event-type": eventType, ":content-type": "application/json", ":message-type": "event"},
        payload,
    )


def exception(exceptionType: str, payload: bytes) -> bytes:
    """
    An C{exception} message, as a stream that fails midway ends.
    """
    return encodeMessage(
        {":exception-type": exceptionType, ":content-type": "application/json",
         ":message-type": "exception"},
        payload,
    )
