"""
Tests for L{aigateway.web.guard}: the JWT policy on routes, in memory, with
the lab's key and token.
"""

from __future__ import annotations

import json

from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from aigateway.config import ConfigError, loadConfig
from aigateway.testing.fakellm import FakeLLM
from aigateway.build import buildGateway
from tests.lab import ALICE_TOKEN, LAB_PEM, LAB_POLICY
from tests.memory import MemoryGateway

PEM_JSON = json.dumps(LAB_PEM)
CONFIG = f"""
backends:
  local: {{provider: openai, url: 'http://127.0.0.1:9000', authToken: {{value: sk-backend}}}}
routes:
  - {{name: strict, match: {{pathPrefix: /strict}}, backend: local}}
  - {{name: open, match: {{pathPrefix: /open}}, backend: local, jwt: off}}
  - name: optional
    match: {{pathPrefix: /optional}}
    backend: local
    jwt:
      mode: optional
      providers:
        lab: {{issuer: solo.io, jwks: {{local: {{key: {PEM_JSON}}}}}}}
  - name: permissive
    match: {{pathPrefix: /permissive}}
    backend: local
    jwt:
      mode: permissive
      providers:
        lab: {{issuer: solo.io, jwks: {{local: {{key: {PEM_JSON}}}}}}}
  - name: query
    match: {{pathPrefix: /query}}
    backend: local
    jwt:
      tokenFrom: {{queryParam: access_token, cookie: session}}
      providers:
        lab: {{issuer: solo.io, jwks: {{local: {{key: {PEM_JSON}}}}}}}
{LAB_POLICY}      claimsToHeaders: {{sub: x-user-id, llms.openai: x-user-models, team: x-team}}
"""
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
BAD_TOKEN = ALICE_TOKEN[:-4] + ("AAAA" if not ALICE_TOKEN.endswith("AAAA") else "BBBB")


