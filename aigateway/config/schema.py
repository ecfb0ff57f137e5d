"""
The configuration's values: frozen C{attrs} classes, from the whole
L{Config} down to a route's L{Match}, and L{ConfigError}, which names the
field that is wrong.  Nothing here parses or compiles; see
L{aigateway.config.parse}.
"""

from __future__ import annotations

from typing import Mapping

import attrs

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_REQUEST_BODY",
    "DEFAULT_REQUEST_HEAD_TIMEOUT",
    "DEFAULT_FIRST_BYTE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_ROUTE_TIMEOUT",
    "RETRY_CONDITIONS",
    "STATE_ON_ERROR",
    "TRACING_CONVENTIONS",
    "AdminConfig",
    "AuthorizationPolicy",
    "Backend",
    "Bucket",
    "Config",
    "ConfigError",
    "ExpressionSource",
    "JWKSSource",
    "JWTPolicy",
    "JWTProviderConfig",
    "LimitConfig",
    "Match",
    "Outlier",
    "RedisConfig",
    "Retries",
    "Route",
    "RuleConfig",
    "SecretRef",
    "StateConfig",
    "Target",
    "Timeouts",
    "TokenSource",
    "TracingConfig",
]

DEFAULT_MAX_REQUEST_BODY = 10 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 10000
DEFAULT_REQUEST_HEAD_TIMEOUT = 10.0


