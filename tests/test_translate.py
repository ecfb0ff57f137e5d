"""
Tests for L{aigateway.llm.translate}'s stream chunk writing.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from aigateway.llm.translate import ChunkEncoder, TextChunk, chunk, encodeEvent, textChunk

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
