"""
Tests for L{aigateway.state.redis}: rate-limit buckets in a real
C{redis-server}, started on a free port, shared by two gateways built apart
(each with its own clock and connection), and killed, slowed and restarted
for the failure cases.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from typing import Any

from prometheus_client import generate_latest
from treq import collect
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from aigateway.app.admin import redacted
from aigateway.config import ConfigError, loadConfig
from aigateway.observe.report import Metrics
from aigateway.state import storeFor
from aigateway.config import Bucket
from aigateway.state.memory import UNAVAILABLE, MemoryBuckets, Refused
from aigateway.state.redis import BATCH_MOST, RedisBuckets, bucketKey
from tests.memory import MemoryGateway
from tests.processes import startFakeLLM, startGateway, writeFile

BACKEND = "backends: {local: {provider: openai, url: 'http://127.0.0.1:9000'}}\n"


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """
    A C{redis-server} of this test's own, without persistence.
    """

    def __init__(self, *extra: str) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not installed (the README's test command installs it)")
        self.executable = executable
        self.extra = extra
        self.port = _freePort()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--enable-debug-command", "yes", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def cli(self, *args: str, password: str | None = None) -> str:
        auth = ["-a", password, "--no-auth-warning"] if password else []
        return subprocess.run(
            ["redis-cli", "-p", str(self.port), *auth, *args], capture_output=True, text=True, timeout=10
        ).stdout.strip()


def _routes(limits: str) -> str:
    return BACKEND + f"routes:\n  - {{name: r, match: {{pathPrefix: /r}}, backend: local, rateLimits: [{limits}]}}\n"


def _state(port: int, extra: str = "", onError: str = "allow") -> str:
    return f"state: {{redis: {{url: 'redis://127.0.0.1:{port}/0'{extra}}}, onError: {onError}}}\n"


async def _until(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("waited in vain")
        await deferLater(reactor, 0.005, lambda: None)


class _Gateways:
    """
    Gateways built from one configuration, each with its own clock, fake
    LLM and connection to Redis.
    """

    def __init__(self, case: TestCase, config: str, count: int = 2) -> None:
        self.metrics = Metrics()
        self.stores = []
        self.gateways = []
        parsed = loadConfig(config)
        for _ in range(count):
            counter = self.metrics.stateFallbacks
            store = storeFor(parsed.state, reactor, {"REDIS_SECRET": "s3cret"},
                             lambda reason, counter=counter: counter.labels(reason).inc())
            store.start()
            case.addCleanup(store.stop)
            self.stores.append(store)
            self.gateways.append(MemoryGateway(config, buckets=store))

    async def connected(self) -> None:
        await _until(lambda: all(store.connected for store in self.stores))

    async def ask(self, gateway: MemoryGateway, body: dict | None = None) -> tuple[int, bytes]:
        """
        One request to C{gateway}, pumped until its answer is in.
        """
        body = body or {"model": "gpt-4o", "messages": [{"role": "user", "content": "one two three four"}]}
        d = gateway.client.post("http://gw/r", json.dumps(body).encode(), unbuffered=True,
                                headers={"content-type": "application/json"})
        response = await self._pumped(gateway, d)
        chunks: list[bytes] = []
        await self._pumped(gateway, collect(response, chunks.append))
        return response.code, b"".join(chunks)

    async def _pumped(self, gateway: MemoryGateway, d: Deferred) -> Any:
        results: list[Any] = []
        d.addBoth(results.append)
        await _until(lambda: gateway.pump() or results)
        return results[0] if not isinstance(results[0], Failure) else results[0].raiseException()

    async def spread(self, count: int) -> list[int]:
        """
        C{count} requests at once, taking turns over the gateways.
        """
        answers = await gatherResults([
            Deferred.fromCoroutine(self.ask(self.gateways[i % len(self.gateways)])) for i in range(count)
        ])
        return [code for code, _ in answers]

    def fallbacks(self) -> str:
        return generate_latest(self.metrics.registry).decode()


class _ServerCase(TestCase):
    def setUp(self) -> None:
        self.redis = RedisServer()
        self.redis.start()
        self.addCleanup(self.redis.kill)


class SharedLimitTests(_ServerCase):
    """
    Two gateways, one Redis: the limits hold for both together.
    """

    async def test_requestsAcrossGateways(self) -> None:
        """
        40 requests at once, spread over two gateways, against a limit of
        10 requests: exactly 10 pass, the others are 429s.
        """
        # Forty requests pumped in memory keep the reactor of this test busy
        # for longer than the default timeout: this test is about sharing.
        gateways = _Gateways(self, _routes("{requests: {limit: 10, per: 1h}}")
                             + _state(self.redis.port, ", timeout: 2s"))
        await gateways.connected()
        codes = await gateways.spread(40)
        self.assertEqual((codes.count(200), codes.count(429)), (10, 30))
        self.assertEqual(sum(len(g.fakellm.requests) for g in gateways.gateways), 10)
        self.assertNotIn("aigateway_state_fallbacks_total{", gateways.fallbacks())

    async def test_tokensAcrossGateways(self) -> None:
        """
        Token charges after the answer count for both gateways: answers of
        12 tokens against 20 an hour, one on each gateway, leave the third
        refused whichever gateway takes it.
        """
        gateways = _Gateways(self, _routes("{tokens: {limit: 20, per: 1h}}") + _state(self.redis.port))
        await gateways.connected()
        first, second = gateways.gateways
        self.assertEqual((await gateways.ask(first))[0], 200)
        key = "aigateway:r:0:tokens:"
        await _until(lambda: self.redis.cli("HGET", key, "l") == "8")
        self.assertEqual((await gateways.ask(second))[0], 200)
        await _until(lambda: self.redis.cli("HGET", key, "l").startswith("-"))
        code, body = await gateways.ask(first)
        self.assertEqual(code, 429)
        self.assertEqual(json.loads(body)["error"]["code"], "rate_limit_exceeded")
        self.assertEqual((await gateways.ask(second))[0], 429)

    async def test_keysExpireAndArePrefixed(self) -> None:
        """
        A bucket's key is under the prefix, names the route, the limit and
        the key's value, and expires a little after the bucket would be
        full again.
        """
        gateways = _Gateways(self, BACKEND + "routes:\n"
                             "  - {name: 'a:b', match: {pathPrefix: /r}, backend: local, "
                             "rateLimits: [{key: 'request.method', requests: {limit: 3, per: 1m}}]}\n"
                             + _state(self.redis.port, ", keyPrefix: 'gw1/'"), count=1)
        await gateways.connected()
        self.assertEqual((await gateways.ask(gateways.gateways[0]))[0], 200)
        self.assertEqual(self.redis.cli("KEYS", "*"), "gw1/a%3Ab:0:requests:POST")
        ttl = int(self.redis.cli("PTTL", "gw1/a%3Ab:0:requests:POST"))
        # One of three taken: full again in 20 s, plus the margin.
        self.assertTrue(19_000 < ttl <= 21_000, ttl)

    async def test_survivesGatewayRestart(self) -> None:
        """
        A gateway built again (a restart, a reload with a new store) finds
        the buckets as the last one left them.
        """
        config = _routes("{requests: {limit: 2, per: 1h}}") + _state(self.redis.port)
        before = _Gateways(self, config, count=1)
        await before.connected()
        self.assertEqual(await before.spread(2), [200, 200])
        await before.stores[0].stop()
        after = _Gateways(self, config, count=1)
        await after.connected()
        self.assertEqual(await after.spread(1), [429])

    async def test_password(self) -> None:
        """
        A server that wants a password gets the one C{passwordFrom} names.
        """
        server = RedisServer("--requirepass", "s3cret")
        server.start()
        self.addCleanup(server.kill)
        gateways = _Gateways(self, _routes("{requests: {limit: 1, per: 1h}}")
                             + _state(server.port, ", passwordFrom: {env: REDIS_SECRET}", "deny"), count=1)
        await gateways.connected()
        self.assertEqual(await gateways.spread(2), [200, 429])
        self.assertEqual(server.cli("EXISTS", "aigateway:r:0:requests:", password="s3cret"), "1")


class FailureTests(_ServerCase):
    """
    Redis down, slow, restarted: decisions follow C{onError}, without
    waiting longer than the timeout.
    """

    def logged(self) -> list[str]:
        events: list[str] = []

        def observe(event: dict) -> None:
            if event.get("log_namespace") == "aigateway.state.redis":
                events.append(event["log_format"].format(**event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return events

    async def test_downAllow(self) -> None:
        """
        With Redis killed and C{onError: allow}, requests pass beyond the
        limit; the fallbacks are counted and logged once.
        """
        logged = self.logged()
        gateways = _Gateways(self, _routes("{requests: {limit: 1, per: 1h}}") + _state(self.redis.port), count=1)
        await gateways.connected()
        self.redis.kill()
        await _until(lambda: not gateways.stores[0].connected)
        self.assertEqual(await gateways.spread(5), [200] * 5)
        self.assertIn('aigateway_state_fallbacks_total{reason="unavailable"} 5.0', gateways.fallbacks())
        self.assertEqual(len(logged), 1)
        self.assertIn("is not connected: rate limits allow", logged[0])

    async def test_downDeny(self) -> None:
        """
        With C{onError: deny}, a request Redis cannot judge is a 503 that
        says why, and the provider never hears of it.
        """
        gateways = _Gateways(self, _routes("{requests: {limit: 5, per: 1h}}")
                             + _state(self.redis.port, onError="deny"), count=1)
        await gateways.connected()
        self.redis.kill()
        await _until(lambda: not gateways.stores[0].connected)
        code, body = await gateways.ask(gateways.gateways[0])
        self.assertEqual(code, 503)
        self.assertEqual(json.loads(body)["error"]["code"], "rate_limit_unavailable")
        self.assertEqual(len(gateways.gateways[0].fakellm.requests), 0)

    async def test_slowBoundedByTimeout(self) -> None:
        """
        A Redis that does not answer (busy for a second) costs a request
        no more than the timeout: it is decided by C{onError} in about
        100 ms, and the late answer changes nothing.
        """
        logged = self.logged()
        gateways = _Gateways(self, _routes("{requests: {limit: 5, per: 1h}}")
                             + _state(self.redis.port, ", timeout: 100ms", "deny"), count=1)
        await gateways.connected()
        sleeper = subprocess.Popen(["redis-cli", "-p", str(self.redis.port), "DEBUG", "SLEEP", "1"],
                                   stdout=subprocess.DEVNULL)
        self.addCleanup(sleeper.wait)
        await deferLater(reactor, 0.1, lambda: None)
        started = time.monotonic()
        code, _ = await gateways.ask(gateways.gateways[0])
        took = time.monotonic() - started
        self.assertEqual(code, 503)
        self.assertTrue(0.09 < took < 0.5, took)
        self.assertIn('aigateway_state_fallbacks_total{reason="timeout"} 1.0', gateways.fallbacks())
        self.assertIn("did not answer within 100 ms", logged[0])
        await deferLater(reactor, 1.0, lambda: None)
        self.assertEqual((await gateways.ask(gateways.gateways[0]))[0], 200)

    async def test_restarted(self) -> None:
        """
        When Redis comes back, the store reconnects by itself and decisions
        are Redis's again.
        """
        gateways = _Gateways(self, _routes("{requests: {limit: 1, per: 1h}}") + _state(self.redis.port), count=1)
        await gateways.connected()
        self.redis.kill()
        await _until(lambda: not gateways.stores[0].connected)
        self.assertEqual(await gateways.spread(2), [200, 200])
        self.redis.start()
        await gateways.connected()
        self.assertEqual(await gateways.spread(2), [200, 429])


class TurnTests(_ServerCase):
    """
    The decisions and charges of one turn of the reactor, sent together:
    each is decided as if alone, in order.
    """

    async def store(self, timeout: str = "2s", onError: str = "allow",
                    onFallback: Any = lambda reason: None) -> RedisBuckets:
        config = loadConfig(_routes("{requests: {limit: 1, per: 1h}}")
                            + _state(self.redis.port, f", timeout: {timeout}", onError))
        store = storeFor(config.state, reactor, {}, onFallback)
        store.start()
        self.addCleanup(store.stop)
        await _until(lambda: store.connected)
        return store

    def calls(self) -> int:
        stats = self.redis.cli("INFO", "commandstats")
        found = [line for line in stats.splitlines() if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:"))]
        return sum(int(line.split("calls=")[1].split(",")[0]) for line in found)

    async def test_sameBucketInOneTurn(self) -> None:
        """
        Five decisions on one bucket of three, asked in one turn, admit
        exactly three; the refused see it empty.
        """
        store = await self.store()
        bucket = Bucket(3, 3600)
        verdicts = await gatherResults([store.decide([("r\x000\x00requests\x00u", bucket, 1)], 0.0)
                                        for _ in range(5)])
        self.assertEqual(verdicts, [None, None, None, Refused(0, 0.0), Refused(0, 0.0)])

    async def test_allOrNothingInOneTurn(self) -> None:
        """
        A decision refused by its second bucket takes nothing from its
        first, so a later decision of the same turn still finds it.
        """
        store = await self.store()
        first, second = Bucket(1, 3600), Bucket(1, 3600)
        a, b = "r\x000\x00requests\x00a", "r\x001\x00requests\x00b"
        store.decide([(b, second, 1)], 0.0)
        refused = store.decide([(a, first, 1), (b, second, 1)], 0.0)
        admitted = store.decide([(a, first, 1)], 0.0)
        self.assertEqual(await gatherResults([refused, admitted]), [Refused(1, 0.0), None])

    async def test_chargesBeforeDecisions(self) -> None:
        """
        Tokens charged in a turn count against the decisions of the same
        turn: a bucket of 10 charged 12 refuses, and reports its debt.
        """
        store = await self.store()
        bucket = Bucket(10, 3600)
        name = "r\x000\x00tokens\x00u"
        store.charge([(name, bucket)], 12, 0.0)
        verdict = await store.decide([(name, bucket, 0)], 0.0)
        self.assertIsInstance(verdict, Refused)
        self.assertAlmostEqual(verdict.level, -2.0, places=2)

    async def test_eachFallsBackAtTheDeadline(self) -> None:
        """
        When the call of a turn misses its deadline, each of its decisions
        is decided by C{onError} and counted, and the late answer changes
        nothing.
        """
        reasons: list[str] = []
        store = await self.store("100ms", "deny", reasons.append)
        bucket = Bucket(5, 3600)
        sleeper = subprocess.Popen(["redis-cli", "-p", str(self.redis.port), "DEBUG", "SLEEP", "0.5"],
                                   stdout=subprocess.DEVNULL)
        self.addCleanup(sleeper.wait)
        await deferLater(reactor, 0.1, lambda: None)
        verdicts = await gatherResults([store.decide([(f"r\x000\x00requests\x00u{i}", bucket, 1)], 0.0)
                                        for i in range(3)])
        self.assertEqual((verdicts, reasons), ([UNAVAILABLE] * 3, ["timeout"] * 3))
        await deferLater(reactor, 0.6, lambda: None)
        self.assertEqual(reasons, ["timeout"] * 3)

    async def test_oneCallPerTurn(self) -> None:
        """
        Forty decisions and their charges, asked in one turn, reach Redis
        as one script call; three hundred, as calls of at most
        C{BATCH_MOST} decisions, with every decision still exact.
        """
        store = await self.store()
        bucket = Bucket(250, 3600)
        # The first call loads the script.
        await store.decide([("r\x000\x00requests\x00first", bucket, 1)], 0.0)
        before = self.calls()
        names = [f"r\x000\x00requests\x00u{i}" for i in range(40)]
        for name in names:
            store.charge([(name.replace("requests", "tokens"), bucket)], 5, 0.0)
        verdicts = await gatherResults([store.decide([(name, bucket, 1)], 0.0) for name in names])
        self.assertEqual((verdicts, self.calls() - before), ([None] * 40, 1))
        before = self.calls()
        verdicts = await gatherResults([store.decide([("r\x000\x00requests\x00all", bucket, 1)], 0.0)
                                        for _ in range(300)])
        self.assertEqual(verdicts.count(None), 250)
        self.assertEqual(self.calls() - before, -(-300 // BATCH_MOST))


class KeyTests(SynchronousTestCase):
    """
    L{bucketKey}.
    """

    def test_partsNeverMeet(self) -> None:
        """
        Route names and key values with the separator in them still give
        each bucket a key of its own.
        """
        names = ["a:b\x000\x00requests\x00c", "a\x000\x00requests\x00b:c", "a\x000\x00requests\x00b\x00c",
                 "a\x001\x00requests\x00b", "a\x000\x00tokens\x00b"]
        keys = {bucketKey("p:", name) for name in names}
        self.assertEqual(len(keys), len(names))
        self.assertTrue(all(key.startswith("p:") for key in keys))


class StateConfigTests(SynchronousTestCase):
    """
    The C{state} section.
    """

    def test_default(self) -> None:
        """
        Without C{state}, buckets live in memory.
        """
        state = loadConfig(BACKEND).state
        self.assertIsNone(state.redis)
        self.assertIsInstance(storeFor(state, reactor, {}), MemoryBuckets)

    def test_url(self) -> None:
        """
        The URL gives host, port, database, TLS and password; the password
        is kept out of the described URL.
        """
        redis = loadConfig(BACKEND + "state: {redis: {url: 'rediss://u:p%40ss@cache.example:6380/3'}}").state.redis
        self.assertEqual((redis.host, redis.port, redis.database, redis.tls, redis.username, redis.password,
                          redis.url, redis.timeout, redis.keyPrefix),
                         ("cache.example", 6380, 3, True, "u", "p@ss", "rediss://cache.example:6380/3", 0.05,
                          "aigateway:"))
        self.assertNotIn("p@ss", repr(redis))

    def test_errorsNameTheField(self) -> None:
        """
        Every mistake in the section names its field.
        """
        for text, path in [
            ("{redis: {url: 'http://x'}}", "state.redis.url"),
            ("{redis: {url: 'redis://x:99999'}}", "state.redis.url"),
            ("{redis: {}}", "state.redis.url"),
            ("{redis: {url: 'redis://x', timeout: 5}}", "state.redis.timeout"),
            ("{redis: {url: 'redis://x', keyPrefix: ''}}", "state.redis.keyPrefix"),
            ("{redis: {url: 'redis://x', passwordFrom: {file: /x}}}", "state.redis.passwordFrom.file"),
            ("{redis: {url: 'redis://:p@x', passwordFrom: {env: X}}}", "state.redis.passwordFrom"),
            ("{redis: {url: 'redis://x', tls: true}}", "state.redis.tls"),
            ("{onError: maybe}", "state.onError"),
            ("{memory: {}}", "state.memory"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                loadConfig(BACKEND + "state: " + text + "\n")
            self.assertEqual(caught.exception.path, path, text)

    def test_passwordVariableMissing(self) -> None:
        """
        A C{passwordFrom} variable that is not set is an error naming it.
        """
        state = loadConfig(BACKEND + "state: {redis: {url: 'redis://x', passwordFrom: {env: NOPE}}}").state
        with self.assertRaises(ConfigError) as caught:
            storeFor(state, reactor, {})
        self.assertEqual(caught.exception.path, "state.redis.passwordFrom.env")
        self.assertIsInstance(storeFor(state, reactor, {"NOPE": "x"}), RedisBuckets)

    def test_passwordNotLogged(self) -> None:
        """
        The lines logged at start name the Redis server, not its password.
        """
        from aigateway.app.summary import describeStart

        config = loadConfig(BACKEND + "state: {redis: {url: 'redis://:s3cret@cache:6379/0'}, onError: deny}")
        lines = describeStart(config, ["tcp:8080"], [], None, "0")
        self.assertIn("rate limits in Redis at redis://cache:6379/0 (keys under 'aigateway:'; "
                      "while it does not answer: deny)", lines)
        self.assertNotIn("s3cret", "\n".join(lines))

    def test_passwordRedacted(self) -> None:
        """
        The admin's configuration dump hides a password in the URL.
        """
        dump = redacted({"state": {"redis": {"url": "redis://user:s3cret@h:6379/0"}}})
        self.assertEqual(dump["state"]["redis"]["url"], "redis://user:<redacted>@h:6379/0")


class ReplicaTests(_ServerCase):
    """
    Two C{twistd aigateway} processes, one Redis: the replicas a load
    balancer spreads requests over.
    """

    async def test_twoReplicas(self) -> None:
        """
        40 requests at once over two replicas, against a limit of 10:
        exactly 10 pass.  With Redis killed they keep serving (under
        C{onError: allow}), stay ready, and count the fallbacks.
        """
        fakellm = startFakeLLM(self)
        config = (
            "listen: tcp:0:interface=127.0.0.1\nadmin: {listen: tcp:0:interface=127.0.0.1}\n"
            f"backends: {{local: {{provider: openai, url: 'http://127.0.0.1:{fakellm.ports[0]}'}}}}\n"
            "routes:\n  - {name: r, match: {pathPrefix: /r}, backend: local, "
            "rateLimits: [{requests: {limit: 10, per: 1h}}]}\n"
            # Three processes and this test on a shared machine can stall
            # past 50 ms; the deadline is the failure tests' subject.
            + _state(self.redis.port, ", timeout: 1s")
        )
        replicas = [startGateway(self, writeFile(self, config)) for _ in range(2)]
        # Both connected (CLIENT LIST also shows redis-cli's own).
        await _until(lambda: len(self.redis.cli("CLIENT", "LIST").splitlines()) == 3, 20)
        client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}

        async def ask(replica: Any) -> int:
            response = await client.post(f"http://127.0.0.1:{replica.ports[0]}/r", json=chat)
            await response.content()
            return response.code

        codes = await gatherResults([Deferred.fromCoroutine(ask(replicas[i % 2])) for i in range(40)])
        fallbacks = [line for replica in replicas for line in
                     (await (await client.get(f"http://127.0.0.1:{replica.ports[1]}/metrics")).text()).splitlines()
                     if line.startswith("aigateway_state_fallbacks_total{")]
        self.assertEqual((codes.count(200), codes.count(429), fallbacks), (10, 30, []))
        self.redis.kill()
        await deferLater(reactor, 0.2, lambda: None)
        self.assertEqual([await ask(replica) for replica in replicas], [200, 200])
        for replica in replicas:
            admin = f"http://127.0.0.1:{replica.ports[1]}"
            response = await client.get(admin + "/readyz")
            self.assertEqual(response.code, 200)
            await response.content()
            metrics = await (await client.get(admin + "/metrics")).text()
            self.assertIn('aigateway_state_fallbacks_total{reason="unavailable"} 1.0', metrics)


class StartTests(_ServerCase):
    """
    The first decisions after start.
    """

    async def test_firstRequestsWaitForConnection(self) -> None:
        """
        Requests that come before the first connection is up wait for it
        (within the timeout) instead of falling back.
        """
        gateways = _Gateways(self, _routes("{requests: {limit: 1, per: 1h}}")
                             + _state(self.redis.port, ", timeout: 2s", "deny"), count=1)
        self.assertFalse(gateways.stores[0].connected)
        self.assertEqual(await gateways.spread(2), [200, 429])
        self.assertNotIn("aigateway_state_fallbacks_total{", gateways.fallbacks())


class ServiceTests(_ServerCase):
    """
    The running gateway's store across reloads.
    """

    async def test_reloadKeepsOrReplacesStore(self) -> None:
        """
        A reload with the same C{state} keeps the connected store (and so
        the buckets); one with another C{state} starts a new store and
        stops the old one; a C{passwordFrom} variable that is missing
        fails the reload and changes nothing.
        """
        from aigateway.app.service import GatewayService

        path = os.path.abspath(self.mktemp())
        state = _state(self.redis.port)
        files = {path: (_routes("{requests: {limit: 1, per: 1h}}") + state).encode()}
        service = GatewayService(reactor, path, environ={}, readFile=lambda p: files[p], watch=False)
        service.startService()
        self.addCleanup(service.stopService)
        first = service.buckets
        self.assertIsInstance(first, RedisBuckets)
        await _until(lambda: first.connected)
        files[path] = (_routes("{requests: {limit: 2, per: 1h}}") + state).encode()
        self.assertIsNone(service.reload("test"))
        self.assertIs(service.buckets, first)
        files[path] = (_routes("{requests: {limit: 2, per: 1h}}")
                       + _state(self.redis.port, ", passwordFrom: {env: NOPE}")).encode()
        self.assertIn("state.redis.passwordFrom.env", service.reload("test"))
        self.assertIs(service.buckets, first)
        files[path] = (_routes("{requests: {limit: 2, per: 1h}}")
                       + _state(self.redis.port, ", keyPrefix: other")).encode()
        self.assertIsNone(service.reload("test"))
        second = service.buckets
        self.assertIsInstance(second, RedisBuckets)
        self.assertIsNot(second, first)
        await _until(lambda: second.connected and not first.connected)


class ChargeFailureTests(_ServerCase):
    """
    Token charges that Redis cannot take.
    """

    async def test_chargeLostCounted(self) -> None:
        """
        An answer whose charge cannot reach Redis (killed while the answer
        was served) is counted as a fallback, and the request it belongs
        to was still answered.
        """
        gateways = _Gateways(self, _routes("{tokens: {limit: 20, per: 1h}}") + _state(self.redis.port), count=1)
        await gateways.connected()
        store = gateways.stores[0]
        self.patch(store, "charge", lambda *a, original=store.charge: (self.redis.kill(), original(*a)))
        self.assertEqual((await gateways.ask(gateways.gateways[0]))[0], 200)
        await _until(lambda: "aigateway_state_fallbacks_total{" in gateways.fallbacks())
        self.assertRegex(gateways.fallbacks(), r'aigateway_state_fallbacks_total\{reason="(error|unavailable)"\} 1\.0')
