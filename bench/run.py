"""
The aigateway benchmark: `python bench/run.py` (add `--write` to record the
table in bench/RESULTS.md).

It starts the fake LLM and the gateway as real processes on loopback, drives
them with wrk (plain requests; installed from Debian's packages if missing)
and with a small asyncio client (streams), and prints one table.  Each
scenario runs against the gateway with every feature of etc/gateway.yaml on
(JWT with a cached token, tracing exported to a local sink, metrics, access
log, three authorization rules, two rate limits) and against a bare route,
with the fake LLM alone as the baseline:

  S1 plain chat, one connection: added latency p50 / p99 over direct
     (S1's and S3's direct baselines are measured again just before each
     gateway run, as the machine's speed drifts)
  S2 plain chat, 64 connections: req/s, p99, gateway CPU per request
     (six short runs; the one with the least CPU per request is shown:
     what else the machine runs only ever adds to it)
  S3 50 concurrent streams, 20 chunks 20 ms apart, started 8 ms apart:
     added time to first chunk p50 / p99, and the gap between chunks the
     client sees: a first round refills the upstream pool that the end
     of S2 emptied (shown beside), then the medians of three rounds, each
     just after a direct one; "S3 burst" starts all 50 in the same instant
  S4 1,000 concurrent slow streams: the gateway's peak RSS and errors
  S5 S2 with 1,000 routes and a 100-key JWKS

and, for scale, S2 against twisted.web alone: a Site that answers every
request with the same small completion from memory.

A fixed pure-Python loop is timed before and after, to tell a slow
moment of a shared machine from a slow gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from aigateway.auth.token import publicJWK, sign  # noqa: E402

KEY = "sk-bench"
# S3 starts its 50 streams this many seconds apart: over the 400 ms one of
# them lasts, so all 50 are open at once; "S3 burst" starts them together.
SPACING = 0.008
BODY = json.dumps({"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Whats your favorite poem?"}]})


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensureWrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("installing wrk from Debian's packages ...", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
    return shutil.which("wrk") or "wrk"


def twistd(*args: str) -> list[str]:
    """
    The command line of a C{twistd} plugin run in the foreground.
    """
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--pidfile=", "-n", *args]


class Process:
    """
    A server process, with its output in a file.
    """

    def __init__(self, command: list[str], port: int, directory: str, name: str) -> None:
        self.log = open(os.path.join(directory, name + ".log"), "wb")
        env = dict(os.environ, PYTHONPATH=REPO)
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=directory,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{name} did not start; see {self.log.name}")

    def cpu(self) -> float:
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peakRSS(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as f:
            return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def gatewayConfig(fakellm: int, port: int, admin: int, full: bool, routes: int, jwks: str,
                  collector: int) -> str:
    head = (
        f"listen: 'tcp:{port}:interface=127.0.0.1'\nadmin: {{listen: 'tcp:{admin}:interface=127.0.0.1'}}\n"
        f"backends:\n  local: {{provider: openai, url: 'http://127.0.0.1:{fakellm}', authToken: {{value: {KEY}}}}}\n"
        "routes:\n"
    )
    extra = "".join(
        f"  - {{name: t{i}, match: {{pathPrefix: /tenant{i}/llm}}, backend: local}}\n" for i in range(routes)
    )
    if not full:
        return "accessLog: false\n" + head + extra + "  - {name: bench, match: {pathPrefix: /bench}, backend: local}\n"
    route = (
        "  - name: bench\n    match: {pathPrefix: /bench}\n    backend: local\n    timeout: 120s\n"
        "    rateLimits:\n"
        "      - {key: jwt.sub, requests: {limit: 100000000, per: 1m}}\n"
        "      - {key: jwt.team, tokens: {limit: 1000000000, per: 1m}}\n"
    )
    return head + extra + route + (
        "authorization:\n  rules:\n"
        "    - require: 'llm.requestModel in jwt.llms.openai'\n"
        "    - deny: 'jwt.team == \"suspended\"'\n"
        "    - allow: 'request.method == \"POST\"'\n"
        "jwt:\n  providers:\n    bench:\n      issuer: bench.example\n"
        f"      jwks: {{file: {jwks}}}\n      claimsToHeaders: {{sub: x-user-id}}\n"
        f"tracing:\n  otlp: {{endpoint: 'http://127.0.0.1:{collector}/v1/traces'}}\n"
        "  captureContent: true\n  legacyAttributes: true\n"
    )


COLLECTOR = """
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site
class Sink(Resource):
    isLeaf = True
    def render_POST(self, request):
        request.setHeader(b"content-type", b"application/x-protobuf")
        return b""
