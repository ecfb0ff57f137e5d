"""
Log events that carry their text already formatted, for the gateway's
own frequent events (the access log's line per request).

C{twisted.logger} formats an event's C{log_format} with
C{string.Formatter.vformat}, which parses and looks up every field in
Python: for the access log's line of ten fields most of the CPU the line
cost.  C{str.format_map} does the same in C: it takes the same PEP 3101
syntax, looks each field's name up in the event (a C{{name()}} field
calls C{name}, as Twisted's C{CallMapping} does), and applies the same
conversions and format specs.  L{Preformatter} wraps the observer of a
L{twisted.logger.Logger}: each event it emits has its C{log_format}
replaced by its text so formatted, with braces doubled, so that any
observer (twistd's log file, C{formatEvent}, the JSON lines of
L{aigateway.logs}) reads the same words without formatting fields again;
the fields themselves stay in the event.  An event C{str.format_map}
cannot format is passed on as it is, for Twisted to format or to
describe as unformattable, as it always did.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import ILogObserver, LogEvent
from zope.interface import implementer

__all__ = ["Preformatter", "preformatted"]


class _Fields(dict):  # type: ignore[type-arg]
    """
    An event's fields, where C{name()} is C{name} called, as in Twisted's
    C{CallMapping}.
    """

    def __missing__(self, key: str) -> Any:
        if key.endswith("()"):
            return self[key[:-2]]()
        raise KeyError(key)


def preformatted(event: LogEvent) -> LogEvent:
    """
    C{event} with its C{log_format} replaced by the text it formats to,
    escaped to format to itself, when C{str.format_map} can format it.
    """
    format = event.get("log_format")
    if format.__class__ is not str or "log_flattened" in event:
        return event
    try:
        # Only a {name()} field needs the event's fields copied.
        text = format.format_map(_Fields(event) if "()" in format else event)
    except Exception:
        return event
    if text.__class__ is not str:
        text = str(text)
    if "{" in text or "}" in text:
        text = text.replace("{", "{{").replace("}", "}}")
    event["log_format"] = text
    return event


@implementer(ILogObserver)
class Preformatter:
    """
    An observer that passes each event on to C{observer}, its text
    L{preformatted}: give it as a L{twisted.logger.Logger}'s C{observer}.
    """

    def __init__(self, observer: ILogObserver) -> None:
        self.observer = observer

    def __call__(self, event: LogEvent) -> None:
        self.observer(preformatted(event))
