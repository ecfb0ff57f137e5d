"""
Tests for L{aigateway.web.policy}: claim-based authorization and rate limits,
on the lab's token and through the gateway in memory.
"""

from __future__ import annotations

import json

from prometheus_client import generate_latest
from twisted.trial.unittest import SynchronousTestCase

from aigateway.build import compileRules
from aigateway.config import ConfigError, loadConfig
from aigateway.config import Bucket
from aigateway.state.memory import MemoryBuckets
from aigateway.web.policy import Variables, compileExpression
from aigateway.auth.token import sign
from tests.lab import ALICE_TOKEN, LAB_POLICY, indented
from tests.memory import MemoryGateway
from tests.test_jwt import RSA_KEY, _pem

USERS_POLICY = (
    "jwt:\n  providers:\n    users:\n      issuer: users.example\n"
    "      jwks:\n        local:\n          key: |\n" + indented(_pem(RSA_KEY), 12) + "\n"
)


def _token(sub: str) -> str:
    return sign({"iss": "users.example", "sub": sub, "team": "dev"}, RSA_KEY)


class _Gateway(MemoryGateway):
    def __init__(self, routes: str, policy: str = LAB_POLICY) -> None:
        super().__init__(
            "backends: {local: {provider: openai, url: 'http://127.0.0.1:9000'}}\nroutes:\n"
            + routes + policy
        )

    def ask(self, case: SynchronousTestCase, token: str, model: str = "gpt-3.5-turbo",
            stream: bool = False):
        body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "one two three four"}]}
        return self.post(case, "/r", body, {"authorization": f"Bearer {token}"})


ROUTE = "  - {{name: r, match: {{pathPrefix: /r}}, backend: local{extra}}}\n"


class LabRuleTests(SynchronousTestCase):
    """
    The lab's token against a rule on the requested model.
    """

    def setUp(self) -> None:
        self.gateway = _Gateway(
            ROUTE.format(extra=", authorization: {rules: [{require: 'llm.requestModel in jwt.llms.openai'}]}")
        )

    def test_allowedModel(self) -> None:
        """
        Alice may use gpt-3.5-turbo.
        """
        response, _ = self.gateway.ask(self, ALICE_TOKEN, "gpt-3.5-turbo")
        self.assertEqual(response.code, 200)

    def test_otherModel(self) -> None:
        """
        Alice may not use gpt-4o-mini: 403, authorization failed, and the
        provider never hears of it.
        """
        response, body = self.gateway.ask(self, ALICE_TOKEN, "gpt-4o-mini")
        self.assertEqual(response.code, 403)
        error = json.loads(body)["error"]
        self.assertEqual(error["message"], "authorization failed: rules[0] (require) does not hold")
        self.assertEqual((error["type"], error["code"]), ("permission_error", "authorization_failed"))
        self.assertEqual(len(self.gateway.fakellm.requests), 0)
        text = generate_latest(self.gateway.metrics.registry).decode()
        self.assertIn('aigateway_auth_failures_total{reason="authorization failed",route="r"} 1.0', text)


def _variables(claims: dict, model: str = "gpt-4o", method: str = "POST") -> Variables:
    return Variables({
        "jwt": lambda: claims,
        "request": lambda: {"method": method, "path": "/r", "headers": {"x-team": "dev"}},
        "llm": lambda: {"requestModel": model, "stream": False, "provider": "openai"},
        "route": lambda: {"name": "r"},
    })