site = Site(Sink()); site.log = lambda request: None
reactor.listenTCP(int(__import__("sys").argv[1]), site, interface="127.0.0.1")
reactor.run()
"""

# What one request costs twisted.web alone: a Site whose one resource answers
# every POST with the same small chat completion, read from memory.
FLOOR = """
import sys
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site
ANSWER = (b'{"id":"chatcmpl-floor","object":"chat.completion","created":0,"model":"gpt-3.5-turbo",'
          b'"choices":[{"index":0,"message":{"role":"assistant","content":"Roses are red."},'
          b'"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":4,"total_tokens":9}}')
class Answer(Resource):
    isLeaf = True
    def render_POST(self, request):
        request.content.read()
        request.setHeader(b"content-type", b"application/json")
        return ANSWER
site = Site(Answer()); site.log = lambda request: None
reactor.listenTCP(int(sys.argv[1]), site, interface="127.0.0.1")
reactor.run()
"""

# An upstream that costs next to nothing: the same chat completion for every
# request, read by finding the end of its head and skipping its body.  For
# the workers' row, where the gateway's processes must have the cores.
CANNED = """
import asyncio, re, sys
BODY = (b'{"id":"chatcmpl-canned","object":"chat.completion","created":0,"model":"gpt-3.5-turbo",'
        b'"choices":[{"index":0,"message":{"role":"assistant","content":"Roses are red."},'
        b'"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":4,"total_tokens":9}}')
