"""
The gateway in memory, in front of the fake LLM resource: treq's C{StubTreq}
on the client side, a C{RequestTraversalAgent} upstream, one fake clock.
"""

from __future__ import annotations

import json
from typing import Any

from treq import collect
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from aigateway.config import loadConfig
from aigateway.testing.fakellm import FakeLLM
from aigateway.build import buildGateway
from aigateway.web.site import GatewaySite
from aigateway.observe.report import Metrics, Telemetry

__all__ = ["HalfClosingTransport", "MemoryConnection", "MemoryGateway", "MemorySite", "RecordingAgent"]


class MemoryGateway:
    """
    A gateway built from C{configText}, with its metrics and the requests
    its fake LLM saw.
    """

    def __init__(self, configText: str, key: str | None = None, tracerProvider: Any = None,
                 readFile: Any = None, reportDelay: float | None = None,
                 environ: dict[str, str] | None = None, buckets: Any = None,
                 **fakeOptions: Any) -> None:
        self.clock = Clock()
        self.fakellm = FakeLLM(self.clock, key=key, **fakeOptions)
        self.upstream = RequestTraversalAgent(self.fakellm)
        config = loadConfig(configText)
        self.metrics = Metrics()
        telemetry = Telemetry(config.tracing, self.metrics, self.clock, tracerProvider,
                              accessLog=config.accessLog, reportDelay=reportDelay)
        extra: dict[str, Any] = {"readFile": readFile} if readFile is not None else {}
        if buckets is not None:
            extra["buckets"] = buckets
        self.telemetry = telemetry
        root = buildGateway(config, self.upstream, self.clock, environ or {}, telemetry=telemetry,
                            **extra).root
        self.client = StubTreq(root)

    def pump(self) -> None:
        for _ in range(5):
            self.upstream.flush()
            self.client.flush()

    def post(self, case: SynchronousTestCase, path: str, body: object,
             headers: dict | None = None, broken: bool = False) -> tuple[Any, bytes]:
        """
        POST C{body} (JSON, unless bytes) and read the whole answer.

        @param broken: the answer is expected to end without its last
            chunk, as a broken stream does; what came before is returned.
        """
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        d = self.client.post("http://gw" + path, data, unbuffered=True,
                             headers=dict({"content-type": "application/json"}, **(headers or {})))
        self.pump()
        response = case.successResultOf(d)
        chunks: list[bytes] = []
        done = collect(response, chunks.append)
        self.pump()
        if broken:
            case.failureResultOf(done)
        else:
            case.successResultOf(done)
        return response, b"".join(chunks)


class HalfClosingTransport(StringTransport):
    """
    A memory transport that can stop sending and go on receiving, as TCP can.
    """

    writeClosed = False
    aborted = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class RecordingAgent:
    """
    An agent in front of the fake LLM that remembers what it was asked.
    """

    def __init__(self, agent: RequestTraversalAgent) -> None:
        self.agent = agent
        self.calls: list[bytes] = []

    def request(self, method, uri, headers=None, bodyProducer=None):
        self.calls.append(uri)
        return self.agent.request(method, uri, headers, bodyProducer)


class MemoryConnection:
    """
    One client connection to a gateway site in memory.
    """

    def __init__(self, site: GatewaySite, clock: Clock, upstream: RequestTraversalAgent) -> None:
        self.clock = clock
        self.upstream = upstream
        self.channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = HalfClosingTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)
        for _ in range(5):
            self.upstream.flush()

    def answer(self) -> bytes:
        return self.transport.value()

    def status(self) -> int:
        return int(self.answer().split(b" ", 2)[1])


class MemorySite:
    """
    A gateway site in memory in front of the fake LLM, on a fake clock;
    C{agent.calls} lists the URLs sent upstream.
    """

    def __init__(self, config: str, key: str | None = None, **siteOptions: object) -> None:
        self.clock = Clock()
        self.fakellm = FakeLLM(self.clock, key=key)
        self.upstream = RequestTraversalAgent(self.fakellm)
        self.agent = RecordingAgent(self.upstream)
        root = buildGateway(loadConfig(config), self.agent, self.clock, {}).root
        self.site = GatewaySite(root, self.clock, **siteOptions)  # type: ignore[arg-type]

    def connect(self) -> "MemoryConnection":
        return MemoryConnection(self.site, self.clock, self.upstream)
