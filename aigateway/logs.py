"""
Log output for twistd: C{twistd --logger aigateway.logs.json ...} writes
every log event, the per-request access events included, as one JSON
object per line on standard output.
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver

__all__ = ["json"]


def json() -> ILogObserver:
    """
    A log observer factory for twistd's C{--logger}: JSON lines on stdout.
    """
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
