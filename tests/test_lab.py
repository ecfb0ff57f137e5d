"""
The user's lab, end to end with real processes: a route to the fake LLM
behind the lab's JWT policy (its PEM key, issuer C{solo.io}), the lab's
requests (no token, C{ALICE_TOKEN}, and a stream), and the traces they
leave, received by an OTLP/HTTP collector of the test's own.
"""

from __future__ import annotations

import json
import time

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.lab import ALICE_TOKEN, CHAT, LAB_PEM, LAB_POLICY
from tests.processes import startFakeLLM, startGateway, writeFile

CONFIG = """
listen: tcp:0:interface=127.0.0.1
admin:
  listen: tcp:0:interface=127.0.0.1
backends:
  openai-all-models:
    provider: openai
    url: http://127.0.0.1:{fakellm}
    authToken: {{value: sk-lab}}
routes:
  - name: openai
    match: {{pathPrefix: /openai}}
    backend: openai-all-models
    timeout: 120s
{policy}tracing:
  otlp: {{endpoint: "http://127.0.0.1:{collector}/v1/traces"}}
  captureContent: true
  legacyAttributes: true
"""


class _Collector(Resource):
    """
    An OTLP/HTTP trace receiver: decodes each export request's protobuf.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.spans: list = []

    def render_POST(self, request) -> bytes:
        message = ExportTraceServiceRequest()
        message.ParseFromString(request.content.read())
        for resourceSpans in message.resource_spans:
            for scopeSpans in resourceSpans.scope_spans:
                self.spans.extend(scopeSpans.spans)
        request.setHeader(b"content-type", b"application/x-protobuf")
        return ExportTraceServiceResponse().SerializeToString()


def _attributes(span) -> dict:
    values = {}
    for kv in span.attributes:
        v = kv.value
        kind = v.WhichOneof("value")
        if kind == "array_value":
            values[kv.key] = [getattr(x, x.WhichOneof("value")) for x in v.array_value.values]
        else:
            values[kv.key] = getattr(v, kind)
    return values


class LabTests(TestCase):
    """
    The lab's walk-through against real processes.
    """

    async def setUp(self) -> None:
        self.collector = _Collector()
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(self.collector))
        self.addCleanup(port.stopListening)
        fakellm = startFakeLLM(self, "sk-lab")
        config = CONFIG.format(fakellm=fakellm.ports[0], collector=port.getHost().port, policy=LAB_POLICY)
        self.gateway = startGateway(self, writeFile(self, config))
        self.url = f"http://127.0.0.1:{self.gateway.ports[0]}/openai"
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.treq = HTTPClient(Agent(reactor, pool=pool))

    async def spans(self, count: int) -> list:
        deadline = time.monotonic() + 20
        while len(self.collector.spans) < count and time.monotonic() < deadline:
            await deferLater(reactor, 0.1, lambda: None)
        return self.collector.spans

    async def test_walkThrough(self) -> None:
        """
        No token: 401.  ALICE_TOKEN (RS256, no kid, no exp): 200.  A stream
        with the token: 200 with usage.  The traces show the refusal with
        its reason, and the GenAI data of both answers.
        """
        response = await self.treq.post(self.url, json=CHAT)
        self.assertEqual(response.code, 401)
        body = await response.json()
        self.assertEqual(body["error"]["message"], "authentication failure: no bearer token found")
        self.assertEqual(response.headers.getRawHeaders("www-authenticate"), ['Bearer realm="aigateway"'])

        auth = {"authorization": f"Bearer {ALICE_TOKEN}"}
        response = await self.treq.post(self.url, json=CHAT, headers=auth)
        self.assertEqual(response.code, 200, await response.text())
        self.assertEqual((await response.json())["object"], "chat.completion")

        response = await self.treq.post(self.url, json=dict(CHAT, stream=True), headers=auth,
                                        unbuffered=True)
        self.assertEqual(response.code, 200)
        text = await response.content()
        self.assertIn(b"[DONE]", text)

        spans = await self.spans(5)
        servers = [s for s in spans if s.kind == s.SPAN_KIND_SERVER]
        clients = [s for s in spans if s.kind == s.SPAN_KIND_CLIENT]
        self.assertEqual((len(servers), len(clients)), (3, 2))
        statuses = sorted(_attributes(s)["http.response.status_code"] for s in servers)
        self.assertEqual(statuses, [200, 200, 401])
        refused = next(s for s in servers if _attributes(s)["http.response.status_code"] == 401)
        self.assertEqual(_attributes(refused)["error"], "authentication failure: no bearer token found")
        self.assertEqual(refused.name, "POST openai")
        served = [_attributes(s) for s in servers if _attributes(s)["http.response.status_code"] == 200]
        self.assertEqual([a["enduser.id"] for a in served], ["alice", "alice"])
        for span in clients:
            a = _attributes(span)
            self.assertEqual(span.name, "chat gpt-4o-mini")
            self.assertEqual(a["gen_ai.request.model"], "gpt-4o-mini")
            self.assertEqual(a["llm.request.model"], "gpt-4o-mini")
            self.assertEqual(a["gen_ai.usage.input_tokens"], 4)
            self.assertEqual(a["llm.request.tokens"], 4)
            self.assertEqual(a["gen_ai.usage.output_tokens"], 8)
            self.assertIn("favorite poem", a["gen_ai.prompt"])
            self.assertTrue(a["gen_ai.completion"].startswith("Shall I compare"))
        self.assertNotIn(ALICE_TOKEN.encode(), b"".join(s.SerializeToString() for s in spans))

        metrics = await self.treq.get(f"http://127.0.0.1:{self.gateway.ports[1]}/metrics")
        text = (await metrics.content()).decode()
        self.assertIn('aigateway_requests_total{route="openai",status="200"} 2.0', text)
        self.assertIn('aigateway_auth_failures_total{reason="no bearer token found",route="openai"} 1.0', text)
        self.assertIn('gen_ai_token_type="output"', text)


class SpansAtStopTests(TestCase):
    """
    The spans of the last requests reach the collector when the gateway is
    stopped.
    """

    async def test_sentOnStop(self) -> None:
        """
        SIGTERM right after an answer: the gateway sends its two spans
        before it exits, rather than dropping them with the process.
        """
        collector = _Collector()
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(collector))
        self.addCleanup(port.stopListening)
        fakellm = startFakeLLM(self, "sk-lab")
        config = CONFIG.format(fakellm=fakellm.ports[0], collector=port.getHost().port, policy=LAB_POLICY)
        gateway = startGateway(self, writeFile(self, config))
        client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        response = await client.post(f"http://127.0.0.1:{gateway.ports[0]}/openai", json=CHAT,
                                     headers={"authorization": f"Bearer {ALICE_TOKEN}"})
        self.assertEqual(response.code, 200)
        await response.content()
        self.assertEqual(collector.spans, [])
        gateway.process.terminate()
        deadline = time.monotonic() + 20
        while gateway.process.poll() is None and time.monotonic() < deadline:
            await deferLater(reactor, 0.05, lambda: None)
        from opentelemetry.proto.trace.v1.trace_pb2 import Span

        self.assertEqual(sorted(span.kind for span in collector.spans),
                         [Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT])


class _KeySetServer(Resource):
    """
    An issuer's JWKS URL that is down until the test says otherwise.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.document: bytes | None = None
        self.hits = 0

    def render_GET(self, request) -> bytes:
        self.hits += 1
        if self.document is None:
            request.setResponseCode(503)
            return b"starting"
        request.setHeader(b"content-type", b"application/json")
        return self.document


