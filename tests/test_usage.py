"""
Tests for L{aigateway.llm.usage}: what an answer says about itself, read as it
passes.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from aigateway.llm.usage import AnswerObserver


def _chunk(delta: dict, finish: str | None = None, usage: dict | None = None, compact: bool = True) -> bytes:
    document = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o-mini-2024",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": usage}
    separators = (",", ":") if compact else (", ", ": ")
    return b"data: " + json.dumps(document, separators=separators).encode() + b"\n\n"


def _stream(compact: bool = True) -> bytes:
    return (
        _chunk({"role": "assistant", "content": ""}, compact=compact)
        + b"".join(_chunk({"content": word}, compact=compact) for word in ("Roses ", "are ", "red"))
        + _chunk({}, "stop", compact=compact)
        + b'data: {"id":"chatcmpl-1","choices":[],"usage":'
        + (b'{"prompt_tokens":12,"completion_tokens":3}' if compact else b' {"prompt_tokens": 12, "completion_tokens": 3}')
        + b"}\n\ndata: [DONE]\n\n"
    )


class StreamTests(SynchronousTestCase):
    def observe(self, data: bytes, capture: bool, step: int) -> AnswerObserver:
        observer = AnswerObserver(stream=True, capture=capture)
        for i in range(0, len(data), step):
            observer.data(data[i:i + step])
        observer.end()
        return observer

    def test_usage(self) -> None:
        """
        Id, model, finish reasons and token counts come out of a stream
        however it is split and however its JSON is spaced; the text only
        when it is captured.
        """
        for compact in (True, False):
            for step in (1, 7, 10_000):
                for capture in (False, True):
                    observer = self.observe(_stream(compact), capture, step)
                    self.assertEqual(
                        (observer.responseId, observer.responseModel, observer.finishReasons,
                         observer.inputTokens, observer.outputTokens),
                        ("chatcmpl-1", "gpt-4o-mini-2024", ["stop"], 12, 3),
                    )
                    self.assertEqual("".join(observer.text), "Roses are red" if capture else "")

    def test_noUsage(self) -> None:
        """
        A stream without a usage chunk leaves the counts unknown.
        """
        data = _chunk({"content": "hi"}) + _chunk({}, "length") + b"data: [DONE]\n\n"
        observer = self.observe(data, False, 10_000)
        self.assertEqual((observer.finishReasons, observer.inputTokens), (["length"], None))


class BodyTests(SynchronousTestCase):
    def test_plain(self) -> None:
        """
        A whole JSON answer is read once it ends.
        """
        observer = AnswerObserver(stream=False, capture=True)
        body = json.dumps({"id": "c", "model": "m", "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 2}}).encode()
        observer.data(body[:5])
        observer.data(body[5:])
        observer.end()
        self.assertEqual((observer.responseModel, observer.finishReasons, observer.inputTokens, observer.outputTokens,
                          observer.text), ("m", ["stop"], 1, 2, ["hi"]))


class TextChunkTests(SynchronousTestCase):
    """
    L{AnswerObserver.document} reads a L{TextChunk} as the plain chunk it
    equals.
    """

    def test_sameAsPlainChunk(self) -> None:
        """
        Text chunks (content or reasoning, ids and models of any type) leave
        the observer as the same chunks as plain dicts do, capture on or off,
        stream or not.
        """
        from aigateway.llm.translate import textChunk

        for capture in (False, True):
            for stream in (False, True):
                fast = AnswerObserver(stream, capture)
                slow = AnswerObserver(stream, capture)
                for id, model in (("msg_1", "m"), (None, 3), ("msg_2", "m2")):
                    for field in ("content", "reasoning_content"):
                        document = textChunk(id, model, 1, "word ", field)  # type: ignore[arg-type]
                        fast.document(document)
                        slow.document(dict(document))
                state = ("responseId", "responseModel", "finishReasons", "inputTokens",
                         "outputTokens", "text")
                self.assertEqual([getattr(fast, name) for name in state],
                                 [getattr(slow, name) for name in state])
                self.assertEqual(fast.responseId, "msg_2")
