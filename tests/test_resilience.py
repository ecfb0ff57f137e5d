"""
Routes with several backends: failover before the first byte, retries
where the upstream cannot have acted, routing by model, weights and
ejection, in memory on a fake clock.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from treq import collect
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI

from aigateway.build import buildGateway
from aigateway.config import loadConfig
from aigateway.observe.report import Metrics, Telemetry
from aigateway.testing.fakellm import FakeLLM

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}


class _Agent:
    """
    Upstreams by host name: C{refuse} refuses connections, C{hang} never
    answers, C{s503}/C{s429}/C{s500} answer with that status, any other host
    is the fake LLM.
    """

    def __init__(self, clock: Clock) -> None:
        self.fakellm = FakeLLM(clock)
        self.upstream = RequestTraversalAgent(self.fakellm)
        self.hosts: list[str] = []
        self.hanging: list[Deferred] = []

    def request(self, method, uri, headers=None, bodyProducer=None):
        host = URI.fromBytes(uri).host.decode()
        self.hosts.append(host)
        if host == "refuse":
            return fail(ConnectionRefusedError())
        if host == "reset":
            from twisted.python.failure import Failure
            from twisted.internet.error import ConnectionLost
            from twisted.web.client import ResponseFailed
            return fail(ResponseFailed([Failure(ConnectionLost())]))
        if host == "hang":
            d: Deferred = Deferred()
            self.hanging.append(d)
            return d
        if host.startswith("s") and host[1:].isdigit():
            headers = headers.copy()
            headers.setRawHeaders(b"x-fakellm-status", [host[1:].encode()])
        return self.upstream.request(method, uri, headers, bodyProducer)


def _config(backends: str, route: str) -> str:
    return f"""
