"""
What one request costs the gateway in CPU instructions, counted by
callgrind: `python bench/instructions.py [--scenario bare|all|all-but-tracing]
[--requests N]`, or what translation to a provider costs:
`python bench/instructions.py --provider openai|anthropic|gemini|bedrock|every`.

The gateway is built in memory from a configuration like the benchmark's
(see bench/run.py): a bare route, or everything on (JWT, three
authorization rules, two rate limits, the access log, and tracing unless
the scenario is C{all-but-tracing}).  Its upstream is a stub agent that
answers every call at once with the same small chat completion, and its
client is one kept-alive connection on a memory transport that sends the
requests one after another.  Nothing touches the network, and time moves
only when the harness moves it, so a run is the same run every time.

With C{--provider}, the route is bare and its backend is that provider's;
the stub agent answers in the provider's own API (a plain answer, or a
stream of text events delivered one event per read, as a network would),
and the gateway translates for its OpenAI client.  The figures are per
plain request and per streamed event, each also as the difference from
C{openai}, the passthrough.

Run plainly, the harness runs itself twice under callgrind (with the
requests and with none, so that start-up and building cancel out) and
prints user-space instructions per request.  Under C{--inner} it only
serves the requests, for a run under valgrind by hand; C{--profile} shows
where a run's time goes by Python function instead (cProfile, inclusive).

C{--provider every --cpu} times the same harnesses instead, in one process:
the providers take turns, a few hundred requests (or streams) each per round,
and each figure is the median over the rounds of its CPU time less
openai's in the same round.  Instructions are the steadier measure; this one
counts what they miss (SHA-256 in hardware, caches).
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
PROVIDERS = ("openai", "anthropic", "gemini", "bedrock")
# AWS credentials for the bedrock backend's signer (never sent anywhere).
AWS_ENVIRON = {"AWS_ACCESS_KEY_ID": "AKIDBENCH", "AWS_SECRET_ACCESS_KEY": "bench-secret"}
STREAM_BODY = BODY.replace(b'"messages"', b'"stream": true, "messages"')
# Events of the long and the short stream: their difference is the cost of
# the events alone, the stream's start and end cancelling out.
LONG_STREAM = 110
SHORT_STREAM = 10


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _words(count: int) -> list[str]:
    return [("Roses", "are", "red,", "violets", "blue.")[i % 5] + " " for i in range(count)]


def nativePlain(provider: str) -> tuple[bytes, bytes]:
    """
    A plain answer in C{provider}'s API, saying what L{ANSWER} says, and
    its content type.
    """
    if provider == "anthropic":
        return _compact({
            "id": "msg_bench", "type": "message", "role": "assistant", "model": "gpt-3.5-turbo",
            "content": [{"type": "text", "text": "Roses are red."}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": 5, "cache_creation_input_tokens": 0,
                                             "cache_read_input_tokens": 0, "output_tokens": 4},
        }), b"application/json"
    if provider == "gemini":
        return _compact({
            "candidates": [{"content": {"parts": [{"text": "Roses are red."}], "role": "model"},
                            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 4, "totalTokenCount": 9},
            "modelVersion": "gpt-3.5-turbo", "responseId": "resp-bench",
        }), b"application/json"
    if provider == "bedrock":
        return _compact({
            "output": {"message": {"role": "assistant", "content": [{"text": "Roses are red."}]}},
            "stopReason": "end_turn", "usage": {"inputTokens": 5, "outputTokens": 4, "totalTokens": 9},
            "metrics": {"latencyMs": 1},
        }), b"application/json"
    return ANSWER, b"application/json"


def nativeStream(provider: str, events: int) -> tuple[list[bytes], bytes]:
    """
    A streamed answer of C{events} text events in C{provider}'s API, in the
    pieces the upstream connection delivers (one event each), and its
    content type.
    """
    words = _words(events)
    if provider == "anthropic":
        def event(kind: str, fields: dict[str, Any]) -> bytes:
            return b"event: " + kind.encode() + b"\ndata: " + _compact(dict(type=kind, **fields)) + b"\n\n"

        return [
            event("message_start", {"message": {
                "id": "msg_bench", "type": "message", "role": "assistant", "model": "gpt-3.5-turbo",
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": 5, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0, "output_tokens": 1}}}),
            event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
            event("ping", {}),
        ] + [
            event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": word}})
            for word in words
        ] + [
            event("content_block_stop", {"index": 0}),
            event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                    "usage": {"output_tokens": events}}),
            event("message_stop", {}),
        ], b"text/event-stream"
    if provider == "gemini":
        def response(text: str, count: int, last: bool) -> bytes:
            candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
            if last:
                candidate["finishReason"] = "STOP"
            candidate["index"] = 0
            return b"data: " + _compact({
                "candidates": [candidate],
                "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": count,
                                  "totalTokenCount": 5 + count},
                "modelVersion": "gpt-3.5-turbo", "responseId": "resp-bench",
            }) + b"\r\n\r\n"

        return [response(word, i + 1, False) for i, word in enumerate(words)] + [
            response("", events, True)], b"text/event-stream"
    if provider == "bedrock":
        from aigateway.testing.eventstream import event as frame

        return [frame("messageStart", _compact({"role": "assistant"}))] + [
            frame("contentBlockDelta", _compact({"delta": {"text": word}, "contentBlockIndex": 0}))
            for word in words
        ] + [
            frame("contentBlockStop", _compact({"contentBlockIndex": 0})),
            frame("messageStop", _compact({"stopReason": "end_turn"})),
            frame("metadata", _compact({"usage": {"inputTokens": 5, "outputTokens": events,
                                                  "totalTokens": 5 + events},
                                        "metrics": {"latencyMs": 1}})),
        ], b"application/vnd.amazon.eventstream"

    def chunk(delta: dict[str, Any] | None, finish: str | None = None,
              usage: dict[str, int] | None = None) -> bytes:
        choices = [] if delta is None else [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        return b"data: " + _compact({
            "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "gpt-3.5-turbo", "choices": choices, "usage": usage}) + b"\n\n"

    return [chunk({"role": "assistant", "content": ""})] + [
        chunk({"content": word}) for word in words
    ] + [
        chunk({}, "stop"),
        chunk(None, usage={"prompt_tokens": 5, "completion_tokens": events,
                           "total_tokens": 5 + events}) + b"data: [DONE]\n\n",
    ], b"text/event-stream"


# Time as the harness's clock tells it: fixed, so every run is the same.
START = 1_700_000_000.0
# How far the clock moves after each request: past the report delay.
STEP = 0.002


def gatewayConfig(scenario: str, provider: str = "openai") -> str:
    """
    The configuration of a scenario: the benchmark's, with the backend and
    the collector at addresses only the stub agent answers.

    @param provider: the backend's provider (bedrock's signs with
        L{AWS_ENVIRON}'s credentials).
    """
    credential = "region: us-east-1" if provider == "bedrock" else f"authToken: {{value: {KEY}}}"
    head = (
        "listen: 'tcp:0'\n"
        f"backends:\n  local: {{provider: {provider}, url: 'http://fakellm.invalid:8000', {credential}}}\n"
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
    A canned upstream answer, delivered as soon as it is asked for: whole,
    or piece by piece as reads from the connection.
    """

    version = (b"HTTP", 1, 1)
    code = 200
    phrase = b"OK"
    previousResponse = None
    request = None

    def __init__(self, pieces: list[bytes], headers: Any, length: Any) -> None:
        self.pieces = pieces
        self.length = length
        self.headers = headers

    def deliverBody(self, protocol: Any) -> None:
        from twisted.python.failure import Failure
        from twisted.web.client import ResponseDone

        protocol.makeConnection(_Producer())
        for piece in self.pieces:
            protocol.dataReceived(piece)
        protocol.connectionLost(Failure(ResponseDone()))