class RuleTests(SynchronousTestCase):
    """
    Rule semantics, on the policy alone.
    """

    def policy(self, rules: str):
        from aigateway.web.policy import RoutePolicy

        config = loadConfig("backends: {}\nauthorization: {rules: [" + rules + "]}\n")
        return RoutePolicy("r", compileRules(config.authorization), (), MemoryBuckets())

    def verdict(self, rules: str, claims: dict, **kwargs) -> str:
        refusal = self.policy(rules).authorize(_variables(claims, **kwargs))
        return "pass" if refusal is None else refusal.message

    def test_deny(self) -> None:
        """
        A matching deny refuses, whatever the allows say.
        """
        rules = "{allow: 'true'}, {deny: 'jwt.team == \"ops\"'}"
        self.assertEqual(self.verdict(rules, {"team": "ops"}), "authorization failed: rules[1] (deny) matched")
        self.assertEqual(self.verdict(rules, {"team": "dev"}), "pass")

    def test_require(self) -> None:
        """
        A require that does not hold refuses.
        """
        rules = "{require: 'request.method == \"POST\"'}"
        self.assertEqual(self.verdict(rules, {}), "pass")
        self.assertEqual(self.verdict(rules, {}, method="GET"),
                         "authorization failed: rules[0] (require) does not hold")

    def test_allow(self) -> None:
        """
        With allow rules, one must match.
        """
        rules = "{allow: 'jwt.team == \"dev\"'}, {allow: 'request.headers[\"x-team\"] == \"ops\"'}"
        self.assertEqual(self.verdict(rules, {"team": "dev"}), "pass")
        self.assertEqual(self.verdict(rules, {"team": "qa"}), "authorization failed: no allow rule matched")

    def test_headersReadOnlyWhenNamed(self) -> None:
        """
        The request's headers are read for a policy whose expressions name
        them, and only then.
        """
        reads = []

        def headers() -> dict:
            reads.append(1)
            return {"x-team": "ops"}

        def verdict(rules: str) -> str:
            policy = self.policy(rules)
            variables = policy.variables({"team": "qa"}, "POST", "/r", headers, "gpt-4o", False, "openai")
            refusal = policy.authorize(variables)
            return "pass" if refusal is None else refusal.message

        self.assertEqual(verdict("{allow: 'jwt.team == \"dev\"'}, {allow: 'request.headers[\"x-team\"] == \"ops\"'}"),
                         "pass")
        self.assertEqual(len(reads), 1)
        self.assertEqual(verdict("{allow: 'jwt.team == \"qa\"'}, {require: 'request.method == \"POST\"'}"), "pass")
        self.assertEqual(len(reads), 1)

    def test_sameTokenManyRequests(self) -> None:
        """
        Requests with the same token's claims, one after another, are each
        judged on their own model and method.
        """
        policy = self.policy("{require: 'llm.requestModel in jwt.llms.openai'}, {deny: 'request.method == \"GET\"'}")
        claims = {"llms": {"openai": ["gpt-4o"]}}
        other = {"llms": {"openai": ["o1"]}}

        def verdict(claims: dict, model: str, method: str = "POST") -> str:
            variables = policy.variables(claims, method, "/r", dict, model, False, "openai")
            refusal = policy.authorize(variables)
            return "pass" if refusal is None else refusal.message

        self.assertEqual(
            [verdict(claims, "gpt-4o"), verdict(claims, "o1"), verdict(other, "o1"), verdict(claims, "gpt-4o"),
             verdict(claims, "gpt-4o", "GET"), verdict(other, "gpt-4o")],
            ["pass", "authorization failed: rules[0] (require) does not hold", "pass", "pass",
             "authorization failed: rules[1] (deny) matched",
             "authorization failed: rules[0] (require) does not hold"],
        )

    def test_decisionsRemembered(self) -> None:
        """
        The same token's claims with the same request values get the
        decision made the first time without the rules being run again;
        other values, other claims objects and rules that read headers are
        judged afresh, and only the last C{decisionsKept} decisions are kept.
        """
        runs = []
        context = Variables.context

        def counted(variables: Variables):
            if variables._context is None:
                runs.append(1)
            return context(variables)

        self.patch(Variables, "context", counted)
        policy = self.policy("{require: 'llm.requestModel in jwt.llms.openai'}")
        policy.decisionsKept = 2
        claims = {"llms": {"openai": ["gpt-4o"]}}

        def verdict(claims: dict, model: str, policy=policy) -> str:
            refusal = policy.authorize(policy.variables(claims, "POST", "/r", dict, model, False, "openai"))
            return "pass" if refusal is None else "refused"

        self.assertEqual([verdict(claims, "gpt-4o"), verdict(claims, "gpt-4o"), verdict(claims, "o1"),
                          verdict(claims, "o1")], ["pass", "pass", "refused", "refused"])
        self.assertEqual(len(runs), 2)
        self.assertEqual(verdict(dict(claims), "gpt-4o"), "pass")
        self.assertEqual(len(runs), 3)
        self.assertEqual(verdict(claims, "gpt-4o"), "pass")
        self.assertEqual(len(runs), 4)
        headers = self.policy("{require: 'llm.requestModel in jwt.llms.openai'}, "
                              "{deny: 'request.headers[\"x-team\"] == \"ops\"'}")
        self.assertEqual([verdict(claims, "gpt-4o", headers), verdict(claims, "gpt-4o", headers)],
                         ["pass", "pass"])
        self.assertEqual(len(runs), 6)

    def test_missingClaim(self) -> None:
        """
        A missing claim makes a rule false: a require refuses, a deny does
        not match, an allow does not match.
        """
        self.assertEqual(self.verdict("{require: 'jwt.llms.openai.size() > 0'}", {}),
                         "authorization failed: rules[0] (require) does not hold")
        self.assertEqual(self.verdict("{deny: 'jwt.banned == true'}", {}), "pass")
        self.assertEqual(self.verdict("{allow: 'jwt.admin == true'}", {}),
                         "authorization failed: no allow rule matched")

    def test_brokenExpression(self) -> None:
        """
        Syntax errors and unknown variables are config errors naming the rule.
        """
        for rule, message in (
            ("{deny: 'jwt.team =='}", "authorization.rules[0].deny: not a valid CEL expression (line 1, column 12)"),
            ("{allow: 'user.name == \"x\"'}", "authorization.rules[0].allow: unknown variable 'user'"),
            ("{allow: 'true', deny: 'false'}", "authorization.rules[0]: must have exactly one of allow, deny, require"),
        ):
            with self.assertRaises(ConfigError) as caught:
                self.policy(rule)
            self.assertTrue(str(caught.exception).startswith(message), str(caught.exception))

    def test_compiledOnce(self) -> None:
        """
        An expression knows the variables it reads, so only those are built.
        """
        self.assertEqual(compileExpression("llm.requestModel in jwt.llms.openai").variables,
                         frozenset({"llm", "jwt"}))


