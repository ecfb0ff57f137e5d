"""
Tests for L{aigateway.web.site}: what a client connection may send and hold
before any route sees it, on a real L{GatewayChannel} over a memory
transport with a fake clock, and through the real gateway over a socket.
"""

from __future__ import annotations

import json
import socket
import time

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from aigateway.web.site import LINGER, ListenerFactory
from tests.lab import FAKE_BACKENDS, UPSTREAM_KEY, ALICE_TOKEN, CHAT, LAB_PEM, indented
from tests.memory import MemoryConnection, MemorySite

KEY = UPSTREAM_KEY
CONFIG = FAKE_BACKENDS + f"""
routes:
  - {{name: open, match: {{pathPrefix: /open}}, backend: local}}
  - {{name: small, match: {{pathPrefix: /small}}, backend: local, maxRequestBody: 1000}}
  - name: guarded
    match: {{pathPrefix: /guarded}}
    backend: local
    jwt:
      providers:
        selfminted:
          issuer: solo.io
          jwks:
            local:
              key: |
{indented(LAB_PEM, 16)}
"""
BODY = json.dumps(CHAT).encode()
TEN_GB = 10 * 1024 ** 3


def _head(path: bytes, length: int | None, *extra: bytes) -> bytes:
    framing = b"transfer-encoding: chunked" if length is None else b"content-length: %d" % length
    lines = [b"POST " + path + b" HTTP/1.1", b"host: gw", b"content-type: application/json", framing]
    return b"\r\n".join(lines + list(extra)) + b"\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class BodyOnHeadTests(SynchronousTestCase):
    """
    A request is judged on its head: what refuses it does so before its body
    is read, and a body is read only up to the route's limit.
    """

    def setUp(self) -> None:
        self.gateway = MemorySite(CONFIG, KEY)

    def assertRefusedNow(self, connection: MemoryConnection, status: int, code: str) -> None:
        answer = connection.answer()
        self.assertEqual(connection.status(), status, answer)
        head, _, body = answer.partition(b"\r\n\r\n")
        self.assertIn(b"connection: close", head.lower())
        self.assertEqual(json.loads(body)["error"]["code"], code)
        self.assertNotIn(b"100 Continue", answer)
        self.assertEqual(self.gateway.agent.calls, [])

    def test_noTokenHugeContentLength(self) -> None:
        """
        A caller without a token who announces 150 MiB gets its 401 before
        sending a byte of the body.
        """
        connection = self.gateway.connect()
        connection.send(_head(b"/guarded", 150 * 1024 * 1024, b"expect: 100-continue"))
        self.assertRefusedNow(connection, 401, "missing_token")

    def test_noTokenChunked(self) -> None:
        """
        So does one that sends its body chunked, however long it goes on.
        """
        connection = self.gateway.connect()
        connection.send(_head(b"/guarded", None))
        self.assertRefusedNow(connection, 401, "missing_token")
        before = connection.answer()
        for _ in range(100):
            connection.send(_chunk(b"x" * 65536))
        self.assertEqual(connection.answer(), before)

    def test_badTokenRefusedOnHead(self) -> None:
        """
        A forged token is refused on the head too.
        """
        connection = self.gateway.connect()
        connection.send(_head(b"/guarded", TEN_GB, b"authorization: Bearer " + ALICE_TOKEN[:-4].encode() + b"AAAA"))
        self.assertRefusedNow(connection, 401, "invalid_token")

    def test_noRouteOnHead(self) -> None:
        """
        A path no route takes is a 404 on the head.
        """
        connection = self.gateway.connect()
        connection.send(_head(b"/nowhere", TEN_GB))
        self.assertRefusedNow(connection, 404, "route_not_found")

    def test_announcedOverLimit(self) -> None:
        """
        A Content-Length of 10 GB is a 413 at once, with the sizes in words.
        """
        connection = self.gateway.connect()
        connection.send(_head(b"/small", TEN_GB, b"expect: 100-continue") + b"{\"mo")
        self.assertRefusedNow(connection, 413, "request_too_large")
        self.assertIn(b"10737418240 bytes; this route takes at most 1000", connection.answer())

    def test_authenticatedOverLimit(self) -> None:
        """
        An authenticated caller over the default limit gets the 413, still
        before the body.
        """
        connection = self.gateway.connect()
        connection.send(_head(b"/guarded", TEN_GB, b"authorization: Bearer " + ALICE_TOKEN.encode()))
        self.assertRefusedNow(connection, 413, "request_too_large")

    def test_chunkedPastLimit(self) -> None:
        """
        A chunked body is read up to the limit; the chunk that passes it is
        answered with a 413 at once, and nothing goes upstream.
        """
        connection = self.gateway.connect()
        connection.send(_head(b"/small", None))
        connection.send(_chunk(b" " * 600))
        self.assertEqual(connection.answer(), b"")
        connection.send(_chunk(b" " * 600))
        self.assertRefusedNow(connection, 413, "request_too_large")
        self.assertIn(b"over 1000 bytes", connection.answer())

    def test_chunkedWithinLimit(self) -> None:
        """
        A chunked body within the limit is relayed whole.
        """
        connection = self.gateway.connect()
        connection.send(_head(b"/small", None))
        for i in range(0, len(BODY), 7):
            connection.send(_chunk(BODY[i:i + 7]))
        self.assertEqual(connection.answer(), b"")
        connection.send(b"0\r\n\r\n")
        self.assertEqual(connection.status(), 200, connection.answer())
        self.assertIn(b"chat.completion", connection.answer())

    def test_expectContinue(self) -> None:
        """
        A caller that waits for 100 Continue gets it once its head passed,
        and then its answer; the connection stays open for the next request.
        """
        connection = self.gateway.connect()
        connection.send(_head(b"/open", len(BODY), b"expect: 100-continue"))
        self.assertEqual(connection.answer(), b"HTTP/1.1 100 Continue\r\n\r\n")
        connection.send(BODY)
        self.assertIn(b"HTTP/1.1 200 ", connection.answer())
        self.assertNotIn(b"connection: close", connection.answer().lower())
        connection.transport.clear()
        connection.send(_head(b"/open", len(BODY)) + BODY)
        self.assertEqual(connection.status(), 200, connection.answer())

    def test_bodyInPieces(self) -> None:
        """
        A body that arrives a byte at a time is relayed once it is whole.
        """
        connection = self.gateway.connect()
        connection.send(_head(b"/open", len(BODY)))
        for i in range(len(BODY) - 1):
            connection.send(BODY[i:i + 1])
        self.assertEqual(self.gateway.agent.calls, [])
        connection.send(BODY[-1:])
        self.assertEqual(connection.status(), 200, connection.answer())

    def test_leftMidBody(self) -> None:
        """
        A client that leaves while sending its body costs no upstream call.
        """
        connection = self.gateway.connect()
        connection.send(_head(b"/open", len(BODY)) + BODY[:10])
        connection.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.gateway.agent.calls, [])
        self.assertEqual(connection.answer(), b"")

    def test_lingerThenCut(self) -> None:
        """
        After an early answer the gateway stops sending, drops what the
        client still sends, and cuts the connection after a while.
        """
        connection = self.gateway.connect()
        connection.send(_head(b"/guarded", 1000000))
        self.assertTrue(connection.transport.writeClosed)
        connection.send(b"x" * 10000 + b"\r\n\r\nGET /open HTTP/1.1\r\n\r\n")
        self.assertEqual(connection.answer().count(b"HTTP/1.1"), 1)
        self.assertFalse(connection.transport.aborted)
        self.gateway.clock.advance(LINGER)
        self.assertTrue(connection.transport.aborted)

    def test_pipelinedBodyNotTakenForRequest(self) -> None:
        """
        A body that follows an early answer is never read as a request of its own.
        """
        connection = self.gateway.connect()
        smuggled = b"GET /open/v1/models HTTP/1.1\r\nhost: gw\r\n\r\n"
        connection.send(_head(b"/guarded", len(smuggled)) + smuggled)
        self.assertEqual(connection.answer().count(b"HTTP/1.1 "), 1)
        self.assertEqual(self.gateway.agent.calls, [])


