"""
Tests for L{aigateway.llm.sse}: events come out right however the stream is cut.
"""

from twisted.trial.unittest import SynchronousTestCase

from aigateway.llm.sse import Event, SSEParser

# A recorded OpenAI chat stream, with usage, a comment and [DONE].
RECORDED = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
    b": keep-alive\n\n"
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"delta":{"content":"Roses \xc3\xa9"},"finish_reason":null}]}\n\n'
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","model":"gpt-4o-mini",'
    b'"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}\n\n'
    b"data: [DONE]\n\n"
)


def _parse(chunks: list[bytes]) -> list[Event]:
    parser = SSEParser()
    events: list[Event] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.end())
    return events


class SplitTests(SynchronousTestCase):
    """
    Every way of cutting a recorded stream gives the same events.
    """

    def test_whole(self) -> None:
        """
        The recorded stream in one chunk: five data events, the comment
        skipped, multi-byte text intact.
        """
        events = _parse([RECORDED])
        self.assertEqual(len(events), 5)
        self.assertEqual(events[-1], Event("[DONE]"))
        self.assertIn("Roses \u00e9", events[1].data)

    def test_everySplit(self) -> None:
        """
        Cut in two at every byte, including inside a UTF-8 character.
        """
        expected = _parse([RECORDED])
        for i in range(len(RECORDED) + 1):
            self.assertEqual(_parse([RECORDED[:i], RECORDED[i:]]), expected, i)

    def test_everySplitInThree(self) -> None:
        """
        Cut in three at many pairs of places.
        """
        expected = _parse([RECORDED])
        for i in range(0, len(RECORDED), 7):
            for j in range(i, len(RECORDED), 13):
                self.assertEqual(_parse([RECORDED[:i], RECORDED[i:j], RECORDED[j:]]), expected)

    def test_byteByByte(self) -> None:
        """
        One byte at a time.
        """
        self.assertEqual(
            _parse([RECORDED[i : i + 1] for i in range(len(RECORDED))]), _parse([RECORDED])
        )

    def test_lineEndings(self) -> None:
        """
        CRLF and lone CR end lines too, even when CRLF is split.
        """
        crlf = RECORDED.replace(b"\n", b"\r\n")
        cr = RECORDED.replace(b"\n", b"\r")
        expected = _parse([RECORDED])
        self.assertEqual(_parse([crlf]), expected)
        self.assertEqual(_parse([cr]), expected)
        for i in range(len(crlf) + 1):
            self.assertEqual(_parse([crlf[:i], crlf[i:]]), expected, i)


class FieldTests(SynchronousTestCase):
    """
    Fields as the format defines them.
    """

    def test_eventAndMultilineData(self) -> None:
        """
        Named events, and data lines joined with newlines.
        """
        events = _parse([b"event: error\ndata: a\ndata:b\nid: 7\n\n"])
        self.assertEqual(events, [Event("a\nb", "error", "7")])

    def test_noDataNoEvent(self) -> None:
        """
        A block with no data dispatches nothing.
        """
        self.assertEqual(_parse([b"event: x\n\n: comment\n\n"]), [])

    def test_unfinishedEventNotDispatched(self) -> None:
        """
        An event without its blank line is not dispatched yet.
        """
        parser = SSEParser()
        self.assertEqual(parser.feed(b"data: partial\n"), [])
        self.assertEqual(parser.feed(b"\n"), [Event("partial")])

    def test_bom(self) -> None:
        """
        A byte order mark at the start is ignored.
        """
        self.assertEqual(_parse([b"\xef\xbb\xbfdata: x\n\n"]), [Event("x")])
