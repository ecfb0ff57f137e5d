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

L{compactJSON} writes an event as one short JSON object: its own fields
(those the caller gave), C{time}, C{level}, C{namespace} and C{text}, the
formatted message, rather than Twisted's C{eventAsJSON}, which repeats
every field of the format in C{log_flattened} and keeps Twisted's
bookkeeping (C{log_logger}, C{log_source}, the level's class id).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.logger import ILogObserver, LogEvent, formatEvent
from zope.interface import implementer

__all__ = ["Preformatter", "compactJSON", "preformatted"]


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


# Keys of a legacy (twisted.python.log) event that repeat what the text,
# the time or the level already say.
_LEGACY = frozenset(("message", "format", "isError", "time", "failure", "why"))


def _failure(failure: Any) -> dict[str, str]:
    """
    What a log event's failure says: the exception's type, its message and
    the traceback, as strings.
    """
    try:
        kind = failure.type
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        message = str(failure.value)
        traceback = failure.getTraceback()
    except Exception as e:
        return {"type": type(failure).__name__, "message": repr(failure), "traceback": repr(e)}
    return {"type": name, "message": message, "traceback": traceback}


def _safe(value: Any) -> Any:
    """
    C{value} as something C{json.dumps} takes: itself when it can, else
    its C{repr} (an object of no JSON type, a mapping with keys that are
    not strings, a cycle).
    """
    try:
        json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        try:
            return repr(value)
        except Exception:
            return f"<unrepresentable {type(value).__name__}>"
    return value


def compactJSON(event: LogEvent) -> str:
    """
    One log event as one line of compact JSON, ending in a newline.

    The object holds C{time} (the event's own C{time} field when it has
    one, as the access log's events do: the request's start; otherwise
    when it was logged), C{level}, C{namespace}, C{text} (the message as a
    text log writes it), then every field the caller gave.  A failure
    logged with C{log.failure} (or a legacy C{log.err}) is the field
    C{failure}: C{type}, C{message} and C{traceback}.  A field that JSON
    cannot hold is written as its C{repr}; a field that is L{None} is left
    out.
    """
    level = event.get("log_level")
    logged = event.get("log_time")
    own = event.get("time")
    fields: dict[str, Any] = {
        "time": own if own.__class__ in (int, float) else logged,
        "level": getattr(level, "name", None) or "info",
        "namespace": event.get("log_namespace") or "-",
    }
    format = event.get("log_format")
    if format.__class__ is str and "{" not in format and "}" not in format and "log_flattened" not in event:
        # A preformatted event: its text is its format.
        text = format
    else:
        text = formatEvent(event)
    fields["text"] = text
    legacy = event.get("log_namespace") == "log_legacy"
    for key, value in event.items():
        if value is None or key.startswith("log_") or key in fields or legacy and key in _LEGACY:
            continue
        fields[key] = value
    failure = event.get("log_failure")
    if failure is None and legacy:
        failure = event.get("failure")
    if failure is not None:
        fields["failure"] = _failure(failure)
        if legacy and event.get("why"):
            fields["why"] = event["why"]
    try:
        line = json.dumps(fields, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        line = json.dumps({key: _safe(value) for key, value in fields.items()}, separators=(",", ":"))
    return line + "\n"
