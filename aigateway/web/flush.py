"""
Sending what was written to a socket now, rather than at the reactor's
next turn.

A TCP transport's C{write} only buffers; the bytes leave when the reactor
next finds the socket writable, after whatever else the current turn
does.  The gateway calls L{sendNow} where what follows a write is work
that need not hold the bytes back: the report after a response, and the
wait for the upstream after a request.
"""

from __future__ import annotations

from typing import Any

__all__ = ["sendNow"]


def sendNow(transport: Any) -> None:
    """
    Hand C{transport}'s buffered bytes to its socket, if it is a connected
    socket transport (one with C{doWrite}, the reactor's own write
    callback) that is not closing.
    """
    doWrite = getattr(transport, "doWrite", None)
    if doWrite is not None and getattr(transport, "connected", False) and not transport.disconnecting:
        doWrite()
