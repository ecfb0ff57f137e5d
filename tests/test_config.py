"""
Tests for L{aigateway.config}: the YAML contract and its error messages.
"""

import copy
import json
from typing import Any, Iterator

from twisted.trial.unittest import SynchronousTestCase

from aigateway.config import ConfigError, loadConfig, parseConfig, parseDuration, parseSize, workerCount
from tests.lab import LAB_PEM, LAB_POLICY

LAB = """
listen: tcp:8080
backends:
  openai-all-models:
    provider: openai
    authToken:
      env: OPENAI_API_KEY
routes:
  - name: openai
    match:
      pathPrefix: /openai
    backend: openai-all-models
    timeout: 120s
"""


class LoadTests(SynchronousTestCase):
    """
    Valid documents become frozen values with the documented defaults.
    """

    def test_lab(self) -> None:
        """
        The lab's route and backend load with their fields.
        """
        config = loadConfig(LAB)
        self.assertEqual(config.listen, ("tcp:8080",))
        backend = config.backends["openai-all-models"]
        self.assertEqual(backend.url, "https://api.openai.com")
        self.assertEqual(backend.authToken.describe(), "env: OPENAI_API_KEY")
        route = config.routes[0]
        self.assertEqual(route.name, "openai")
        self.assertEqual(route.match.pathPrefix, "/openai")
        self.assertIs(route.backend, backend)
        self.assertEqual(route.timeout, 120.0)
        self.assertEqual(route.maxRequestBody, 10 * 1024 * 1024)

    def test_shippedConfig(self) -> None:
        """
        The configuration the project ships loads.
        """
        import os

        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, "..", "etc", "gateway.yaml"), "rb") as f:
            config = loadConfig(f.read())
        self.assertIn("local", config.backends)

    def test_listenList(self) -> None:
        """
        C{listen} takes a list of endpoint strings.
        """
        config = loadConfig("listen: [tcp:8080, 'tcp:8443:interface=127.0.0.1']\n")
        self.assertEqual(config.listen, ("tcp:8080", "tcp:8443:interface=127.0.0.1"))

    def test_defaults(self) -> None:
        """
        A document with no routes listens on 8080 and serves nothing.
        """
        config = loadConfig("backends: {}\n")
        self.assertEqual((config.listen, config.routes, config.admin), (("tcp:8080",), (), None))

    def test_matchNarrowing(self) -> None:
        """
        C{methods} are upper-cased and C{headers} names lower-cased.
        """
        config = loadConfig(
            LAB.replace(
                "pathPrefix: /openai",
                "path: /chat\n      methods: [post]\n      headers: {X-Team: dev}",
            )
        )
        match = config.routes[0].match
        self.assertEqual(match.path, "/chat")
        self.assertEqual(match.methods, frozenset({"POST"}))
        self.assertEqual(match.headers, (("x-team", "dev"),))

    def test_secretRedacted(self) -> None:
        """
        An inline secret never shows in the value's repr or description.
        """
        config = loadConfig(LAB.replace("env: OPENAI_API_KEY", "value: sk-very-secret"))
        ref = config.backends["openai-all-models"].authToken
        self.assertNotIn("sk-very-secret", repr(ref))
        self.assertNotIn("sk-very-secret", repr(config))
        self.assertEqual(ref.describe(), "value: <redacted>")

    def test_trailingSlashPrefix(self) -> None:
        """
        A prefix written with a trailing slash means the same prefix.
        """
        config = loadConfig(LAB.replace("pathPrefix: /openai", "pathPrefix: /openai/"))
        self.assertEqual(config.routes[0].match.pathPrefix, "/openai")


