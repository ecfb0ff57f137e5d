"""
Tests for L{aigateway.http.client}: the request as written, the response as
parsed (every framing, split anywhere), the pool, and the failures; then
the agent against the fake LLM over real sockets.
"""

from __future__ import annotations

import json
import random
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, fail, gatherResults, succeed
from twisted.internet.error import (ConnectionAborted, ConnectionDone, ConnectionLost, ConnectionRefusedError,
                                    DNSLookupError)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import FileBodyProducer, ResponseDone, ResponseFailed, readBody
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.server import Site

from aigateway.testing.fakellm import FakeLLM
from aigateway.http.client import BytesBody, ProtocolError, UpstreamAgent


def _selfSigned(name: str) -> bytes:
    """
    A key and a self-signed certificate for C{name}, in PEM.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()) + certificate.public_bytes(serialization.Encoding.PEM)



class _TrustingEndpoints:
    """
    Endpoints to a TLS server on loopback that trust its self-signed
    certificate for the name C{localhost}.
    """

    def __init__(self, reactor, certificate) -> None:
        self.reactor = reactor
        self.certificate = certificate

    def endpointForURI(self, uri):
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
        from twisted.internet.ssl import optionsForClientTLS

        return wrapClientTLS(optionsForClientTLS("localhost", trustRoot=self.certificate),
                             HostnameEndpoint(self.reactor, "127.0.0.1", uri.port))

class _Endpoints:
    """
    Connections made on demand, each to a L{StringTransport}.
    """

    transportFactory = StringTransport

    def __init__(self) -> None:
        self.connections: list[tuple[StringTransport, Protocol]] = []
        self.failure: Failure | None = None
        self.uris: list[bytes] = []

    def endpointForURI(self, uri):
        self.uris.append(uri.toBytes())
        return self

    def connect(self, factory):
        if self.failure is not None:
            return fail(self.failure)
        protocol = factory.buildProtocol(None)
        transport = self.transportFactory()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.connections.append((transport, protocol))
        return succeed(protocol)


class _Reader(Protocol):
    """
    Collects a body and how it ended.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure) -> None:
        self.reason = reason


def _readToEnd(response) -> Deferred[_Reader]:
    """
    Read C{response}'s body; fires with the reader once the body ended.
    """
    done: Deferred[_Reader] = Deferred()

    class Reader(_Reader):
        def connectionLost(self, reason: Failure) -> None:
            self.reason = reason
            done.callback(self)

    response.deliverBody(Reader())
    return done


class _Harness:
    def __init__(self, **options) -> None:
        self.clock = Clock()
        self.endpoints = _Endpoints()
        self.agent = UpstreamAgent(self.clock, endpointFactory=self.endpoints, **options)

    def request(self, method=b"POST", uri=b"http://up.example:8000/v1/chat?x=1", headers=None,
                body: bytes | None = b'{"a":1}'):
        return self.agent.request(method, uri, headers, BytesBody(body) if body is not None else None)

    def transport(self, index: int = -1) -> StringTransport:
        return self.endpoints.connections[index][0]

    def protocol(self, index: int = -1) -> Protocol:
        return self.endpoints.connections[index][1]

    def reading(self, case: SynchronousTestCase, head: bytes) -> _Reader:
        """
        Send a request, answer it with C{head} (and maybe some body), and
        read the body with a new L{_Reader}.
        """
        d = self.request()
        self.answer(head)
        reader = _Reader()
        case.successResultOf(d).deliverBody(reader)
        return reader

    def answer(self, data: bytes, index: int = -1, split: int = 0) -> None:
        protocol = self.protocol(index)
        if split:
            for i in range(0, len(data), split):
                protocol.dataReceived(data[i:i + split])
        else:
            protocol.dataReceived(data)


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\nhello world"
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"6;ext=1\r\ndata: \r\n"
    b"a\r\n0123456789\r\n"
    b"0\r\nX-Trailer: yes\r\n\r\n"
)


