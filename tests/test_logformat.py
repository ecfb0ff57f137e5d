"""
Tests for L{aigateway.observe.logformat}: events that carry their text read
exactly as Twisted's own formatting of them writes them, to every kind of
observer, and Twisted itself is left as it is.
"""

from __future__ import annotations

import io
import json
import sys
from typing import Any

from twisted.logger import (
    Logger,
    LogLevel,
    eventAsJSON,
    eventFromJSON,
    formatEvent,
    globalLogPublisher,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.trial.unittest import SynchronousTestCase

from aigateway.logs import compactJSON, json as jsonLogger
from aigateway.observe.logformat import Preformatter, preformatted
from tests.memory import MemoryGateway

CONFIG = """
backends:
  openai: {provider: openai, url: 'http://127.0.0.1:9000'}
routes:
  - {name: openai, match: {pathPrefix: /openai}, backend: openai}
"""
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Whats your favorite poem?"}]}
ACCESS_FIELDS = ("time", "route", "method", "path", "status", "durationMs", "ttfbMs", "upstreamStatus",
                 "requestModel", "responseModel", "inputTokens", "outputTokens", "sub", "backend",
                 "attempts", "bytesIn", "bytesOut", "traceId", "error")


class _Thing:
    name = "thing"
    items = ["zero", "one"]

    def __str__(self) -> str:
        return "a thing"

    def __repr__(self) -> str:
        return "<thing>"


FIELDS = {
    "method": "POST",
    "status": 200,
    "durationMs": 1.25,
    "none": None,
    "thing": _Thing(),
    "table": {"key": "value", 3: "three"},
    "width": 8,
    "call": lambda: "called",
    "bytes": b"raw",
    "unicode": "h\u00e9llo \u2603",
    "braces": "{not a field} }{",
}

GOOD = [
    "",
    "no fields at all",
    "{method} {status}",
    "{durationMs:.1f} ms",
    "{status:>6d}|{method:<6}|{method:^9}",
    "{durationMs:{width}.2f}",
    "{none} {bytes} {unicode}",
    "{thing} {thing!r} {thing!s} {unicode!a}",
    "{thing.name} {thing.items[1]} {table[key]} {table[3]}",
    "{call()} and {call}",
    "{{literal}} {method}",
    "{braces} {{ }}",
]

BAD = [
    "{missing}",
    "{}",
    "{0}",
    "{method",
    "{status:d!}",
    "{durationMs:d}",
    "{method()}",
    "{thing.nothing}",
    "{table[nothing]}",
]


def _event(format: str) -> dict:
    return dict(FIELDS, log_format=format, log_namespace="aigateway.test", log_level=LogLevel.info,
                log_time=1000.0)


class PreformattedTests(SynchronousTestCase):
    """
    The text of an event is the same preformatted as not.
    """

    def test_sameText(self) -> None:
        """
        Fields, specs, nested specs, conversions, attribute and index
        access, calls, escaped braces and braces in values all come out as
        Twisted writes them, and the text needs no field looked up again.
        """
        for format in GOOD:
            theirs = formatEvent(_event(format))
            event = preformatted(_event(format))
            self.assertEqual(formatEvent(event), theirs, format)
            self.assertEqual(event["log_format"].replace("{{", "").replace("}}", "").count("{"), 0)
            self.assertEqual(event["method"], "POST")
        self.assertEqual(formatEvent(preformatted(_event(GOOD[4]))), "   200|POST  |  POST   ")
        self.assertEqual(formatEvent(preformatted(_event(GOOD[9]))), "called and " + repr(FIELDS["call"]))
        self.assertEqual(formatEvent(preformatted(_event(GOOD[11]))), "{not a field} }{ { }")

    def test_unformattable(self) -> None:
        """
        A format that cannot be applied is left for Twisted, which gives
        its "Unable to format event" text, never an exception.
        """
        for format in BAD:
            event = preformatted(_event(format))
            self.assertEqual(event["log_format"], format)
            self.assertTrue(formatEvent(event).startswith("Unable to format event"), format)

    def test_leftAlone(self) -> None:
        """
        Events without a format, with a C{bytes} one or already flattened
        are passed on unchanged.
        """
        for event in ({"a": 1}, {"log_format": None}, {"log_format": b"{a}", "a": 1},
                      {"log_format": "{a}", "a": 1, "log_flattened": {"a!:": 1}}):
            self.assertEqual(preformatted(dict(event)), event)


class PreformatterTests(SynchronousTestCase):
    """
    A logger whose observer is a L{Preformatter} writes the same log lines.
    """

    FORMAT = "{method} {path} -> {status} in {durationMs:.1f} ms sub={sub}"
    KEYS = dict(method="POST", path="/openai/{x}", status=200, durationMs=1.25, sub=None)

    def lines(self, observer: object) -> tuple[str, str]:
        """
        What a text file and a JSON lines file read for one event, emitted
        through C{observer}.
        """
        text, jsonLines = io.StringIO(), io.StringIO()
        textObserver, jsonObserver = textFileLogObserver(text), jsonFileLogObserver(jsonLines, "")
        events: list[dict] = []

        def both(event: dict) -> None:
            events.append(event)
            textObserver(event)
            jsonObserver(event)

        log = Logger(namespace="aigateway.access", observer=observer(both))  # type: ignore[operator]
        log.info(self.FORMAT, **self.KEYS)
        [event] = events
        for name, value in self.KEYS.items():
            self.assertEqual(event[name], value)
        line = jsonLines.getvalue()
        self.assertEqual(formatEvent(eventFromJSON(line)), formatEvent(event))
        return text.getvalue().split(" ", 1)[1], json.loads(line)["path"]

    def test_sameLines(self) -> None:
        """
        The text line is the one Twisted writes for the event as emitted;
        the JSON line has the same fields and formats to the same words.
        """
        ours = self.lines(Preformatter)
        theirs = self.lines(lambda observer: observer)
        self.assertEqual(ours, theirs)
        self.assertEqual(ours[0], "[aigateway.access#info] POST /openai/{x} -> 200 in 1.2 ms sub=None\n")

    def test_eventAsJSON(self) -> None:
        """
        The event's JSON, read back, still formats to its text.
        """
        event = preformatted(_event(GOOD[8]))
        self.assertEqual(formatEvent(eventFromJSON(eventAsJSON(event))), "thing one value three")


class CompactJSONTests(SynchronousTestCase):
    """
    C{--logger aigateway.logs.json} writes each event as one short JSON
    object: its own fields, C{time}, C{level}, C{namespace} and C{text}.
    """

    def lines(self, emit: Any) -> list[str]:
        """
        The lines the JSON logger writes for the events C{emit} logs to
        the global log publisher.
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        observer = jsonLogger()
        globalLogPublisher.addObserver(observer)
        try:
            emit()
        finally:
            globalLogPublisher.removeObserver(observer)
        return out.getvalue().splitlines()

    def test_accessLine(self) -> None:
        """
        A typical request's access event is one line of under 600 bytes
        with every field the documentation lists and its text line, and
        none of Twisted's bookkeeping.
        """
        gateway = MemoryGateway(CONFIG)
        lines = self.lines(lambda: gateway.post(self, "/openai", CHAT, {"user-agent": "lab/1"}))
        access = [json.loads(line) for line in lines if '"aigateway.access"' in line]
        [line] = [line for line in lines if '"aigateway.access"' in line]
        self.assertLess(len(line.encode()), 600, line)
        [event] = access
        self.assertEqual((event["level"], event["namespace"]), ("info", "aigateway.access"))
        self.assertTrue(event["text"].startswith("POST /openai openai -> 200 in "), event["text"])
        self.assertIn(" model=gpt-4o-mini tokens=4/8 sub=- backend=openai attempts=1", event["text"])
        self.assertEqual((event["status"], event["route"], event["responseModel"], event["inputTokens"],
                          event["outputTokens"], event["attempts"]), (200, "openai", "gpt-4o-mini", 4, 8, 1))
        self.assertEqual([name for name in ACCESS_FIELDS if name not in event], ["traceId", "error"])
        self.assertFalse([key for key in event if key.startswith("log_")])

    def test_accessFieldsWhenTracedAndRefused(self) -> None:
        """
        A refused request's line carries the error in words, and a traced
        one its trace id: every documented field appears.
        """
        from opentelemetry.sdk.trace import TracerProvider

        gateway = MemoryGateway(CONFIG, tracerProvider=TracerProvider())
        lines = self.lines(lambda: gateway.post(self, "/openai", {"model": 3}))
        [event] = [json.loads(line) for line in lines if '"aigateway.access"' in line]
        self.assertEqual(event["status"], 400)
        self.assertEqual(len(event["traceId"]), 32)
        self.assertIn("model", event["error"])

    def test_oneLinePerEvent(self) -> None:
        """
        Text with newlines, braces and non-ASCII characters stays on one
        line, and reads back as it was given.
        """
        log = Logger(namespace="aigateway.test")
        words = "two\nlines {braces} h\u00e9llo \u2028"
        lines = self.lines(lambda: (log.info("said {words}", words=words), log.warn("plain")))
        self.assertEqual(len(lines), 2)
        first, second = (json.loads(line) for line in lines)
        self.assertEqual((first["words"], first["text"]), (words, "said " + words))
        self.assertEqual((second["level"], second["text"], second["namespace"]), ("warn", "plain", "aigateway.test"))
        self.assertIsInstance(first["time"], float)

    def test_failure(self) -> None:
        """
        A failure logged with C{log.failure} is one line whose C{failure}
        field names the exception's type and message, with the traceback.
        """
        log = Logger(namespace="aigateway.test")

        def emit() -> None:
            try:
                raise ValueError("no good\nat all")
            except ValueError:
                log.failure("reporting {path}", path="/openai")

        [line] = self.lines(emit)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        event = json.loads(line)
        self.assertEqual((event["level"], event["text"], event["path"]), ("critical", "reporting /openai", "/openai"))
        self.assertEqual((event["failure"]["type"], event["failure"]["message"]), ("ValueError", "no good\nat all"))
        self.assertIn("Traceback", event["failure"]["traceback"])
        self.assertIn("raise ValueError", event["failure"]["traceback"])

    def test_notSerialisable(self) -> None:
        """
        A field JSON cannot hold (an object, a mapping with tuple keys, a
        cycle, bytes) is written as its C{repr}; the others stay as they
        are.
        """
        cycle: list = []
        cycle.append(cycle)
        event = {"log_format": "{thing} {table}", "log_namespace": "aigateway.test", "log_level": LogLevel.error,
                 "log_time": 5.0, "thing": _Thing(), "table": {(1, 2): 3}, "cycle": cycle, "raw": b"x",
                 "count": 3, "nothing": None}
        line = compactJSON(event)
        self.assertEqual(line.count("\n"), 1)
        self.assertEqual(json.loads(line), {"time": 5.0, "level": "error", "namespace": "aigateway.test",
                                            "text": "a thing {(1, 2): 3}", "thing": "<thing>",
                                            "table": "{(1, 2): 3}", "cycle": "[[...]]", "raw": "b'x'",
                                            "count": 3})

    def test_legacyEvent(self) -> None:
        """
        A C{twisted.python.log} event (Twisted's own messages) is its text
        and system, not the legacy keys repeating it.
        """
        from twisted.python import log as legacy

        [line] = self.lines(lambda: legacy.msg("Starting factory", system="-"))
        event = json.loads(line)
        self.assertEqual(event, {"time": event["time"], "level": "info", "namespace": "log_legacy",
                                 "text": "Starting factory", "system": "-"})