def _everyMapping() -> list[dict[str, Any]]:
    """
    Good documents that, between them, hold every kind of mapping the
    configuration has, each with every key it may have where the keys can
    go together.
    """
    provider = {
        "issuer": "solo.io", "audiences": ["a"], "jwks": {"local": {"key": LAB_PEM}},
        "clockSkew": "30s", "requireExp": True, "maxLifetime": "1h", "claimsToHeaders": {"sub": "x-sub"},
    }
    bucket = {"limit": 5, "per": "1m"}
    full = {
        "listen": "tcp:8080", "admin": {"listen": "tcp:9090"}, "maxRequestBody": "1MiB",
        "shutdownTimeout": "5s", "accessLog": True, "maxConnections": 10, "requestHeadTimeout": "5s",
        "jwt": {"mode": "strict", "providers": {"lab": provider}, "failureStatus": 403,
                "tokenFrom": {"header": {"name": "authorization", "prefix": "Bearer "},
                              "queryParam": "token", "cookie": "token"}},
        "authorization": {"rules": [{"allow": "true"}]},
        "backends": {
            "o": {"provider": "openai", "url": "http://127.0.0.1:9000", "model": "m",
                  "authToken": {"value": "sk"}, "streamUsage": False},
            "a": {"provider": "anthropic", "maxTokens": 10},
            "z": {"provider": "azure-openai", "url": "https://x.openai.azure.com", "deployment": "d",
                  "apiVersion": "2024-10-21", "authToken": {"env": "K"}},
            "b": {"provider": "bedrock", "region": "us-east-1"},
        },
        "routes": [{
            "name": "r", "match": {"pathPrefix": "/r", "methods": ["POST"], "headers": {"x-a": "b"}},
            "backend": "o", "timeout": "5s", "maxRequestBody": "1KiB",
            "jwt": {"providers": {"p": dict(provider, jwks={"remote": {"url": "https://k/jwks",
                                                                          "cacheDuration": "5m"}})}},
            "authorization": {"rules": [{"deny": "false"}, {"require": "true"}]},
            "rateLimits": [{"key": "'k'", "requests": bucket, "tokens": bucket}],
        }],
        "tracing": {"otlp": {"endpoint": "http://127.0.0.1:4318/v1/traces", "headers": {"a": "b"}},
                    "sampleRatio": 0.5, "captureContent": True, "legacyAttributes": True,
                    "serviceName": "gw", "conventions": ["genai", "openinference"]},
    }
    full = json.loads(json.dumps(full))  # no mapping shared between two places
    other = copy.deepcopy(full)
    other["routes"][0]["match"] = {"path": "/exact"}
    other["routes"][0]["jwt"]["providers"]["p"]["jwks"] = {"file": "jwks.json"}
    other["backends"]["o"]["authToken"] = {"file": "key.txt"}
    other["backends"]["z"]["authToken"] = {"passthrough": True}
    return [full, other]