LIMITED = ROUTE.format(extra=", rateLimits: [{key: jwt.sub, requests: {limit: 2, per: 1m}}]")
TOKENS = ROUTE.format(extra=", rateLimits: [{key: jwt.sub, tokens: {limit: 20, per: 1m}}]")


class RequestLimitTests(SynchronousTestCase):
    """
    Request budgets, with a fake clock.
    """

    def test_limitAndRefill(self) -> None:
        """
        Two requests a minute: the third is a 429 that says when to retry;
        after that long it passes.
        """
        gateway = _Gateway(LIMITED, USERS_POLICY)
        alice = _token("alice")
        self.assertEqual([gateway.ask(self, alice)[0].code for _ in range(2)], [200, 200])
        response, body = gateway.ask(self, alice)
        self.assertEqual(response.code, 429)
        self.assertEqual(response.phrase, b"Too Many Requests")
        headers = {name: response.headers.getRawHeaders(name)[0]
                   for name in ("retry-after", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")}
        self.assertEqual(headers, {"retry-after": "30", "x-ratelimit-limit": "2",
                                   "x-ratelimit-remaining": "0", "x-ratelimit-reset": "60"})
        self.assertEqual(json.loads(body)["error"]["type"], "rate_limit_error")
        gateway.clock.advance(29)
        self.assertEqual(gateway.ask(self, alice)[0].code, 429)
        gateway.clock.advance(1)
        self.assertEqual(gateway.ask(self, alice)[0].code, 200)
        text = generate_latest(gateway.metrics.registry).decode()
        self.assertIn('aigateway_requests_total{route="r",status="429"} 2.0', text)

    def test_usersApart(self) -> None:
        """
        One user's load does not touch another user's bucket.
        """
        gateway = _Gateway(LIMITED, USERS_POLICY)
        alice, bob = _token("alice"), _token("bob")
        codes = [gateway.ask(self, alice)[0].code for _ in range(5)]
        self.assertEqual(codes, [200, 200, 429, 429, 429])
        self.assertEqual([gateway.ask(self, bob)[0].code for _ in range(2)], [200, 200])

    def test_sharedBucketWithoutKey(self) -> None:
        """
        Requests without the key's value share one bucket.
        """
        gateway = _Gateway(ROUTE.format(extra=", jwt: off, rateLimits: [{key: jwt.sub, requests: {limit: 1, per: 1m}}]"))
        self.assertEqual([gateway.ask(self, "none")[0].code for _ in range(2)], [200, 429])


class TokenLimitTests(SynchronousTestCase):
    """
    Token budgets: checked before the call, charged with real usage after.
    """

    def test_streamCharges(self) -> None:
        """
        A streamed answer's usage (4 in, 8 out) is charged, though the
        client did not ask to see it: 20 tokens a minute allow two such
        answers, then refuse until enough refills.
        """
        gateway = _Gateway(TOKENS, USERS_POLICY)
        alice = _token("alice")
        response, body = gateway.ask(self, alice, stream=True)
        self.assertEqual(response.code, 200)
        self.assertNotIn(b'"usage"', body)
        self.assertTrue(body.endswith(b"data: [DONE]\n\n"))
        self.assertEqual(gateway.ask(self, alice, stream=True)[0].code, 200)
        response, _ = gateway.ask(self, alice, stream=True)
        self.assertEqual(response.code, 429)
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["15"])
        gateway.clock.advance(15)
        self.assertEqual(gateway.ask(self, alice)[0].code, 200)


class BucketTests(SynchronousTestCase):
    """
    L{MemoryBuckets}.
    """

    def test_refillCapped(self) -> None:
        """
        A bucket refills at its rate up to its limit.
        """
        store = MemoryBuckets()
        bucket = Bucket(limit=10, per=10)
        self.assertEqual(store.take("a", bucket, 10, now=0), 0)
        self.assertEqual(store.level("a", bucket, now=4), 4)
        self.assertEqual(store.level("a", bucket, now=100), 10)

    def test_bounded(self) -> None:
        """
        Past its capacity the store forgets the least recently used bucket.
        """
        store = MemoryBuckets(capacity=2)
        bucket = Bucket(limit=1, per=60)
        for name in "abc":
            store.take(name, bucket, 1, now=0)
        self.assertEqual(store.level("a", bucket, now=0), 1)
        self.assertEqual(store.level("c", bucket, now=0), 0)
