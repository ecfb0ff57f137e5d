"""
The gateway in memory, in front of the fake LLM resource: treq's C{StubTreq}
on the client side, a C{RequestTraversalAgent} upstream, one fake clock.
"""

from __future__ import annotations

import json
from typing import Any

from treq import collect
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from aigateway.config import loadConfig
from aigateway.fakellm import FakeLLM
from aigateway.service import buildGateway
from aigateway.telemetry import Metrics, Telemetry

__all__ = ["MemoryGateway"]


class MemoryGateway:
    """
    A gateway built from C{configText}, with its metrics and the requests
    its fake LLM saw.
    """

    def __init__(self, configText: str, key: str | None = None, tracerProvider: Any = None,
                 readFile: Any = None, reportDelay: float | None = None) -> None:
        self.clock = Clock()
        self.fakellm = FakeLLM(self.clock, key=key)
        self.upstream = RequestTraversalAgent(self.fakellm)
        config = loadConfig(configText)
        self.metrics = Metrics()
        telemetry = Telemetry(config.tracing, self.metrics, self.clock, tracerProvider,
                              accessLog=config.accessLog, reportDelay=reportDelay)
        extra = {"readFile": readFile} if readFile is not None else {}
        self.telemetry = telemetry
        root = buildGateway(config, self.upstream, self.clock, {}, telemetry=telemetry, **extra).root
        self.client = StubTreq(root)

    def pump(self) -> None:
        for _ in range(5):
            self.upstream.flush()
            self.client.flush()

    def post(self, case: SynchronousTestCase, path: str, body: object,
             headers: dict | None = None) -> tuple[Any, bytes]:
        """
        POST C{body} (JSON, unless bytes) and read the whole answer.
        """
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        d = self.client.post("http://gw" + path, data, unbuffered=True,
                             headers=dict({"content-type": "application/json"}, **(headers or {})))
        self.pump()
        response = case.successResultOf(d)
        chunks: list[bytes] = []
        done = collect(response, chunks.append)
        self.pump()
        case.successResultOf(done)
        return response, b"".join(chunks)
