"""
Log output for twistd: C{twistd --logger aigateway.logs.json ...} writes
every log event, the per-request access events included, as one compact
JSON object per line on standard output.

L{compactJSON} writes an event as one short JSON object: its own fields
(those the caller gave), C{time}, C{level}, C{namespace} and C{text}, the
formatted message, rather than Twisted's C{eventAsJSON}, which repeats
every field of the format in C{log_flattened} and keeps Twisted's
bookkeeping (C{log_logger}, C{log_source}, the level's class id).
"""

from __future__ import annotations

import json as _json
import sys
from typing import Any

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, formatEvent

__all__ = ["compactJSON", "json"]


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
    C{value} as something C{_json.dumps} takes: itself when it can, else
    its C{repr} (an object of no JSON type, a mapping with keys that are
    not strings, a cycle).
    """
    try:
        _json.dumps(value)
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
        line = _json.dumps(fields, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        line = _json.dumps({key: _safe(value) for key, value in fields.items()}, separators=(",", ":"))
    return line + "\n"


def json() -> ILogObserver:
    """
    A log observer factory for twistd's C{--logger}: one JSON object per
    event, one event per line, on stdout.
    """
    return FileLogObserver(sys.stdout, compactJSON)