class RemoteKeySetTests(TestCase):
    """
    A remote JWKS, fetched with treq by the real gateway.
    """

    async def test_downThenUp(self) -> None:
        """
        While the key set URL is down the gateway is not ready and tokens
        get 401; once it answers, C{/readyz} is 200 and the token passes.
        """
        from aigateway.auth.token import publicJWK

        keys = _KeySetServer()
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(keys))
        self.addCleanup(port.stopListening)
        fakellm = startFakeLLM(self)
        path = writeFile(
            self,
            "listen: tcp:0:interface=127.0.0.1\nadmin: {listen: tcp:0:interface=127.0.0.1}\n"
            f"backends: {{local: {{provider: openai, url: 'http://127.0.0.1:{fakellm.ports[0]}'}}}}\n"
            "routes: [{name: local, match: {pathPrefix: /local}, backend: local}]\n"
            "jwt: {providers: {idp: {issuer: solo.io, jwks: {remote: "
            f"{{url: 'http://127.0.0.1:{port.getHost().port}/jwks.json', cacheDuration: 1s}}}}}}}}}}\n",
        )
        gateway = startGateway(self, path)
        client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        ready = f"http://127.0.0.1:{gateway.ports[1]}/readyz"
        url = f"http://127.0.0.1:{gateway.ports[0]}/local"
        auth = {"authorization": f"Bearer {ALICE_TOKEN}"}

        response = await client.get(ready)
        self.assertEqual(response.code, 503)
        self.assertIn("/jwks.json", (await response.json())["pending"][0])
        response = await client.post(url, json=CHAT, headers=auth)
        self.assertEqual(response.code, 401)
        self.assertEqual((await response.json())["error"]["message"],
                         "authentication failure: no keys available")

        keys.document = json.dumps({"keys": [publicJWK(LAB_PEM)]}).encode()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            response = await client.get(ready)
            await response.content()
            if response.code == 200:
                break
            await deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(response.code, 200)
        response = await client.post(url, json=CHAT, headers=auth)
        self.assertEqual(response.code, 200)
        await response.content()
        self.assertGreaterEqual(keys.hits, 2)
