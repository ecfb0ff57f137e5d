"""
The gateway's configuration: YAML in, frozen values out.

L{parseConfig} is a pure function from the loaded YAML document to a
L{Config}; every problem it finds is a L{ConfigError} whose message starts
with the path of the offending field (C{routes[0].backend: no backend named
'openai-all-model'}).  Nothing here reads the environment, the clock or a
file; L{loadConfig} takes the text of one.  Secrets, CEL expressions and
keys are described (L{SecretRef}, L{ExpressionSource}, L{JWKSSource}) and
resolved, compiled and loaded later, by L{aigateway.build}.

The package is pure data and imports no other part of the gateway:
  - L{aigateway.config.schema}: the values and L{ConfigError};
  - L{aigateway.config.parse}: L{parseConfig} and the field parsers;
  - L{aigateway.config.load}: the strict YAML loader, L{loadConfig}.
"""

from aigateway.config.load import loadConfig
from aigateway.config.parse import checkWorkers, parseConfig, parseDuration, parseEndpoint, parseSize, workerCount
from aigateway.config.schema import (
    AdminConfig,
    AuthorizationPolicy,
    Backend,
    Bucket,
    Config,
    ConfigError,
    DEFAULT_FIRST_BYTE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_REQUEST_BODY,
    DEFAULT_REQUEST_HEAD_TIMEOUT,
    DEFAULT_ROUTE_TIMEOUT,
    ExpressionSource,
    JWKSSource,
    JWTPolicy,
    JWTProviderConfig,
    LimitConfig,
    Match,
    Outlier,
    RedisConfig,
    RETRY_CONDITIONS,
    TRACING_CONVENTIONS,
    Retries,
    Route,
    RuleConfig,
    SecretRef,
    StateConfig,
    Target,
    Timeouts,
    TokenSource,
    TracingConfig,
)

__all__ = [
    "AdminConfig",
    "AuthorizationPolicy",
    "Backend",
    "Bucket",
    "Config",
    "ConfigError",
    "DEFAULT_FIRST_BYTE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_REQUEST_BODY",
    "DEFAULT_REQUEST_HEAD_TIMEOUT",
    "DEFAULT_ROUTE_TIMEOUT",
    "ExpressionSource",
    "JWKSSource",
    "JWTPolicy",
    "JWTProviderConfig",
    "LimitConfig",
    "Match",
    "Outlier",
    "RedisConfig",
    "RETRY_CONDITIONS",
    "TRACING_CONVENTIONS",
    "Retries",
    "Route",
    "RuleConfig",
    "SecretRef",
    "StateConfig",
    "Target",
    "Timeouts",
    "TokenSource",
    "TracingConfig",
    "checkWorkers",
    "loadConfig",
    "parseConfig",
    "parseDuration",
    "parseEndpoint",
    "parseSize",
    "workerCount",
]
