"""
Failover between real processes: two fake LLMs and a port nobody listens
on behind one gateway, started as a user starts them.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

from twisted.trial.unittest import SynchronousTestCase

from tests.processes import startFakeLLM, startGateway, writeFile

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}


def _deadPort() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _post(port: int, path: str, body: dict, headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(), method="POST",
        headers=dict({"content-type": "application/json"}, **(headers or {})))
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class FailoverProcessTests(SynchronousTestCase):
    """
    A route of several targets over real sockets.
    """

    def setUp(self) -> None:
        self.a = startFakeLLM(self)
        self.b = startFakeLLM(self)
        a, b = self.a.ports[0], self.b.ports[0]
        dead = _deadPort()
        config = f"""
listen: tcp:0:interface=127.0.0.1
admin: {{listen: 'tcp:0:interface=127.0.0.1'}}
backends:
  a: {{provider: openai, url: 'http://127.0.0.1:{a}/v1'}}
  b: {{provider: openai, url: 'http://127.0.0.1:{b}'}}
  dead: {{provider: openai, url: 'http://127.0.0.1:{dead}'}}
routes:
  - name: failover
    match: {{pathPrefix: /failover}}
    backends: [{{backend: dead}}, {{backend: a, priority: 1}}]
    retries: {{attempts: 2, backoff: 10ms}}
  - name: same
    match: {{pathPrefix: /same}}
    backend: a
    retries: {{attempts: 2, backoff: 10ms}}
  - name: pair
    match: {{pathPrefix: /pair}}
    backends: [{{backend: a}}, {{backend: b, priority: 1}}]
    timeouts: {{firstByte: 500ms}}
"""
        self.gateway = startGateway(self, writeFile(self, config))
        self.port, self.admin = self.gateway.ports

    def test_refusedThenServed(self) -> None:
        """
        A target that refuses connections is passed over: the answer comes
        from the next, and /readyz shows both targets.
        """
        status, _, body = _post(self.port, "/failover/v1/chat/completions", CHAT)
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["object"], "chat.completion")
        status, body = _get(self.admin, "/readyz")
        routes = json.loads(body)["routes"]
        self.assertEqual([t["backend"] for t in routes["failover"]], ["dead", "a"])

    def test_retryAfterHonoured(self) -> None:
        """
        A 429 with Retry-After: 1 is tried again on the same target after a
        second, and its 429 is the answer when that fails too.
        """
        started = time.monotonic()
        status, headers, body = _post(self.port, "/same/v1/chat/completions", CHAT,
                                      {"x-fakellm-status": "429"})
        elapsed = time.monotonic() - started
        self.assertEqual(status, 429, body)
        self.assertGreaterEqual(elapsed, 1.0)
        self.assertEqual(headers.get("Retry-After") or headers.get("retry-after"), "1")

    def test_slowTargetPassedOver(self) -> None:
        """
        A GET whose target does not answer within firstByte is tried on
        the next one, each attempt cut at its firstByte, and ends in a 504
        when neither answers; a POST is sent once, and is a 504 too.
        """
        started = time.monotonic()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/pair/v1/models",
                                         headers={"x-fakellm-delay": "3000"})
        try:
            urllib.request.urlopen(request, timeout=30)
            status = 200
        except urllib.error.HTTPError as e:
            status = e.code
        # Both fakes are slow for this request: two attempts of 0.5 s each.
        self.assertEqual(status, 504)
        self.assertLess(time.monotonic() - started, 2.5)
        status, _, _ = _post(self.port, "/pair/v1/chat/completions", CHAT, {"x-fakellm-delay": "3000"})
        self.assertEqual(status, 504)

    def test_brokenAfterFirstByte(self) -> None:
        """
        A stream that breaks after its first bytes is not tried again: the
        client sees the break, not a second answer.
        """
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/pair/v1/chat/completions",
            json.dumps(dict(CHAT, stream=True)).encode(), method="POST",
            headers={"content-type": "application/json", "x-fakellm-drop-after": "2"})
        with urllib.request.urlopen(request, timeout=30) as response:
            self.assertEqual(response.status, 200)
            data = b""
            try:
                while True:
                    piece = response.read1(65536)
                    if not piece:
                        break
                    data += piece
            except Exception:
                pass
        self.assertIn(b"event: error", data)
        self.assertNotIn(b"[DONE]", data)
        self.assertEqual(data.count(b'"role":"assistant"'), 1)
