"""
What one request costs the gateway in CPU instructions, counted by
callgrind: `python bench/instructions.py [--scenario bare|all|all-but-tracing]
[--requests N]`.

The gateway is built in memory from a configuration like the benchmark's
(see bench/run.py): a bare route, or everything on (JWT, three
authorization rules, two rate limits, the access log, and tracing unless
the scenario is C{all-but-tracing}).  Its upstream is a stub agent that
answers every call at once with the same small chat completion, and its
client is one kept-alive connection on a memory transport that sends the
requests one after another.  Nothing touches the network, and time moves
only when the harness moves it, so a run is the same run every time.

Run plainly, the harness runs itself twice under callgrind (with the
requests and with none, so that start-up and building cancel out) and
prints user-space instructions per request.  Under C{--inner} it only
serves the requests, for a run under valgrind by hand; C{--profile} shows
where a run's time goes by Python function instead (cProfile, inclusive).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

SCENARIOS = ("bare", "all-but-tracing", "all")
KEY = "sk-bench"
JWKS_PATH = "/bench/jwks.json"
BODY = json.dumps(
    {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Whats your favorite poem?"}]}
).encode()
ANSWER = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "gpt-3.5-turbo",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Roses are red."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
}, separators=(",", ":")).encode()
# Time as the harness's clock tells it: fixed, so every run is the same.
START = 1_700_000_000.0
# How far the clock moves after each request: past the report delay.
STEP = 0.002


def gatewayConfig(scenario: str) -> str:
    """
    The configuration of a scenario: the benchmark's, with the backend and
    the collector at addresses only the stub agent answers.
    """
    head = (
        "listen: 'tcp:0'\n"
        f"backends:\n  local: {{provider: openai, url: 'http://fakellm.invalid:8000', authToken: {{value: {KEY}}}}}\n"
        "routes:\n"
    )
    if scenario == "bare":
        return "accessLog: false\n" + head + "  - {name: bench, match: {pathPrefix: /bench}, backend: local}\n"
    text = head + (
        "  - name: bench\n    match: {pathPrefix: /bench}\n    backend: local\n    timeout: 120s\n"
        "    rateLimits:\n"
        "      - {key: jwt.sub, requests: {limit: 100000000, per: 1m}}\n"
        "      - {key: jwt.team, tokens: {limit: 1000000000, per: 1m}}\n"
        "authorization:\n  rules:\n"
        "    - require: 'llm.requestModel in jwt.llms.openai'\n"
        "    - deny: 'jwt.team == \"suspended\"'\n"
        "    - allow: 'request.method == \"POST\"'\n"
        "jwt:\n  providers:\n    bench:\n      issuer: bench.example\n"
        f"      jwks: {{file: {JWKS_PATH}}}\n      claimsToHeaders: {{sub: x-user-id}}\n"
    )
    if scenario == "all":
        text += (
            "tracing:\n  otlp: {endpoint: 'http://collector.invalid:4318/v1/traces'}\n"
            "  captureContent: true\n  legacyAttributes: true\n"
        )
    return text


class _Producer:
    """
    The upstream body's transport, as the relay sees it: a push producer.
    """

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _Response:
    """
    A canned upstream answer, delivered whole as soon as it is asked for.
    """

    version = (b"HTTP", 1, 1)
    code = 200
    phrase = b"OK"
    previousResponse = None
    request = None

    def __init__(self, body: bytes, headers: Any) -> None:
        self.body = body
        self.length = len(body)
        self.headers = headers

    def deliverBody(self, protocol: Any) -> None:
        from twisted.python.failure import Failure
        from twisted.web.client import ResponseDone

        protocol.makeConnection(_Producer())
        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


class StubAgent:
    """
    An agent that answers every request at once with C{body}.

    @ivar calls: how many requests it answered.
    """

    def __init__(self, body: bytes, contentType: bytes) -> None:
        self.body = body
        self.contentType = contentType
        self.calls = 0

    def request(self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None) -> Any:
        from twisted.internet.defer import succeed
        from twisted.web.http_headers import Headers

        self.calls += 1
        return succeed(_Response(self.body, Headers({b"content-type": [self.contentType]})))


class Harness:
    """
    A gateway in memory for one scenario, and one client connection to it.
    """

    def __init__(self, scenario: str) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport
        from twisted.logger import globalLogBeginner, textFileLogObserver

        from aigateway.app.service import REPORT_DELAY
        from aigateway.auth.token import publicJWK, sign
        from aigateway.build import buildGateway
        from aigateway.config import loadConfig
        from aigateway.observe.report import Metrics, Telemetry, buildTracerProvider
        from aigateway.web.site import GatewaySite

        # Log lines are formatted and written, as twistd's log file has them.
        self.logFile = open(os.devnull, "w")
        globalLogBeginner.beginLoggingTo([textFileLogObserver(self.logFile)], redirectStandardIO=False)
        # An EC key: its generation costs the same every run, unlike RSA's.
        signer = ec.generate_private_key(ec.SECP256R1())
        pem = signer.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        jwks = json.dumps({"keys": [dict(publicJWK(pem), kid="bench")]}).encode()
        token = sign({"iss": "bench.example", "sub": "bench", "team": "dev",
                      "llms": {"openai": ["gpt-3.5-turbo"]}}, signer, kid="bench")

        self.clock = Clock()
        self.clock.advance(START)
        self.upstream = StubAgent(ANSWER, b"application/json")
        self.collector = StubAgent(b"", b"application/x-protobuf")
        config = loadConfig(gatewayConfig(scenario))
        self.tracerProvider = buildTracerProvider(config.tracing, self.clock, self.collector, {})
        telemetry = Telemetry(config.tracing, Metrics(), self.clock, self.tracerProvider,
                              accessLog=config.accessLog, reportDelay=REPORT_DELAY)
        files = {JWKS_PATH: jwks}
        gateway = buildGateway(config, self.upstream, self.clock, {}, files.__getitem__, None, telemetry)
        self.site = GatewaySite(gateway.root, self.clock)
        self.site.doStart()
        auth = token if scenario != "bare" else KEY
        self.request = (
            b"POST /bench HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + auth.encode("ascii") + b"\r\n"
            b"Content-Length: %d\r\n\r\n" % len(BODY)
        ) + BODY
        self.transport = StringTransport()
        self.channel = self.site.buildProtocol(None)
        self.channel.makeConnection(self.transport)

    def serve(self, requests: int) -> None:
        """
        Send C{requests} requests, one after another, each answered whole
        before the next is sent.

        @raise RuntimeError: when one is not answered with a 200.
        """
        calls = self.upstream.calls
        for _ in range(requests):
            self.channel.dataReceived(self.request)
            self.clock.advance(STEP)
            answer = self.transport.value()
            if not answer.startswith(b"HTTP/1.1 200 ") or not answer.endswith(ANSWER):
                raise RuntimeError("the gateway did not answer 200 with the upstream's body:\n"
                                   + answer.decode("latin-1"))
            self.transport.clear()
        if self.tracerProvider is not None:
            self.tracerProvider.flush()
            self.clock.advance(STEP)
        if self.upstream.calls - calls != requests:
            raise RuntimeError(f"{self.upstream.calls - calls} upstream calls for {requests} requests")


def _callgrind(scenario: str, requests: int, directory: str) -> subprocess.Popen:
    """
    Start one run of the harness under callgrind.
    """
    out = os.path.join(directory, f"cg.{scenario}.{requests}")
    env = dict(os.environ, PYTHONHASHSEED="0")
    return subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
         os.path.abspath(__file__), "--inner", "--scenario", scenario, "--requests", str(requests)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _instructions(scenario: str, requests: int, directory: str) -> int:
    """
    The user-space instructions that run counted.
    """
    out = os.path.join(directory, f"cg.{scenario}.{requests}")
    total = 0
    for path in glob.glob(out + "*"):
        with open(path) as f:
            found = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
        if found:
            total += int(found.group(1))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=SCENARIOS + ("every",), default="every",
                        help="the configuration served (default: each one)")
    parser.add_argument("--requests", type=int, default=400, help="requests per run")
    parser.add_argument("--inner", action="store_true", help="only serve the requests (for valgrind)")
    parser.add_argument("--profile", action="store_true", help="cProfile the requests instead")
    args = parser.parse_args()
    scenarios = SCENARIOS if args.scenario == "every" else (args.scenario,)
    if args.inner or args.profile:
        harness = Harness(scenarios[0])
        harness.serve(1)
        if args.profile:
            import cProfile
            import pstats

            profile = cProfile.Profile()
            profile.runcall(harness.serve, args.requests)
            pstats.Stats(profile).sort_stats("cumulative").print_stats(60)
        else:
            harness.serve(args.requests)
        return
    with tempfile.TemporaryDirectory(prefix="aigateway-instructions-") as directory:
        for scenario in scenarios:
            # The two runs count the same whether or not they share the CPU.
            runs = [_callgrind(scenario, args.requests, directory), _callgrind(scenario, 0, directory)]
            for run in runs:
                if run.wait() != 0:
                    raise SystemExit(f"the {scenario} run under callgrind failed")
            loaded = _instructions(scenario, args.requests, directory)
            idle = _instructions(scenario, 0, directory)
            print(f"{scenario:16} {(loaded - idle) / args.requests / 1000:9.1f}k instructions per request")


if __name__ == "__main__":
    main()