class HeadLimitTests(SynchronousTestCase):
    """
    A request's head must come in time and within its size.
    """

    def setUp(self) -> None:
        self.gateway = MemorySite(CONFIG, KEY, requestHeadTimeout=10.0)

    def assertAnswered(self, connection: MemoryConnection, status: int, code: str) -> None:
        answer = connection.answer()
        self.assertEqual(connection.status(), status, answer)
        self.assertEqual(json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"], code)
        self.assertTrue(connection.transport.writeClosed or connection.transport.disconnecting)

    def test_slowHead(self) -> None:
        """
        A head sent a byte a second is answered 408 when the head's time is
        up, however often a byte came.
        """
        connection = self.gateway.connect()
        head = b"GET /open/v1/models HTTP/1.1\r\nhost: gw\r\nx-slow: " + b"a" * 100
        for i in range(9):
            connection.send(head[i:i + 1])
            self.gateway.clock.advance(1)
        self.assertEqual(connection.answer(), b"")
        connection.send(head[9:10])
        self.gateway.clock.advance(1)
        self.assertAnswered(connection, 408, "head_timeout")

    def test_idleNotCut(self) -> None:
        """
        A connection that has sent nothing is left to the idle timeout, not
        answered with a 408.
        """
        connection = self.gateway.connect()
        self.gateway.clock.advance(30)
        self.assertEqual(connection.answer(), b"")

    def test_headTimeOnEachRequest(self) -> None:
        """
        Each request on a kept-alive connection gets its own head time.
        """
        connection = self.gateway.connect()
        connection.send(b"GET /open/v1/models HTTP/1.1\r\nhost: gw\r\n\r\n")
        self.assertEqual(connection.status(), 200, connection.answer())
        self.gateway.clock.advance(30)
        connection.transport.clear()
        connection.send(b"GET /open/v1/models HTTP/1.1\r\n")
        self.gateway.clock.advance(9)
        connection.send(b"host: gw\r\n\r\n")
        self.assertEqual(connection.status(), 200, connection.answer())
        connection.transport.clear()
        connection.send(b"GET /open/v1/models HTTP/1.1\r\n")
        self.gateway.clock.advance(10)
        self.assertAnswered(connection, 408, "head_timeout")

    def test_headerLineTooLong(self) -> None:
        """
        A header line over the limit is a 431, not a silent close.
        """
        connection = self.gateway.connect()
        connection.send(b"GET /open/v1/models HTTP/1.1\r\nx-big: " + b"a" * 20000 + b"\r\n\r\n")
        self.assertAnswered(connection, 431, "head_too_large")

    def test_headerLineTooLongUnfinished(self) -> None:
        """
        So is one that is still growing, with no line end in sight.
        """
        connection = self.gateway.connect()
        connection.send(b"GET /open/v1/models HTTP/1.1\r\nx-big: ")
        for _ in range(20):
            connection.send(b"a" * 1000)
        self.assertAnswered(connection, 431, "head_too_large")

    def test_manyHeadersTooLarge(self) -> None:
        """
        Many header lines that add up to more than the limit are a 431.
        """
        connection = self.gateway.connect()
        lines = b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 90) for i in range(200))
        connection.send(b"GET /open/v1/models HTTP/1.1\r\n" + lines + b"\r\n")
        self.assertAnswered(connection, 431, "head_too_large")

    def test_requestLineTooLong(self) -> None:
        """
        A request line over the limit is a 414.
        """
        connection = self.gateway.connect()
        connection.send(b"GET /open/" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n")
        self.assertAnswered(connection, 414, "uri_too_long")


class ConnectionLimitTests(SynchronousTestCase):
    """
    Each listener keeps at most C{maxConnections} connections open.
    """

    def test_overLimit(self) -> None:
        """
        The connection over the limit gets a 503 with Retry-After and is
        closed; once one closes, a new one is taken again.
        """
        gateway = MemorySite(CONFIG, KEY)
        factory = ListenerFactory(gateway.site, 2)
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        channels = []
        for _ in range(2):
            channel = factory.buildProtocol(address)
            channel.makeConnection(StringTransport())
            channels.append(channel)
        refused = factory.buildProtocol(address)
        transport = StringTransport()
        refused.makeConnection(transport)
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 503 "), answer)
        self.assertIn(b"retry-after: 1\r\n", answer)
        self.assertEqual(json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"],
                         "too_many_connections")
        self.assertTrue(transport.disconnecting)
        channels[0].connectionLost(Failure(ConnectionDone()))
        again = factory.buildProtocol(address)
        transport = StringTransport()
        again.makeConnection(transport)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(factory.open, 2)


class RealSocketTests(SynchronousTestCase):
    """
    The same rules through the gateway started as a user starts it.
    """

    def setUp(self) -> None:
        from tests.test_process import _Servers
        self.servers = _Servers.get()

    def exchange(self, data: bytes, wait: float = 5.0) -> tuple[bytes, float]:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.servers.port), timeout=wait) as client:
            client.sendall(data)
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                piece = client.recv(65536)
                if not piece:
                    break
                answer += piece
        return answer, time.monotonic() - started

    def test_tenGigabytes(self) -> None:
        """
        A Content-Length of 10 GB and a few bytes get a 413 at once.
        """
        answer, took = self.exchange(_head(b"/local", TEN_GB) + b"{\"model\": ")
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)
        self.assertIn(b"request_too_large", answer)
        self.assertLess(took, 2.0)

    def test_headTooLarge(self) -> None:
        """
        A head over the limit is answered 431 over a real socket.
        """
        answer, _ = self.exchange(b"GET /local/v1/models HTTP/1.1\r\nx-big: " + b"a" * 20000 + b"\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer)
