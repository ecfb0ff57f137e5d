"""
Tests for L{aigateway.observe.logformat}: log events read exactly as Twisted's own
formatting writes them, and the patch still fits the Twisted installed.
"""

from __future__ import annotations

from twisted.logger import formatEvent
from twisted.logger import _format
from twisted.trial.unittest import SynchronousTestCase

from aigateway.observe import logformat


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


class FormatTests(SynchronousTestCase):
    """
    The text of an event is the same with the patch as without it.
    """

    def setUp(self) -> None:
        self.assertTrue(logformat.patchable(), "Twisted no longer formats events through formatWithCall")
        self.addCleanup(logformat.uninstall)

    def texts(self, formats: list[str]) -> list[str]:
        return [formatEvent(dict(FIELDS, log_format=f)) for f in formats]

    def test_sameText(self) -> None:
        """
        Fields, specs, nested specs, conversions, attribute and index
        access, calls and escaped braces all come out as Twisted writes
        them.
        """
        theirs = self.texts(GOOD)
        logformat.install()
        self.assertIs(_format.formatWithCall, logformat.formatWithCall)
        self.assertEqual(self.texts(GOOD), theirs)
        self.assertEqual(theirs[4], "   200|POST  |  POST   ")
        self.assertEqual(theirs[9], "called and " + repr(FIELDS["call"]))

    def test_unformattable(self) -> None:
        """
        A format that cannot be applied still gives Twisted's "Unable to
        format event" text, never an exception.
        """
        theirs = self.texts(BAD)
        logformat.install()
        ours = self.texts(BAD)
        for format, before, after in zip(BAD, theirs, ours):
            self.assertTrue(before.startswith("Unable to format event"), (format, before))
            self.assertTrue(after.startswith("Unable to format event"), (format, after))

    def test_uninstall(self) -> None:
        """
        Uninstalling puts Twisted's own function back.
        """
        original = _format.formatWithCall
        logformat.install()
        logformat.uninstall()
        self.assertIs(_format.formatWithCall, original)
