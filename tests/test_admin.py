"""
Tests for L{aigateway.app.admin}: the admin endpoints over a fake
L{GatewayControl}.
"""

from __future__ import annotations

import attrs
from prometheus_client import CollectorRegistry, Counter
from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from aigateway.app.admin import AdminRoot, AdminSite, GatewayControl, redacted


@attrs.define
class FakeControl:
    text: bytes = b"backends: {b: {authToken: {value: sk-1}}}\n"
    digest: str = "abc"
    loadedAt: float = 1.5
    lastError: str | None = None
    ready: list[str] = attrs.Factory(list)
    routes: dict = attrs.Factory(dict)
    refusal: str | None = None
    reloads: list[str] = attrs.Factory(list)

    def reload(self, reason: str) -> str | None:
        self.reloads.append(reason)
        return self.refusal


class AdminRootTests(SynchronousTestCase):
    """
    The admin endpoints.
    """

    def setUp(self) -> None:
        self.control = FakeControl()
        self.registry = CollectorRegistry()
        Counter("things", "Things.", registry=self.registry).inc()
        control: GatewayControl = self.control
        self.client = StubTreq(AdminRoot(control, self.registry))

    def get(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        response = self.successResultOf(self.client.request(method, "http://admin" + path))
        return response.code, self.successResultOf(response.content())

    def json(self, path: str, method: str = "GET") -> tuple[int, object]:
        response = self.successResultOf(self.client.request(method, "http://admin" + path))
        return response.code, self.successResultOf(response.json())

    def test_healthz(self) -> None:
        """
        C{/healthz} says the process is up.
        """
        self.assertEqual(self.get("/healthz"), (200, b"ok\n"))

    def test_readyz(self) -> None:
        """
        C{/readyz} is 200 with nothing pending, else 503 with what is.
        """
        self.assertEqual(self.json("/readyz"), (200, {"ready": True, "pending": [], "routes": {}}))
        self.control.ready = ["jwks https://keys"]
        self.assertEqual(self.json("/readyz"),
                         (503, {"ready": False, "pending": ["jwks https://keys"], "routes": {}}))

    def test_readyzRoutes(self) -> None:
        """
        C{/readyz} shows each route's targets and their health.
        """
        self.control.routes = {"chat": [{"backend": "a", "healthy": False, "ejectedFor": 12.5},
                                        {"backend": "b", "healthy": True}]}
        status, body = self.json("/readyz")
        self.assertEqual(status, 200)
        self.assertEqual(body["routes"], self.control.routes)

    def test_metrics(self) -> None:
        """
        C{/metrics} is the registry's text.
        """
        code, body = self.get("/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b"things_total 1.0", body)

    def test_config(self) -> None:
        """
        C{/config} shows the configuration, redacted, with its digest, load
        time and last error.
        """
        self.control.lastError = "routes[0]: no"
        self.assertEqual(self.json("/config"), (200, {
            "sha256": "abc", "loadedAt": 1.5, "lastError": "routes[0]: no",
            "config": {"backends": {"b": {"authToken": {"value": "<redacted>"}}}},
        }))

    def test_reload(self) -> None:
        """
        C{POST /reload} reloads: 200 with the new digest, or 422 with why
        not.
        """
        self.assertEqual(self.json("/reload", "POST"), (200, {"reloaded": True, "sha256": "abc"}))
        self.control.refusal = "routes[0]: no"
        self.assertEqual(self.json("/reload", "POST"), (422, {"reloaded": False, "error": "routes[0]: no"}))
        self.assertEqual(self.control.reloads, ["POST /reload", "POST /reload"])

    def test_unknown(self) -> None:
        """
        Other paths are a 404.
        """
        self.assertEqual(self.get("/nope")[0], 404)
        self.assertEqual(self.get("/nope", "POST")[0], 404)


class AdminSiteTests(SynchronousTestCase):
    """
    L{AdminSite} is quiet.
    """

    def test_quiet(self) -> None:
        """
        No access log, no factory start and stop lines, and its port's log
        lines read C{Site starting on ...}.
        """
        site = AdminSite(AdminRoot(FakeControl(), CollectorRegistry()))
        self.assertFalse(site.noisy)
        self.assertIsNone(site.log(object()))  # type: ignore[arg-type]
        self.assertEqual(site.logPrefix(), "Site")


class RedactionTests(SynchronousTestCase):
    """
    L{redacted} hides what is secret and nothing else.
    """

    def test_secrets(self) -> None:
        """
        Inline keys and collector headers are replaced.
        """
        document = {
            "backends": {"b": {"authToken": {"value": "sk-1"}}, "c": {"authToken": {"env": "K"}}},
            "tracing": {"otlp": {"endpoint": "http://x", "headers": {"authorization": "t"}}},
        }
        self.assertEqual(redacted(document), {
            "backends": {"b": {"authToken": {"value": "<redacted>"}}, "c": {"authToken": {"env": "K"}}},
            "tracing": {"otlp": {"endpoint": "http://x", "headers": {"authorization": "<redacted>"}}},
        })