class GuardTests(SynchronousTestCase):
    """
    Modes, responses and what reaches the provider.
    """

    def setUp(self) -> None:
        self.gateway = MemoryGateway(CONFIG, key="sk-backend")
        self.fakellm = self.gateway.fakellm

    def post(self, url: str, token: str | None = None, headers: dict | None = None):
        allHeaders = {"authorization": f"Bearer {token}"} if token is not None else {}
        allHeaders.update(headers or {})
        response, body = self.gateway.post(self, url, CHAT, allHeaders)
        return response, json.loads(body)

    def test_labToken(self) -> None:
        """
        The lab's token (no kid, no exp) gets a 200; the provider sees the
        backend's key, not the token, and the claims as headers.
        """
        response, body = self.post("/strict", ALICE_TOKEN, {"x-user-id": "mallory"})
        self.assertEqual(response.code, 200, body)
        seen = self.fakellm.requests[-1].headers
        self.assertEqual(seen["authorization"], "Bearer sk-backend")
        self.assertNotIn(ALICE_TOKEN, json.dumps(seen))
        self.assertEqual(seen["x-user-id"], "alice")
        self.assertEqual(seen["x-team"], "dev")
        self.assertEqual(json.loads(seen["x-user-models"]), ["gpt-3.5-turbo"])

    def test_missingToken(self) -> None:
        """
        No token: 401 with the bearer challenge and the reason.
        """
        response, body = self.post("/strict")
        self.assertEqual(response.code, 401)
        self.assertEqual(response.headers.getRawHeaders("www-authenticate"), ['Bearer realm="aigateway"'])
        self.assertEqual(body["error"]["message"], "authentication failure: no bearer token found")
        self.assertEqual(len(self.fakellm.requests), 0)

    def test_invalidToken(self) -> None:
        """
        A bad signature: 401 with C{invalid_token} and a short description,
        and no trace of the token in the answer.
        """
        response, body = self.post("/strict", BAD_TOKEN)
        self.assertEqual(response.code, 401)
        self.assertEqual(
            response.headers.getRawHeaders("www-authenticate"),
            ['Bearer realm="aigateway", error="invalid_token", '
             'error_description="signature verification failed"'],
        )
        self.assertEqual(body["error"]["message"], "authentication failure: signature verification failed")
        self.assertEqual(body["error"]["code"], "invalid_token")
        self.assertNotIn(BAD_TOKEN[-20:], json.dumps(body))

    def test_notBearer(self) -> None:
        """
        Basic credentials are no bearer token.
        """
        response, body = self.post("/strict", headers={"authorization": "Basic YTpi"})
        self.assertEqual(response.code, 401)
        self.assertIn("no bearer token found", body["error"]["message"])

    def test_nonAsciiToken(self) -> None:
        """
        Bytes no token has (here 0xff) are a malformed token, not a 500.
        """
        response, body = self.post("/strict", headers={"authorization": b"Bearer \xff\xfe"})
        self.assertEqual(response.code, 401)
        self.assertEqual(body["error"]["message"], "authentication failure: malformed token")

    def test_routeOff(self) -> None:
        """
        C{jwt: off} on a route.
        """
        response, _ = self.post("/open")
        self.assertEqual(response.code, 200)

    def test_optional(self) -> None:
        """
        Optional: no token passes, a bad one does not.
        """
        self.assertEqual(self.post("/optional")[0].code, 200)
        self.assertEqual(self.post("/optional", BAD_TOKEN)[0].code, 401)
        self.assertEqual(self.post("/optional", ALICE_TOKEN)[0].code, 200)

    def test_permissive(self) -> None:
        """
        Permissive never blocks, and a bad token still never reaches the
        provider.
        """
        self.assertEqual(self.post("/permissive")[0].code, 200)
        self.assertEqual(self.post("/permissive", BAD_TOKEN)[0].code, 200)
        self.assertEqual(self.fakellm.requests[-1].headers["authorization"], "Bearer sk-backend")

    def test_queryParameter(self) -> None:
        """
        A token in the query is used, and removed before the provider.
        """
        response, _ = self.post(f"/query/v1/chat/completions?access_token={ALICE_TOKEN}&x=1")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.fakellm.requests[-1].path, "/v1/chat/completions?x=1")

    def test_queryTokenNeverReachesProvider(self) -> None:
        """
        However the token's parameter is spelled or separated, the provider
        gets none of it, and the other parameters go as they came.
        """
        for query, upstream in [
            (f"access_token={ALICE_TOKEN}&x=1", "x=1"),
            (f"x=1;access_token={ALICE_TOKEN}", "x=1"),
            (f"%61ccess_token={ALICE_TOKEN}&y=a%3Bb", "y=a%3Bb"),
            (f"access%5Ftoken={ALICE_TOKEN}&x=1&z", "x=1&z"),
            (f"x=1&access_token={ALICE_TOKEN}&access_token={ALICE_TOKEN}", "x=1"),
        ]:
            response, _ = self.post("/query/v1/chat/completions?" + query)
            self.assertEqual(response.code, 200, query)
            self.assertEqual(self.fakellm.requests[-1].path, "/v1/chat/completions?" + upstream, query)
            self.assertNotIn(ALICE_TOKEN[-20:], self.fakellm.requests[-1].path)

    def test_queryTokenTwice(self) -> None:
        """
        Two different tokens in the query, one hidden behind a C{;} in
        another parameter's value, are refused: the gateway would judge one
        and a server that splits on C{;} would read the other.
        """
        for query in [
            f"x=1;access_token={BAD_TOKEN}&access_token={ALICE_TOKEN}",
            f"access_token={ALICE_TOKEN}&%61ccess_token={BAD_TOKEN}",
            f"access_token={ALICE_TOKEN};access_token=",
        ]:
            response, body = self.post("/query/v1/chat/completions?" + query)
            self.assertEqual(response.code, 401, query)
            self.assertEqual(body["error"]["code"], "invalid_token")

    def test_headerTokenTwice(self) -> None:
        """
        Two different Authorization headers are refused, not judged by one.
        """
        response, _ = self.post("/strict", headers={"authorization": [f"Bearer {BAD_TOKEN}",
                                                                      f"Bearer {ALICE_TOKEN}"]})
        self.assertEqual(response.code, 401)
        self.assertEqual(len(self.fakellm.requests), 0)

    def test_cookie(self) -> None:
        """
        A token in a cookie is used, and that cookie removed before the
        provider.
        """
        response, _ = self.post("/query", headers={"cookie": f"theme=dark; session={ALICE_TOKEN}"})
        self.assertEqual(response.code, 200)
        self.assertEqual(self.fakellm.requests[-1].headers["cookie"], "theme=dark")