listen: tcp:0
backends:
{backends}
routes:
  - name: r
    match: {{pathPrefix: /r}}
{route}
"""


BACKENDS = "\n".join(
    f"  {name}: {{provider: openai, url: 'http://{name}'}}"
    for name in ("good", "good2", "refuse", "reset", "hang", "s503", "s429", "s500")
) + "\n  claude: {provider: anthropic, url: 'http://claude', model: claude-fallback}"


class _Gateway:
    def __init__(self, route: str, backends: str = BACKENDS, tracerProvider: Any = None,
                 accessLog: bool = False) -> None:
        self.clock = Clock()
        self.agent = _Agent(self.clock)
        config = loadConfig(_config(backends, route))
        self.metrics = Metrics()
        self.telemetry = Telemetry(config.tracing, self.metrics, self.clock, tracerProvider,
                                   accessLog=accessLog)
        self.exchanges: list[Any] = []
        finish = self.telemetry.finish

        def recording(exchange, *args):
            self.exchanges.append(exchange)
            return finish(exchange, *args)

        self.telemetry.finish = recording  # type: ignore[method-assign]
        root = buildGateway(config, self.agent, self.clock, {}, telemetry=self.telemetry).root
        self.client = StubTreq(root)

    def pump(self, seconds: float = 0.0) -> None:
        for _ in range(10):
            self.agent.upstream.flush()
            self.client.flush()
            if seconds:
                self.clock.advance(seconds / 10)

    def send(self, case: SynchronousTestCase, method: str = "POST", path: str = "/r/v1/chat/completions",
             body: Any = CHAT, headers: dict | None = None, wait: float = 5.0) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        d = self.client.request(method, "http://gw" + path, data=data, unbuffered=True,
                                headers=dict({"content-type": "application/json"}, **(headers or {})))
        self.pump(wait)
        response = case.successResultOf(d)
        chunks: list[bytes] = []
        done = collect(response, chunks.append)
        self.pump()
        case.successResultOf(done)
        return response.code, b"".join(chunks)


def _route(backends: list[dict], **extra: Any) -> str:
    lines = ["    backends:"]
    for b in backends:
        lines.append("      - " + json.dumps(b))
    for key, value in extra.items():
        lines.append(f"    {key}: {json.dumps(value)}")
    return "\n".join(lines)


class FailoverTests(SynchronousTestCase):
    """
    A failure before the answer's first byte moves the request on to the
    next target.
    """

    def test_refusedConnection(self) -> None:
        """
        A target that refuses connections is passed over for the next one.
        """
        gateway = _Gateway(_route([{"backend": "refuse"}, {"backend": "good", "priority": 1}]))
        status, body = gateway.send(self)
        self.assertEqual(status, 200, body)
        self.assertEqual(gateway.agent.hosts, ["refuse", "good"])
        self.assertEqual(gateway.exchanges[-1].attempts, [("refuse", "connect-failure"), ("good", "success")])
        self.assertEqual(gateway.exchanges[-1].target, "good")

    def test_rateLimited(self) -> None:
        """
        A 429 moves a POST on: the upstream did not act on it.
        """
        gateway = _Gateway(_route([{"backend": "s429"}, {"backend": "good", "priority": 1}]))
        status, _ = gateway.send(self)
        self.assertEqual(status, 200)
        self.assertEqual(gateway.agent.hosts, ["s429", "good"])

    def test_serverErrorPost(self) -> None:
        """
        A 500 or a 503 without Retry-After is not tried again for a POST:
        the upstream may have acted on it.
        """
        for host, code in (("s500", 500), ("s503", 503)):
            gateway = _Gateway(_route([{"backend": host}, {"backend": "good", "priority": 1}]))
            status, _ = gateway.send(self)
            self.assertEqual(status, code)
            self.assertEqual(gateway.agent.hosts, [host])

    def test_serverErrorGet(self) -> None:
        """
        A GET is tried again after a 5xx.
        """
        gateway = _Gateway(_route([{"backend": "s503"}, {"backend": "good", "priority": 1}]))
        status, body = gateway.send(self, "GET", "/r/v1/models", None)
        self.assertEqual(status, 200, body)
        self.assertEqual(gateway.agent.hosts, ["s503", "good"])

    def test_resetBeforeAnswer(self) -> None:
        """
        A connection reset before the answer's head is not tried again for a
        POST (the upstream may have acted), and is for a GET.
        """
        gateway = _Gateway(_route([{"backend": "reset"}, {"backend": "good", "priority": 1}]))
        self.assertEqual(gateway.send(self)[0], 502)
        self.assertEqual(gateway.agent.hosts, ["reset"])
        status, _ = gateway.send(self, "GET", "/r/v1/models", None)
        self.assertEqual(status, 200)
        self.assertEqual(gateway.agent.hosts, ["reset", "reset", "good"])

    def test_limitsChargedOnce(self) -> None:
        """
        A request that took two attempts counts once against a request
        budget, and its tokens are those of the answer it got.
        """
        route = _route([{"backend": "s429"}, {"backend": "good", "priority": 1}],
                       rateLimits=[{"key": "route.name", "requests": {"limit": 2, "per": "1m"}}])
        gateway = _Gateway(route)
        self.assertEqual([gateway.send(self)[0] for _ in range(3)], [200, 200, 429])
        self.assertEqual(gateway.agent.hosts, ["s429", "good", "s429", "good"])

    def test_firstByteTimeout(self) -> None:
        """
        A target that does not answer within firstByte is a 504 for a POST
        (it may be working on it), and is passed over for a GET.
        """
        route = _route([{"backend": "hang"}, {"backend": "good", "priority": 1}],
                       timeouts={"firstByte": "2s"})
        gateway = _Gateway(route)
        status, _ = gateway.send(self, wait=5)
        self.assertEqual(status, 504)
        self.assertEqual(gateway.agent.hosts, ["hang"])
        status, _ = gateway.send(self, "GET", "/r/v1/models", None, wait=5)
        self.assertEqual(status, 200)
        self.assertEqual(gateway.agent.hosts, ["hang", "hang", "good"])

    def test_attemptsBound(self) -> None:
        """
        No more than C{retries.attempts} tries, and the last failure is
        the answer.
        """
        route = _route([{"backend": "refuse"}, {"backend": "s429", "priority": 1},
                        {"backend": "good", "priority": 2}], retries={"attempts": 2})
        gateway = _Gateway(route)
        status, _ = gateway.send(self)
        self.assertEqual(status, 429)
        self.assertEqual(gateway.agent.hosts, ["refuse", "s429"])

    def test_retryConditions(self) -> None:
        """
        A failure not in C{retries.on} is not tried again.
        """
        route = _route([{"backend": "s429"}, {"backend": "good", "priority": 1}],
                       retries={"attempts": 3, "on": ["connect-failure"]})
        gateway = _Gateway(route)
        self.assertEqual(gateway.send(self)[0], 429)

    def test_clientNarrows(self) -> None:
        """
        C{x-aigateway-retries: 0} leaves one attempt; the header is not
        forwarded.
        """
        gateway = _Gateway(_route([{"backend": "refuse"}, {"backend": "good", "priority": 1}]))
        status, _ = gateway.send(self, headers={"x-aigateway-retries": "0"})
        self.assertEqual(status, 502)
        self.assertEqual(gateway.agent.hosts, ["refuse"])
        gateway.send(self, headers={"x-aigateway-retries": "5"})
        self.assertNotIn("x-aigateway-retries", gateway.agent.fakellm.requests[-1].headers)

    def test_otherProvider(self) -> None:
        """
        A fallback to another provider sends that provider's API and model.
        """
        gateway = _Gateway(_route([{"backend": "refuse"}, {"backend": "claude", "priority": 1}]))
        status, body = gateway.send(self)
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["object"], "chat.completion")
        seen = gateway.agent.fakellm.requests[-1]
        self.assertEqual(seen.path, "/v1/messages")
        self.assertEqual(json.loads(seen.body)["model"], "claude-fallback")

    def test_singleBackendUnchanged(self) -> None:
        """
        A route with C{backend:} tries once, as before.
        """
        gateway = _Gateway("    backend: refuse")
        self.assertEqual(gateway.send(self)[0], 502)
        self.assertEqual(gateway.agent.hosts, ["refuse"])


class ModelRoutingTests(SynchronousTestCase):
    """
    The requested model picks the targets.
    """

    ROUTE = _route([{"backend": "good"}, {"backend": "good2", "models": ["claude-*", "o1"]}])

    def test_claimed(self) -> None:
        """
        A model a target claims goes to it, and only to it.
        """
        gateway = _Gateway(self.ROUTE)
        for _ in range(5):
            gateway.send(self, body=dict(CHAT, model="claude-3-haiku"))
        self.assertEqual(set(gateway.agent.hosts), {"good2"})

    def test_unclaimed(self) -> None:
        """
        A model no target claims goes to the targets without models.
        """
        gateway = _Gateway(self.ROUTE)
        for _ in range(5):
            gateway.send(self, body=dict(CHAT, model="gpt-4o"))
        self.assertEqual(set(gateway.agent.hosts), {"good"})

    def test_nobodyServes(self) -> None:
        """
        A model no target serves is a 404 naming it.
        """
        gateway = _Gateway(_route([{"backend": "good", "models": ["gpt-*"]}]))
        status, body = gateway.send(self, body=dict(CHAT, model="llama-3"))
        self.assertEqual(status, 404)
        self.assertIn("llama-3", json.loads(body)["error"]["message"])
        self.assertEqual(gateway.agent.hosts, [])


class BalanceTests(SynchronousTestCase):
    """
    Weights split traffic; failing targets are ejected for a while.
    """

    def test_weights(self) -> None:
        """
        Weights 3 and 1 split 1,000 requests about 750 and 250.
        """
        gateway = _Gateway(_route([{"backend": "good", "weight": 3}, {"backend": "good2", "weight": 1}]))
        for _ in range(1000):
            gateway.send(self, wait=0)
        counts = Counter(gateway.agent.hosts)
        self.assertEqual(sum(counts.values()), 1000)
        self.assertLess(abs(counts["good"] - 750), 60)

    def test_ejection(self) -> None:
        """
        After C{consecutiveFailures} failures a target is skipped until its
        ejection ends.
        """
        route = _route([{"backend": "refuse"}, {"backend": "good", "priority": 1}],
                       outlier={"consecutiveFailures": 2, "ejection": "30s"})
        gateway = _Gateway(route)
        gateway.send(self, wait=1)
        gateway.send(self, wait=1)
        self.assertEqual(gateway.agent.hosts, ["refuse", "good", "refuse", "good"])
        gateway.send(self, wait=1)
        self.assertEqual(gateway.agent.hosts[4:], ["good"])
        gateway.clock.advance(31)
        gateway.send(self, wait=1)
        self.assertEqual(gateway.agent.hosts[5:], ["refuse", "good"])
        from prometheus_client import generate_latest

        self.assertIn('aigateway_upstream_ejections_total{backend="refuse",route="r"} 1.0',
                      generate_latest(gateway.metrics.registry).decode())

    def test_allEjected(self) -> None:
        """
        When every target is ejected, the least recently ejected is still
        tried.
        """
        route = _route([{"backend": "refuse"}, {"backend": "s429", "priority": 1}],
                       outlier={"consecutiveFailures": 1, "ejection": "1m"})
        gateway = _Gateway(route)
        gateway.send(self, wait=1)
        self.assertEqual(gateway.agent.hosts, ["refuse", "s429"])
        status, _ = gateway.send(self, wait=1)
        self.assertEqual(gateway.agent.hosts[2], "refuse")


class HealthReportTests(SynchronousTestCase):
    """
    What C{/readyz} shows of each route's targets.
    """

    def test_ejectedShown(self) -> None:
        """
        An ejected target is shown unhealthy, with the seconds left.
        """
        clock = Clock()
        agent = _Agent(clock)
        config = loadConfig(_config(BACKENDS, _route(
            [{"backend": "refuse"}, {"backend": "good", "priority": 1}],
            outlier={"consecutiveFailures": 1, "ejection": "30s"})))
        gateway = buildGateway(config, agent, clock, {})
        client = StubTreq(gateway.root)
        d = client.post("http://gw/r/v1/chat/completions", json.dumps(CHAT).encode(),
                        headers={"content-type": "application/json"})
        for _ in range(10):
            agent.upstream.flush()
            client.flush()
            clock.advance(0.1)
        self.assertEqual(self.successResultOf(d).code, 200)
        health = gateway.health(clock.seconds())
        self.assertEqual(health["r"][0]["backend"], "refuse")
        self.assertFalse(health["r"][0]["healthy"])
        self.assertGreater(health["r"][0]["ejectedFor"], 28)
        self.assertEqual(health["r"][1], {"backend": "good", "healthy": True})


class IdleTests(SynchronousTestCase):
    """
    An answer that stops coming ends after C{timeouts.idle}.
    """

    def test_idleStream(self) -> None:
        """
        A stream whose next event does not come within the idle time ends
        with an error event and a non-clean end, while one whose events
        keep coming in time is whole.
        """
        route = "    backend: good\n    timeouts: {idle: 2s}"
        gateway = _Gateway(route)
        d = gateway.client.request("POST", "http://gw/r/v1/chat/completions",
                                   data=json.dumps(dict(CHAT, stream=True)).encode(), unbuffered=True,
                                   headers={"content-type": "application/json",
                                            "x-fakellm-gap": "5000", "x-fakellm-chunks": "3"})
        gateway.pump(1)
        response = self.successResultOf(d)
        chunks: list[bytes] = []
        done = collect(response, chunks.append)
        gateway.pump(4)
        self.failureResultOf(done)
        body = b"".join(chunks)
        self.assertIn(b"event: error", body)
        self.assertIn(b"sent nothing for 2s", body)
        status, body = gateway.send(self, body=dict(CHAT, stream=True),
                                    headers={"x-fakellm-gap": "1000", "x-fakellm-chunks": "3"}, wait=6)
        self.assertEqual(status, 200)
        self.assertTrue(body.endswith(b"data: [DONE]\n\n"))


class ReportTests(SynchronousTestCase):
    """
    Every attempt is counted, traced and named in the access log.
    """

    ROUTE = _route([{"backend": "refuse"}, {"backend": "good", "priority": 1}])

    def test_metrics(self) -> None:
        """
        C{aigateway_upstream_attempts_total} counts each attempt by backend
        and outcome.
        """
        from prometheus_client import generate_latest

        gateway = _Gateway(self.ROUTE)
        gateway.send(self)
        text = generate_latest(gateway.metrics.registry).decode()
        self.assertIn('aigateway_upstream_attempts_total{backend="refuse",outcome="connect-failure",route="r"} 1.0',
                      text)
        self.assertIn('aigateway_upstream_attempts_total{backend="good",outcome="success",route="r"} 1.0', text)

    def test_spans(self) -> None:
        """
        Each attempt is a CLIENT span under the request's SERVER span; the
        failed one carries C{error.type}.
        """
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from opentelemetry.trace import SpanKind

        spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        gateway = _Gateway(self.ROUTE, tracerProvider=provider)
        gateway.send(self)
        finished = spans.get_finished_spans()
        [server] = [s for s in finished if s.kind == SpanKind.SERVER]
        clients = [s for s in finished if s.kind == SpanKind.CLIENT]
        self.assertEqual(len(clients), 2)
        self.assertTrue(all(c.parent.span_id == server.context.span_id for c in clients))
        failed = [c for c in clients if c.attributes.get("server.address") == "refuse"]
        self.assertEqual(failed[0].attributes["error.type"], "connect-failure")
        answered = [c for c in clients if c.attributes.get("server.address") == "good"]
        self.assertNotIn("error.type", answered[0].attributes)
        self.assertEqual(answered[0].attributes["http.response.status_code"], 200)

    def test_accessLog(self) -> None:
        """
        The access log line names the backend that answered and the
        number of attempts.
        """
        from twisted.logger import globalLogPublisher

        lines: list[str] = []

        def observer(event: dict) -> None:
            if event.get("log_namespace") == "aigateway.access":
                from twisted.logger import formatEvent
                lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        gateway = _Gateway(self.ROUTE, accessLog=True)
        gateway.send(self)
        self.assertTrue(lines[-1].endswith("backend=good attempts=2"), lines[-1])
        self.assertNotIn("None", lines[-1])
