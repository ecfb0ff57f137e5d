"""
From a L{Config} to the resource tree that serves it: one resource chain
per route, built once per configuration load.  This is the one place that
compiles what the configuration describes into working objects: backend
providers and credentials, JWT verifiers and key sets, route policies.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IAgent
from twisted.web.resource import IResource

from aigateway.auth.jwt import JWTProvider, Verifier
from aigateway.auth.keys import KeyLoadError, RemoteJWKS, StaticKeys, keysFromText
from aigateway.config import Config, ConfigError, JWTPolicy, JWTProviderConfig, Route
from aigateway.llm.credentials import resolveCredential
from aigateway.llm.openai import OpenAIProvider
from aigateway.observe.report import Metrics, Telemetry
from aigateway.web.guard import JWTGuard
from aigateway.web.policy import BucketStore, MemoryBuckets, PolicyResource, RoutePolicy
from aigateway.web.relay import RelayResource
from aigateway.web.routes import RouteTable

__all__ = ["Gateway", "buildGateway", "readFile"]

log = Logger()


def readFile(path: str) -> bytes:
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
        buckets: BucketStore,
    ) -> None:
        self.config = config
        self.telemetry = telemetry
        self.buckets = buckets
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
            return StaticKeys(tuple(jwks.keys)), None
        if jwks.kind == "file":
            assert jwks.path is not None
            try:
                text = self.readFile(jwks.path).decode("utf-8")
                keys = keysFromText(text)
            except OSError as e:
                raise ConfigError(f"{path}.jwks.file", f"cannot read {jwks.path}: {e.strerror or e}") from None
            except (UnicodeDecodeError, KeyLoadError) as e:
                raise ConfigError(f"{path}.jwks.file", f"{jwks.path}: {e}") from None
            return StaticKeys(keys), None
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
        policy = None
        if route.authorization is not None or route.rateLimits:
            rules = route.authorization.rules if route.authorization is not None else ()
            policy = RoutePolicy(route.name, rules, route.rateLimits, self.buckets)
        relay = RelayResource(
            route,
            self.providers[backend],
            self.credentials[backend],
            self.agent,
            self.clock,
            self.telemetry,
        )
        judged = PolicyResource(route.name, route.maxRequestBody, route.match.pathPrefix,
                                self.providers[backend], policy, relay, self.clock,
                                guarded=route.jwt is not None)
        if route.jwt is None:
            return judged
        where = "jwt" if route.jwt is self.config.jwt else f"routes[{index}].jwt"
        return JWTGuard(route.jwt, self.verifier(route.jwt, where), judged, self.clock)

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
    readFile: Callable[[str], bytes] = readFile,
    fetch: Callable[[str], Deferred[bytes]] | None = None,
    telemetry: Telemetry | None = None,
    buckets: BucketStore | None = None,
) -> Gateway:
    """
    Build every route's resource chain, once for this configuration.

    @param readFile: reads the files the configuration names (credentials,
        key files), raising L{OSError}.
    @param fetch: gets a remote JWKS document's bytes; required when the
        configuration names one.
    @param telemetry: where requests are reported; by default, metrics in a
        registry of their own and no traces.
    @param buckets: where rate limits keep their buckets (across reloads);
        by default, new ones in memory.
    @raise ConfigError: when a file the configuration names is unusable.
    """
    if telemetry is None:
        telemetry = Telemetry(config.tracing, Metrics(), clock, accessLog=config.accessLog)
    if buckets is None:
        buckets = MemoryBuckets()
    return _Builder(config, agent, clock, environ, readFile, fetch, telemetry, buckets).build()