class FailureStatusTests(SynchronousTestCase):
    """
    C{jwt.failureStatus: 403} answers every JWT refusal 403, at the gateway
    level and on a route's own policy; the default is 401.
    """

    def setUp(self) -> None:
        config = CONFIG.replace("\njwt:\n  providers:", "\njwt:\n  failureStatus: 403\n  providers:")
        config = config.replace("      mode: optional\n", "      mode: optional\n      failureStatus: 403\n")
        self.gateway = MemoryGateway(config, key="sk-backend")

    def post(self, url: str, token: str | None = None):
        headers = {"authorization": f"Bearer {token}"} if token is not None else {}
        response, body = self.gateway.post(self, url, CHAT, headers)
        return response, json.loads(body)

    def test_forbidden(self) -> None:
        """
        A missing and a bad token are 403, still with the bearer challenge
        (RFC 7235 lets a 403 carry it) and the same error words; a good
        token still passes.
        """
        response, body = self.post("/strict")
        self.assertEqual((response.code, body["error"]["code"]), (403, "missing_token"))
        self.assertEqual(response.headers.getRawHeaders("www-authenticate"), ['Bearer realm="aigateway"'])
        for path in ("/strict", "/optional"):
            response, body = self.post(path, BAD_TOKEN)
            self.assertEqual((response.code, body["error"]["message"]),
                             (403, "authentication failure: signature verification failed"), path)
            self.assertTrue(response.headers.getRawHeaders("www-authenticate")[0].startswith(
                'Bearer realm="aigateway", error="invalid_token"'))
        self.assertEqual(self.post("/strict", ALICE_TOKEN)[0].code, 200)

    def test_routeKeepsItsOwn(self) -> None:
        """
        A route with a policy of its own and no C{failureStatus} keeps the
        default 401.
        """
        self.assertEqual(self.post("/permissive")[0].code, 200)
        self.assertEqual(self.post("/query")[0].code, 401)

    def test_onlyTheTwo(self) -> None:
        """
        Anything but 401 or 403 is refused, naming the field.
        """
        for bad in ("402", "'403'", "true", "500"):
            with self.assertRaises(ConfigError) as caught:
                loadConfig(CONFIG.replace("\njwt:\n  providers:", f"\njwt:\n  failureStatus: {bad}\n  providers:"))
            self.assertTrue(str(caught.exception).startswith("jwt.failureStatus: must be 401 or 403, not "),
                            str(caught.exception))


class KeyFileTests(SynchronousTestCase):
    """
    Keys from a file named in the configuration.
    """

    CONFIG = """
backends:
  local: {provider: openai, url: 'http://127.0.0.1:9000'}
routes:
  - {name: r, match: {pathPrefix: /r}, backend: local}
jwt:
  providers:
    lab: {issuer: solo.io, jwks: {file: keys/lab.pem}}
"""

    def test_keyFile(self) -> None:
        """
        The file's keys verify the lab's token.
        """
        clock = Clock()
        files = {"keys/lab.pem": LAB_PEM.encode()}
        upstream = RequestTraversalAgent(FakeLLM(clock))
        root = buildGateway(loadConfig(self.CONFIG), upstream, clock, {}, files.__getitem__).root
        client = StubTreq(root)
        d = client.post("http://gw/r", json.dumps(CHAT).encode(),
                        headers={"authorization": f"Bearer {ALICE_TOKEN}"})
        upstream.flush()
        client.flush()
        self.assertEqual(self.successResultOf(d).code, 200)

    def test_missingFile(self) -> None:
        """
        A key file that cannot be read is a configuration error naming the
        field and the file.
        """

        def missing(path: str) -> bytes:
            raise FileNotFoundError(2, "No such file or directory")

        with self.assertRaises(ConfigError) as caught:
            buildGateway(loadConfig(self.CONFIG), None, Clock(), {}, missing)
        self.assertEqual(
            str(caught.exception),
            "jwt.providers.lab.jwks.file: cannot read keys/lab.pem: No such file or directory",
        )