class StubAgent:
    """
    An agent that answers every request at once with C{body}, or with the
    pieces of a stream of unknown length.

    @ivar calls: how many requests it answered.
    """

    def __init__(self, body: bytes, contentType: bytes, pieces: list[bytes] | None = None) -> None:
        self.body = body
        self.pieces = pieces
        self.contentType = contentType
        self.calls = 0

    def request(self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None) -> Any:
        from twisted.internet.defer import succeed
        from twisted.web.http_headers import Headers

        from twisted.web.iweb import UNKNOWN_LENGTH

        self.calls += 1
        headers = Headers({b"content-type": [self.contentType]})
        if self.pieces is not None:
            return succeed(_Response(self.pieces, headers, UNKNOWN_LENGTH))
        return succeed(_Response([self.body], headers, len(self.body)))


class Harness:
    """
    A gateway in memory for one scenario, and one client connection to it.

    @ivar expected: what every answer's body ends with.
    """

    def __init__(self, scenario: str, provider: str = "openai", events: int | None = None) -> None:
        """
        @param provider: the backend's provider.
        @param events: stream every answer, with this many text events;
            L{None} for plain answers.
        """
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
        body = BODY
        if events is None:
            answer, contentType = nativePlain(provider)
            self.upstream = StubAgent(answer, contentType)
            # Translated or not, the client reads the same answer.
            self.expected = ANSWER if provider == "openai" else b'"content":"Roses are red."'
        else:
            pieces, contentType = nativeStream(provider, events)
            self.upstream = StubAgent(b"", contentType, pieces)
            self.expected = b"data: [DONE]\n\n"
            body = STREAM_BODY
        self.collector = StubAgent(b"", b"application/x-protobuf")
        config = loadConfig(gatewayConfig(scenario, provider))
        self.tracerProvider = buildTracerProvider(config.tracing, self.clock, self.collector, {})
        telemetry = Telemetry(config.tracing, Metrics(), self.clock, self.tracerProvider,
                              accessLog=config.accessLog, reportDelay=REPORT_DELAY)
        files = {JWKS_PATH: jwks}
        gateway = buildGateway(config, self.upstream, self.clock, AWS_ENVIRON, files.__getitem__, None,
                               telemetry)
        self.site = GatewaySite(gateway.root, self.clock)
        self.site.doStart()
        auth = token if scenario != "bare" else KEY
        self.request = (
            b"POST /bench HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + auth.encode("ascii") + b"\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        ) + body
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
            if not answer.startswith(b"HTTP/1.1 200 ") or self.expected not in answer[-400:]:
                raise RuntimeError("the gateway did not answer 200 with the upstream's body:\n"
                                   + answer.decode("latin-1"))
            self.transport.clear()
        if self.tracerProvider is not None:
            self.tracerProvider.flush()
            self.clock.advance(STEP)
        if self.upstream.calls - calls != requests:
            raise RuntimeError(f"{self.upstream.calls - calls} upstream calls for {requests} requests")


