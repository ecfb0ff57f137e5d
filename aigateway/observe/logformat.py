"""
Log events' text formatted by C{str.format_map}, the only patch of Twisted
the gateway makes.

C{twisted.logger} formats an event's C{log_format} with
C{string.Formatter.vformat}, which parses and looks up every field in
Python; for the access log's line of ten fields that was a fifth of the
CPU the line cost.  C{str.format_map} does the same in C: it takes the
same PEP 3101 syntax, looks each field's name up in the event (a
C{{name()}} field calls C{name}, as Twisted's C{CallMapping} does), and
applies the same conversions and format specs.  Failures are
the same exceptions, which Twisted's C{_formatEvent} turns into its
"Unable to format event" text as before.

L{install} replaces C{twisted.logger._format.formatWithCall}, which
C{_formatEvent} looks up as a module global; L{patchable} says whether
Twisted still has that shape, and the tests fail when it does not.
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.logger import _format

__all__ = ["formatWithCall", "install", "patchable"]

_original = _format.formatWithCall


class _Fields(dict):  # type: ignore[type-arg]
    """
    An event's fields, where C{name()} is C{name} called, as in
    L{twisted.logger._format.CallMapping}.
    """

    def __missing__(self, key: str) -> Any:
        if key.endswith("()"):
            return self[key[:-2]]()
        raise KeyError(key)


def formatWithCall(formatString: str, mapping: Mapping[str, Any]) -> str:
    """
    Twisted's C{formatWithCall}, done by C{str.format_map}.
    """
    return str(formatString.format_map(_Fields(mapping)))


def patchable() -> bool:
    """
    Whether Twisted formats events through the module global this patch
    replaces.
    """
    return (
        callable(getattr(_format, "formatWithCall", None))
        and "formatWithCall" in _format._formatEvent.__code__.co_names
    )


def install() -> None:
    """
    Format log events' text with L{formatWithCall} from now on, if Twisted
    still has the shape this patch expects (otherwise nothing changes).
    """
    if patchable():
        _format.formatWithCall = formatWithCall  # type: ignore[assignment]


def uninstall() -> None:
    """
    Put Twisted's own C{formatWithCall} back.
    """
    _format.formatWithCall = _original  # type: ignore[assignment]
