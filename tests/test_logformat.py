"""
Tests for L{aigateway.observe.logformat}: events that carry their text read
exactly as Twisted's own formatting of them writes them, to every kind of
observer, and Twisted itself is left as it is.
"""

from __future__ import annotations

import io
import json

from twisted.logger import (
    Logger,
    LogLevel,
    eventAsJSON,
    eventFromJSON,
    formatEvent,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.trial.unittest import SynchronousTestCase

from aigateway.observe.logformat import Preformatter, preformatted


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