def _callgrind(scenario: str, requests: int, directory: str, provider: str | None = None,
               events: int | None = None) -> subprocess.Popen:
    """
    Start one run of the harness under callgrind.
    """
    out = os.path.join(directory, _runName(scenario, requests, provider, events))
    env = dict(os.environ, PYTHONHASHSEED="0")
    command = [sys.executable, os.path.abspath(__file__), "--inner", "--scenario", scenario,
               "--requests", str(requests)]
    if provider is not None:
        command += ["--provider", provider]
    if events is not None:
        command += ["--events", str(events)]
    return subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + command,
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _runName(scenario: str, requests: int, provider: str | None, events: int | None) -> str:
    return f"cg.{scenario}.{provider}.{events}.{requests}"


def _instructions(scenario: str, requests: int, directory: str, provider: str | None = None,
                  events: int | None = None) -> int:
    """
    The user-space instructions that run counted.
    """
    out = os.path.join(directory, _runName(scenario, requests, provider, events))
    total = 0
    for path in glob.glob(out + "*"):
        with open(path) as f:
            found = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
        if found:
            total += int(found.group(1))
    return total


def _measure(runs: list[tuple[str, int, str | None, int | None]], directory: str) -> list[int]:
    """
    The instructions of each run, two at a time under callgrind (each run
    counts the same whether or not it shares the CPU).
    """
    counts = []
    for start in range(0, len(runs), 2):
        started = [(run, _callgrind(*run[:2], directory, *run[2:])) for run in runs[start:start + 2]]
        for run, process in started:
            if process.wait() != 0:
                raise SystemExit(f"the run {run} under callgrind failed")
        counts.extend(_instructions(*run[:2], directory, *run[2:]) for run, _ in started)
    return counts