ANSWER = (b"HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: %d\\r\\n\\r\\n" % len(BODY)) + BODY
LENGTH = re.compile(rb"content-length:\\s*(\\d+)", re.I)
class Canned(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""
    def data_received(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\\r\\n\\r\\n")
            if end < 0:
                return
            found = LENGTH.search(self.buffer, 0, end)
            total = end + 4 + (int(found.group(1)) if found else 0)
            if len(self.buffer) < total:
                return
            self.buffer = self.buffer[total:]
            self.transport.write(ANSWER)
async def main():
    server = await asyncio.get_running_loop().create_server(Canned, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()
asyncio.run(main())
"""


def wrk(url: str, connections: int, seconds: int, token: str | None, key: str | None) -> dict:
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    auth = f"Bearer {token}" if token else f"Bearer {key}"
    script.write(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(BODY)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "{auth}"\n'
    )
    script.close()
    threads = min(2, connections)
    out = subprocess.run(
        [ensureWrk(), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script.name, url],
        capture_output=True, text=True, check=True,
    ).stdout
    os.unlink(script.name)

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socketErrors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": ms("50%"),
        "p99": ms("99%"),
        "errors": (int(errors.group(1)) if errors else 0) + (1 if socketErrors else 0),
    }


async def stream(port: int, path: str, auth: str, chunks: int, gap: int) -> tuple[float, list[float], bool]:
    """
    One streamed chat; the time to the first event and the arrival times
    of all events.
    """
    body = BODY.replace('"messages"', '"stream": true, "messages"').encode()
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {auth}\r\nx-fakellm-chunks: {chunks}\r\nx-fakellm-gap: {gap}\r\n"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    )
    await writer.drain()
    arrivals: list[float] = []
    buffer = b""
    ok = False
    while True:
        data = await reader.read(65536)
        if not data:
            break
        now = time.perf_counter()
        buffer += data
        count = buffer.count(b"data: ")
        arrivals.extend([now] * (count - len(arrivals)))
        if b"data: [DONE]" in buffer:
            ok = buffer.startswith(b"HTTP/1.1 200")
            break
    writer.close()
    return (arrivals[0] - started if arrivals else float("inf")), arrivals, ok


async def streams(port: int, path: str, auth: str, count: int, chunks: int, gap: int,
                  spacing: float = 0.0) -> dict:
    """
    C{count} streams at once, the i-th started C{i * spacing} seconds in.
    """
    async def later(i: int) -> tuple[float, list[float], bool]:
        await asyncio.sleep(i * spacing)
        return await stream(port, path, auth, chunks, gap)

    results = await asyncio.gather(*[later(i) for i in range(count)], return_exceptions=True)
    good = [r for r in results if not isinstance(r, BaseException) and r[2]]
    firsts = sorted(r[0] * 1000 for r in good)
    gaps = sorted((b - a) * 1000 for r in good for a, b in zip(r[1][2:], r[1][3:]))
    return {
        "ttfc50": statistics.median(firsts) if firsts else float("nan"),
        "ttfc99": firsts[int(len(firsts) * 0.99) - 1] if firsts else float("nan"),
        "gap50": statistics.median(gaps) if gaps else float("nan"),
        "errors": count - len(good),
    }


def loadedText(r: dict) -> str:
    """
    An S2 result as the table shows it.
    """
    return (f"{r['rps']:.0f} req/s, p99 {r['p99']:.1f} ms, CPU {r['cpu']:.0f} us/request, "
            f"errors {r['errors']} (calibration {r['speed']:.0f} ms)")


def s3Round(port: int, path: str, auth: str, spacing: float = SPACING) -> dict:
    """
    One round of S3: 50 streams of 20 chunks 20 ms apart, the i-th started
    C{i * spacing} seconds in.
    """
    return asyncio.run(streams(port, path, auth, 50, 20, 20, spacing))


def calibrate() -> float:
    """
    Milliseconds this machine takes, now, for a fixed piece of pure-Python
    work (the best of five): the speed of a shared machine drifts, and a
    table is only comparable with another taken at a similar speed.
    """
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        table: dict[str, int] = {}
        for i in range(200_000):
            key = f"k{i % 512}"
            table[key] = table.get(key, 0) + len(key)
        best = min(best, time.perf_counter() - started)
    return best * 1000


def loaded(gateway: Process, url: str, token: str | None, seconds: int, runs: int = 6) -> dict:
    """
    S2: wrk on 64 connections, C{runs} short runs that together last about
    twice C{seconds}; the run with the least gateway CPU per request, with
    that figure as C{cpu}.  The speed of a shared machine changes from one
    second to the next, and that only ever adds CPU time: the least of
    several short runs is the steadiest estimate of what the gateway costs.
    """
    seconds = max(2, seconds // 3)
    best = None
    speed = calibrate()
    for _ in range(runs):
        cpu = gateway.cpu()
        r = wrk(url, 64, seconds, token, KEY)
        r["cpu"] = (gateway.cpu() - cpu) / r["requests"] * 1e6
        if best is None or r["cpu"] < best["cpu"]:
            best = r
    best["speed"] = speed
    return best


PROVIDER_ROUTES = ("openai", "azure-openai", "anthropic", "gemini", "bedrock")
AWS_KEYS = {"AWS_ACCESS_KEY_ID": "AKIDBENCH", "AWS_SECRET_ACCESS_KEY": "bench-secret"}


def providersConfig(fakellm: int, port: int, admin: int) -> str:
    """
    A bare gateway with one route per provider, all to the fake LLM.
    """
    url = f"http://127.0.0.1:{fakellm}"
    extra = {"azure-openai": "deployment: bench, ", "bedrock": "region: us-east-1, "}
    backends = "".join(
        f"  {p}: {{provider: {p}, url: '{url}', {extra.get(p, '')}"
        + ("" if p == "bedrock" else f"authToken: {{value: {KEY}}}") + "}\n"
        for p in PROVIDER_ROUTES)
    routes = "".join(f"  - {{name: {p}, match: {{pathPrefix: /{p}}}, backend: {p}}}\n"
                     for p in PROVIDER_ROUTES)
    return (f"accessLog: false\nlisten: 'tcp:{port}:interface=127.0.0.1'\n"
            f"admin: {{listen: 'tcp:{admin}:interface=127.0.0.1'}}\n"
            f"backends:\n{backends}routes:\n{routes}")


def streamCPU(gateway: Process, port: int, path: str, events: int, count: int = 20) -> float:
    """
    The gateway's CPU seconds per stream for C{count} streams of C{events}
    words each, one after another.
    """
    cpu = gateway.cpu()
    asyncio.run(streams(port, path, KEY, count, events, 0, 0.05))
    return (gateway.cpu() - cpu) / count


PROVIDER_ROUNDS = 6


def providerRows(fakellmPort: int, directory: str, seconds: int) -> list[tuple[str, str, str]]:
    """
    S2 and the cost of each streamed event for each provider, as OpenAI
    clients reach it (translated for all but openai and azure-openai).

    The providers take turns, a short run each per round for
    L{PROVIDER_ROUNDS} rounds, and each figure is the least of its
    rounds: a shared machine's speed drifts over a minute, and a provider
    measured after another would carry the drift as its own cost.
    """
    rows = []
    port, admin = freePort(), freePort()
    path = os.path.join(directory, "providers.yaml")
    with open(path, "w") as f:
        f.write(providersConfig(fakellmPort, port, admin))
    os.environ.update(AWS_KEYS)
    gateway = Process(twistd("aigateway", "-c", path), port, directory, "gateway-providers")
    try:
        best: dict[str, dict] = {}
        long = dict.fromkeys(PROVIDER_ROUTES, float("inf"))
        short = dict.fromkeys(PROVIDER_ROUTES, float("inf"))
        for provider in PROVIDER_ROUTES:
            wrk(f"http://127.0.0.1:{port}/{provider}/v1/chat/completions", 16, 2, None, KEY)
        for _ in range(PROVIDER_ROUNDS):
            for provider in PROVIDER_ROUTES:
                route = f"/{provider}/v1/chat/completions"
                r = loaded(gateway, f"http://127.0.0.1:{port}{route}", None, seconds, runs=1)
                if provider not in best or r["cpu"] < best[provider]["cpu"]:
                    best[provider] = r
                # 60 streams a try: the CPU clock ticks every 10 ms.
                long[provider] = min(long[provider], streamCPU(gateway, port, route, 200, 60))
                short[provider] = min(short[provider], streamCPU(gateway, port, route, 10, 60))
        base = best["openai"]["cpu"]
        baseEvent = (long["openai"] - short["openai"]) / 190 * 1e6
        for provider in PROVIDER_ROUTES:
            result = best[provider]
            perEvent = (long[provider] - short[provider]) / 190 * 1e6
            rows.append((f"provider {provider}", "S2 64 connections, bare route",
                         loadedText(result) + f"; {result['cpu'] - base:+.0f} us over openai"))
            rows.append((f"provider {provider}", "a stream's events",
                         f"CPU {perEvent:.1f} us per event; {perEvent - baseEvent:+.1f} us over openai"))
    finally:
        gateway.stop()
        for name in AWS_KEYS:
            os.environ.pop(name, None)
    return rows


def resilienceRows(fakellmPort: int, directory: str, seconds: int) -> list[tuple[str, str, str]]:
    """
    The cost of a route with three targets over a route with one, and the
    latency a failover from a refusing target adds.
    """
    url = f"http://127.0.0.1:{fakellmPort}"
    dead = freePort()
    port, admin = freePort(), freePort()
    path = os.path.join(directory, "resilience.yaml")
    with open(path, "w") as f:
        f.write(
            f"accessLog: false\nlisten: 'tcp:{port}:interface=127.0.0.1'\n"
            f"admin: {{listen: 'tcp:{admin}:interface=127.0.0.1'}}\nbackends:\n"
            + "".join(f"  {n}: {{provider: openai, url: '{url}', authToken: {{value: {KEY}}}}}\n"
                      for n in ("a", "b", "c"))
            + f"  dead: {{provider: openai, url: 'http://127.0.0.1:{dead}'}}\n"
            "routes:\n"
            "  - {name: one, match: {pathPrefix: /one}, backend: a}\n"
            "  - name: three\n    match: {pathPrefix: /three}\n    backends:\n"
            "      - {backend: a, weight: 2}\n      - {backend: b}\n      - {backend: c, priority: 1}\n"
            "  - name: failover\n    match: {pathPrefix: /failover}\n    backends:\n"
            "      - {backend: dead}\n      - {backend: a, priority: 1}\n"
            "    retries: {attempts: 2, backoff: 0ms}\n    outlier: {consecutiveFailures: 1000000}\n")
    gateway = Process(twistd("aigateway", "-c", path), port, directory, "gateway-resilience")
    rows = []
    try:
        results = {}
        for name in ("one", "three"):
            target = f"http://127.0.0.1:{port}/{name}"
            wrk(target, 16, 2, None, KEY)
            results[name] = loaded(gateway, target, None, seconds)
        rows.append(("route of three targets", "S2 64 connections",
                     loadedText(results["three"])
                     + f"; {results['three']['cpu'] - results['one']['cpu']:+.0f} us over one target"))
        one = wrk(f"http://127.0.0.1:{port}/one", 1, seconds, None, KEY)
        failover = wrk(f"http://127.0.0.1:{port}/failover", 1, seconds, None, KEY)
        rows.append(("route with a refusing first target", "S1 one connection",
                     f"p50 {failover['p50']:.2f} ms, p99 {failover['p99']:.2f} ms: "
                     f"{failover['p50'] - one['p50']:+.2f} ms over one healthy target, errors "
                     f"{failover['errors']}"))
    finally:
        gateway.stop()
    return rows


def workersRows(directory: str, seconds: int) -> list[tuple[str, str, str]]:
    """
    Requests a second on a bare route served by two workers against one
    process, with wrk on the same two cores and an upstream that costs next
    to nothing (L{CANNED}: with the fake LLM the upstream would take the
    cores the second worker needs).
    """
    port, admin, upstreamPort = freePort(), freePort(), freePort()
    upstream = Process([sys.executable, "-c", CANNED, str(upstreamPort)], upstreamPort, directory, "canned")
    path = os.path.join(directory, "workers.yaml")
    with open(path, "w") as f:
        f.write(gatewayConfig(upstreamPort, port, admin, False, 0, "", 0))
    url = f"http://127.0.0.1:{port}/bench"
    results: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(3):
        for workers in (1, 2):
            gateway = Process(twistd("aigateway", "-c", path, "--workers", str(workers)), port, directory,
                              f"gateway-workers-{workers}")
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as ready:
                            if ready.status == 200:
                                break
                    except OSError:
                        pass
                    time.sleep(0.1)
                wrk(url, 16, 2, None, KEY)
                results[workers].append(wrk(url, 64, seconds, None, KEY)["rps"])
            finally:
                gateway.stop()
    upstream.stop()
    one, two = max(results[1]), max(results[2])
    return [("bare route, 2 workers", "S2 64 connections, canned upstream",
             f"{two:.0f} req/s against {one:.0f} with one process: {two / one:.2f}x "
             f"(best of 3 runs each; wrk and the upstream share the {os.cpu_count()} cores)")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--write", action="store_true", help="record the table in bench/RESULTS.md")
    parser.add_argument("--providers", action="store_true",
                        help="only the rows of each provider (translation's cost)")
    parser.add_argument("--resilience", action="store_true",
                        help="only the rows of routes with several targets")
    parser.add_argument("--workers", action="store_true",
                        help="only the row of two workers against one process")
    args = parser.parse_args()
    if (args.providers or args.resilience or args.workers) and args.write:
        parser.error("--write records the whole table; run it without --providers, --resilience or --workers")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    directory = tempfile.mkdtemp(prefix="aigateway-bench-")
    signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = signer.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    token = sign({"iss": "bench.example", "sub": "bench", "team": "dev",
                  "llms": {"openai": ["gpt-3.5-turbo"]}}, signer)
    one = os.path.join(directory, "one.json")
    with open(one, "w") as f:
        json.dump({"keys": [dict(publicJWK(pem), kid="bench")]}, f)
    many = os.path.join(directory, "many.json")
    keys = [dict(publicJWK(pem), kid="bench")]
    for i in range(99):
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        otherPem = other.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        keys.append(dict(publicJWK(otherPem), kid=f"k{i}"))
    with open(many, "w") as f:
        json.dump({"keys": keys}, f)

    fakellmPort, collectorPort = freePort(), freePort()
    fakellm = Process(twistd("fakellm", "--listen", f"tcp:{fakellmPort}:interface=127.0.0.1", "--key", KEY),
                      fakellmPort, directory, "fakellm")
    collector = subprocess.Popen([sys.executable, "-c", COLLECTOR, str(collectorPort)])
    rows: list[tuple[str, str, str]] = []
    speedBefore = calibrate()
    try:
        if args.providers or args.resilience or args.workers:
            if args.providers:
                rows.extend(providerRows(fakellmPort, directory, args.seconds))
            if args.resilience:
                rows.extend(resilienceRows(fakellmPort, directory, args.seconds))
            if args.workers:
                rows.extend(workersRows(directory, args.seconds))
            return finish(rows, args, speedBefore, directory)
        direct = f"http://127.0.0.1:{fakellmPort}/v1/chat/completions"
        base1 = wrk(direct, 1, args.seconds, None, KEY)
        base64 = wrk(direct, 64, args.seconds, None, KEY)
        baseStreams = s3Round(fakellmPort, "/v1/chat/completions", KEY)
        baseBurst = s3Round(fakellmPort, "/v1/chat/completions", KEY, 0.0)
        rows.append(("direct", "S1 one connection", f"p50 {base1['p50']:.2f} ms, p99 {base1['p99']:.2f} ms"))
        rows.append(("direct", "S2 64 connections", f"{base64['rps']:.0f} req/s, p99 {base64['p99']:.1f} ms"))
        rows.append(("direct", "S3 50 streams", f"first chunk p50 {baseStreams['ttfc50']:.2f} ms, "
                     f"p99 {baseStreams['ttfc99']:.2f} ms, gap p50 {baseStreams['gap50']:.2f} ms"))
        rows.append(("direct", "S3 burst of 50", f"first chunk p50 {baseBurst['ttfc50']:.2f} ms, "
                     f"p99 {baseBurst['ttfc99']:.2f} ms"))
        floorPort = freePort()
        floor = Process([sys.executable, "-c", FLOOR, str(floorPort)], floorPort, directory, "floor")
        try:
            rows.append(("twisted.web alone", "S2 64 connections",
                         loadedText(loaded(floor, f"http://127.0.0.1:{floorPort}/", None, args.seconds))))
        finally:
            floor.stop()
        for full in (True, False):
            label = "everything on" if full else "bare route"
            auth = token if full else KEY
            for scenario in ("main", "S5"):
                port, admin = freePort(), freePort()
                path = os.path.join(directory, f"gateway-{label[:4]}-{scenario}.yaml")
                with open(path, "w") as f:
                    f.write(gatewayConfig(fakellmPort, port, admin, full,
                                          1000 if scenario == "S5" else 0,
                                          many if scenario == "S5" else one, collectorPort))
                gateway = Process(twistd("aigateway", "-c", path), port, directory, f"gateway-{label[:4]}-{scenario}")
                try:
                    url = f"http://127.0.0.1:{port}/bench"
                    wrk(url, 16, 2, token if full else None, KEY)
                    if scenario == "S5":
                        rows.append((label, "S5 S2 with 1,000 routes, 100-key JWKS",
                                     loadedText(loaded(gateway, url, token if full else None, args.seconds))))
                        continue
                    # Each baseline is measured again just before the gateway's
                    # run: the machine's speed drifts from minute to minute.
                    d1 = wrk(direct, 1, args.seconds, None, KEY)
                    r1 = wrk(url, 1, args.seconds, token if full else None, KEY)
                    rows.append((label, "S1 added latency", f"p50 {r1['p50'] - d1['p50']:+.2f} ms, "
                                 f"p99 {r1['p99'] - d1['p99']:+.2f} ms (direct alongside: p50 {d1['p50']:.2f} ms)"))
                    rows.append((label, "S2 64 connections",
                                 loadedText(loaded(gateway, url, token if full else None, args.seconds))))
                    # wrk ends S2 by closing its 64 connections mid-request,
                    # and the gateway closes the upstream connections of the
                    # requests its clients gave up: the first round of
                    # streams refills the upstream pool.  Then three rounds,
                    # each just after a direct one, as the machine's speed
                    # drifts: the medians of the three differences.
                    ds = s3Round(fakellmPort, "/v1/chat/completions", KEY)
                    refill = s3Round(port, "/bench", auth)
                    pairs = [(s3Round(fakellmPort, "/v1/chat/completions", KEY), s3Round(port, "/bench", auth))
                             for _ in range(3)]
                    added50 = [s["ttfc50"] - d["ttfc50"] for d, s in pairs]
                    added99 = statistics.median(s["ttfc99"] - d["ttfc99"] for d, s in pairs)
                    rows.append((label, "S3 50 streams",
                                 f"first chunk added p50 {statistics.median(added50):+.2f} ms "
                                 f"(rounds {', '.join(f'{a:+.2f}' for a in added50)}), p99 {added99:+.2f} ms, "
                                 f"gap p50 {statistics.median(s['gap50'] for _, s in pairs):.2f} ms "
                                 f"(direct {statistics.median(d['gap50'] for d, _ in pairs):.2f}), "
                                 f"errors {sum(s['errors'] for _, s in pairs)}; the round that refilled "
                                 f"the upstream pool: p50 {refill['ttfc50'] - ds['ttfc50']:+.2f} ms, "
                                 f"errors {refill['errors']}"))
                    db = s3Round(fakellmPort, "/v1/chat/completions", KEY, 0.0)
                    b = s3Round(port, "/bench", auth, 0.0)
                    rows.append((label, "S3 burst of 50", f"first chunk added p50 {b['ttfc50'] - db['ttfc50']:+.2f} ms, "
                                 f"p99 {b['ttfc99'] - db['ttfc99']:+.2f} ms, errors {b['errors']}"))
                    s4 = asyncio.run(streams(port, "/bench", auth, 1000, 10, 500))
                    rows.append((label, "S4 1,000 slow streams", f"peak RSS {gateway.peakRSS() / 2**20:.0f} MB, "
                                 f"errors {s4['errors']}"))
                finally:
                    gateway.stop()
        rows.extend(providerRows(fakellmPort, directory, args.seconds))
        rows.extend(resilienceRows(fakellmPort, directory, args.seconds))
        rows.extend(workersRows(directory, args.seconds))
    finally:
        collector.terminate()
        fakellm.stop()
    finish(rows, args, speedBefore, directory)


def finish(rows: list[tuple[str, str, str]], args: argparse.Namespace, speedBefore: float,
           directory: str) -> None:
    """
    Print the table (and write it with C{--write}).
    """
    rows.append(("machine", "calibration loop (lower is faster)",
                 f"{speedBefore:.0f} ms before, {calibrate():.0f} ms after"))
    lines = ["| gateway | scenario | result |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    table = "\n".join(lines)
    print(table)
    if args.write:
        machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        with open(os.path.join(HERE, "RESULTS.md"), "w") as f:
            f.write(f"# Benchmark results\n\n{datetime.date.today()} on {machine}, "
                    f"wrk runs of {args.seconds} s, `python bench/run.py --write`.\n"
                    "The gateway, the fake LLM, the collector and the load generators share the cores.\n\n"
                    + table + "\n")
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
