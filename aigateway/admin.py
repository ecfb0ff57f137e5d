"""
The admin listener: C{/healthz} (the process is alive), C{/readyz} (it
can serve: every remote key set has keys) and C{/metrics} (Prometheus).
"""

from __future__ import annotations

import json
from typing import Sequence

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Request

from aigateway.errors import writeError
from aigateway.keys import RemoteJWKS
from aigateway.telemetry import Metrics

__all__ = ["AdminRoot"]


class AdminRoot(Resource):
    """
    The admin site's root resource.
    """

    isLeaf = True

    def __init__(self, keySets: Sequence[RemoteJWKS] = (), metrics: Metrics | None = None) -> None:
        super().__init__()
        self.keySets = tuple(keySets)
        self.metrics = metrics

    def render(self, request: Request) -> bytes:
        if request.path == b"/healthz":
            request.setHeader(b"content-type", b"text/plain")
            return b"ok\n"
        if request.path == b"/readyz":
            pending = [keySet.url for keySet in self.keySets if not keySet.ready]
            request.setHeader(b"content-type", b"application/json")
            if pending:
                request.setResponseCode(503)
            return json.dumps(
                {"ready": not pending, "pending": [f"jwks {url}" for url in pending]}
            ).encode("utf-8") + b"\n"
        if request.path == b"/metrics" and self.metrics is not None:
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
            return generate_latest(self.metrics.registry)
        return writeError(request, 404, f"no admin endpoint {request.path.decode('latin-1')}")
