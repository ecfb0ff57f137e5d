"""
Building the running gateway from a L{Config}: the route table with one
resource chain per route, the HTTP site, the listeners and the admin
listener.  Everything takes its reactor, agent and environment as
arguments; only L{aigateway.tap} knows the global reactor.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping

import attrs

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.iweb import IAgent
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from aigateway.admin import AdminRoot
from aigateway.config import Config, ConfigError, JWTPolicy, JWTProviderConfig, Route
from aigateway.credentials import resolveCredential
from aigateway.errors import errorBody
from aigateway.guard import JWTGuard
from aigateway.jwt import JWTProvider, Verifier
from aigateway.keys import KeyLoadError, RemoteJWKS, keysFromText, treqFetch
from aigateway.providers.openai import OpenAIProvider
from aigateway.proxy import ProxyResource
from aigateway.routing import RouteTable
from aigateway.telemetry import Metrics, Telemetry, buildTracerProvider

__all__ = [
    "Gateway",
    "GatewayRequest",
    "GatewaySite",
    "buildAgent",
    "buildGateway",
    "gatewayService",
]

log = Logger()


def _readFile(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@attrs.frozen
class Gateway:
    """
    What one configuration load builds: the route table, and the remote key
    sets that must be kept fresh while it serves.
    """

    root: RouteTable
    keySets: tuple[RemoteJWKS, ...] = ()


class _Builder:
    """
    Builds the resources of one configuration, sharing what routes have in
    common: a backend's provider and credential, a policy's verifier, a
    remote JWKS URL's key set.
    """

    def __init__(
        self,
        config: Config,
        agent: IAgent,
        clock: IReactorTime,
        environ: Mapping[str, str],
        readFile: Callable[[str], bytes],
        fetch: Callable[[str], Deferred[bytes]] | None,
        telemetry: Telemetry,
    ) -> None:
        self.config = config
        self.telemetry = telemetry
        self.agent = agent
        self.clock = clock
        self.readFile = readFile
        self.fetch = fetch
        self.providers = {name: OpenAIProvider(b) for name, b in config.backends.items()}
        self.credentials = {
            name: resolveCredential(b.authToken, environ, readFile)
            for name, b in config.backends.items()
        }
        self.verifiers: dict[int, Verifier] = {}
        self.keySets: dict[tuple[str, float], RemoteJWKS] = {}

    def keySource(self, provider: JWTProviderConfig, path: str) -> tuple[Callable[[], tuple], Callable[[], None] | None]:
        jwks = provider.jwks
        if jwks.kind == "local":
            keys = jwks.keys
            return (lambda: keys), None
        if jwks.kind == "file":
            assert jwks.path is not None
            try:
                text = self.readFile(jwks.path).decode("utf-8")
                keys = keysFromText(text)
            except OSError as e:
                raise ConfigError(f"{path}.jwks.file", f"cannot read {jwks.path}: {e.strerror or e}") from None
            except (UnicodeDecodeError, KeyLoadError) as e:
                raise ConfigError(f"{path}.jwks.file", f"{jwks.path}: {e}") from None
            return (lambda: keys), None
        assert jwks.url is not None
        if self.fetch is None:
            raise ConfigError(f"{path}.jwks.remote", "remote key sets need an HTTP client")
        key = (jwks.url, jwks.cacheDuration)
        remote = self.keySets.get(key)
        if remote is None:
            remote = self.keySets[key] = RemoteJWKS(jwks.url, jwks.cacheDuration, self.clock, self.fetch)
        return (lambda: remote.keys), remote.refreshForUnknownKid

    def verifier(self, policy: JWTPolicy, path: str) -> Verifier:
        verifier = self.verifiers.get(id(policy))
        if verifier is None:
            providers = []
            for p in policy.providers:
                keys, onUnknownKid = self.keySource(p, f"{path}.providers.{p.name}")
                providers.append(
                    JWTProvider(
                        name=p.name,
                        issuer=p.issuer,
                        audiences=p.audiences,
                        keys=keys,
                        clockSkew=p.clockSkew,
                        requireExp=p.requireExp,
                        maxLifetime=p.maxLifetime,
                        onUnknownKid=onUnknownKid,
                    )
                )
            verifier = self.verifiers[id(policy)] = Verifier(providers)
        return verifier

    def route(self, index: int, route: Route) -> IResource:
        backend = route.backend.name
        proxy = ProxyResource(
            route,
            self.providers[backend],
            self.credentials[backend],
            self.agent,
            self.clock,
            self.telemetry,
        )
        if route.jwt is None:
            return proxy
        where = "jwt" if route.jwt is self.config.jwt else f"routes[{index}].jwt"
        return JWTGuard(route.jwt, self.verifier(route.jwt, where), proxy.withIdentity, self.clock)

    def build(self) -> Gateway:
        for name, credential in self.credentials.items():
            if credential.problem is not None:
                log.warn(
                    "backend {backend} has no credential: {problem}",
                    backend=name,
                    problem=credential.problem,
                )
        root = RouteTable(
            [(r, self.route(i, r)) for i, r in enumerate(self.config.routes)], self.telemetry
        )
        return Gateway(root, tuple(self.keySets.values()))


def buildGateway(
    config: Config,
    agent: IAgent,
    clock: IReactorTime,
    environ: Mapping[str, str] = os.environ,
    readFile: Callable[[str], bytes] = _readFile,
    fetch: Callable[[str], Deferred[bytes]] | None = None,
    telemetry: Telemetry | None = None,
) -> Gateway:
    """
    Build every route's resource chain, once for this configuration.

    @param readFile: reads the files the configuration names (credentials,
        key files), raising L{OSError}.
    @param fetch: gets a remote JWKS document's bytes; required when the
        configuration names one.
    @param telemetry: where requests are reported; by default, metrics in a
        registry of their own and no traces.
    @raise ConfigError: when a file the configuration names is unusable.
    """
    if telemetry is None:
        telemetry = Telemetry(config.tracing, Metrics(), clock)
    return _Builder(config, agent, clock, environ, readFile, fetch, telemetry).build()


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


class KeyRefreshService(Service):
    """
    Keeps a configuration's remote key sets fresh while it serves.
    """

    def __init__(self, keySets: tuple[RemoteJWKS, ...]) -> None:
        self.keySets = keySets

    def startService(self) -> None:
        super().startService()
        for keySet in self.keySets:
            keySet.start()

    def stopService(self) -> None:
        super().stopService()
        for keySet in self.keySets:
            keySet.stop()


class TracerShutdown(Service):
    """
    Flushes the spans still queued for export when the gateway stops.
    """

    def __init__(self, provider) -> None:
        self.provider = provider

    def stopService(self) -> Deferred[None]:
        from twisted.internet.threads import deferToThread

        super().stopService()
        return deferToThread(self.provider.shutdown)


def gatewayService(
    config: Config,
    reactor,
    agent: IAgent | None = None,
    environ: Mapping[str, str] = os.environ,
    readFile: Callable[[str], bytes] = _readFile,
) -> MultiService:
    """
    The whole gateway as one service: a listener per C{listen} endpoint, one
    per admin endpoint, and the refresh of remote key sets.

    @raise ConfigError: when a file the configuration names is unusable.
    """
    if agent is None:
        agent = buildAgent(reactor)
    metrics = Metrics()
    tracerProvider = buildTracerProvider(config.tracing, environ)
    telemetry = Telemetry(config.tracing, metrics, reactor, tracerProvider)
    gateway = buildGateway(
        config, agent, reactor, environ, readFile, treqFetch(agent, reactor), telemetry
    )
    site = GatewaySite(gateway.root)
    top = MultiService()
    KeyRefreshService(gateway.keySets).setServiceParent(top)
    if tracerProvider is not None:
        TracerShutdown(tracerProvider).setServiceParent(top)
    for description in config.listen:
        listener = StreamServerEndpointService(serverFromString(reactor, description), site)
        listener._raiseSynchronously = True
        listener.setServiceParent(top)
    if config.admin is not None:
        adminSite = Site(AdminRoot(gateway.keySets, metrics))
        adminSite.log = lambda request: None  # type: ignore[method-assign]
        adminSite.noisy = False
        for description in config.admin.listen:
            listener = StreamServerEndpointService(
                serverFromString(reactor, description), adminSite
            )
            listener._raiseSynchronously = True
            listener.setServiceParent(top)
    return top
