"""
From a loaded YAML document to a L{Config}: L{parseConfig} and the parsers
of its fields.

Every parser is a pure function C{(value, path)} that returns a value or
raises a L{ConfigError} whose message starts with the path of the offending
field (C{routes[0].backend: no backend named 'openai-all-model'}).
"""

from __future__ import annotations

import difflib
import re
from urllib.parse import unquote
from typing import Any, Callable, Mapping, Sequence, TypeVar

from twisted.internet.endpoints import serverFromString

from aigateway.config.schema import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_REQUEST_BODY,
    DEFAULT_REQUEST_HEAD_TIMEOUT,
    DEFAULT_ROUTE_TIMEOUT,
    RETRY_CONDITIONS,
    TRACING_CONVENTIONS,
    AdminConfig,
    AuthorizationPolicy,
    Backend,
    Bucket,
    Config,
    ConfigError,
    ExpressionSource,
    JWKSSource,
    JWTPolicy,
    JWTProviderConfig,
    LimitConfig,
    Match,
    Outlier,
    Retries,
    Route,
    RuleConfig,
    SecretRef,
    StateConfig,
    RedisConfig,
    STATE_ON_ERROR,
    Target,
    Timeouts,
    TokenSource,
    TracingConfig,
)

__all__ = ["PROVIDERS", "checkWorkers", "parseConfig", "parseDuration", "parseEndpoint", "parseSize", "workerCount"]

PROVIDERS: Mapping[str, str] = {
    "openai": "https://api.openai.com",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
    "azure-openai": "",
    "bedrock": "https://bedrock-runtime.{region}.amazonaws.com",
}
# The backend fields that only some providers take.
_PROVIDER_FIELDS: Mapping[str, frozenset[str]] = {
    "maxTokens": frozenset(["anthropic"]),
    "deployment": frozenset(["azure-openai"]),
    "apiVersion": frozenset(["azure-openai"]),
    "region": frozenset(["bedrock"]),
    "streamUsage": frozenset(["openai", "azure-openai"]),
}
DEFAULT_AZURE_API_VERSION = "2024-10-21"
HTTP_METHODS = frozenset(
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
)

T = TypeVar("T")


class _Fields:
    """
    The keys of one mapping in the document, taken one by one.

    The mapping's keys are declared up front, and a key that is not one of
    them is reported before anything else about the mapping (a missing
    required key, a "one of" rule, a bad value): C{pathPrefx} is an
    unknown key, with its "did you mean", not a match without a path.
    """

    def __init__(self, value: object, path: str, keys: Sequence[str]) -> None:
        """
        @param keys: every key this mapping may have.
        @raise ConfigError: when C{value} is not a mapping or has a key
            not in C{keys}.
        """
        if not isinstance(value, dict):
            raise ConfigError(path, f"must be a mapping, not {_kind(value)}")
        self._values: dict[Any, Any] = dict(value)
        self._known = tuple(keys)
        self.path = path
        for key in self._values:
            if key not in self._known:
                hint = difflib.get_close_matches(str(key), self._known, n=1)
                extra = f" (did you mean '{hint[0]}'?)" if hint else ""
                raise ConfigError(self.at(str(key)), f"unknown key{extra}")

    def at(self, key: str) -> str:
        """
        The path of C{key} in this mapping.
        """
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self._values

    def oneOf(self, *keys: str) -> str:
        """
        The one of C{keys} this mapping has; having none or several is an
        error.
        """
        given = [key for key in keys if key in self._values]
        if len(given) != 1:
            raise ConfigError(self.path, f"must have exactly one of {', '.join(keys)}")
        return given[0]

    def take(
        self,
        key: str,
        parse: Callable[[object, str], T],
        default: T | None = None,
        required: bool = False,
    ) -> T | None:
        """
        Remove C{key} and parse its value with C{parse(value, path)}.
        """
        if key not in self._known:
            raise AssertionError(f"{self.at(key)} is taken but not declared among the mapping's keys")
        if key not in self._values:
            if required:
                raise ConfigError(self.at(key), "is required")
            return default
        return parse(self._values.pop(key), self.at(key))

    def done(self) -> None:
        """
        Check that every key given was taken (they were all declared).
        """
        if self._values:
            raise AssertionError(f"{self.path}: declared keys never taken: {sorted(map(str, self._values))}")


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


