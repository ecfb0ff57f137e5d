"""
The admin listener, loopback by default:

  - C{GET /healthz}: the process is up;
  - C{GET /readyz}: 200 once every remote key set has keys, else 503 with
    what is pending; either way, each route's targets and which of them
    are ejected (a route whose targets are all ejected still serves: it
    tries the least recently ejected);
  - C{GET /metrics}: the Prometheus metrics;
  - C{GET /config}: the configuration being served, secrets redacted, with
    its SHA-256, when it was loaded and why the last reload failed;
  - C{POST /reload}: load the configuration again now.

The admin knows the gateway only through L{GatewayControl}.
"""

from __future__ import annotations

import json
import re
from typing import Any, Protocol

import yaml
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from aigateway.web.errors import writeError

__all__ = ["AdminRoot", "AdminSite", "GatewayControl", "redacted"]

REDACTED = "<redacted>"

# The password of a redis:// URL: what follows the user and a colon.
_REDIS_PASSWORD = re.compile(r"^(\w+://[^:@/]*:)[^@/]*@")


def redacted(document: Any, parent: str = "") -> Any:
    """
    A copy of a configuration document with every secret replaced: inline
    backend keys, the collector's headers and the password in Redis's URL.
    """
    if isinstance(document, dict):
        copy = {}
        for key, value in document.items():
            if parent == "authToken" and key == "value":
                copy[key] = REDACTED
            elif parent == "redis" and key == "url" and isinstance(value, str):
                copy[key] = _REDIS_PASSWORD.sub(r"\1" + REDACTED + "@", value)
            elif parent == "otlp" and key == "headers" and isinstance(value, dict):
                copy[key] = {name: REDACTED for name in value}
            else:
                copy[key] = redacted(value, str(key))
        return copy
    if isinstance(document, list):
        return [redacted(item, parent) for item in document]
    return document


def _json(request: Request, document: object, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(document, indent=2, default=str).encode("utf-8") + b"\n"


class GatewayControl(Protocol):
    """
    What the admin shows of the gateway, and the one thing it does.
    """

    @property
    def text(self) -> bytes:
        """
        The text of the configuration being served.
        """

    @property
    def digest(self) -> str:
        """
        Its SHA-256, in hex.
        """

    @property
    def loadedAt(self) -> float:
        """
        When it was loaded (POSIX time).
        """

    @property
    def lastError(self) -> str | None:
        """
        Why the last reload failed, or L{None}.
        """

    @property
    def ready(self) -> list[str]:
        """
        What the gateway still waits for before it can serve.
        """

    @property
    def routes(self) -> dict[str, list[dict[str, object]]]:
        """
        Each route's targets and their health.
        """

    def reload(self, reason: str) -> str | None:
        """
        Load the configuration again; L{None}, or why it was not taken.
        """


class AdminRoot(Resource):
    """
    The admin site's root resource.

    @ivar gateway: what is shown and reloaded.
    @ivar registry: the metrics shown at C{/metrics}.
    """

    isLeaf = True

    def __init__(self, gateway: GatewayControl, registry: CollectorRegistry) -> None:
        super().__init__()
        self.gateway = gateway
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        gateway = self.gateway
        path = request.path
        if path == b"/healthz":
            request.setHeader(b"content-type", b"text/plain")
            return b"ok\n"
        if path == b"/readyz":
            pending = gateway.ready
            return _json(request, {"ready": not pending, "pending": pending, "routes": gateway.routes},
                         503 if pending else 200)
        if path == b"/metrics":
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
            return generate_latest(self.registry)
        if path == b"/config":
            return _json(request, {
                "sha256": gateway.digest,
                "loadedAt": gateway.loadedAt,
                "lastError": gateway.lastError,
                "config": redacted(yaml.safe_load(gateway.text)),
            })
        return writeError(request, 404, f"no admin endpoint {path.decode('latin-1')}")

    def render_POST(self, request: Request) -> bytes:
        if request.path == b"/reload":
            error = self.gateway.reload("POST /reload")
            if error is not None:
                return _json(request, {"reloaded": False, "error": error}, 422)
            return _json(request, {"reloaded": True, "sha256": self.gateway.digest})
        return writeError(request, 404, f"no admin endpoint {request.path.decode('latin-1')}")


class AdminSite(Site):
    """
    The admin listener's site: probes and scrapes are not access-logged.
    """

    noisy = False

    def log(self, request: Request) -> None:
        pass

    def logPrefix(self) -> str:
        # The admin port's log lines read as they always have
        # ("Site starting on ...").
        return "Site"
