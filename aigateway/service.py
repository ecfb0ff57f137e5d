"""
Building the running gateway from a L{Config}: the route table with one
resource chain per route, the HTTP site, the listeners and the admin
listener.  Everything takes its reactor, agent and environment as
arguments; only L{aigateway.tap} knows the global reactor.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.iweb import IAgent
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from aigateway.admin import AdminRoot
from aigateway.config import Config
from aigateway.credentials import resolveCredential
from aigateway.errors import errorBody
from aigateway.providers.openai import OpenAIProvider
from aigateway.proxy import ProxyResource
from aigateway.routing import RouteTable

__all__ = ["GatewayRequest", "GatewaySite", "buildAgent", "buildRouteTable", "gatewayService"]

log = Logger()


def _readFile(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def buildRouteTable(
    config: Config,
    agent: IAgent,
    clock: IReactorTime,
    environ: Mapping[str, str] = os.environ,
    readFile: Callable[[str], bytes] = _readFile,
) -> RouteTable:
    """
    Build every route's resource chain, once for this configuration.
    """
    providers = {name: OpenAIProvider(backend) for name, backend in config.backends.items()}
    credentials = {
        name: resolveCredential(backend.authToken, environ, readFile)
        for name, backend in config.backends.items()
    }
    for name, credential in credentials.items():
        if credential.problem is not None:
            log.warn(
                "backend {backend} has no credential: {problem}",
                backend=name,
                problem=credential.problem,
            )
    entries: list[tuple] = []
    for route in config.routes:
        backend = route.backend.name
        resource: IResource = ProxyResource(
            route, providers[backend], credentials[backend], agent, clock
        )
        entries.append((route, resource))
    return RouteTable(entries)


class GatewayRequest(Request):
    """
    A request whose defaults suit a JSON API gateway: no made-up
    C{text/html} content type, and an unexpected exception becomes a 500 in
    the OpenAI error envelope, logged, never a traceback page.
    """

    defaultContentType = None

    def processingFailed(self, reason: Failure) -> None:
        log.failure("unhandled error for {method} {path}", reason,
                    method=self.method, path=self.path)
        body = errorBody(500, "the gateway failed to handle this request", "internal_error")
        self.setResponseCode(500)
        self.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
        self.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(body)])
        self.write(body)
        self.finish()


class GatewaySite(Site):
    """
    The site that serves the route table.  Per-request logging is the
    telemetry's job, so the Site's own access log is off.
    """

    requestFactory = GatewayRequest
    displayTracebacks = False
    noisy = False

    def log(self, request: Request) -> None:
        pass


class _QuietClientFactory(_HTTP11ClientFactory):
    """
    The pool's connection factory, without a log line per connection.
    """

    noisy = False


def buildAgent(reactor) -> IAgent:
    """
    The agent every upstream call goes through: one connection pool, kept
    warm, with enough connections per host for a busy gateway.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool._factory = _QuietClientFactory
    pool.maxPersistentPerHost = 256
    pool.cachedConnectionTimeout = 120
    return Agent(reactor, pool=pool, connectTimeout=10)


def gatewayService(
    config: Config,
    reactor,
    agent: IAgent | None = None,
    environ: Mapping[str, str] = os.environ,
) -> MultiService:
    """
    The whole gateway as one service: a listener per C{listen} endpoint and
    one per admin endpoint.
    """
    if agent is None:
        agent = buildAgent(reactor)
    root = buildRouteTable(config, agent, reactor, environ)
    site = GatewaySite(root)
    top = MultiService()
    for description in config.listen:
        listener = StreamServerEndpointService(serverFromString(reactor, description), site)
        listener._raiseSynchronously = True
        listener.setServiceParent(top)
    if config.admin is not None:
        adminSite = Site(AdminRoot())
        adminSite.log = lambda request: None  # type: ignore[method-assign]
        for description in config.admin.listen:
            listener = StreamServerEndpointService(
                serverFromString(reactor, description), adminSite
            )
            listener._raiseSynchronously = True
            listener.setServiceParent(top)
    return top