def _string(value: object, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(path, f"must be a non-empty string, not {_kind(value)}")
    return value


def _oneOf(choices: Sequence[str], known: bool = False) -> Callable[[object, str], str]:
    """
    A parser for a string that must be one of C{choices}.
    """

    def parse(value: object, path: str) -> str:
        text = _string(value, path)
        if text not in choices:
            if known:
                raise ConfigError(path, f"unknown {path.rsplit('.', 1)[-1]} {text!r} "
                                        f"(known: {', '.join(choices)})")
            raise ConfigError(path, f"must be one of {', '.join(choices)}, not {text!r}")
        return text

    return parse


def _boolean(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, f"must be true or false, not {_kind(value)}")
    return value


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parseDuration(value: object, path: str = "") -> float:
    """
    Parse a duration such as C{250ms}, C{30s}, C{5m}, C{1h} or C{1m30s}.

    @return: seconds.
    @raise ConfigError: for anything else, including bare numbers.
    """
    if isinstance(value, str):
        text = value.strip()
        parts = _DURATION.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _UNITS[u] for n, u in parts)
    raise ConfigError(
        path, f"must be a duration like '250ms', '30s', '5m' or '1h', not {value!r}"
    )


def _positiveDuration(value: object, path: str) -> float:
    seconds = parseDuration(value, path)
    if seconds <= 0:
        raise ConfigError(path, "must be longer than zero")
    return seconds


