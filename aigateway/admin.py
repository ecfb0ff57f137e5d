"""
The admin listener: C{/healthz} and C{/readyz} for orchestrators.
"""

from __future__ import annotations

from twisted.web.resource import Resource
from twisted.web.server import Request

from aigateway.errors import writeError

__all__ = ["AdminRoot"]


class AdminRoot(Resource):
    """
    The admin site's root resource.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        if request.path in (b"/healthz", b"/readyz"):
            request.setHeader(b"content-type", b"text/plain")
            return b"ok\n"
        return writeError(request, 404, f"no admin endpoint {request.path.decode('latin-1')}")
