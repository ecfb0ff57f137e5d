"""
Tests for L{aigateway.build}: where the CEL expressions and keys a
configuration describes are compiled and loaded, and the layering that
keeps L{aigateway.config} pure data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from aigateway.build import buildGateway
from aigateway.config import ConfigError, loadConfig
from tests.lab import LAB_PEM, LAB_POLICY
from tests.processes import REPO

BASE = (
    "backends: {local: {provider: openai, url: 'http://127.0.0.1:9000'}}\n"
    "routes:\n  - {name: r, match: {pathPrefix: /r}, backend: local%s}\n"
)
BAD_POLICY = LAB_POLICY.replace(LAB_PEM.splitlines()[1], "garbage")
ROUTE_KEY = ", jwt: {providers: {q: {issuer: y, jwks: {local: {key: 'not a key'}}}}}"


def _build(text: str):
    return buildGateway(loadConfig(text), None, Clock(), {})


class LayerTests(SynchronousTestCase):
    """
    Imports point one way: the configuration needs no other layer.
    """

    def test_configImportsNoOtherLayer(self) -> None:
        """
        Importing L{aigateway.config} in a fresh interpreter, and loading a
        configuration with rules, limits and keys, loads no other part of
        the gateway (web, auth, llm, http, observe...).
        """
        text = (
            BASE % ", rateLimits: [{key: jwt.sub, requests: {limit: 1, per: 1m}}]"
            + "authorization: {rules: [{allow: 'true'}]}\n" + LAB_POLICY
        )
        script = (
            "import json, sys, aigateway.config\n"
            "aigateway.config.loadConfig(sys.stdin.read())\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('aigateway'))))\n"
        )
        output = subprocess.check_output(
            [sys.executable, "-c", script], input=text.encode(), env=dict(os.environ, PYTHONPATH=REPO),
            cwd=REPO,
        )
        loaded = json.loads(output)
        self.assertIn("aigateway.config.parse", loaded)
        self.assertEqual(
            [m for m in loaded if m != "aigateway" and not m.startswith("aigateway.config")], []
        )


class BuildErrorTests(SynchronousTestCase):
    """
    A configuration that loads can still fail to build: a CEL expression
    that does not compile, or an inline key that does not load, is a
    L{ConfigError} naming its field.
    """

    def assertProblem(self, text: str, expected: str) -> None:
        config = loadConfig(text)
        with self.assertRaises(ConfigError) as caught:
            buildGateway(config, None, Clock(), {})
        self.assertEqual(str(caught.exception), expected)

    def test_gatewayRule(self) -> None:
        """
        A gateway-wide rule that does not parse, with the line and column.
        """
        self.assertProblem(
            BASE % "" + "authorization: {rules: [{allow: 'true'}, {deny: 'jwt.team =='}]}\n",
            "authorization.rules[1].deny: not a valid CEL expression (line 1, column 12): Syntax error: "
            "mismatched input '<EOF>' expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', "
            "NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER}",
        )

    def test_routeRule(self) -> None:
        """
        A route's rule that reads an unknown variable.
        """
        self.assertProblem(
            BASE % ", authorization: {rules: [{require: 'nope.x'}]}",
            "routes[0].authorization.rules[0].require: unknown variable 'nope' "
            "(known: jwt, llm, request, route)",
        )

    def test_limitKey(self) -> None:
        """
        A rate limit's key that does not parse.
        """
        with self.assertRaises(ConfigError) as caught:
            _build(BASE % ", rateLimits: [{key: 'jwt.sub +', requests: {limit: 1, per: 1m}}]")
        self.assertEqual(caught.exception.path, "routes[0].rateLimits[0].key")
        self.assertTrue(caught.exception.problem.startswith("not a valid CEL expression (line 1, column 10)"))

    def test_gatewayKey(self) -> None:
        """
        A gateway-wide key that does not load.
        """
        self.assertProblem(
            BASE % "" + BAD_POLICY,
            "jwt.providers.selfminted.jwks.local.key: PEM block 1 (PUBLIC KEY) is not a valid key",
        )

    def test_routeKey(self) -> None:
        """
        A route's own key that is not key material at all.
        """
        self.assertProblem(
            BASE % ROUTE_KEY,
            "routes[0].jwt.providers.q.jwks.local.key: "
            "the key material is neither PEM, a JWKS document nor a JWK",
        )

    def test_unusedGatewaySections(self) -> None:
        """
        Gateway-wide rules and keys are checked even when every route turns
        them off.
        """
        self.assertProblem(
            BASE % ", authorization: off" + "authorization: {rules: [{require: 'user.x'}]}\n",
            "authorization.rules[0].require: unknown variable 'user' (known: jwt, llm, request, route)",
        )
        self.assertProblem(
            BASE % ", jwt: off" + BAD_POLICY,
            "jwt.providers.selfminted.jwks.local.key: PEM block 1 (PUBLIC KEY) is not a valid key",
        )

    def test_documentOrder(self) -> None:
        """
        Of several broken fields, the first in the file is reported: a
        route's keys, then its rules, then its limits.
        """
        rules = ", authorization: {rules: [{require: 'nope.x'}]}"
        limits = ", rateLimits: [{key: 'jwt.sub +', requests: {limit: 1, per: 1m}}]"
        self.assertProblem(
            BASE % (rules + limits + ROUTE_KEY),
            "routes[0].jwt.providers.q.jwks.local.key: "
            "the key material is neither PEM, a JWKS document nor a JWK",
        )
        self.assertProblem(
            BASE % (limits + rules),
            "routes[0].authorization.rules[0].require: unknown variable 'nope' "
            "(known: jwt, llm, request, route)",
        )

    def test_compiledOnce(self) -> None:
        """
        Rules and limits that are fine build; the gateway-wide rules are
        compiled once for all the routes that take them.
        """
        text = (
            "backends: {local: {provider: openai, url: 'http://127.0.0.1:9000'}}\nroutes:\n"
            "  - {name: a, match: {pathPrefix: /a}, backend: local}\n"
            "  - {name: b, match: {pathPrefix: /b}, backend: local,"
            " rateLimits: [{key: jwt.sub, requests: {limit: 1, per: 1m}}]}\n"
            "authorization: {rules: [{require: 'jwt.sub != \"\"'}]}\n"
        )
        table = _build(text).root

        def policy(path: bytes):
            request = DummyRequest([path])
            request.path = path
            return table.find(request)[1].policy

        a, b = policy(b"/a"), policy(b"/b")
        self.assertIs(a.rules[0].expression, b.rules[0].expression)
        self.assertEqual([(r.kind, r.expression.source, r.where) for r in a.rules],
                         [("require", 'jwt.sub != ""', "rules[0]")])
        self.assertEqual([(l.key.source, l.key.path, l.requests.limit, l.where) for l in b.limits],
                         [("jwt.sub", ("jwt", "sub"), 1.0, "routes[1].rateLimits[0]")])