def _mappings(document: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """
    Every mapping in C{document} whose keys are the configuration's own
    (not names the user chooses: backends, providers, headers), with the
    field path of each.
    """
    if isinstance(document, list):
        for i, item in enumerate(document):
            yield from _mappings(item, f"{path}[{i}]")
    elif isinstance(document, dict):
        named = path.endswith(("backends", "providers", "headers", "claimsToHeaders"))
        if not named:
            yield path, document
        for key, value in document.items():
            yield from _mappings(value, f"{path}.{key}" if path else key)


class UnknownKeyTests(SynchronousTestCase):
    """
    A misspelt key is reported as unknown, with its "did you mean", before
    anything else about its mapping: before the key it stands for is found
    missing, before a "one of" rule, in every mapping of the configuration.
    """

    def test_documentsGood(self) -> None:
        """
        The documents the other tests misspell are good configurations.
        """
        for document in _everyMapping():
            parseConfig(document)

    def test_everyKeyMisspelt(self) -> None:
        """
        In every mapping, each key misspelt (its last letter dropped) is
        C{<path>.<typo>: unknown key (did you mean '<key>'?)}.
        """
        checked = set()
        for document in _everyMapping():
            for path, mapping in _mappings(document):
                for key in list(mapping):
                    typo = key[:-1]
                    value = mapping.pop(key)
                    mapping[typo] = value
                    where = f"{path}.{typo}" if path else typo
                    with self.assertRaises(ConfigError, msg=where) as caught:
                        parseConfig(document)
                    self.assertEqual(str(caught.exception), f"{where}: unknown key (did you mean '{key}'?)")
                    del mapping[typo]
                    mapping[key] = value
                    checked.add(key)
        self.assertGreater(len(checked), 50)

    def test_pathPrefixTypo(self) -> None:
        """
        The typo a user met: C{pathPrefx} is unknown, not a match without a
        path.
        """
        with self.assertRaises(ConfigError) as caught:
            loadConfig(LAB.replace("pathPrefix:", "pathPrefx:"))
        self.assertEqual(str(caught.exception),
                         "routes[0].match.pathPrefx: unknown key (did you mean 'pathPrefix'?)")


class ErrorTests(SynchronousTestCase):
    """
    Every mistake is reported with the path of the field that is wrong.
    """

    def assertProblem(self, text: str, expected: str) -> None:
        with self.assertRaises(ConfigError) as caught:
            loadConfig(text)
        self.assertEqual(str(caught.exception), expected)

    def test_danglingBackend(self) -> None:
        """
        A route naming a backend that does not exist, with a suggestion.
        """
        self.assertProblem(
            LAB.replace("backend: openai-all-models", "backend: openai-all-model"),
            "routes[0].backend: no backend named 'openai-all-model' "
            "(did you mean 'openai-all-models'?)",
        )

    def test_unknownKey(self) -> None:
        """
        A misspelt key is refused, with the closest known key.
        """
        self.assertProblem(
            LAB.replace("timeout: 120s", "timeuot: 120s"),
            "routes[0].timeuot: unknown key (did you mean 'timeout'?)",
        )

    def test_unknownTopLevelKey(self) -> None:
        """
        An unknown top-level key is refused.
        """
        self.assertProblem(LAB + "bogus: 1\n", "bogus: unknown key")

    def test_wrongType(self) -> None:
        """
        A list where a mapping belongs.
        """
        self.assertProblem("backends: []\n", "backends: must be a mapping of name to backend, not a list")

    def test_badDuration(self) -> None:
        """
        A bare number is not a duration.
        """
        self.assertProblem(
            LAB.replace("timeout: 120s", "timeout: 120"),
            "routes[0].timeout: must be a duration like '250ms', '30s', '5m' or '1h', not 120",
        )

    def test_zeroTimeout(self) -> None:
        """
        A zero timeout would refuse every request: it is an error.
        """
        self.assertProblem(LAB.replace("timeout: 120s", "timeout: 0s"), "routes[0].timeout: must be longer than zero")

    def test_duplicateRoute(self) -> None:
        """
        Two routes with one name.
        """
        doubled = LAB + LAB[LAB.index("  - name"):]
        self.assertProblem(
            doubled, "routes[1].name: duplicate route name 'openai' (also routes[0])"
        )

    def test_duplicateYamlKey(self) -> None:
        """
        A key given twice in one mapping is an error, not last-one-wins.
        """
        with self.assertRaises(ConfigError) as caught:
            loadConfig("listen: tcp:1\nlisten: tcp:2\n")
        self.assertIn("duplicate key 'listen'", str(caught.exception))
        self.assertIn("line 2", str(caught.exception))

    def test_badEndpoint(self) -> None:
        """
        An endpoint string Twisted cannot parse.
        """
        self.assertProblem("listen: tcp:eighty\n", "listen: invalid endpoint 'tcp:eighty': "
                           "invalid literal for int() with base 10: 'eighty'")

    def test_bareNumberEndpoint(self) -> None:
        """
        A bare port number gets a hint.
        """
        self.assertProblem("listen: '8080'\n", "listen: '8080' is not an endpoint (did you mean 'tcp:8080'?)")

    def test_bareNumberListen(self) -> None:
        """
        A bare port number written as a YAML number gets the same hint, in
        C{listen} and in C{admin.listen}.
        """
        self.assertProblem("listen: 8080\n", "listen: '8080' is not an endpoint (did you mean 'tcp:8080'?)")
        self.assertProblem("admin: {listen: [9090]}\n",
                           "admin.listen[0]: '9090' is not an endpoint (did you mean 'tcp:9090'?)")

    def test_badListenItem(self) -> None:
        """
        The index of the bad endpoint in a list.
        """
        self.assertProblem("listen: [tcp:1, 'foo:2']\n",
                           "listen[1]: invalid endpoint 'foo:2': Unknown endpoint type: 'foo'")

    def test_unknownProvider(self) -> None:
        """
        Only known providers.
        """
        self.assertProblem(
            LAB.replace("provider: openai", "provider: skynet"),
            "backends.openai-all-models.provider: unknown provider 'skynet' (known: openai, anthropic, gemini, azure-openai, bedrock)",
        )

    def test_twoSecretSources(self) -> None:
        """
        C{authToken} takes exactly one source.
        """
        self.assertProblem(
            LAB.replace("env: OPENAI_API_KEY", "env: OPENAI_API_KEY\n      value: x"),
            "backends.openai-all-models.authToken: must have exactly one of env, file, value, passthrough",
        )

    def test_pathAndPrefix(self) -> None:
        """
        A match takes exactly one of C{path} and C{pathPrefix}.
        """
        self.assertProblem(
            LAB.replace("pathPrefix: /openai", "pathPrefix: /openai\n      path: /x"),
            "routes[0].match: must have exactly one of path, pathPrefix",
        )

    def test_relativePath(self) -> None:
        """
        Paths start with a slash.
        """
        self.assertProblem(
            LAB.replace("pathPrefix: /openai", "pathPrefix: openai"),
            "routes[0].match.pathPrefix: must start with '/', not 'openai'",
        )

    def test_badMethod(self) -> None:
        """
        Unknown HTTP methods are refused.
        """
        self.assertProblem(
            LAB.replace("pathPrefix: /openai", "pathPrefix: /openai\n      methods: [FETCH]"),
            "routes[0].match.methods[0]: unknown HTTP method 'FETCH'",
        )

    def test_badUrl(self) -> None:
        """
        A backend URL must be http or https.
        """
        self.assertProblem(
            LAB.replace("provider: openai", "provider: openai\n    url: ftp://x"),
            "backends.openai-all-models.url: must be an http:// or https:// URL, not 'ftp://x'",
        )

    def test_yamlSyntax(self) -> None:
        """
        YAML syntax errors give the line and column.
        """
        with self.assertRaises(ConfigError) as caught:
            loadConfig("routes: [\n")
        self.assertIn("invalid YAML: line 2", str(caught.exception))

    def test_empty(self) -> None:
        """
        An empty file is an error, not a gateway that serves nothing.
        """
        self.assertProblem("", "the file is empty")

    def test_notMapping(self) -> None:
        """
        A document that is not a mapping.
        """
        self.assertProblem("- a\n", "must be a mapping, not a list")


class ValueTests(SynchronousTestCase):
    """
    Durations and sizes.
    """

    def test_durations(self) -> None:
        """
        Units and compound durations.
        """
        self.assertEqual(
            [parseDuration(d) for d in ("250ms", "30s", "5m", "1h", "1m30s", "1.5s")],
            [0.25, 30.0, 300.0, 3600.0, 90.0, 1.5],
        )

    def test_badDurations(self) -> None:
        """
        Bare numbers, negative values and unknown units are refused.
        """
        for bad in (5, "5", "-1s", "5 minutes", "", None, "1d"):
            self.assertRaises(ConfigError, parseDuration, bad, "x")

    def test_sizes(self) -> None:
        """
        Bytes and binary and decimal units.
        """
        self.assertEqual(
            [parseSize(s) for s in (1024, "512KiB", "10MiB", "1MB", "7")],
            [1024, 524288, 10485760, 1000000, 7],
        )

    def test_badSizes(self) -> None:
        """
        Zero, negatives, booleans and nonsense are refused.
        """
        for bad in (0, -1, True, "10 parsecs", "", 1.5):
            self.assertRaises(ConfigError, parseSize, bad, "x")


JWT = LAB + LAB_POLICY


class JWTConfigTests(SynchronousTestCase):
    """
    The C{jwt} section, gateway-wide and per route.
    """

    def test_gatewayPolicyOnEveryRoute(self) -> None:
        """
        The gateway-wide policy applies to routes that say nothing, with
        the documented defaults.
        """
        config = loadConfig(JWT)
        policy = config.routes[0].jwt
        self.assertIs(policy, config.jwt)
        self.assertEqual(policy.mode, "strict")
        provider = policy.providers[0]
        self.assertEqual((provider.issuer, provider.clockSkew, provider.requireExp), ("solo.io", 60.0, False))
        self.assertEqual((provider.jwks.kind, provider.jwks.key), ("local", LAB_PEM))
        self.assertEqual(policy.tokenFrom.header, "authorization")

    def test_routeOff(self) -> None:
        """
        C{jwt: off} on a route turns the policy off there.
        """
        config = loadConfig(JWT.replace("timeout: 120s", "timeout: 120s\n    jwt: off"))
        self.assertIsNone(config.routes[0].jwt)

    def test_keyText(self) -> None:
        """
        An inline key is kept as text, out of the repr: it is loaded (and
        refused) when the gateway is built.
        """
        config = loadConfig(JWT.replace(LAB_PEM.splitlines()[1], "garbage"))
        self.assertIn("garbage", config.jwt.providers[0].jwks.key)
        self.assertNotIn("garbage", repr(config))

    def test_keyRequired(self) -> None:
        """
        C{local} needs its C{key}.
        """
        with self.assertRaises(ConfigError) as caught:
            loadConfig(JWT[: JWT.index("        local:")] + "        local: {}\n")
        self.assertEqual(str(caught.exception), "jwt.providers.selfminted.jwks.local.key: is required")

    def test_badMode(self) -> None:
        """
        Only the three modes.
        """
        with self.assertRaises(ConfigError) as caught:
            loadConfig(JWT.replace("jwt:\n  providers:", "jwt:\n  mode: lax\n  providers:"))
        self.assertEqual(str(caught.exception), "jwt.mode: must be one of strict, optional, permissive, not 'lax'")

    def test_twoKeySources(self) -> None:
        """
        C{jwks} takes exactly one source.
        """
        with self.assertRaises(ConfigError) as caught:
            loadConfig(JWT.replace("      jwks:\n", "      jwks:\n        file: k.pem\n"))
        self.assertEqual(str(caught.exception),
                         "jwt.providers.selfminted.jwks: must have exactly one of local, file, remote")

    def test_remote(self) -> None:
        """
        A remote key set with its cache duration.
        """
        text = JWT[: JWT.index("        local:")] + (
            "        remote: {url: 'https://idp.example/jwks.json', cacheDuration: 10m}\n"
        )
        jwks = loadConfig(text).jwt.providers[0].jwks
        self.assertEqual((jwks.kind, jwks.url, jwks.cacheDuration), ("remote", "https://idp.example/jwks.json", 600.0))

    def test_tracing(self) -> None:
        """
        Tracing settings; collector headers stay out of the repr.
        """
        config = loadConfig(LAB + "tracing: {otlp: {endpoint: 'http://127.0.0.1:4318/v1/traces', "
                            "headers: {authorization: secret-token}}, sampleRatio: 0.5}\n")
        self.assertEqual(config.tracing.sampleRatio, 0.5)
        self.assertNotIn("secret-token", repr(config))
        with self.assertRaises(ConfigError) as caught:
            loadConfig(LAB + "tracing: {sampleRatio: 2}\n")
        self.assertEqual(str(caught.exception), "tracing.sampleRatio: must be a number from 0 to 1, not 2")


class PolicyConfigTests(SynchronousTestCase):
    """
    Authorization rules and rate limits are kept as written, with where
    they are in the file: they are compiled when the gateway is built.
    """

    def test_sources(self) -> None:
        """
        Each expression keeps its source and its field path, even one that
        would not compile.
        """
        config = loadConfig(
            LAB.replace("timeout: 120s", "timeout: 120s\n    authorization: {rules: [{allow: 'true'}, "
                        "{deny: 'jwt.team =='}]}\n    rateLimits: [{key: jwt.sub, tokens: {limit: 5, per: 1m}}]")
        )
        route = config.routes[0]
        self.assertEqual(
            [(r.kind, r.expression.source, r.expression.path, r.where) for r in route.authorization.rules],
            [("allow", "true", "routes[0].authorization.rules[0].allow", "rules[0]"),
             ("deny", "jwt.team ==", "routes[0].authorization.rules[1].deny", "rules[1]")],
        )
        [limit] = route.rateLimits
        self.assertEqual((limit.key.source, limit.key.path, limit.where),
                         ("jwt.sub", "routes[0].rateLimits[0].key", "routes[0].rateLimits[0]"))
        self.assertEqual((limit.requests, limit.tokens.limit, limit.tokens.per), (None, 5.0, 60.0))


class WorkersConfigTests(SynchronousTestCase):
    """
    C{workers}: how many processes serve, and what they cannot share.
    """

    LIMITED = ("backends: {b: {provider: openai, url: 'http://h'}}\nroutes:\n"
               "  - {name: a, match: {pathPrefix: /a}, backend: b}\n"
               "  - {name: r, match: {pathPrefix: /r}, backend: b, rateLimits: [{requests: {limit: 1, per: 1m}}]}\n")

    def test_values(self) -> None:
        """
        A number of 1 or more, or C{auto}; 1 by default.
        """
        self.assertEqual(loadConfig("{}").workers, 1)
        self.assertEqual(loadConfig("workers: 4").workers, 4)
        self.assertEqual(loadConfig("workers: auto").workers, "auto")
        for bad in ("0", "-1", "true", "2.5", "'2'", "many", "[2]"):
            with self.assertRaises(ConfigError) as caught:
                loadConfig(f"workers: {bad}")
            self.assertEqual(caught.exception.path, "workers")
            self.assertIn("must be a number of processes (1 or more) or auto", str(caught.exception))

    def test_count(self) -> None:
        """
        C{auto} is one worker per core, and at least one.
        """
        self.assertEqual([workerCount("auto", 8), workerCount("auto", None), workerCount(3, 8)], [8, 1, 3])

    def test_limitsNeedRedis(self) -> None:
        """
        More than one worker (or C{auto}) with a rate limit in memory is an
        error naming both fields; with C{state.redis}, or one worker, it
        is not.
        """
        for workers in ("2", "auto"):
            with self.assertRaises(ConfigError) as caught:
                loadConfig(f"workers: {workers}\n" + self.LIMITED)
            self.assertEqual(str(caught.exception),
                             f"workers: {workers} workers with routes[1].rateLimits need state.redis: buckets "
                             "in memory are not shared, so each worker would admit the whole limit")
        loadConfig("workers: 1\n" + self.LIMITED)
        loadConfig("workers: 2\nstate: {redis: {url: 'redis://127.0.0.1:6379/0'}}\n" + self.LIMITED)

    def test_sharedListeners(self) -> None:
        """
        Workers share TCP listeners; any other kind is an error with more
        than one worker.
        """
        loadConfig("workers: 2\nlisten: [tcp:8080, 'tcp6:8081:interface=\\:\\:1']")
        with self.assertRaises(ConfigError) as caught:
            loadConfig("workers: 2\nlisten: [tcp:8080, unix:/tmp/gw.sock]")
        self.assertEqual(str(caught.exception), "workers: 2 workers cannot share listen[1] 'unix:/tmp/gw.sock': "
                                                "they share tcp: and tcp6: listeners only")
        loadConfig("workers: 1\nlisten: unix:/tmp/gw.sock")

    def test_commandLine(self) -> None:
        """
        C{--workers} replaces the file's C{workers}, and its errors name
        C{--workers}.
        """
        from aigateway.app.configfile import ConfigFile

        files = {"/gw.yaml": self.LIMITED.encode()}
        with self.assertRaises(ConfigError) as caught:
            ConfigFile("/gw.yaml", files.__getitem__, workers=2).load()
        self.assertEqual(caught.exception.path, "--workers")
        config, _ = ConfigFile("/gw.yaml", {"/gw.yaml": b"workers: 3"}.__getitem__, workers=1).load()
        self.assertEqual(config.workers, 1)
