"""
Log output for twistd: C{twistd --logger aigateway.logs.json ...} writes
every log event, the per-request access events included, as one compact
JSON object per line on standard output (L{aigateway.observe.logformat.compactJSON}).
"""

from __future__ import annotations

import sys

from twisted.logger import FileLogObserver, ILogObserver

from aigateway.observe.logformat import compactJSON

__all__ = ["json"]


def json() -> ILogObserver:
    """
    A log observer factory for twistd's C{--logger}: one JSON object per
    event, one event per line, on stdout.
    """
    return FileLogObserver(sys.stdout, compactJSON)