class ConfigError(ValueError):
    """
    The configuration is not valid.

    @ivar path: where in the document the problem is, e.g. C{routes[0].timeout}.
    @ivar problem: what is wrong with it.
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


@attrs.frozen
class SecretRef:
    """
    Where a backend's credential comes from: exactly one of an environment
    variable, a file, an inline value, or the caller's own C{Authorization}.

    @ivar kind: C{"env"}, C{"file"}, C{"value"} or C{"passthrough"}.
    @ivar ref: the variable name, the file path, or the inline secret.
    """

    kind: str
    ref: str = attrs.field(repr=False)

    def describe(self) -> str:
        """
        Say where the secret comes from without revealing it.
        """
        if self.kind in ("env", "file"):
            return f"{self.kind}: {self.ref}"
        if self.kind == "value":
            return "value: <redacted>"
        return "passthrough"


@attrs.frozen
class Backend:
    """
    An LLM provider endpoint that routes send requests to.

    @ivar url: the server root, scheme and authority (plus an optional base
        path); the provider adds C{/v1/...}.
    @ivar model: when set, replaces the C{model} a client asked for.
    @ivar authToken: the credential sent upstream, or L{None} for none.
    @ivar streamUsage: ask for usage on streams (C{stream_options.include_usage})
        when the client did not, so token counts are known for every answer.
    @ivar maxTokens: C{anthropic}: the C{max_tokens} sent when the client
        sends none (the Messages API requires one).
    @ivar deployment: C{azure-openai}: the deployment requests go to.
    @ivar apiVersion: C{azure-openai}: the C{api-version} query parameter.
    @ivar region: C{bedrock}: the AWS region, for the URL and the signature.
    @ivar idleTimeout: seconds a kept-alive connection to it waits for the
        next request, or L{None} for the gateway's default.
    """

    name: str
    provider: str
    url: str
    model: str | None
    authToken: SecretRef | None
    streamUsage: bool = True
    maxTokens: int = 4096
    deployment: str | None = None
    apiVersion: str | None = None
    region: str | None = None
    idleTimeout: float | None = None


@attrs.frozen
class Match:
    """
    Which requests a route takes.

    Exactly one of C{path} (exact) and C{pathPrefix} (on a segment boundary)
    is set; C{methods} and C{headers} narrow the match further.
    """

    path: str | None
    pathPrefix: str | None
    methods: frozenset[str] | None
    headers: tuple[tuple[str, str], ...]


@attrs.frozen
class JWKSSource:
    """
    Where a JWT provider's keys come from: exactly one of inline text
    (C{local}), a file, or a remote JWKS URL.  The keys themselves are
    loaded when the gateway is built (L{aigateway.build}).

    @ivar key: for C{local}, the key text as written (PEM, a JWK or a JWKS
        document).
    """

    kind: str
    key: str | None = attrs.field(default=None, repr=False)
    path: str | None = None
    url: str | None = None
    cacheDuration: float = 300.0


@attrs.frozen
class JWTProviderConfig:
    """
    One issuer the gateway accepts tokens from.

    @ivar claimsToHeaders: pairs of (claim path, upstream header name).
    """

    name: str
    issuer: str
    audiences: tuple[str, ...]
    jwks: JWKSSource
    clockSkew: float = 60.0
    requireExp: bool = False
    maxLifetime: float | None = None
    claimsToHeaders: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class TokenSource:
    """
    Where the gateway looks for a token, in this order: a header (with an
    optional value prefix such as C{Bearer }), a query parameter, a cookie.
    """

    header: str | None = "authorization"
    prefix: str = "Bearer "
    queryParam: str | None = None
    cookie: str | None = None


@attrs.frozen
class JWTPolicy:
    """
    JWT authentication for a route: C{strict} requires a valid token,
    C{optional} lets requests without one through, C{permissive} never
    blocks.

    @ivar failureStatus: the status of a refusal: 401 (RFC 6750) or 403.
    """

    mode: str
    providers: tuple[JWTProviderConfig, ...]
    tokenFrom: TokenSource = TokenSource()
    failureStatus: int = 401


@attrs.frozen
class ExpressionSource:
    """
    A CEL expression as written; it is compiled when the gateway is built
    (L{aigateway.build}), and a broken one is reported at C{path}.

    @ivar path: where the expression is in the document, e.g.
        C{routes[0].rateLimits[0].key}.
    """

    source: str
    path: str


@attrs.frozen
class RuleConfig:
    """
    One authorization rule: C{allow}, C{deny} or C{require}, and its
    expression.

    @ivar where: how refusals name the rule, e.g. C{rules[0]}.
    """

    kind: str
    expression: ExpressionSource
    where: str


@attrs.frozen
class AuthorizationPolicy:
    """
    Authorization rules, in order: see L{aigateway.web.policy}.
    """

    rules: tuple[RuleConfig, ...]


@attrs.frozen
class Bucket:
    """
    A token bucket's parameters: C{limit} tokens, refilled over C{per}
    seconds.
    """

    limit: float
    per: float

    @property
    def rate(self) -> float:
        return self.limit / self.per


@attrs.frozen
class LimitConfig:
    """
    A rate limit: requests and/or tokens per window, one bucket per value
    of C{key} (one bucket for all without a key).

    @ivar where: the limit's path, e.g. C{routes[0].rateLimits[0]}.
    """

    key: ExpressionSource | None
    requests: Bucket | None
    tokens: Bucket | None
    where: str


@attrs.frozen
class Target:
    """
    One backend of a route's C{backends:} list.

    @ivar weight: its share of the traffic among the healthy targets of its
        priority.
    @ivar priority: lower is tried first; a higher priority serves only
        while no target of a lower one is healthy, or all failed.
    @ivar models: globs of the requested models it serves, or L{None} for
        the models no target claims.
    """

    backend: Backend
    weight: int = 1
    priority: int = 0
    models: tuple[str, ...] | None = None


RETRY_CONDITIONS = ("connect-failure", "timeout", "429", "5xx")

# The semantic conventions spans can follow (tracing.conventions).
TRACING_CONVENTIONS = ("genai", "openinference")


@attrs.frozen
class Retries:
    """
    How a route tries again, before the first byte of the answer reached
    the client.

    @ivar attempts: total tries per request, across targets.
    @ivar on: what counts as retryable, of L{RETRY_CONDITIONS}.
    @ivar backoff: seconds before the second try; doubled for each next
        one, with jitter; an upstream's C{Retry-After} is honoured.
    """

    attempts: int = 1
    on: frozenset[str] = frozenset(RETRY_CONDITIONS)
    backoff: float = 0.1


DEFAULT_FIRST_BYTE_TIMEOUT = 300.0
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_ROUTE_TIMEOUT = 1800.0


@attrs.frozen
class Timeouts:
    """
    A route's timeouts per attempt.

    @ivar connect: seconds a connection to the upstream may take.
    @ivar firstByte: seconds until the answer's head.
    @ivar idle: seconds between two pieces of the answer's body.
    """

    connect: float = 10.0
    firstByte: float = DEFAULT_FIRST_BYTE_TIMEOUT
    idle: float = DEFAULT_IDLE_TIMEOUT


@attrs.frozen
class Outlier:
    """
    Passive health: a target that fails C{consecutiveFailures} times in a
    row is skipped for C{ejection} seconds, doubled on each repeat up to
    five minutes.
    """

    consecutiveFailures: int = 5
    ejection: float = 30.0


@attrs.frozen
class Route:
    """
    One entry of the route table.

    @ivar backend: the first target's backend (the only one of a route
        with C{backend:}).
    @ivar targets: every backend the route sends to.
    @ivar timeout: seconds for the whole request.
    @ivar maxRequestBody: the largest request body accepted, in bytes.
    @ivar jwt: the route's JWT policy, or L{None} when it has none.
    @ivar authorization: the route's rules, or L{None}.
    @ivar rateLimits: the route's limits.
    """

    name: str
    match: Match
    backend: Backend
    timeout: float | None
    maxRequestBody: int
    jwt: JWTPolicy | None = None
    authorization: AuthorizationPolicy | None = None
    rateLimits: tuple[LimitConfig, ...] = ()
    targets: tuple[Target, ...] = ()
    retries: Retries = Retries()
    timeouts: Timeouts = Timeouts()
    outlier: Outlier = Outlier()


@attrs.frozen
class AdminConfig:
    """
    The admin listener (health, readiness, metrics).
    """

    listen: tuple[str, ...]


@attrs.frozen
class TracingConfig:
    """
    Where traces go and what they hold.

    @ivar otlpEndpoint: the OTLP/HTTP traces URL; without it (and without
        the C{OTEL_EXPORTER_OTLP_*} variables) no spans are made.
    @ivar captureContent: put prompts and answers on spans.
    @ivar legacyAttributes: also write the older C{llm.*} and
        C{gen_ai.prompt}/C{gen_ai.completion} names.
    @ivar conventions: the semantic conventions spans follow, among
        L{TRACING_CONVENTIONS}: C{genai} (OpenTelemetry's GenAI
        attributes) and C{openinference} (OpenInference's, which Arize
        Phoenix reads); a convention left out writes none of its
        attributes.
    """

    otlpEndpoint: str | None = None
    otlpHeaders: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)
    sampleRatio: float = 1.0
    captureContent: bool = False
    legacyAttributes: bool = False
    serviceName: str = "aigateway"
    conventions: tuple[str, ...] = ("genai",)


@attrs.frozen
class RedisConfig:
    """
    The Redis server that holds the rate-limit buckets.

    @ivar url: C{redis://} or C{rediss://} (TLS), host, port and database,
        without the password.
    @ivar host: the server's name or address.
    @ivar port: its port.
    @ivar database: the database number.
    @ivar tls: whether to speak TLS (C{rediss://}).
    @ivar username: the ACL user, or L{None}.
    @ivar password: the password given in the URL, or L{None}.
    @ivar passwordFrom: the environment variable that holds the password,
        or L{None}.
    @ivar keyPrefix: what every key begins with.
    @ivar timeout: seconds one call may take.
    """

    url: str
    host: str
    port: int = 6379
    database: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    passwordFrom: SecretRef | None = None
    keyPrefix: str = "aigateway:"
    timeout: float = 0.05


STATE_ON_ERROR = ("allow", "deny")


@attrs.frozen
class StateConfig:
    """
    Where rate-limit buckets live.

    @ivar redis: the Redis server that holds them, or L{None}: this
        process's memory.
    @ivar onError: what a limit decides while Redis cannot answer: C{allow}
        or C{deny}.
    """

    redis: RedisConfig | None = None
    onError: str = "allow"


@attrs.frozen
class Config:
    """
    A whole, validated gateway configuration.

    @ivar maxRequestBody: the default of every route's C{maxRequestBody}.
    @ivar maxConnections: the most connections each listener keeps open.
    @ivar requestHeadTimeout: seconds a request's head may take to arrive,
        from its first byte.
    @ivar workers: how many processes serve: a number, or C{"auto"}, one
        per core.
    """

    listen: tuple[str, ...]
    admin: AdminConfig | None
    backends: Mapping[str, Backend]
    routes: tuple[Route, ...]
    jwt: JWTPolicy | None = None
    authorization: AuthorizationPolicy | None = None
    tracing: TracingConfig = TracingConfig()
    shutdownTimeout: float = 30.0
    accessLog: bool = True
    maxRequestBody: int = DEFAULT_MAX_REQUEST_BODY
    maxConnections: int = DEFAULT_MAX_CONNECTIONS
    requestHeadTimeout: float = DEFAULT_REQUEST_HEAD_TIMEOUT
    state: StateConfig = StateConfig()
    workers: int | str = 1
