"""
Tests for L{aigateway.llm.translate}'s stream chunk writing, and its JSON
reading and writing.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from aigateway.llm.gemini import GeminiStream, geminiToCompletion
from aigateway.llm.translate import (
    ChunkEncoder,
    TextChunk,
    chunk,
    compactJSON,
    encodeEvent,
    readJSON,
    textChunk,
    writeJSON,
)

TEXTS = ["", "Bonjour, ", "ça va ? 🌹", 'quote " and \\ backslash', "line\nbreak\ttab\r",
         "\x00\x1f\x7f control", "\u2028\u2029 separators", "</script>", "{\"json\": [1]}"]


class ChunkEncoderTests(SynchronousTestCase):
    """
    L{ChunkEncoder} writes the bytes L{encodeEvent} writes.
    """

    def test_textChunkIsChunk(self) -> None:
        """
        L{textChunk} makes the document L{chunk} makes, keys in the same
        order.
        """
        for field in ("content", "reasoning_content"):
            made = textChunk("id1", "m", 1700000000, "hi", field)
            expected = chunk("id1", "m", 1700000000, {field: "hi"})
            self.assertIsInstance(made, TextChunk)
            self.assertEqual(made, expected)
            self.assertEqual(list(made.items()), list(expected.items()))

    def test_sameBytes(self) -> None:
        """
        Text chunks of every kind of text, for both fields, and with the
        id, model or time changing between chunks, and other chunks between
        them, are written byte for byte as L{encodeEvent} writes them.
        """
        encoder = ChunkEncoder()
        keys = [("chatcmpl-1", "gpt-x", 1700000000), ("msg_é\"1", "model/ü", 1700000001),
                ("chatcmpl-1", "gpt-x", 1700000000), ("", "", 0)]
        for id, model, created in keys:
            for text in TEXTS:
                for field in ("content", "reasoning_content"):
                    document = textChunk(id, model, created, text, field)
                    self.assertEqual(encoder.encode(document), encodeEvent(document))
                other = chunk(id, model, created, {"role": "assistant", "content": text})
                self.assertEqual(encoder.encode(other), encodeEvent(other))
                plain = dict(textChunk(id, model, created, text))
                self.assertEqual(encoder.encode(plain), encodeEvent(plain))


def _same(a: Any, b: Any) -> bool:
    """
    Whether two JSON values are the same, types, key order and the sign of
    zero included.
    """
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if type(a) is dict:
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if type(a) is list:
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _numbers(count: int) -> list[str]:
    """
    Numbers as JSON spells them, and some it does not: integers of every
    length up to 30 digits, floats of every exponent, long mantissas.
    """
    chance = random.Random(15)
    out = []
    for _ in range(count):
        digits = "".join(chance.choice("0123456789") for _ in range(chance.randint(1, 30)))
        sign = chance.choice(["", "-"])
        kind = chance.randrange(4)
        if kind == 0:
            out.append(sign + (digits.lstrip("0") or "0"))
        elif kind == 1:
            out.append(repr(chance.uniform(-1, 1) * 10.0 ** chance.randint(-320, 308)))
        elif kind == 2:
            out.append(f"{sign}{digits[:1]}.{digits[1:] or '0'}e{chance.randint(-400, 400)}")
        else:
            out.append(sign + digits)
    return out


# Texts json reads that a faster reader may read otherwise or refuse.
EDGES = [
    '{"a":1,"b":0,"a":2}', '[123456789012345678901234567890]', '[-9223372036854775809]',
    '[18446744073709551616]', '[9223372036854775807, -9223372036854775808]', '[NaN]',
    '[Infinity, -Infinity]', '[1e400]', '["\\ud800"]', '["\\udc00\\ud800"]',
    '"\\ud83d\\ude00 \\u00e9"', '-0', '[-0.0]', '1E5', '\ufeff{}', ' \t\n{"a": [ ]}\r\n',
    '"\\/"', '{"id": "12345678901234567890 is text"}',
]
# What json refuses: the reader must refuse it too, with json's error.
REFUSED = ['[1,2,]', '{"a":1,}', '[01]', '"\x1f"', "{'a': 1}", '', '[', '{"a" 1}', 'nul', '[1] [2]']


class JSONTests(SynchronousTestCase):
    """
    L{readJSON} reads what C{json.loads} reads as it reads it, and
    L{writeJSON} writes what reads back as the same document.
    """

    def test_readsAsJson(self) -> None:
        """
        Numbers of every shape, and the texts a faster reader treats
        differently (duplicate keys, integers past 64 bits, NaN and
        infinities, lone surrogates, a byte order mark), read as
        C{json.loads} reads them, from text and from UTF-8 bytes.
        """
        texts = ["[" + number + "]" for number in _numbers(20000)] + EDGES
        for text in texts:
            for given in (text, text.encode("utf-8", "surrogatepass")):
                try:
                    expected = json.loads(given)
                except ValueError:
                    self.assertRaises(ValueError, readJSON, given)
                    continue
                self.assertTrue(_same(readJSON(given), expected), text)

    def test_refusesAsJson(self) -> None:
        """
        What json refuses is refused with json's own error and its place.
        """
        for text in REFUSED:
            with self.assertRaises(json.JSONDecodeError) as caught:
                readJSON(text)
            with self.assertRaises(json.JSONDecodeError) as expected:
                json.loads(text)
            self.assertEqual(str(caught.exception), str(expected.exception))
        self.assertRaises(ValueError, readJSON, b"\xff{}")

    def test_writesBack(self) -> None:
        """
        Every document read, integers past 64 bits, lone surrogates and
        non-ASCII text included, is written as compact UTF-8 JSON that
        reads back as itself; where json writes it the same way, so does
        L{writeJSON}.
        """
        values: list[Any] = []
        for number in _numbers(5000):
            try:
                value = json.loads("[" + number + "]")
            except ValueError:
                continue
            if math.isfinite(value[0]):
                values.append(value)
        values += [{"a": 2**70, "b": [-2**64, "\ud800"], "é": "ça va ? 🌹\u2028\x00\x1f\x7f"},
                   {"nested": [[{"k": None, "t": True, "f": False}]]}, [], {}, "", 0, -0.0]
        for value in values:
            written = writeJSON(value)
            self.assertTrue(_same(json.loads(written), value), value)
        self.assertEqual(writeJSON({"é": "ü", "a": [1, "x"]}), compactJSON({"é": "ü", "a": [1, "x"]}).encode())

    def test_notANumber(self) -> None:
        """
        A number JSON cannot hold (NaN, an infinity) is written as C{null},
        so that what is written is JSON any reader takes.
        """
        self.assertEqual(writeJSON([float("nan"), float("inf"), -float("inf")]), b"[null,null,null]")

    def test_longIntegersTranslated(self) -> None:
        """
        An integer past 64 bits in a tool call's arguments comes through a
        translated answer, plain and streamed, digit for digit.
        """
        big = "123456789012345678901234567890"
        answer = ('{"candidates":[{"content":{"role":"model","parts":[{"functionCall":'
                  '{"name":"f","args":{"n":' + big + '}}}]},"finishReason":"STOP"}],'
                  '"modelVersion":"gemini-x"}')
        completion = geminiToCompletion(readJSON(answer.encode()), model="gemini-x", created=1, id="c")
        arguments = completion["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
        self.assertEqual(arguments, '{"n":' + big + "}")
        stream = GeminiStream("gemini-x", 1, "c")
        chunks = stream.feed(b"data: " + answer.encode() + b"\r\n\r\n") + stream.end()
        streamed = "".join(
            call["function"]["arguments"]
            for c in chunks for choice in c["choices"]
            for call in choice["delta"].get("tool_calls", ()))
        self.assertEqual(streamed, '{"n":' + big + "}")
