"""
From a L{Config} to the resource tree that serves it: one resource chain
per route, built once per configuration load.  This is the one place that
compiles what the configuration describes into working objects: backend
providers and credentials, JWT verifiers and key sets, route policies.

The configuration only describes CEL expressions and keys; they are
compiled and loaded here, and one that is broken is a L{ConfigError} naming
its field, as any other mistake in the file is.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IAgent
from twisted.web.resource import IResource

from aigateway.auth.jwt import JWTProvider, Verifier
from aigateway.auth.keys import KeyLoadError, RemoteJWKS, StaticKeys, VerifyKey, keysFromText
from aigateway.config import (
    AuthorizationPolicy,
    Config,
    ConfigError,
    ExpressionSource,
    JWKSSource,
    JWTPolicy,
    JWTProviderConfig,
    LimitConfig,
    Route,
)
from aigateway.llm.credentials import resolveCredential
from aigateway.llm.providers import providerFor
from aigateway.observe.report import Metrics, Telemetry
from aigateway.state.memory import BucketStore, MemoryBuckets
from aigateway.web.guard import JWTGuard
from aigateway.web.policy import (
    Expression,
    ExpressionError,
    Limit,
    PolicyResource,
    RoutePolicy,
    Rule,
    compileExpression,
)
from aigateway.web.balance import Health
from aigateway.web.relay import RelayResource, Upstream
from aigateway.web.routes import RouteTable

__all__ = ["Gateway", "buildGateway", "compileLimits", "compileRules", "readFile"]

log = Logger()


def readFile(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _compile(expression: ExpressionSource) -> Expression:
    try:
        return compileExpression(expression.source)
    except ExpressionError as e:
        raise ConfigError(expression.path, str(e)) from None


def compileRules(policy: AuthorizationPolicy) -> tuple[Rule, ...]:
    """
    Compile an authorization policy's rules, in order.

    @raise ConfigError: naming the first expression that does not compile.
    """
    return tuple(Rule(r.kind, _compile(r.expression), r.where) for r in policy.rules)


def compileLimits(limits: Sequence[LimitConfig]) -> tuple[Limit, ...]:
    """
    Compile rate limits' keys, in order.

    @raise ConfigError: naming the first key that does not compile.
    """
    return tuple(
        Limit(
            key=_compile(limit.key) if limit.key is not None else None,
            requests=limit.requests,
            tokens=limit.tokens,
            where=limit.where,
        )
        for limit in limits
    )


def _localKeys(jwks: JWKSSource, path: str) -> tuple[VerifyKey, ...]:
    """
    The keys of a C{local} key source, from their text.

    @param path: the key source's path, e.g. C{jwt.providers.p.jwks}.
    """
    try:
        return keysFromText(jwks.key or "")
    except KeyLoadError as e:
        raise ConfigError(f"{path}.local.key", str(e)) from None


@attrs.frozen
class Gateway:
    """
    What one configuration load builds: the route table, and the remote key
    sets that must be kept fresh while it serves.
    """

    root: RouteTable
    keySets: tuple[RemoteJWKS, ...] = ()
    relays: tuple[RelayResource, ...] = ()

    def health(self, now: float) -> dict[str, list[dict[str, object]]]:
        """
        Each route's targets and whether they are ejected, for C{/readyz}.
        """
        return {
            relay.route.name: [
                {"backend": target.backend.name,
                 "healthy": not health.ejected(now),
                 **({"ejectedFor": round(health.ejectedUntil - now, 3)} if health.ejected(now) else {})}
                for target, health in zip(relay.planner.targets, relay.planner.health)
            ]
            for relay in self.relays
        }


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
        health: dict[tuple[str, str], Health],
    ) -> None:
        self.health = health
        self.relays: list[RelayResource] = []
        self.config = config
        self.telemetry = telemetry
        self.buckets = buckets
        self.agent = agent
        self.clock = clock
        self.readFile = readFile
        self.fetch = fetch
        self.providers = {name: providerFor(b, environ) for name, b in config.backends.items()}
        self.credentials = {
            name: resolveCredential(b.authToken, environ, readFile,
                                    self.providers[name].credentialField)
            for name, b in config.backends.items()
        }
        self.verifiers: dict[int, Verifier] = {}
        self.keySets: dict[tuple[str, float], RemoteJWKS] = {}
        self.localKeys: dict[JWKSSource, tuple[VerifyKey, ...]] = {}
        self.rules: dict[AuthorizationPolicy, tuple[Rule, ...]] = {}
        self.limits: dict[tuple[LimitConfig, ...], tuple[Limit, ...]] = {}
        self.compile()

    def compile(self) -> None:
        """
        Compile every expression and load every inline key the
        configuration describes, in the order the file gives them, so that
        the first broken one is the one reported.  Gateway-wide sections
        are checked even when no route uses them.
        """

        def jwt(policy: JWTPolicy | None, path: str) -> None:
            for p in policy.providers if policy is not None else ():
                if p.jwks.kind == "local" and p.jwks not in self.localKeys:
                    self.localKeys[p.jwks] = _localKeys(p.jwks, f"{path}.providers.{p.name}.jwks")

        def authorization(policy: AuthorizationPolicy | None) -> None:
            if policy is not None and policy not in self.rules:
                self.rules[policy] = compileRules(policy)

        jwt(self.config.jwt, "jwt")
        authorization(self.config.authorization)
        for i, route in enumerate(self.config.routes):
            jwt(route.jwt, f"routes[{i}].jwt")
            authorization(route.authorization)
            if route.rateLimits not in self.limits:
                self.limits[route.rateLimits] = compileLimits(route.rateLimits)

    def keySource(self, provider: JWTProviderConfig, path: str) -> tuple[Callable[[], tuple], Callable[[], None] | None]:
        jwks = provider.jwks
        if jwks.kind == "local":
            return StaticKeys(self.localKeys[jwks]), None
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
        policy = None
        if route.authorization is not None or route.rateLimits:
            rules = self.rules[route.authorization] if route.authorization is not None else ()
            policy = RoutePolicy(route.name, rules, self.limits[route.rateLimits], self.buckets)
        upstreams = [Upstream(t.backend, self.providers[t.backend.name],
                              self.credentials[t.backend.name]) for t in route.targets]
        health = [self.health.setdefault((route.name, t.backend.name), Health())
                  for t in route.targets]
        relay = RelayResource(route, upstreams, health, self.agent, self.clock, self.telemetry)
        self.relays.append(relay)
        judged = PolicyResource(route.name, route.maxRequestBody, route.match.pathPrefix,
                                policy, relay, self.clock, guarded=route.jwt is not None)
        if route.jwt is None:
            return judged
        where = "jwt" if route.jwt is self.config.jwt else f"routes[{index}].jwt"
        return JWTGuard(route.jwt, self.verifier(route.jwt, where), judged, self.clock)

    def build(self) -> Gateway:
        for name, credential in self.credentials.items():
            problem = credential.problem or self.providers[name].problem
            if problem is not None:
                log.warn(
                    "backend {backend} has no credential: {problem}",
                    backend=name,
                    problem=problem,
                )
        root = RouteTable(
            [(r, self.route(i, r)) for i, r in enumerate(self.config.routes)], self.telemetry
        )
        return Gateway(root, tuple(self.keySets.values()), tuple(self.relays))


def buildGateway(
    config: Config,
    agent: IAgent,
    clock: IReactorTime,
    environ: Mapping[str, str] = os.environ,
    readFile: Callable[[str], bytes] = readFile,
    fetch: Callable[[str], Deferred[bytes]] | None = None,
    telemetry: Telemetry | None = None,
    buckets: BucketStore | None = None,
    health: dict[tuple[str, str], Health] | None = None,
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
    @param health: the passive health of each route's targets, by route
        and backend name (kept across reloads); by default, all healthy.
    @raise ConfigError: when an expression does not compile, a key does not
        load or a file the configuration names is unusable.
    """
    if telemetry is None:
        telemetry = Telemetry(config.tracing, Metrics(), clock, accessLog=config.accessLog)
    if buckets is None:
        buckets = MemoryBuckets()
    return _Builder(config, agent, clock, environ, readFile, fetch, telemetry, buckets,
                    health if health is not None else {}).build()