def _providers(providers: tuple[str, ...], requests: int, streams: int, directory: str) -> None:
    """
    Print each provider's instructions per plain request and per streamed
    event, and their difference from openai's.
    """
    if "openai" not in providers:
        providers = ("openai",) + providers
    figures = {}
    for provider in providers:
        plain, idle, long, short = _measure([
            ("bare", requests, provider, None), ("bare", 0, provider, None),
            ("bare", streams, provider, LONG_STREAM), ("bare", streams, provider, SHORT_STREAM),
        ], directory)
        perRequest = (plain - idle) / requests
        perEvent = (long - short) / streams / (LONG_STREAM - SHORT_STREAM)
        figures[provider] = (perRequest, perEvent)
    base = figures["openai"]
    for provider, (perRequest, perEvent) in figures.items():
        print(f"{provider:10} {perRequest / 1000:8.1f}k instructions per request "
              f"({(perRequest - base[0]) / 1000:+7.1f}k over openai), "
              f"{perEvent / 1000:6.1f}k per event ({(perEvent - base[1]) / 1000:+6.1f}k)")


def _cpuRounds(providers: tuple[str, ...], rounds: int) -> None:
    """
    Print each provider's CPU time per plain request and per streamed
    event over openai's, timed in turns (see the module docstring).
    """
    import gc
    import statistics
    import time

    if "openai" not in providers:
        providers = ("openai",) + providers
    kinds = {"request": (None, 300, 1), "event": (LONG_STREAM, 20, LONG_STREAM - SHORT_STREAM)}
    harnesses = {(p, k): Harness("bare", p, events) for p in providers for k, (events, _, _) in kinds.items()}
    shorts = {p: Harness("bare", p, SHORT_STREAM) for p in providers}
    for harness in (*harnesses.values(), *shorts.values()):
        harness.serve(20)
    costs: dict[tuple[str, str], list[float]] = {key: [] for key in harnesses}
    gc.disable()
    try:
        for round in range(rounds):
            for provider in providers if round % 2 else providers[::-1]:
                for kind, (events, count, per) in kinds.items():
                    started = time.process_time()
                    harnesses[provider, kind].serve(count)
                    spent = time.process_time() - started
                    if events is not None:
                        started = time.process_time()
                        shorts[provider].serve(count)
                        spent -= time.process_time() - started
                    costs[provider, kind].append(spent / count / per * 1e6)
            gc.collect()
    finally:
        gc.enable()
    for provider in providers:
        over = {kind: statistics.median(
            mine - base for mine, base in zip(costs[provider, kind], costs["openai", kind]))
            for kind in kinds}
        print(f"{provider:10} {statistics.median(costs[provider, 'request']):7.1f} us per request "
              f"({over['request']:+6.1f} over openai), "
              f"{statistics.median(costs[provider, 'event']):5.1f} us per event ({over['event']:+5.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=SCENARIOS + ("every",), default="every",
                        help="the configuration served (default: each one)")
    parser.add_argument("--requests", type=int, default=400, help="requests per run")
    parser.add_argument("--provider", choices=PROVIDERS + ("every",),
                        help="a bare route to this provider's backend: translation's cost")
    parser.add_argument("--events", type=int,
                        help="with --inner or --profile: stream answers of this many events")
    parser.add_argument("--streams", type=int, default=20,
                        help="with --provider: streamed requests per run")
    parser.add_argument("--inner", action="store_true", help="only serve the requests (for valgrind)")
    parser.add_argument("--profile", action="store_true", help="cProfile the requests instead")
    parser.add_argument("--cpu", action="store_true",
                        help="with --provider: CPU time in turns, in this process, instead of instructions")
    parser.add_argument("--rounds", type=int, default=30, help="with --cpu: rounds of turns")
    args = parser.parse_args()
    if args.cpu:
        if args.provider is None:
            parser.error("--cpu times providers: give --provider")
        _cpuRounds(PROVIDERS if args.provider == "every" else (args.provider,), args.rounds)
        return
    scenarios = SCENARIOS if args.scenario == "every" else (args.scenario,)
    if args.inner or args.profile:
        provider = "openai" if args.provider in (None, "every") else args.provider
        harness = Harness(scenarios[0] if args.provider is None else "bare", provider, args.events)
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
        if args.provider is not None:
            _providers(PROVIDERS if args.provider == "every" else (args.provider,),
                       args.requests, args.streams, directory)
            return
        for scenario in scenarios:
            loaded, idle = _measure([(scenario, args.requests, None, None),
                                     (scenario, 0, None, None)], directory)
            print(f"{scenario:16} {(loaded - idle) / args.requests / 1000:9.1f}k instructions per request")


if __name__ == "__main__":
    main()
