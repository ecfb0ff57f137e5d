"""
What an OpenAI-style answer says about itself: response id and model,
finish reasons, token usage and (when content capture is on) the text.

L{AnswerObserver} reads a copy of the answer as the relay passes it on: the
events of a stream one by one, or a plain JSON body once it is complete.
It never changes or delays what the client gets.
"""

from __future__ import annotations

import re
from typing import Callable

from aigateway.llm.sse import SSEParser
from aigateway.llm.translate import StreamError, TextChunk, readJSON

__all__ = ["AnswerObserver", "MAX_OBSERVED_BODY"]

# A plain (non-stream) answer larger than this is relayed but not read.
MAX_OBSERVED_BODY = 4 * 1024 * 1024

# A usage or finish reason with a value other than null.
_MEANINGFUL = re.compile(r'"(?:usage|finish_reason)"\s*:\s*[^n\s]')


def _int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


class AnswerObserver:
    """
    Collects what an answer reports, from a stream or from a whole body.

    @ivar capture: whether to keep the answer's text.
    @ivar translate: turns a whole answer in the provider's API into a
        chat completion, when the answer is not in OpenAI's.
    """

    def __init__(self, stream: bool, capture: bool = False) -> None:
        self.stream = stream
        self.capture = capture
        self.responseId: str | None = None
        self.responseModel: str | None = None
        self.finishReasons: list[str] = []
        self.inputTokens: int | None = None
        self.outputTokens: int | None = None
        self.text: list[str] = []
        self.translate: Callable[[dict], dict] | None = None
        self._parser = SSEParser() if stream else None
        self._body: list[bytes] | None = None if stream else []
        self._size = 0

    def data(self, chunk: bytes) -> None:
        """
        One more chunk of the answer's body.
        """
        if self._parser is not None:
            for event in self._parser.feed(chunk):
                self._event(event.data)
        elif self._body is not None:
            self._size += len(chunk)
            if self._size > MAX_OBSERVED_BODY:
                self._body = None
            else:
                self._body.append(chunk)

    def end(self) -> None:
        """
        The answer is complete.
        """
        if self._parser is not None:
            for event in self._parser.end():
                self._event(event.data)
        elif self._body:
            self._document(b"".join(self._body))
            self._body = None

    def _event(self, data: str) -> None:
        """
        One event of a stream.  Most chunks of a chat stream only carry a
        piece of text, with C{"usage": null} and C{"finish_reason": null}:
        unless the text is captured, only the first event (id and model)
        and those where usage or a finish reason has a value are decoded.
        """
        if data == "[DONE]":
            return
        if self.capture or self.responseModel is None or _MEANINGFUL.search(data):
            self._document(data)

    def _document(self, text: str | bytes) -> None:
        try:
            document = readJSON(text)
        except ValueError:
            return
        if isinstance(document, dict):
            if self.translate is not None:
                try:
                    document = self.translate(document)
                except (ValueError, TypeError, KeyError, StreamError):
                    # An answer that cannot be read in the common form
                    # says nothing about usage; the client has it as is.
                    return
            self.document(document)

    def document(self, document: dict) -> None:
        """
        One OpenAI document of the answer: a chat completion, one chunk of
        a chat stream, a Responses answer or one event of its stream.
        """
        if type(document) is TextChunk:
            # Most of a translated stream: an id, a model and a piece of
            # text, no usage and no finish reason.
            if isinstance(document["id"], str):
                self.responseId = document["id"]
            if isinstance(document["model"], str):
                self.responseModel = document["model"]
            if self.capture and self.stream:
                text = document["choices"][0]["delta"].get("content")
                if isinstance(text, str):
                    self.text.append(text)
            return
        if document.get("type") == "response.completed" and isinstance(document.get("response"), dict):
            # The Responses stream's last event carries the whole answer.
            document = document["response"]
        if isinstance(document.get("id"), str):
            self.responseId = document["id"]
        if isinstance(document.get("model"), str):
            self.responseModel = document["model"]
        usage = document.get("usage")
        if isinstance(usage, dict):
            inputTokens = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
            outputTokens = _int(usage.get("completion_tokens", usage.get("output_tokens")))
            if inputTokens is not None:
                self.inputTokens = inputTokens
            if outputTokens is not None:
                self.outputTokens = outputTokens
        choices = document.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                reason = choice.get("finish_reason")
                if isinstance(reason, str):
                    self.finishReasons.append(reason)
                if self.capture:
                    part = choice.get("delta") if self.stream else choice.get("message")
                    if isinstance(part, dict) and isinstance(part.get("content"), str):
                        self.text.append(part["content"])