class RequestTests(SynchronousTestCase):
    """
    What goes on the wire.
    """

    def test_head_and_body(self) -> None:
        """
        The request line, Host (without a default port, with any other),
        the caller's fields, Content-Length and the body are written in one
        piece.
        """
        h = _Harness()
        h.request(headers=Headers({b"Authorization": [b"Bearer sk"], b"X-Many": [b"a", b"b"]}))
        self.assertEqual(
            h.transport().value(),
            b"POST /v1/chat?x=1 HTTP/1.1\r\nHost: up.example:8000\r\nAuthorization: Bearer sk\r\n"
            b"X-Many: a\r\nX-Many: b\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
        )
        h.agent.request(b"GET", b"https://api.example/models", None, None)
        self.assertEqual(h.transport().value(), b"GET /models HTTP/1.1\r\nHost: api.example\r\n\r\n")
        self.assertEqual(h.endpoints.uris, [b"http://up.example:8000/", b"https://api.example/"])

    def test_callerHost(self) -> None:
        """
        A C{Host} the caller sets is kept; its framing fields are not.
        """
        h = _Harness()
        h.request(headers=Headers({b"Host": [b"virtual"], b"Content-Length": [b"99"],
                                   b"Transfer-Encoding": [b"chunked"]}), body=b"")
        self.assertEqual(h.transport().value(),
                         b"POST /v1/chat?x=1 HTTP/1.1\r\nHost: virtual\r\nContent-Length: 0\r\n\r\n")

    def test_targets(self) -> None:
        """
        An origin without a path asks for C{/}; a fragment is not sent.
        """
        h = _Harness()
        h.agent.request(b"GET", b"http://up.example?q=1#frag")
        self.assertTrue(h.transport().value().startswith(b"GET /?q=1 HTTP/1.1\r\n"))

    def test_refused(self) -> None:
        """
        A bad method, a target with spaces, a relative URL or another scheme
        fail at once, before any connection, with a message that does not
        repeat the URL (its query can hold a key).
        """
        h = _Harness()
        for method, uri, error in [
            (b"PO ST", b"http://up.example/", ValueError),
            (b"GET", b"http://up.example/a b", ValueError),
            (b"GET", b"http://up.example/a\r\nX: y", ValueError),
            (b"GET", b"/relative?key=sk-1", ValueError),
            (b"GET", b"ftp://up.example/", SchemeNotSupported),
        ]:
            message = str(self.failureResultOf(h.agent.request(method, uri), error).value)
            self.assertNotIn(uri.decode("latin-1"), message)
            self.assertNotIn(method.decode("latin-1"), message)
        self.assertEqual(h.endpoints.connections, [])

    def test_unknownLength(self) -> None:
        """
        A body producer of unknown length is sent chunked.
        """
        h = _Harness()
        producer = FileBodyProducer(__import__("io").BytesIO(b"abc"), cooperator=_Immediate())
        producer.length = UNKNOWN_LENGTH
        h.agent.request(b"POST", b"http://up.example/", None, producer)
        self.assertEqual(
            h.transport().value(),
            b"POST / HTTP/1.1\r\nHost: up.example\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )


class _Immediate:
    """
    A cooperator that runs a task to its end at once.
    """

    def cooperate(self, iterator):
        for _ in iterator:
            pass
        return _Done()


class _Done:
    def whenDone(self):
        return succeed(None)

    def stop(self):
        pass

    def pause(self):
        pass

    def resume(self):
        pass


class ResponseTests(SynchronousTestCase):
    """
    What is read back, however the bytes are split.
    """

    def test_contentLength(self) -> None:
        """
        Status, phrase, fields (without the framing ones) and length come
        with the response; the body follows and ends with L{ResponseDone}.
        """
        for split in (0, 1, 7):
            h = _Harness()
            d = h.request()
            h.answer(OK, split=split)
            response = self.successResultOf(d)
            self.assertEqual((response.code, response.phrase, response.length), (200, b"OK", 11))
            self.assertEqual(list(response.headers.getAllRawHeaders()),
                             [(b"Content-Type", [b"application/json"])])
            self.assertEqual(self.successResultOf(readBody(response)), b"hello world")

    def test_chunked(self) -> None:
        """
        Chunked framing (with extensions and trailers) is undone, split
        anywhere, and the connection can carry the next request.
        """
        for split in (0, 1, 2, 5):
            h = _Harness()
            d = h.request()
            h.answer(CHUNKED, split=split)
            response = self.successResultOf(d)
            self.assertIs(response.length, UNKNOWN_LENGTH)
            self.assertEqual(self.successResultOf(readBody(response)), b"data: 0123456789")
            self.assertIsNone(response.headers.getRawHeaders(b"transfer-encoding"))
            h.request()
            self.assertEqual(len(h.endpoints.connections), 1)

    def test_bodyAsItArrives(self) -> None:
        """
        Each read's worth of body is handed on as it comes, not held back
        until the end.
        """
        h = _Harness()
        reader = h.reading(self, CHUNKED[:CHUNKED.index(b"a\r\n")])
        self.assertEqual(reader.chunks, [b"data: "])
        h.answer(b"a\r\n01234")
        self.assertEqual(reader.chunks, [b"data: ", b"01234"])
        self.assertIsNone(reader.reason)

    def test_untilClose(self) -> None:
        """
        Without a length or chunking the body runs to the close, which ends
        it with L{PotentialDataLoss}; the connection is not kept.
        """
        h = _Harness()
        reader = h.reading(self, b"HTTP/1.1 200 OK\r\n\r\nsome")
        h.answer(b" more")
        h.protocol().connectionLost(Failure(ConnectionDone()))
        self.assertEqual(b"".join(reader.chunks), b"some more")
        reader.reason.trap(PotentialDataLoss)

    def test_untilCloseBroken(self) -> None:
        """
        A body that runs to the close ends as a failure, never as a
        complete answer, when the connection is reset, aborted or broken by
        TLS rather than closed cleanly.
        """
        from OpenSSL import SSL

        for lost in (ConnectionLost(), ConnectionAborted(), SSL.Error([("SSL routines", "", "bad record mac")])):
            h = _Harness()
            reader = h.reading(self, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\":")
            h.protocol().connectionLost(Failure(lost))
            self.assertEqual(b"".join(reader.chunks), b'{"a":')
            reader.reason.trap(ResponseFailed)
            self.assertIs(reader.reason.value.reasons[0].value, lost)

    def test_noBody(self) -> None:
        """
        A HEAD answer, a 204 and a 304 have no body (a HEAD answer keeps
        its Content-Length); the connection is not reused.
        """
        for method, status in [(b"HEAD", b"200 OK"), (b"GET", b"204 No Content"), (b"GET", b"304 Not Modified")]:
            h = _Harness()
            d = h.agent.request(method, b"http://up.example/")
            h.answer(b"HTTP/1.1 " + status + b"\r\nContent-Length: 42\r\n\r\n")
            response = self.successResultOf(d)
            self.assertEqual(self.successResultOf(readBody(response)), b"")
            if method == b"HEAD":
                self.assertEqual(response.headers.getRawHeaders(b"content-length"), [b"42"])
            self.assertTrue(h.transport().disconnecting)
            h.agent.request(b"GET", b"http://up.example/")
            self.assertEqual(len(h.endpoints.connections), 2)

    def test_emptyBody(self) -> None:
        """
        C{Content-Length: 0} ends the response with its head.
        """
        h = _Harness()
        d = h.request()
        h.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.successResultOf(readBody(self.successResultOf(d))), b"")

    def test_interim(self) -> None:
        """
        A 100 Continue before the answer is passed over.
        """
        h = _Harness()
        d = h.request()
        h.answer(b"HTTP/1.1 100 Continue\r\n\r\n" + OK, split=3)
        self.assertEqual(self.successResultOf(d).code, 200)

    def test_malformed(self) -> None:
        """
        A broken status line, field, length or chunk fails the request (or
        the body, once the response started) and drops the connection.
        """
        heads = [
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"ICY 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ]
        for head in heads:
            h = _Harness()
            d = h.request()
            h.answer(head)
            self.failureResultOf(d, ResponseFailed)
            self.assertTrue(h.transport().disconnecting, head)
        for chunks in [b"0x10\r\n", b"-1\r\n", b"zz\r\n", b"3\r\nabcX\r\n"]:
            h = _Harness()
            reader = h.reading(self, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            h.answer(chunks)
            reader.reason.trap(ResponseFailed)
            self.assertTrue(h.transport().disconnecting, chunks)

    def test_controlCharacters(self) -> None:
        """
        A control character (other than a tab) in a field value or the
        reason phrase, a CR or LF alone among them, fails the whole
        response, and says so without repeating the field.
        """
        for head in [
            b"HTTP/1.1 200 OK\r\nX-Id: a\x00b\r\n",
            b"HTTP/1.1 200 OK\r\nX-Id: a\rb\r\n",
            b"HTTP/1.1 200 OK\r\nX-Id: a\r\r\n",
            b"HTTP/1.1 200 OK\r\nX-Id: a\nSet-Cookie: session=stolen\r\n",
            b"HTTP/1.1 200 OK\r\nX-Id: a\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-Id: \x1b[31mred\r\n",
            b"HTTP/1.1 200 OK\r\nX-Id: a\x7f\r\n",
            b"HTTP/1.1 200 OK\r\nX-Id: a\x01\r\n",
            b"HTTP/1.1 200 OK\r\nX-Id: a\x0b\x0c\x1f\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\x00\r\n",
            b"HTTP/1.1 200 O\x00K\r\n",
            b"HTTP/1.1 200 OK\nX-Id: a\r\n",
            b"HTTP/1.1 200 OK\r\nX-\x00Id: a\r\n",
        ]:
            h = _Harness()
            d = h.request()
            h.answer(head + b"Content-Length: 2\r\n\r\n{}")
            failure = self.failureResultOf(d, ResponseFailed)
            error = failure.value.reasons[0].value
            self.assertIsInstance(error, ProtocolError, head)
            self.assertNotIn("X-Id", str(error))
            self.assertTrue(h.transport().disconnecting, head)

    def test_obsFold(self) -> None:
        """
        A field line folded onto the next (a line starting with a space or
        a tab) fails the response.
        """
        for folded in (b"X-Id: a\r\n b\r\n", b"X-Id: a\r\n\tb\r\n", b"X-Id: a\r\n  X-Other: b\r\n"):
            h = _Harness()
            d = h.request()
            h.answer(b"HTTP/1.1 200 OK\r\n" + folded + b"Content-Length: 2\r\n\r\n{}")
            self.assertIsInstance(self.failureResultOf(d, ResponseFailed).value.reasons[0].value, ProtocolError)

    def test_valuesKept(self) -> None:
        """
        A tab, spaces and bytes above 0x7f inside a value are taken as
        they are.
        """
        h = _Harness()
        d = h.request()
        h.answer(b"HTTP/1.1 200 OK\r\nX-Id: a\tb  c\xe9\xff\r\nContent-Length: 2\r\n\r\n{}")
        self.assertEqual(self.successResultOf(d).headers.getRawHeaders(b"x-id"), [b"a\tb  c\xe9\xff"])

    def test_headTooLong(self) -> None:
        """
        A response head that never ends is cut off.
        """
        h = _Harness()
        d = h.request()
        h.answer(b"HTTP/1.1 200 OK\r\n" + b"X-Long: " + b"a" * 70000)
        self.failureResultOf(d, ResponseFailed)

    def test_lostMidBody(self) -> None:
        """
        A connection lost before the body is whole ends it with
        L{ResponseFailed}, never L{ResponseDone}.
        """
        for answer in (OK[:-3], CHUNKED[:-10]):
            h = _Harness()
            reader = h.reading(self, answer)
            h.protocol().connectionLost(Failure(ConnectionLost()))
            reader.reason.trap(ResponseFailed)

    def test_lostBeforeAnswer(self) -> None:
        """
        A connection lost before the answer fails the request.
        """
        h = _Harness()
        d = h.request()
        h.protocol().connectionLost(Failure(ConnectionLost()))
        self.failureResultOf(d, ResponseFailed)

    def test_connectFailed(self) -> None:
        """
        A failed connection attempt fails the request with its reason.
        """
        h = _Harness()
        h.endpoints.failure = Failure(ConnectionRefusedError())
        self.failureResultOf(h.request(), ConnectionRefusedError)

    def test_extraBytes(self) -> None:
        """
        Bytes after the end of the answer mean the connection can't be
        trusted: it is closed, not pooled.
        """
        h = _Harness()
        d = h.request()
        h.answer(OK + b"HTTP/1.1 200 OK\r\n")
        self.assertEqual(self.successResultOf(readBody(self.successResultOf(d))), b"hello world")
        self.assertTrue(h.transport().disconnecting)
        h.request()
        self.assertEqual(len(h.endpoints.connections), 2)


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"


class ChunkedTests(SynchronousTestCase):
    """
    A chunked body is taken only as RFC 9112 frames it; anything else ends
    the body as a failure and drops the connection, whether it comes with
    the head, in a read of its own, or a byte at a time.
    """

    def read(self, body: bytes) -> list[tuple[_Harness, _Reader]]:
        """
        The body read after C{CHUNKED_HEAD}, each way it may arrive.
        """
        results = []
        for way in ("with the head", "after the head", "byte by byte"):
            h = _Harness()
            d = h.request()
            if way == "with the head":
                h.answer(CHUNKED_HEAD + body)
            else:
                h.answer(CHUNKED_HEAD)
                h.answer(body, split=1 if way == "byte by byte" else 0)
            reader = _Reader()
            self.successResultOf(d).deliverBody(reader)
            results.append((h, reader))
        return results

    def assertMalformed(self, body: bytes) -> None:
        for h, reader in self.read(body):
            self.assertIsNotNone(reader.reason, body[:40])
            reader.reason.trap(ResponseFailed)
            self.assertIsInstance(reader.reason.value.reasons[0].value, ProtocolError)
            self.assertTrue(h.transport().disconnecting, body[:40])

    def assertWhole(self, body: bytes, expected: bytes) -> None:
        for h, reader in self.read(body):
            self.assertEqual(b"".join(reader.chunks), expected)
            reader.reason.trap(ResponseDone)

    def test_badSize(self) -> None:
        """
        A chunk size that is not plain hexadecimal digits fails the body.
        """
        for line in (b"0x10", b"-1", b"+5", b"zz", b" 5", b"5 5", b"1_0", b"", b"5\x00", b"\xd9\xa5",
                     b"5\x0b", b"5\nabcde"):
            self.assertMalformed(line + b"\r\nhello\r\n0\r\n\r\n")

    def test_sizeLineTooLong(self) -> None:
        """
        A size line longer than 4096 bytes fails the body, whether its end
        has come or not.
        """
        self.assertMalformed(b"5;" + b"a" * 5000)
        self.assertMalformed(b"5;" + b"a" * 5000 + b"\r\nhello\r\n0\r\n\r\n")
        self.assertMalformed(b"0" * 5000 + b"5\r\nhello\r\n0\r\n\r\n")

    def test_sizeOverLimit(self) -> None:
        """
        A chunk said to be 2 GiB or more is not waited for.
        """
        for size in (b"80000000", b"ffffffffffffffff", b"10000000000000000"):
            self.assertMalformed(size + b"\r\nhello")

    def test_noCRLFAfterData(self) -> None:
        """
        Chunk data not followed by CRLF fails the body.
        """
        for body in (b"3\r\nabcX\r\n0\r\n\r\n", b"3\r\nabc\n0\r\n\r\n", b"3\r\nabc\rX0\r\n\r\n",
                     b"3\r\nabcde\r\n0\r\n\r\n"):
            self.assertMalformed(body)

    def test_extensions(self) -> None:
        """
        Chunk extensions are passed over; one holding a control character
        fails the body.
        """
        self.assertWhole(b"5;name=value\r\nhello\r\n5 ; q=\"a b\"\r\nworld\r\n0;last\r\n\r\n", b"helloworld")
        for extension in (b";a=\x00", b";a\nb", b";\x1b", b";\x7f"):
            self.assertMalformed(b"5" + extension + b"\r\nhello\r\n0\r\n\r\n")

    def test_trailers(self) -> None:
        """
        A trailer section is read and dropped; a malformed trailer line, or
        a section that does not end within 64 KiB, fails the body.
        """
        self.assertWhole(b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-More: \r\n\r\n", b"hello")
        for trailer in (b"no colon", b"Bad Name: x", b" folded: x", b"X-T: a\x00b", b"X-T: \x1b"):
            self.assertMalformed(b"5\r\nhello\r\n0\r\n" + trailer + b"\r\n\r\n")
        self.assertMalformed(b"5\r\nhello\r\n0\r\n" + b"X-T: a\r\n" * 20000)


class ControlTests(SynchronousTestCase):
    """
    Backpressure, cancellation and giving up.
    """

    def test_pause(self) -> None:
        """
        The body's reader pauses and resumes the upstream socket; a
        connection handed back to the pool is never left paused.
        """
        h = _Harness()
        reader = h.reading(self, OK[:-5])
        reader.transport.pauseProducing()
        self.assertEqual(h.transport().producerState, "paused")
        reader.transport.resumeProducing()
        self.assertEqual(h.transport().producerState, "producing")
        reader.transport.pauseProducing()
        h.answer(b"world")
        self.assertEqual(h.transport().producerState, "producing")
        reader.reason.trap(ResponseDone)

    def test_stop(self) -> None:
        """
        Stopping the body drops the connection.
        """
        h = _Harness()
        reader = h.reading(self, OK[:-5])
        reader.transport.stopProducing()
        self.assertTrue(h.transport().disconnected)

    def test_cancel(self) -> None:
        """
        Cancelling before the answer drops the connection and fails with
        L{CancelledError}.
        """
        h = _Harness()
        d = h.request()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(h.transport().disconnected)
        h.protocol().connectionLost(Failure(ConnectionLost()))

    def test_cancelWhileConnecting(self) -> None:
        """
        Cancelling while connecting cancels the attempt.
        """
        h = _Harness()
        cancelled = []
        h.endpoints.connect = lambda factory: Deferred(cancelled.append)
        d = h.request()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(len(cancelled), 1)


class PoolTests(SynchronousTestCase):
    """
    Kept-alive connections, per origin.
    """

    def test_reuse(self) -> None:
        """
        A connection whose answer is over carries the next request to the
        same origin; another origin gets its own.
        """
        h = _Harness()
        d = h.request()
        h.answer(OK)
        self.successResultOf(readBody(self.successResultOf(d)))
        h.request()
        self.assertEqual(len(h.endpoints.connections), 1)
        self.assertEqual(h.transport().value().count(b"POST /v1/chat"), 2)
        h.request(uri=b"http://other.example/")
        self.assertEqual(len(h.endpoints.connections), 2)

    def test_busy(self) -> None:
        """
        A connection still carrying an answer is not shared.
        """
        h = _Harness()
        h.request()
        h.request()
        self.assertEqual(len(h.endpoints.connections), 2)

    def test_notKept(self) -> None:
        """
        C{Connection: close} and HTTP/1.0 answers close the connection.
        """
        for answer in (OK.replace(b"OK\r\n", b"OK\r\nConnection: keep-alive, Close\r\n", 1),
                       OK.replace(b"HTTP/1.1", b"HTTP/1.0")):
            h = _Harness()
            d = h.request()
            h.answer(answer)
            self.successResultOf(readBody(self.successResultOf(d)))
            self.assertTrue(h.transport().disconnecting)
            h.request()
            self.assertEqual(len(h.endpoints.connections), 2)

    def test_idleTimeout(self) -> None:
        """
        A connection idle for longer than C{idleTimeout} is closed rather
        than reused.
        """
        h = _Harness(idleTimeout=30)
        d = h.request()
        h.answer(OK)
        self.successResultOf(readBody(self.successResultOf(d)))
        h.clock.advance(31)
        h.request()
        self.assertTrue(h.transport(0).disconnecting)
        self.assertEqual(len(h.endpoints.connections), 2)

    def test_maxIdle(self) -> None:
        """
        Beyond C{maxIdle} idle connections per origin, a finished one is
        closed.
        """
        h = _Harness(maxIdle=1)
        first, second = h.request(), h.request()
        h.answer(OK, index=0)
        h.answer(OK, index=1)
        for d in (first, second):
            self.successResultOf(readBody(self.successResultOf(d)))
        self.assertEqual([t.disconnecting for t, _ in h.endpoints.connections], [False, True])

    def test_closedWhileIdle(self) -> None:
        """
        An idle connection the upstream closes leaves the pool.
        """
        h = _Harness()
        d = h.request()
        h.answer(OK)
        self.successResultOf(readBody(self.successResultOf(d)))
        h.protocol().connectionLost(Failure(ConnectionDone()))
        h.request()
        self.assertEqual(len(h.endpoints.connections), 2)


def _carrying(h: _Harness) -> int:
    """
    The index of the one connection that carries a request.
    """
    [index] = [i for i, (_, protocol) in enumerate(h.endpoints.connections) if protocol.exchange is not None]
    return index


def _answered(case: SynchronousTestCase, h: _Harness, d: Deferred, answer: bytes = OK) -> int:
    """
    Answer the request C{d} with C{answer} and read its body whole; returns
    the index of the connection it went on.
    """
    index = _carrying(h)
    h.answer(answer, index=index)
    case.successResultOf(readBody(case.successResultOf(d)))
    return index


def _keeping(hint: bytes) -> bytes:
    """
    L{OK} with C{Keep-Alive: hint}.
    """
    return OK.replace(b"OK\r\n", b"OK\r\nKeep-Alive: " + hint + b"\r\n", 1)


class IdleTimeTests(SynchronousTestCase):
    """
    How long an idle connection is used again: the agent's idle time (per
    origin if set so), shortened by the upstream's C{Keep-Alive} hint.
    """

    def reusedAfter(self, h: _Harness, seconds: float, answer: bytes = OK,
                    uri: bytes = b"http://up.example:8000/v1/chat?x=1") -> bool:
        """
        Whether a request sent C{seconds} after C{answer} ended goes on the
        connection that carried it; an idle one not reused is closed.
        """
        used = h.transport(_answered(self, h, h.request(uri=uri), answer))
        before = len(h.endpoints.connections)
        h.clock.advance(seconds)
        d = h.request(uri=uri)
        reused = len(h.endpoints.connections) == before
        self.assertEqual(used.disconnecting, not reused)
        self.assertEqual(h.transport(_answered(self, h, d)) is used, reused)
        return reused

    def test_defaultIdleTime(self) -> None:
        """
        By default a connection idle for 4 s is not used again (Node and
        uvicorn close theirs after 5 s); one idle for less is.
        """
        self.assertTrue(self.reusedAfter(_Harness(), 3.9))
        self.assertFalse(self.reusedAfter(_Harness(), 4.0))

    def test_keepAliveHint(self) -> None:
        """
        C{Keep-Alive: timeout=5} keeps a connection 4 s at most (a 1 s
        margin), even when the agent would keep it longer; parameters
        around it and the field's case do not matter.
        """
        for hint in (b"timeout=5", b"timeout=5, max=1000", b"max=99, TimeOut = 5", b'timeout="5"'):
            self.assertTrue(self.reusedAfter(_Harness(idleTimeout=30), 3.9, _keeping(hint)), hint)
            self.assertFalse(self.reusedAfter(_Harness(idleTimeout=30), 4.0, _keeping(hint)), hint)

    def test_shortHints(self) -> None:
        """
        A hint under 2 s loses half of itself rather than a whole second;
        C{timeout=0} keeps nothing: the connection is closed at once.
        """
        for hint, keep in ((b"2", 1.0), (b"1", 0.5)):
            self.assertTrue(self.reusedAfter(_Harness(), keep - 0.01, _keeping(b"timeout=" + hint)), hint)
            self.assertFalse(self.reusedAfter(_Harness(), keep, _keeping(b"timeout=" + hint)), hint)
        h = _Harness()
        _answered(self, h, h.request(), _keeping(b"timeout=0"))
        self.assertTrue(h.transport().disconnecting)

    def test_hintNeverLongerThanIdleTime(self) -> None:
        """
        A hint longer than the agent's idle time does not lengthen it.
        """
        self.assertFalse(self.reusedAfter(_Harness(idleTimeout=4), 4.0, _keeping(b"timeout=600")))
        self.assertFalse(self.reusedAfter(_Harness(idleTimeout=2), 2.5, _keeping(b"timeout=5")))

    def test_shortestHint(self) -> None:
        """
        Of several timeouts, in one field or in several, the shortest holds.
        """
        answer = OK.replace(b"OK\r\n", b"OK\r\nKeep-Alive: timeout=30\r\nKeep-Alive: timeout=3, timeout=9\r\n", 1)
        self.assertTrue(self.reusedAfter(_Harness(idleTimeout=60), 1.9, answer))
        self.assertFalse(self.reusedAfter(_Harness(idleTimeout=60), 2.0, answer))

    def test_malformedHint(self) -> None:
        """
        A hint that is not whole seconds, or a field without one, says
        nothing: the agent's idle time holds.
        """
        for hint in (b"timeout=abc", b"timeout=-3", b"timeout=1.5", b"timeout=", b"max=5", b"timeout=5x",
                     b"timeout=1234567890"):
            self.assertTrue(self.reusedAfter(_Harness(idleTimeout=30), 29, _keeping(hint)), hint)

    def test_hintPerAnswer(self) -> None:
        """
        Each answer's hint holds for the time after it: a later answer
        without one gives the connection the agent's idle time again.
        """
        h = _Harness(idleTimeout=30)
        self.assertTrue(self.reusedAfter(h, 0, _keeping(b"timeout=2")))
        self.assertTrue(self.reusedAfter(h, 10))
        self.assertEqual(len(h.endpoints.connections), 1)

    def test_perOrigin(self) -> None:
        """
        Idle times set per origin, by any URL on it, hold for that origin
        alone; setting them anew replaces them all, for connections that go
        idle from then on.
        """
        a, b, c = b"http://up.example:8000/v1/chat", b"https://other.example/", b"http://third.example/"
        h = _Harness(idleTimeout=3, idleTimeouts={"http://UP.example:8000/v1": 10, b"https://other.example:443": 1})
        self.assertTrue(self.reusedAfter(h, 9.9, uri=a))
        self.assertFalse(self.reusedAfter(h, 1.0, uri=b))
        self.assertTrue(self.reusedAfter(h, 2.9, uri=c))
        self.assertFalse(self.reusedAfter(h, 3.0, uri=c))
        h.agent.setIdleTimeouts({b"http://third.example:80/v1": 20, "http://third.example": 6})
        self.assertFalse(self.reusedAfter(h, 3.0, uri=a))
        self.assertTrue(self.reusedAfter(h, 2.9, uri=b))
        self.assertTrue(self.reusedAfter(h, 5.9, uri=c))
        self.assertFalse(self.reusedAfter(h, 6.0, uri=c))

    def test_badOriginKey(self) -> None:
        """
        An idle time keyed by something that is not an http(s) URL is
        refused.
        """
        h = _Harness()
        for key in ("up.example", "ftp://up.example/", "/v1"):
            self.assertRaises(ValueError, h.agent.setIdleTimeouts, {key: 1})


class ResendTests(SynchronousTestCase):
    """
    A request that meets the upstream's close of a kept-alive connection
    before a byte of the answer came is written once more, on a new
    connection; never otherwise.
    """

    def reusing(self, h: _Harness, method: bytes = b"POST", body: Any = b'{"a":1}') -> tuple[Deferred, bytes]:
        """
        Send a request on a connection that carried one already; returns it
        and the bytes it wrote.
        """
        _answered(self, h, h.request())
        before = len(h.transport(0).value())
        if isinstance(body, bytes) or body is None:
            d = h.request(method=method, body=body)
        else:
            d = h.agent.request(method, b"http://up.example:8000/v1/chat?x=1", None, body)
        self.assertEqual(len(h.endpoints.connections), 1)
        return d, h.transport(0).value()[before:]

    def test_resentOnNewConnection(self) -> None:
        """
        A POST with its body, or a GET, written on a reused connection that
        then closes or is reset with nothing received, is written again,
        the same bytes, on a new connection, and gets its answer there.
        """
        for method, body in ((b"POST", b'{"model":"m"}'), (b"GET", None), (b"POST", b"")):
            for lost in (ConnectionDone(), ConnectionLost()):
                h = _Harness()
                d, sent = self.reusing(h, method, body)
                h.protocol(0).connectionLost(Failure(lost))
                self.assertEqual(len(h.endpoints.connections), 2)
                self.assertEqual(h.transport(1).value(), sent)
                self.assertNoResult(d)
                h.answer(OK, index=1)
                self.assertEqual(self.successResultOf(readBody(self.successResultOf(d))), b"hello world")

    def test_resentOnce(self) -> None:
        """
        When the new connection fails too, the request fails: it is not
        written a third time.
        """
        h = _Harness()
        d, _ = self.reusing(h)
        h.protocol(0).connectionLost(Failure(ConnectionDone()))
        h.protocol(1).connectionLost(Failure(ConnectionLost()))
        self.failureResultOf(d, ResponseFailed)
        self.assertEqual(len(h.endpoints.connections), 2)

    def test_resendConnectFails(self) -> None:
        """
        When the new connection cannot be made, the request fails with the
        reason.
        """
        h = _Harness()
        d, _ = self.reusing(h)
        h.endpoints.failure = Failure(ConnectionRefusedError())
        h.protocol(0).connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, ConnectionRefusedError)

    def test_cancelWhileResending(self) -> None:
        """
        Cancelling while the new connection is being made cancels it.
        """
        h = _Harness()
        d, _ = self.reusing(h)
        cancelled = []
        h.endpoints.connect = lambda factory: Deferred(cancelled.append)
        h.protocol(0).connectionLost(Failure(ConnectionDone()))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(len(cancelled), 1)

    def test_notAfterAByte(self) -> None:
        """
        Once any byte of the answer came (part of a head, an interim
        answer, a head, part of a body), a lost connection fails the
        request or its body: nothing is written again.
        """
        for partial in (b"H", b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 100 Continue\r\n\r\n"):
            for lost in (ConnectionDone(), ConnectionLost()):
                h = _Harness()
                d, _ = self.reusing(h)
                h.answer(partial)
                h.protocol(0).connectionLost(Failure(lost))
                self.failureResultOf(d, ResponseFailed)
                self.assertEqual(len(h.endpoints.connections), 1, partial)
        for partial in (OK[:OK.index(b"\r\n\r\n") + 4], OK[:-1]):
            h = _Harness()
            d, _ = self.reusing(h)
            h.answer(partial)
            reader = _Reader()
            self.successResultOf(d).deliverBody(reader)
            h.protocol(0).connectionLost(Failure(ConnectionLost()))
            reader.reason.trap(ResponseFailed)
            self.assertEqual(len(h.endpoints.connections), 1)

    def test_notOnFreshConnection(self) -> None:
        """
        A request on a new connection that is closed or reset before the
        answer fails: the upstream could not have closed it for idleness.
        """
        for lost in (ConnectionDone(), ConnectionLost()):
            h = _Harness()
            d = h.request()
            h.protocol(0).connectionLost(Failure(lost))
            self.failureResultOf(d, ResponseFailed)
            self.assertEqual(len(h.endpoints.connections), 1)

    def test_bodyNotReplayable(self) -> None:
        """
        A request whose body came from a producer other than L{BytesBody}
        (of known length or not) is never written again: its body is gone.
        """
        import io

        for length in (3, UNKNOWN_LENGTH):
            h = _Harness()
            producer = FileBodyProducer(io.BytesIO(b"abc"), cooperator=_Immediate())
            producer.length = length
            d, sent = self.reusing(h, body=producer)
            self.assertTrue(sent.endswith(b"abc") or sent.endswith(b"0\r\n\r\n"), sent)
            h.protocol(0).connectionLost(Failure(ConnectionDone()))
            self.failureResultOf(d, ResponseFailed)
            self.assertEqual(len(h.endpoints.connections), 1)


# An answer a faulty or hostile upstream sends where none was asked for.
SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\nsomeone else's!!!"


class _Resuming(StringTransport):
    """
    A transport that, like a TLS one with bytes already read, delivers
    C{pending} as soon as it is resumed.
    """

    pending = b""

    def resumeProducing(self) -> None:
        super().resumeProducing()
        pending, self.pending = self.pending, b""
        if pending:
            self.protocol.dataReceived(pending)


class ReuseTests(SynchronousTestCase):
    """
    One caller's answer never reaches another: a connection whose answer's
    end is in doubt is not used again, and bytes that come when no request
    is waiting close the connection.
    """

    def assertOwnAnswer(self, h: _Harness, second: Deferred, index: int = -1) -> None:
        """
        C{second} is still waiting; answered on connection C{index}, it gets
        that answer and nothing else.
        """
        self.assertNoResult(second)
        h.answer(OK, index=index)
        self.assertEqual(self.successResultOf(readBody(self.successResultOf(second))), b"hello world")

    def test_bodylessAnswerNotReused(self) -> None:
        """
        After an answer to HEAD, a 204 or a 304, with or without a length,
        the next request goes on a new connection, so a body the upstream
        sends late never becomes the next caller's answer.
        """
        for method, head in [
            (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n"),
            (b"HEAD", b"HTTP/1.1 200 OK\r\n\r\n"),
            (b"HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            (b"GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
            (b"GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"),
            (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 42\r\n\r\n"),
            (b"DELETE", b"HTTP/1.1 204 No Content\r\nContent-Type: application/json\r\n\r\n"),
        ]:
            for late in (SMUGGLED, b'{"id": "file-1"}'):
                h = _Harness()
                d = h.agent.request(method, b"http://up.example/")
                h.answer(head)
                self.assertEqual(self.successResultOf(readBody(self.successResultOf(d))), b"")
                second = h.agent.request(b"GET", b"http://up.example/")
                h.answer(late, index=0)
                self.assertEqual(len(h.endpoints.connections), 2, (method, head))
                self.assertOwnAnswer(h, second)

    def test_bodylessAnswerWithBodyAtOnce(self) -> None:
        """
        A body sent in the same read as the head of a bodyless answer is
        not taken as anything: the connection is closed.
        """
        for method, head in [(b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n"),
                             (b"GET", b"HTTP/1.1 204 No Content\r\n\r\n")]:
            h = _Harness()
            d = h.agent.request(method, b"http://up.example/")
            h.answer(head + SMUGGLED)
            self.assertEqual(self.successResultOf(readBody(self.successResultOf(d))), b"")
            self.assertTrue(h.transport(0).disconnecting)
            second = h.agent.request(b"GET", b"http://up.example/")
            self.assertEqual(len(h.endpoints.connections), 2)
            self.assertOwnAnswer(h, second)

    def test_lateBytesAfterAnswer(self) -> None:
        """
        Bytes after a whole answer (with a length, or chunked), in a later
        read, close the connection and take it out of the pool at once,
        before it has closed: the next request goes on a new one.
        """
        for answer in (OK, CHUNKED):
            for late in (SMUGGLED, b"x"):
                h = _Harness()
                d = h.request()
                h.answer(answer)
                self.successResultOf(readBody(self.successResultOf(d)))
                h.answer(late, index=0)
                self.assertTrue(h.transport(0).disconnecting)
                second = h.request()
                self.assertEqual(len(h.endpoints.connections), 2)
                self.assertEqual(h.transport(0).value().count(b"POST"), 1)
                self.assertOwnAnswer(h, second)

    def test_extraBytesSplitAnywhere(self) -> None:
        """
        However the answer and the bytes after it are split across reads,
        the next caller gets its own answer on a new connection.
        """
        for answer, body in ((OK, b"hello world"), (CHUNKED, b"data: 0123456789")):
            for split in range(1, len(answer + SMUGGLED) + 1):
                h = _Harness()
                d = h.request()
                h.answer(answer + SMUGGLED, split=split)
                self.assertEqual(self.successResultOf(readBody(self.successResultOf(d))), body)
                second = h.request()
                self.assertEqual(len(h.endpoints.connections), 2, split)
                self.assertOwnAnswer(h, second)

    def test_bytesWhileReturningToPool(self) -> None:
        """
        Bytes that come between the end of an answer and the connection's
        return to the pool (here, as a paused transport is resumed) keep it
        out of the pool.
        """
        h = _Harness()
        h.endpoints.transportFactory = _Resuming
        reader = h.reading(self, OK[:-5])
        reader.transport.pauseProducing()
        h.transport(0).pending = SMUGGLED
        h.answer(b"world")
        reader.reason.trap(ResponseDone)
        self.assertTrue(h.transport(0).disconnecting)
        second = h.request()
        self.assertEqual(len(h.endpoints.connections), 2)
        self.assertOwnAnswer(h, second)

    def test_bytesAfterDropped(self) -> None:
        """
        Once a connection is dropped (its head broke HTTP/1.1, or its
        request was cancelled), whatever comes on it before it has closed
        is not read: a well-formed answer after it never puts the
        connection back in the pool.
        """
        for first in (b"HTTP/1.1 200 OK\r\nX-Id: \x00\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                      None):
            h = _Harness()
            d = h.request()
            if first is None:
                d.cancel()
                self.failureResultOf(d, CancelledError)
            else:
                h.answer(first)
                self.failureResultOf(d, ResponseFailed)
            self.assertTrue(h.transport(0).disconnecting)
            h.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", index=0)
            second = h.request()
            self.assertEqual(len(h.endpoints.connections), 2, first)
            self.assertOwnAnswer(h, second)

    def test_lengthAndChunked(self) -> None:
        """
        An answer with both C{Content-Length} and C{Transfer-Encoding:
        chunked}, in either order, is read as chunked and its connection
        is not used again.
        """
        for fields in (b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
                       b"Transfer-Encoding: chunked\r\nContent-Length: 300\r\n",
                       b"Content-Length: nonsense\r\nTransfer-Encoding: chunked\r\n"):
            h = _Harness()
            d = h.request()
            h.answer(b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n5\r\nhello\r\n0\r\n\r\n")
            response = self.successResultOf(d)
            self.assertIs(response.length, UNKNOWN_LENGTH)
            self.assertEqual(self.successResultOf(readBody(response)), b"hello")
            self.assertTrue(h.transport(0).disconnecting)
            h.request()
            self.assertEqual(len(h.endpoints.connections), 2, fields)

    def test_transferCodings(self) -> None:
        """
        Chunked as the last transfer coding frames the body; after another
        coding, the body runs to the close.  Only C{chunked} alone lets the
        connection be used again.
        """
        for codings, body, kept in [
            ([b"chunked"], b"hello", True),
            ([b"Chunked"], b"hello", True),
            ([b"gzip, chunked"], b"hello", False),
            ([b"gzip", b"chunked"], b"hello", False),
            ([b"chunked, gzip"], b"5\r\nhello\r\n0\r\n\r\n", False),
            ([b"chunked", b"gzip"], b"5\r\nhello\r\n0\r\n\r\n", False),
        ]:
            h = _Harness()
            d = h.request()
            fields = b"".join(b"Transfer-Encoding: " + c + b"\r\n" for c in codings)
            h.answer(b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n5\r\nhello\r\n0\r\n\r\n")
            reader = _Reader()
            self.successResultOf(d).deliverBody(reader)
            if reader.reason is None:
                h.protocol(0).connectionLost(Failure(ConnectionDone()))
            self.assertEqual(b"".join(reader.chunks), body, codings)
            h.request()
            self.assertEqual(len(h.endpoints.connections), 1 if kept else 2, codings)

    def test_badLengths(self) -> None:
        """
        Differing, negative, signed, empty or non-digit lengths fail the
        request and drop the connection; the same length twice is one
        length.
        """
        for fields in [
            b"Content-Length: 1, 2\r\n",
            b"Content-Length: 5\r\nContent-Length: 6\r\n",
            b"Content-Length: -1\r\n",
            b"Content-Length: +5\r\n",
            b"Content-Length: 0x5\r\n",
            b"Content-Length: 5 5\r\n",
            b"Content-Length: \r\n",
            b"Content-Length: 1e3\r\n",
            "Content-Length: \u0665\r\n".encode("utf-8"),
            b"Content-Length: 1234567890123456789\r\n",
        ]:
            for method in (b"GET", b"HEAD"):
                h = _Harness()
                d = h.agent.request(method, b"http://up.example/")
                h.answer(b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n")
                self.failureResultOf(d, ResponseFailed).value.args, (method, fields)
                self.assertTrue(h.transport().disconnecting, fields)
        for fields in (b"Content-Length: 5, 5\r\n", b"Content-Length: 5\r\nContent-Length: 5\r\n"):
            h = _Harness()
            d = h.request()
            h.answer(b"HTTP/1.1 200 OK\r\n" + fields + b"\r\nhello")
            self.assertEqual(self.successResultOf(readBody(self.successResultOf(d))), b"hello")


class _Lookups:
    """
    A name resolver that records the names it is asked for and finds none.
    """

    def __init__(self) -> None:
        self.names: list[str] = []

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None, transportSemantics="TCP"):
        self.names.append(hostName)
        receiver.resolutionBegan(None)
        receiver.resolutionComplete()
        return receiver


class EndpointTests(SynchronousTestCase):
    """
    How the agent reaches an origin by default: an IP address directly, a
    host name through the reactor's resolver, again for every connection.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.lookups = _Lookups()
        self.reactor.nameResolver = self.lookups
        self.agent = UpstreamAgent(self.reactor, connectTimeout=7)

    def test_ipv4(self) -> None:
        """
        An IPv4 origin is connected to at once, with the agent's connect
        timeout, and nothing is looked up.
        """
        self.agent.request(b"POST", b"http://127.0.0.1:9000/v1/chat/completions", None, BytesBody(b"{}"))
        self.assertEqual([c[:2] + (c[3],) for c in self.reactor.tcpClients], [("127.0.0.1", 9000, 7)])
        self.assertEqual(self.lookups.names, [])

    def test_ipv6(self) -> None:
        """
        So is an IPv6 origin, written in brackets in the URL.
        """
        self.agent.request(b"GET", b"http://[::1]:9000/v1/models")
        self.assertEqual([c[:2] for c in self.reactor.tcpClients], [("::1", 9000)])
        self.assertEqual(self.lookups.names, [])

    def test_hostName(self) -> None:
        """
        A host name is looked up for each new connection, so a change in
        DNS is followed; one that resolves to nothing fails the request
        with L{DNSLookupError}.
        """
        for _ in range(2):
            d = self.agent.request(b"GET", b"http://llm.example:8000/v1/models")
            self.assertIsInstance(self.failureResultOf(d).value, DNSLookupError)
        self.assertEqual(self.lookups.names, ["llm.example", "llm.example"])
        self.assertEqual(self.reactor.tcpClients, [])


class RealSocketTests(TestCase):
    """
    The agent against the fake LLM, over loopback.
    """

    def setUp(self) -> None:
        self.port = reactor.listenTCP(0, Site(FakeLLM(reactor)), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.agent = UpstreamAgent(reactor)
        self.addCleanup(self.agent.closeCachedConnections)
        self.url = b"http://127.0.0.1:%d/v1/chat/completions" % self.port.getHost().port

    async def test_chatKeptAlive(self) -> None:
        """
        Two completions in a row: both whole, over one connection.
        """
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
        peers = []
        for _ in range(2):
            response = await self.agent.request(b"POST", self.url, Headers({b"content-type": [b"application/json"]}),
                                                BytesBody(body))
            self.assertEqual(response.code, 200)
            answer = json.loads(await readBody(response))
            self.assertEqual(answer["object"], "chat.completion")
            origin = next(iter(self.agent._origins.values()))
            peers.append(origin.idle[-1][0].transport.getHost().port)
        self.assertEqual(peers[0], peers[1])

    async def test_streamArrivesInPieces(self) -> None:
        """
        A stream's events reach the reader as the upstream sends them.
        """
        body = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
        response = await self.agent.request(
            b"POST", self.url, Headers({b"x-fakellm-chunks": [b"3"], b"x-fakellm-gap": [b"30"]}), BytesBody(body)
        )
        done: Deferred = Deferred()

        class Reader(_Reader):
            def dataReceived(self, data: bytes) -> None:
                self.chunks.append((reactor.seconds(), data))

            def connectionLost(self, reason: Failure) -> None:
                self.reason = reason
                done.callback(None)

        reader = Reader()
        response.deliverBody(reader)
        await done
        reader.reason.trap(ResponseDone)
        text = b"".join(data for _, data in reader.chunks)
        self.assertIn(b"data: [DONE]", text)
        self.assertGreaterEqual(len(reader.chunks), 3)
        self.assertGreater(reader.chunks[-1][0] - reader.chunks[0][0], 0.05)

    async def test_upstreamClosingIdle(self) -> None:
        """
        An upstream that closes connections idle for 50 ms, asked 600
        POSTs (ten callers side by side, sixty each in turn) with gaps
        around 50 ms, so that many meet its close on the way: every one
        gets its answer.
        """
        from twisted.internet.task import deferLater

        class Closing(Protocol):
            """
            Answers each request (a head and its Content-Length body), and
            closes the connection 50 ms after the last answer.
            """

            timer = None
            buffer = b""

            def dataReceived(self, data: bytes) -> None:
                if self.timer is not None and self.timer.active():
                    self.timer.cancel()
                self.buffer += data
                while b"\r\n\r\n" in self.buffer:
                    head, _, rest = self.buffer.partition(b"\r\n\r\n")
                    length = int(head.lower().partition(b"content-length:")[2].split(b"\r\n")[0] or b"0")
                    if len(rest) < length:
                        break
                    self.buffer = rest[length:]
                    self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                self.timer = reactor.callLater(0.05, self.transport.loseConnection)

            def connectionLost(self, reason: Failure) -> None:
                if self.timer is not None and self.timer.active():
                    self.timer.cancel()

        gaps = random.Random(16)
        failures: list[str] = []

        async def caller() -> None:
            # Each caller has an upstream (an origin) of its own, so that
            # its next request finds the connection idle for the gap alone.
            port = reactor.listenTCP(0, Factory.forProtocol(Closing), interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            url = b"http://127.0.0.1:%d/v1/chat/completions" % port.getHost().port
            for _ in range(60):
                try:
                    response = await self.agent.request(b"POST", url, None, BytesBody(b'{"model": "m"}'))
                    self.assertEqual(await readBody(response), b"ok")
                except Exception as e:
                    failures.append(repr(e))
                await deferLater(reactor, gaps.uniform(0.045, 0.055), lambda: None)

        await gatherResults([Deferred.fromCoroutine(caller()) for _ in range(10)])
        self.assertEqual(failures, [])

    async def _cut(self, answer: bytes, reset: bool) -> _Reader:
        """
        Read the body of C{answer} from an upstream that writes it, then
        closes the connection: with a reset (RST) when C{reset}, cleanly
        otherwise.
        """
        import socket
        import struct

        class Cutting(Protocol):
            def dataReceived(self, data: bytes) -> None:
                if b"\r\n\r\n" in data:
                    self.transport.write(answer)
                    reactor.callLater(0.05, self.cut)

            def cut(self) -> None:
                if reset:
                    self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                          struct.pack("ii", 1, 0))
                    self.transport.abortConnection()
                else:
                    self.transport.loseConnection()

        factory = Factory.forProtocol(Cutting)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        response = await self.agent.request(b"GET", b"http://127.0.0.1:%d/v1/models" % port.getHost().port)
        return await _readToEnd(response)

    async def test_resetUntilClose(self) -> None:
        """
        A body framed by the close, cut by a reset, ends as a failure; the
        same body ended by a clean close ends as L{PotentialDataLoss}.
        """
        answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + b"x" * 80
        reader = await self._cut(answer, reset=True)
        self.assertEqual(b"".join(reader.chunks), b"x" * 80)
        reader.reason.trap(ResponseFailed)
        reader = await self._cut(answer, reset=False)
        self.assertEqual(b"".join(reader.chunks), b"x" * 80)
        reader.reason.trap(PotentialDataLoss)

    async def test_cutShort(self) -> None:
        """
        A body cut short of its length (80 bytes of 220) or of its last
        chunk ends as a failure, whether by a reset or by a clean close.
        """
        for answer in (b"HTTP/1.1 200 OK\r\nContent-Length: 220\r\n\r\n" + b"x" * 80,
                       b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n50\r\n" + b"x" * 80 + b"\r\n"):
            for reset in (True, False):
                reader = await self._cut(answer, reset)
                self.assertEqual(b"".join(reader.chunks), b"x" * 80)
                reader.reason.trap(ResponseFailed)

    async def test_tls(self) -> None:
        """
        An https origin: the certificate is checked against the trust root
        and the answer read through TLS, kept alive as over TCP.
        """
        from twisted.internet.ssl import PrivateCertificate

        certificate = PrivateCertificate.loadPEM(_selfSigned("localhost"))
        port = reactor.listenSSL(0, Site(FakeLLM(reactor)), certificate.options(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        agent = UpstreamAgent(reactor, endpointFactory=_TrustingEndpoints(reactor, certificate))
        self.addCleanup(agent.closeCachedConnections)
        url = b"https://localhost:%d/v1/models" % port.getHost().port
        for _ in range(2):
            response = await agent.request(b"GET", url)
            self.assertEqual(response.code, 200)
            self.assertEqual(json.loads(await readBody(response))["object"], "list")
        self.assertEqual(len(next(iter(agent._origins.values())).idle), 1)

    async def test_tlsTruncated(self) -> None:
        """
        A body framed by the close over TLS, whose TCP connection closes
        without TLS's own close, ends as a failure: it may have been cut.
        """
        from twisted.internet.ssl import PrivateCertificate

        certificate = PrivateCertificate.loadPEM(_selfSigned("localhost"))

        class Truncating(Protocol):
            def dataReceived(self, data: bytes) -> None:
                if b"\r\n\r\n" in data:
                    self.transport.write(b"HTTP/1.1 200 OK\r\n\r\npartial")
                    # The TCP connection under TLS, closed with no close_notify.
                    reactor.callLater(0.05, self.transport.transport.loseConnection)

        port = reactor.listenSSL(0, Factory.forProtocol(Truncating), certificate.options(),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        agent = UpstreamAgent(reactor, endpointFactory=_TrustingEndpoints(reactor, certificate))
        response = await agent.request(b"GET", b"https://localhost:%d/v1/models" % port.getHost().port)
        reader = await _readToEnd(response)
        self.assertEqual(b"".join(reader.chunks), b"partial")
        reader.reason.trap(ResponseFailed)