def _positiveInteger(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(path, f"must be a whole number above zero, not {value!r}")
    return value


_SIZE = re.compile(r"(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 1000**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "GiB": 1024**3,
}


def parseSize(value: object, path: str = "") -> int:
    """
    Parse a size in bytes: a whole number, or C{512KiB}, C{10MiB}, C{1MB}...
    """
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        found = _SIZE.fullmatch(value.strip())
        if found and int(found.group(1)) > 0:
            return int(found.group(1)) * _SIZE_UNITS[found.group(2)]
    raise ConfigError(path, f"must be a size like 1048576, '512KiB' or '10MiB', not {value!r}")


def parseEndpoint(value: object, path: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    description = _string(value, path)
    if description.isdigit():
        raise ConfigError(
            path, f"{description!r} is not an endpoint (did you mean 'tcp:{description}'?)"
        )
    try:
        # Endpoints are only described here; nothing listens until the
        # service starts, so no reactor is needed to check the string.
        serverFromString(None, description)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(path, f"invalid endpoint {description!r}: {e}") from None
    port = re.match(r"(?:tcp6?:)(?:port=)?(\d+)", description)
    if port and int(port.group(1)) > 65535:
        raise ConfigError(path, f"invalid endpoint {description!r}: port out of range")
    return description


def _endpoints(value: object, path: str) -> tuple[str, ...]:
    if isinstance(value, list):
        if not value:
            raise ConfigError(path, "must name at least one endpoint")
        return tuple(parseEndpoint(v, f"{path}[{i}]") for i, v in enumerate(value))
    return (parseEndpoint(value, path),)


def _secret(value: object, path: str) -> SecretRef:
    fields = _Fields(value, path, ("env", "file", "value", "passthrough"))
    kind = fields.oneOf("env", "file", "value", "passthrough")
    if kind == "passthrough":
        if not fields.take(kind, _boolean):
            raise ConfigError(fields.at(kind), "can only be true (omit authToken instead)")
        ref = ""
    else:
        ref = fields.take(kind, _string) or ""
    fields.done()
    return SecretRef(kind, ref)


def _url(value: object, path: str) -> str:
    url = _string(value, path)
    if not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", url):
        raise ConfigError(path, f"must be an http:// or https:// URL, not {url!r}")
    return url.rstrip("/")


def _backend(name: str, value: object, path: str) -> Backend:
    fields = _Fields(value, path, ("provider", "url", "model", "authToken", "streamUsage", "maxTokens",
                                   "deployment", "apiVersion", "region", "idleTimeout"))
    kind = fields.take("provider", _oneOf(list(PROVIDERS), known=True), required=True)
    assert kind is not None
    for key, providers in _PROVIDER_FIELDS.items():
        if fields.has(key) and kind not in providers:
            raise ConfigError(fields.at(key), f"is not a field of provider {kind!r} "
                                              f"(only of {', '.join(sorted(providers))})")
    region = fields.take("region", _region, required=kind == "bedrock")
    default = PROVIDERS[kind].format(region=region)
    backend = Backend(
        name=name,
        provider=kind,
        url=fields.take("url", _url, required=not default) or default,
        model=fields.take("model", _string),
        authToken=fields.take("authToken", _secret),
        streamUsage=fields.take("streamUsage", _boolean, True),  # type: ignore[arg-type]
        maxTokens=fields.take("maxTokens", _positiveInteger, 4096),  # type: ignore[arg-type]
        deployment=fields.take("deployment", _pathSegment, required=kind == "azure-openai"),
        apiVersion=fields.take("apiVersion", _string,
                               DEFAULT_AZURE_API_VERSION if kind == "azure-openai" else None),
        region=region,
        idleTimeout=fields.take("idleTimeout", _positiveDuration),
    )
    fields.done()
    if kind == "bedrock" and backend.authToken is not None and backend.authToken.kind == "passthrough":
        raise ConfigError(fields.at("authToken"), "cannot pass the caller's credential to bedrock")
    return backend


def _region(value: object, path: str) -> str:
    text = _string(value, path)
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+", text):
        raise ConfigError(path, f"must be an AWS region like 'us-east-1', not {text!r}")
    return text


def _pathSegment(value: object, path: str) -> str:
    text = _string(value, path)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", text):
        raise ConfigError(path, f"must be a name of letters, digits, '.', '_' and '-', not {text!r}")
    return text


def _path(value: object, path: str) -> str:
    text = _string(value, path)
    if not text.startswith("/"):
        raise ConfigError(path, f"must start with '/', not {text!r}")
    if any(c in text for c in "?# \t"):
        raise ConfigError(path, f"must be a plain path, not {text!r}")
    return text


def _methods(value: object, path: str) -> frozenset[str]:
    if not isinstance(value, list) or not value:
        raise ConfigError(path, "must be a non-empty list of HTTP methods")
    methods = set()
    for i, m in enumerate(value):
        m = _string(m, f"{path}[{i}]").upper()
        if m not in HTTP_METHODS:
            raise ConfigError(f"{path}[{i}]", f"unknown HTTP method {m!r}")
        methods.add(m)
    return frozenset(methods)


def _headers(value: object, path: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not value:
        raise ConfigError(path, "must be a mapping of header name to exact value")
    pairs = []
    for name, v in value.items():
        if not isinstance(name, str) or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            raise ConfigError(path, f"invalid header name {name!r}")
        if not isinstance(v, (str, int)) or isinstance(v, bool):
            raise ConfigError(f"{path}.{name}", f"must be a string, not {_kind(v)}")
        pairs.append((name.lower(), str(v)))
    return tuple(sorted(pairs))


def _match(value: object, path: str) -> Match:
    fields = _Fields(value, path, ("path", "pathPrefix", "methods", "headers"))
    exact = fields.take("path", _path)
    prefix = fields.take("pathPrefix", _path)
    if (exact is None) == (prefix is None):
        raise ConfigError(path, "must have exactly one of path, pathPrefix")
    if prefix is not None and prefix != "/":
        prefix = prefix.rstrip("/")
    match = Match(
        path=exact,
        pathPrefix=prefix,
        methods=fields.take("methods", _methods),
        headers=fields.take("headers", _headers, ()) or (),
    )
    fields.done()
    return match


def _override(gatewayValue: T | None, parse: Callable[[object, str], T], section: str) -> Callable[[object, str], T | None]:
    """
    A route's own setting for a gateway-wide section: C{off}, C{on} (the
    gateway-wide one), or a block of its own.
    """

    def parseOverride(value: object, path: str) -> T | None:
        if value is False or value == "off":
            return None
        if value is True or value == "on":
            if gatewayValue is None:
                raise ConfigError(path, f"there is no gateway-wide {section} to turn on")
            return gatewayValue
        return parse(value, path)

    return parseOverride


def _expression(value: object, path: str) -> ExpressionSource:
    return ExpressionSource(_string(value, path), path)


RULE_KINDS = ("allow", "deny", "require")


def _authorization(value: object, path: str) -> AuthorizationPolicy:
    fields = _Fields(value, path, ("rules",))

    def rules(v: object, p: str) -> tuple[RuleConfig, ...]:
        if not isinstance(v, list) or not v:
            raise ConfigError(p, "must be a non-empty list of rules")
        parsed = []
        for i, item in enumerate(v):
            where = f"{p}[{i}]"
            inner = _Fields(item, where, RULE_KINDS)
            kind = inner.oneOf(*RULE_KINDS)
            expression = inner.take(kind, _expression)
            inner.done()
            assert expression is not None
            parsed.append(RuleConfig(kind, expression, f"rules[{i}]"))
        return tuple(parsed)

    policy = AuthorizationPolicy(rules=fields.take("rules", rules, required=True) or ())
    fields.done()
    return policy


def _bucket(value: object, path: str) -> Bucket:
    fields = _Fields(value, path, ("limit", "per"))

    def positive(v: object, p: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise ConfigError(p, f"must be a positive number, not {v!r}")
        return float(v)

    bucket = Bucket(
        limit=fields.take("limit", positive, required=True),  # type: ignore[arg-type]
        per=fields.take("per", parseDuration, required=True),  # type: ignore[arg-type]
    )
    fields.done()
    if bucket.per <= 0:
        raise ConfigError(f"{path}.per", "must be longer than zero")
    return bucket


def _rateLimits(value: object, path: str) -> tuple[LimitConfig, ...]:
    if not isinstance(value, list):
        raise ConfigError(path, f"must be a list of limits, not {_kind(value)}")
    limits = []
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        fields = _Fields(item, where, ("key", "requests", "tokens"))
        limit = LimitConfig(
            key=fields.take("key", _expression),
            requests=fields.take("requests", _bucket),
            tokens=fields.take("tokens", _bucket),
            where=where,
        )
        fields.done()
        if limit.requests is None and limit.tokens is None:
            raise ConfigError(where, "must have requests, tokens or both")
        limits.append(limit)
    return tuple(limits)


def _route(
    value: object,
    path: str,
    backends: Mapping[str, Backend],
    maxRequestBody: int,
    gatewayPolicy: JWTPolicy | None,
    gatewayAuthorization: AuthorizationPolicy | None = None,
) -> Route:
    fields = _Fields(value, path, ("name", "match", "backend", "backends", "retries", "timeouts",
                                   "outlier", "timeout", "maxRequestBody", "jwt", "authorization",
                                   "rateLimits"))
    name = fields.take("name", _string, required=True)
    match = fields.take("match", _match, required=True)
    assert name is not None and match is not None
    if fields.oneOf("backend", "backends") == "backend":
        backendName = fields.take("backend", _string, required=True)
        assert backendName is not None
        targets: tuple[Target, ...] = (Target(_named(backendName, backends, fields.at("backend"))),)
    else:
        targets = fields.take("backends", lambda v, p: _targets(v, p, backends)) or ()
    retries = fields.take("retries", _retries) or Retries(attempts=min(len(targets), 3))
    route = Route(
        name=name,
        match=match,
        backend=targets[0].backend,
        targets=targets,
        retries=retries,
        timeouts=fields.take("timeouts", _timeouts) or Timeouts(),
        outlier=fields.take("outlier", _outlier) or Outlier(),
        timeout=fields.take("timeout", _positiveDuration, DEFAULT_ROUTE_TIMEOUT),
        maxRequestBody=fields.take("maxRequestBody", parseSize, maxRequestBody)
        or maxRequestBody,
        jwt=fields.take("jwt", _override(gatewayPolicy, _jwtPolicy, "jwt policy"), gatewayPolicy),
        authorization=fields.take(
            "authorization",
            _override(gatewayAuthorization, _authorization, "authorization"),
            gatewayAuthorization,
        ),
        rateLimits=fields.take("rateLimits", _rateLimits, ()) or (),
    )
    fields.done()
    return route


def _named(name: str, backends: Mapping[str, Backend], path: str) -> Backend:
    if name not in backends:
        hint = difflib.get_close_matches(name, list(backends), n=1)
        extra = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise ConfigError(path, f"no backend named {name!r}{extra}")
    return backends[name]


def _nonNegativeInteger(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(path, f"must be a whole number, zero or more, not {value!r}")
    return value


def _target(value: object, path: str, backends: Mapping[str, Backend]) -> Target:
    fields = _Fields(value, path, ("backend", "weight", "priority", "models"))
    name = fields.take("backend", _string, required=True)
    assert name is not None
    target = Target(
        backend=_named(name, backends, fields.at("backend")),
        weight=fields.take("weight", _positiveInteger, 1),  # type: ignore[arg-type]
        priority=fields.take("priority", _nonNegativeInteger, 0),  # type: ignore[arg-type]
        models=fields.take("models", _stringList),
    )
    fields.done()
    return target


def _targets(value: object, path: str, backends: Mapping[str, Backend]) -> tuple[Target, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(path, "must be a non-empty list of {backend: name} entries")
    targets = tuple(_target(v, f"{path}[{i}]", backends) for i, v in enumerate(value))
    seen: set[str] = set()
    for i, target in enumerate(targets):
        if target.backend.name in seen:
            raise ConfigError(f"{path}[{i}].backend", f"backend {target.backend.name!r} is listed twice")
        seen.add(target.backend.name)
    return targets


def _retryConditions(value: object, path: str) -> frozenset[str]:
    if not isinstance(value, list):
        raise ConfigError(path, f"must be a list of {', '.join(RETRY_CONDITIONS)}")
    parse = _oneOf(RETRY_CONDITIONS)
    return frozenset(parse(str(v) if isinstance(v, int) else v, f"{path}[{i}]")
                     for i, v in enumerate(value))


def _retries(value: object, path: str) -> Retries:
    fields = _Fields(value, path, ("attempts", "on", "backoff"))
    attempts = fields.take("attempts", _positiveInteger, 1)
    assert attempts is not None
    if attempts > 10:
        raise ConfigError(fields.at("attempts"), f"must be at most 10, not {attempts}")
    retries = Retries(
        attempts=attempts,
        on=fields.take("on", _retryConditions, frozenset(RETRY_CONDITIONS)),  # type: ignore[arg-type]
        backoff=fields.take("backoff", parseDuration, 0.1),  # type: ignore[arg-type]
    )
    fields.done()
    return retries


def _timeouts(value: object, path: str) -> Timeouts:
    fields = _Fields(value, path, ("connect", "firstByte", "idle"))
    defaults = Timeouts()
    timeouts = Timeouts(
        connect=fields.take("connect", _positiveDuration, defaults.connect),  # type: ignore[arg-type]
        firstByte=fields.take("firstByte", _positiveDuration, defaults.firstByte),  # type: ignore[arg-type]
        idle=fields.take("idle", _positiveDuration, defaults.idle),  # type: ignore[arg-type]
    )
    fields.done()
    return timeouts


def _outlier(value: object, path: str) -> Outlier:
    fields = _Fields(value, path, ("consecutiveFailures", "ejection"))
    outlier = Outlier(
        consecutiveFailures=fields.take("consecutiveFailures", _positiveInteger, 5),  # type: ignore[arg-type]
        ejection=fields.take("ejection", _positiveDuration, 30.0),  # type: ignore[arg-type]
    )
    fields.done()
    return outlier


def _admin(value: object, path: str) -> AdminConfig:
    fields = _Fields(value, path, ("listen",))
    admin = AdminConfig(listen=fields.take("listen", _endpoints, required=True) or ())
    fields.done()
    return admin


JWT_MODES = ("strict", "optional", "permissive")


def _stringList(value: object, path: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list):
        raise ConfigError(path, f"must be a list of strings, not {_kind(value)}")
    return tuple(_string(v, f"{path}[{i}]") for i, v in enumerate(value))


def _jwks(value: object, path: str) -> JWKSSource:
    fields = _Fields(value, path, ("local", "file", "remote"))
    kind = fields.oneOf("local", "file", "remote")
    if kind == "local":

        def local(v: object, p: str) -> str | None:
            inner = _Fields(v, p, ("key",))
            text = inner.take("key", _string, required=True)
            inner.done()
            return text

        source = JWKSSource("local", key=fields.take(kind, local))
    elif kind == "file":
        source = JWKSSource("file", path=fields.take(kind, _string))
    else:

        def remote(v: object, p: str) -> JWKSSource:
            inner = _Fields(v, p, ("url", "cacheDuration"))
            url = inner.take("url", _url, required=True)
            cacheDuration = inner.take("cacheDuration", _positiveDuration, 300.0)
            inner.done()
            return JWKSSource("remote", url=url, cacheDuration=cacheDuration or 300.0)

        source = fields.take(kind, remote)  # type: ignore[assignment]
    fields.done()
    assert source is not None
    return source


def _claimsToHeaders(value: object, path: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not value:
        raise ConfigError(path, "must be a mapping of claim to header name")
    pairs = []
    for claim, header in value.items():
        claim = _string(claim, path)
        header = _string(header, f"{path}.{claim}")
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", header):
            raise ConfigError(f"{path}.{claim}", f"invalid header name {header!r}")
        pairs.append((claim, header.lower()))
    return tuple(pairs)


def _jwtProvider(name: str, value: object, path: str) -> JWTProviderConfig:
    fields = _Fields(value, path, ("issuer", "audiences", "jwks", "clockSkew", "requireExp", "maxLifetime",
                                   "claimsToHeaders"))
    issuer = fields.take("issuer", _string, required=True)
    audiences = fields.take("audiences", _stringList, ()) or ()
    jwks = fields.take("jwks", _jwks, required=True)
    assert issuer is not None and jwks is not None
    provider = JWTProviderConfig(
        name=name,
        issuer=issuer,
        audiences=audiences,
        jwks=jwks,
        clockSkew=fields.take("clockSkew", parseDuration, 60.0),  # type: ignore[arg-type]
        requireExp=fields.take("requireExp", _boolean, False),  # type: ignore[arg-type]
        maxLifetime=fields.take("maxLifetime", parseDuration),
        claimsToHeaders=fields.take("claimsToHeaders", _claimsToHeaders, ()) or (),
    )
    fields.done()
    return provider


def _tokenSource(value: object, path: str) -> TokenSource:
    fields = _Fields(value, path, ("header", "queryParam", "cookie"))

    def header(v: object, p: str) -> tuple[str, str]:
        inner = _Fields(v, p, ("name", "prefix"))
        name = inner.take("name", _string, required=True)
        prefix = inner.take("prefix", lambda x, q: x if isinstance(x, str) else _string(x, q), "")
        inner.done()
        assert name is not None and prefix is not None
        return name.lower(), prefix

    named = fields.take("header", header)
    source = TokenSource(
        header=named[0] if named else None,
        prefix=named[1] if named else "",
        queryParam=fields.take("queryParam", _string),
        cookie=fields.take("cookie", _string),
    )
    fields.done()
    if source == TokenSource(header=None, prefix=""):
        raise ConfigError(path, "must name at least one of header, queryParam, cookie")
    return source


JWT_FAILURE_STATUSES = (401, 403)


def _failureStatus(value: object, path: str) -> int:
    if isinstance(value, bool) or value not in JWT_FAILURE_STATUSES:
        raise ConfigError(path, f"must be 401 or 403, not {value!r}")
    return int(value)  # type: ignore[call-overload]


def _jwtPolicy(value: object, path: str) -> JWTPolicy:
    fields = _Fields(value, path, ("mode", "providers", "tokenFrom", "failureStatus"))

    def providers(v: object, p: str) -> tuple[JWTProviderConfig, ...]:
        if not isinstance(v, dict) or not v:
            raise ConfigError(p, "must be a mapping of provider name to provider")
        return tuple(_jwtProvider(str(n), pv, f"{p}.{n}") for n, pv in v.items())

    policy = JWTPolicy(
        mode=fields.take("mode", _oneOf(JWT_MODES), "strict") or "strict",
        providers=fields.take("providers", providers, required=True) or (),
        tokenFrom=fields.take("tokenFrom", _tokenSource, TokenSource()) or TokenSource(),
        failureStatus=fields.take("failureStatus", _failureStatus, 401),  # type: ignore[arg-type]
    )
    fields.done()
    return policy


def _conventions(value: object, path: str) -> tuple[str, ...]:
    """
    The semantic conventions spans follow: a non-empty list of
    L{TRACING_CONVENTIONS}, each at most once.
    """
    if not isinstance(value, list):
        raise ConfigError(path, f"must be a list of {', '.join(TRACING_CONVENTIONS)}, not {_kind(value)}")
    if not value:
        raise ConfigError(path, f"must name at least one of {', '.join(TRACING_CONVENTIONS)}")
    parse = _oneOf(TRACING_CONVENTIONS)
    conventions: list[str] = []
    for i, v in enumerate(value):
        name = parse(v, f"{path}[{i}]")
        if name in conventions:
            raise ConfigError(f"{path}[{i}]", f"{name!r} is listed twice")
        conventions.append(name)
    return tuple(conventions)


def _tracing(value: object, path: str) -> TracingConfig:
    fields = _Fields(value, path, ("otlp", "sampleRatio", "captureContent", "legacyAttributes", "serviceName",
                                   "conventions"))

    def otlp(v: object, p: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        inner = _Fields(v, p, ("endpoint", "headers"))
        endpoint = inner.take("endpoint", _url, required=True)

        def headers(h: object, q: str) -> tuple[tuple[str, str], ...]:
            if not isinstance(h, dict):
                raise ConfigError(q, "must be a mapping of header name to value")
            return tuple((str(k), _string(x, f"{q}.{k}")) for k, x in h.items())

        extra = inner.take("headers", headers, ()) or ()
        inner.done()
        assert endpoint is not None
        return endpoint, extra

    def ratio(v: object, p: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise ConfigError(p, f"must be a number from 0 to 1, not {v!r}")
        return float(v)

    endpoint, headers = fields.take("otlp", otlp) or (None, ())
    config = TracingConfig(
        otlpEndpoint=endpoint,
        otlpHeaders=headers,
        sampleRatio=fields.take("sampleRatio", ratio, 1.0),  # type: ignore[arg-type]
        captureContent=fields.take("captureContent", _boolean, False),  # type: ignore[arg-type]
        legacyAttributes=fields.take("legacyAttributes", _boolean, False),  # type: ignore[arg-type]
        serviceName=fields.take("serviceName", _string, "aigateway"),  # type: ignore[arg-type]
        conventions=fields.take("conventions", _conventions, ("genai",)),  # type: ignore[arg-type]
    )
    fields.done()
    return config


_REDIS_URL = re.compile(
    r"(rediss?)://(?:([^:@/\s]*)(?::([^@/\s]*))?@)?(\[[0-9A-Fa-f:.]+\]|[^:/@\s\[\]]+)(?::(\d{1,5}))?(?:/(\d*))?/?"
)


def _redis(value: object, path: str) -> RedisConfig:
    fields = _Fields(value, path, ("url", "passwordFrom", "keyPrefix", "timeout"))
    url = fields.take("url", _string, required=True)
    assert url is not None
    found = _REDIS_URL.fullmatch(url)
    if found is None:
        raise ConfigError(fields.at("url"), "must be redis://[user:password@]host[:port][/database] "
                                            "or the same with rediss:// (TLS)")
    scheme, user, password, host, port, database = found.groups()
    if port is not None and not 0 < int(port) < 65536:
        raise ConfigError(fields.at("url"), f"port {port} is not between 1 and 65535")

    def fromEnv(v: object, p: str) -> SecretRef:
        inner = _Fields(v, p, ("env",))
        name = inner.take("env", _string, required=True)
        inner.done()
        assert name is not None
        return SecretRef("env", name)

    passwordFrom = fields.take("passwordFrom", fromEnv)
    if passwordFrom is not None and password:
        raise ConfigError(fields.at("passwordFrom"), "the url already holds a password: give one or the other")
    host = host.strip("[]")
    port = int(port) if port else 6379
    database = int(database) if database else 0
    config = RedisConfig(
        url=f"{scheme}://{host if ':' not in host else '[' + host + ']'}:{port}/{database}",
        host=host,
        port=port,
        database=database,
        tls=scheme == "rediss",
        username=unquote(user) if user else None,
        password=unquote(password) if password else None,
        passwordFrom=passwordFrom,
        keyPrefix=fields.take("keyPrefix", _string, "aigateway:"),  # type: ignore[arg-type]
        timeout=fields.take("timeout", _positiveDuration, 0.05),  # type: ignore[arg-type]
    )
    fields.done()
    return config


def _state(value: object, path: str) -> StateConfig:
    fields = _Fields(value, path, ("redis", "onError"))
    state = StateConfig(
        redis=fields.take("redis", _redis),
        onError=fields.take("onError", _oneOf(STATE_ON_ERROR), "allow"),  # type: ignore[arg-type]
    )
    fields.done()
    return state


def parseConfig(document: object) -> Config:
    """
    Validate a loaded YAML document and turn it into a L{Config}.

    @raise ConfigError: naming the first field that is wrong.
    """
    fields = _Fields(document, "", ("listen", "admin", "maxRequestBody", "jwt", "authorization", "backends",
                                     "routes", "tracing", "shutdownTimeout", "accessLog", "maxConnections",
                                     "requestHeadTimeout", "state", "workers"))
    listen = fields.take("listen", _endpoints, ("tcp:8080",)) or ("tcp:8080",)
    admin = fields.take("admin", _admin)
    maxRequestBody = fields.take("maxRequestBody", parseSize, DEFAULT_MAX_REQUEST_BODY)
    assert maxRequestBody is not None
    gatewayPolicy = fields.take("jwt", _jwtPolicy)
    gatewayAuthorization = fields.take("authorization", _authorization)

    def backends(value: object, path: str) -> dict[str, Backend]:
        if not isinstance(value, dict):
            raise ConfigError(path, f"must be a mapping of name to backend, not {_kind(value)}")
        return {
            str(name): _backend(str(name), v, f"{path}.{name}") for name, v in value.items()
        }

    byName = fields.take("backends", backends, {}) or {}

    def routes(value: object, path: str) -> tuple[Route, ...]:
        if not isinstance(value, list):
            raise ConfigError(path, f"must be a list of routes, not {_kind(value)}")
        parsed: list[Route] = []
        seen: dict[str, int] = {}
        for i, v in enumerate(value):
            route = _route(
                v, f"{path}[{i}]", byName, maxRequestBody, gatewayPolicy, gatewayAuthorization
            )
            if route.name in seen:
                raise ConfigError(
                    f"{path}[{i}].name",
                    f"duplicate route name {route.name!r} (also routes[{seen[route.name]}])",
                )
            seen[route.name] = i
            parsed.append(route)
        return tuple(parsed)

    config = Config(
        listen=listen,
        admin=admin,
        backends=byName,
        routes=fields.take("routes", routes, ()) or (),
        jwt=gatewayPolicy,
        authorization=gatewayAuthorization,
        tracing=fields.take("tracing", _tracing, TracingConfig()) or TracingConfig(),
        shutdownTimeout=fields.take("shutdownTimeout", _positiveDuration, 30.0),  # type: ignore[arg-type]
        accessLog=fields.take("accessLog", _boolean, True),  # type: ignore[arg-type]
        maxRequestBody=maxRequestBody,
        maxConnections=fields.take("maxConnections", _positiveInteger, DEFAULT_MAX_CONNECTIONS),  # type: ignore[arg-type]
        requestHeadTimeout=fields.take("requestHeadTimeout", _positiveDuration, DEFAULT_REQUEST_HEAD_TIMEOUT),  # type: ignore[arg-type]
        state=fields.take("state", _state, StateConfig()),  # type: ignore[arg-type]
        workers=fields.take("workers", _workers, 1),  # type: ignore[arg-type]
    )
    fields.done()
    checkWorkers(config, "workers")
    return config


def _workers(value: object, path: str) -> int | str:
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(path, f"must be a number of processes (1 or more) or auto, not {value!r}")
    return value


def workerCount(workers: int | str, cores: int | None) -> int:
    """
    How many processes C{workers} asks for: C{auto} is one per core.

    @param cores: the cores this process may run on (L{None}: unknown, one).
    """
    if workers == "auto":
        return max(1, cores or 1)
    assert isinstance(workers, int)
    return workers


# The endpoints whose listening socket workers can share.
_SHAREABLE = ("tcp:", "tcp6:")


def checkWorkers(config: Config, path: str) -> None:
    """
    Check that C{config} can be served by C{config.workers} processes: with
    more than one, every listener must be a socket the workers can share
    (TCP), and rate limits need buckets the workers share
    (C{state.redis}); in memory each worker would admit the whole limit.

    @param path: the field that set the number of workers (C{workers}, or
        C{--workers} on the command line), for the error.
    @raise ConfigError: naming both fields.
    """
    if config.workers == 1:
        return
    for i, description in enumerate(config.listen):
        if not description.startswith(_SHAREABLE):
            raise ConfigError(path, f"{config.workers} workers cannot share listen[{i}] {description!r}: "
                                    "they share tcp: and tcp6: listeners only")
    if config.state.redis is None:
        for i, route in enumerate(config.routes):
            if route.rateLimits:
                raise ConfigError(
                    path, f"{config.workers} workers with routes[{i}].rateLimits need state.redis: "
                          "buckets in memory are not shared, so each worker would admit the whole limit"
                )
