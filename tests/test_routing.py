"""
Tests for L{aigateway.web.routes}: which route takes a request.
"""

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource

from twisted.internet.task import Clock

from aigateway.config import TracingConfig, loadConfig
from aigateway.web.routes import RouteTable
from aigateway.observe.report import Metrics, Telemetry


class _Named(Resource):
    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def render(self, request) -> bytes:
        return self.name.encode("utf-8")


def _table(routes: str) -> RouteTable:
    config = loadConfig(
        "backends:\n  b: {provider: openai, url: 'http://127.0.0.1:1'}\nroutes:\n" + routes
    )
    telemetry = Telemetry(TracingConfig(), Metrics(), Clock())
    return RouteTable([(route, _Named(route.name)) for route in config.routes], telemetry)


TABLE = """
  - {name: root, match: {pathPrefix: /}, backend: b}
  - {name: openai, match: {pathPrefix: /openai}, backend: b}
  - {name: openai-v1, match: {pathPrefix: /openai/v1}, backend: b}
  - {name: exact-models, match: {path: /openai/v1/models}, backend: b}
  - {name: team-post, match: {pathPrefix: /team, methods: [POST], headers: {x-team: dev}}, backend: b}
  - {name: team-get, match: {pathPrefix: /team, methods: [GET]}, backend: b}
"""


class MatchTests(SynchronousTestCase):
    """
    Exact beats prefix, the longest prefix wins, segments are respected and
    methods and headers narrow a match.
    """

    def setUp(self) -> None:
        self.client = StubTreq(_table(TABLE))

    def routeFor(self, method: str, url: str, **kwargs) -> tuple[int, str]:
        response = self.successResultOf(
            self.client.request(method, "http://gw" + url, **kwargs)
        )
        return response.code, self.successResultOf(response.text())

    def test_exactBeatsPrefix(self) -> None:
        """
        An exact path wins over every prefix that also matches.
        """
        self.assertEqual(self.routeFor("GET", "/openai/v1/models"), (200, "exact-models"))

    def test_exactIsExact(self) -> None:
        """
        An exact path does not match longer paths.
        """
        self.assertEqual(self.routeFor("GET", "/openai/v1/models/gpt-4o"), (200, "openai-v1"))

    def test_longestPrefix(self) -> None:
        """
        The longest matching prefix wins, whatever the order of the routes.
        """
        self.assertEqual(self.routeFor("POST", "/openai/v1/chat/completions"), (200, "openai-v1"))
        self.assertEqual(self.routeFor("POST", "/openai"), (200, "openai"))
        self.assertEqual(self.routeFor("POST", "/openai/"), (200, "openai"))

    def test_segmentBoundary(self) -> None:
        """
        C{/openai} does not match C{/openaix}: that falls to C{/}.
        """
        self.assertEqual(self.routeFor("GET", "/openaix"), (200, "root"))
        self.assertEqual(self.routeFor("GET", "/openai/v1x"), (200, "openai"))

    def test_queryIgnored(self) -> None:
        """
        The query string plays no part in matching.
        """
        self.assertEqual(self.routeFor("GET", "/openai/v1/models?x=/y"), (200, "exact-models"))

    def test_methodsAndHeaders(self) -> None:
        """
        Methods and headers narrow a match; a request that fits none of the
        narrowed routes falls back to a shorter prefix.
        """
        self.assertEqual(
            self.routeFor("POST", "/team/x", headers={"X-Team": "dev"}), (200, "team-post")
        )
        self.assertEqual(self.routeFor("GET", "/team/x"), (200, "team-get"))
        self.assertEqual(
            self.routeFor("POST", "/team/x", headers={"X-Team": "ops"}), (200, "root")
        )

    def test_headerNotUtf8(self) -> None:
        """
        A header value that is not UTF-8 does not match, and is no error.
        """
        self.assertEqual(
            self.routeFor("POST", "/team/x", headers={"X-Team": b"d\xffv"}), (200, "root")
        )

    def test_noRoute(self) -> None:
        """
        Without a matching route the answer is a 404 in the OpenAI envelope.
        """
        client = StubTreq(_table("  - {name: a, match: {pathPrefix: /a}, backend: b}\n"))
        response = self.successResultOf(client.post("http://gw/b/c"))
        self.assertEqual(response.code, 404)
        body = self.successResultOf(response.json())
        self.assertEqual(body["error"]["code"], "route_not_found")
        self.assertEqual(body["error"]["message"], "no route for POST /b/c")
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])

    def test_dotSegments(self) -> None:
        """
        Paths with dot segments are refused rather than routed.
        """
        code, body = self.routeFor("GET", "/openai/%2e%2e/admin")
        self.assertEqual(code, 400)
        self.assertIn("invalid_path", body)


class ScaleTests(SynchronousTestCase):
    """
    A table of a thousand routes still routes every request right.
    """

    def test_thousandRoutes(self) -> None:
        """
        Each of 1,000 prefixes, and exact paths among them, find their own
        route.
        """
        lines = [
            f"  - {{name: r{i}, match: {{pathPrefix: /tenant{i}/llm}}, backend: b}}\n"
            for i in range(1000)
        ] + [
            f"  - {{name: e{i}, match: {{path: /tenant{i}/llm/v1/models}}, backend: b}}\n"
            for i in range(0, 1000, 100)
        ]
        table = _table("".join(lines))
        client = StubTreq(table)
        for i in (0, 1, 499, 999):
            response = self.successResultOf(client.get(f"http://gw/tenant{i}/llm/v1/chat"))
            self.assertEqual(self.successResultOf(response.text()), f"r{i}")
        response = self.successResultOf(client.get("http://gw/tenant300/llm/v1/models"))
        self.assertEqual(self.successResultOf(response.text()), "e300")
        response = self.successResultOf(client.get("http://gw/tenant1000/llm"))
        self.assertEqual(response.code, 404)


class AnswerFirstTests(TestCase):
    """
    The answer leaves for the client before the request is reported.
    """

    async def test_answerBeforeReport(self) -> None:
        """
        When the report of a request starts, the client can already read
        the whole answer from its socket.
        """
        import socket

        from twisted.internet import reactor
        from twisted.internet.defer import Deferred

        from aigateway.web.site import GatewaySite

        seen: Deferred = Deferred()

        class Recording(Telemetry):
            def flushReports(self):
                if not seen.called:
                    try:
                        seen.callback(client.recv(65536))
                    except BlockingIOError:
                        seen.callback(b"")
                super().flushReports()

        telemetry = Recording(TracingConfig(), Metrics(), reactor, accessLog=False, reportDelay=0.001)
        site = GatewaySite(RouteTable([], telemetry), reactor)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(site.closeChannels)
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        client.sendall(b"GET /nowhere HTTP/1.1\r\nHost: gw\r\n\r\n")
        client.setblocking(False)
        answer = await seen
        self.assertTrue(answer.startswith(b"HTTP/1.1 404 "), answer)
        self.assertTrue(answer.endswith(b"}}"), answer)
