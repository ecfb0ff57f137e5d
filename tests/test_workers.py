"""
C{twistd aigateway} with several workers, as a user runs it: real
processes, real sockets, the fake LLM over a socket, and for the limits a
real C{redis-server} shared by two such gateways.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from tests.processes import REPO, Twistd, startFakeLLM, twistdCommand, writeFile
from tests.test_redis import RedisServer, _state

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def _config(fakellm: Any, extra: str = "", routes: str = "") -> str:
    return (
        "listen: tcp:0:interface=127.0.0.1\nadmin: {listen: tcp:0:interface=127.0.0.1}\nworkers: 2\n"
        "shutdownTimeout: 10s\n" + extra +
        f"backends: {{local: {{provider: openai, url: 'http://127.0.0.1:{fakellm.ports[0]}'}}}}\n"
        "routes:\n  - {name: r, match: {pathPrefix: /r}, backend: local}\n" + routes
    )


class _Gateway:
    """
    A C{twistd aigateway} with workers, and a client for it.
    """

    def __init__(self, case: TestCase, path: str, args: tuple[str, ...] = ()) -> None:
        self.process = Twistd(["aigateway", "-c", path, *args], listeners=2, timeout=60)
        case.addCleanup(self.process.stop)
        self.url = f"http://127.0.0.1:{self.process.ports[0]}"
        self.admin = f"http://127.0.0.1:{self.process.ports[1]}"
        self.client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

    def log(self) -> str:
        return self.process.read().decode("utf-8", "replace")

    def pids(self) -> dict[int, int]:
        """
        The process of each worker serving now, by number.
        """
        return {int(n): int(p) for n, p in re.findall(r"worker (\d+) serving \(pid (\d+)\)", self.log())}

    async def until(self, condition: Any, seconds: float = 60.0) -> None:
        deadline = time.monotonic() + seconds
        while not await condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"waited in vain; the gateway's log:\n{self.log()}")
            await deferLater(reactor, 0.05, lambda: None)

    async def ready(self) -> None:
        async def isReady() -> bool:
            response = await self.client.get(self.admin + "/readyz")
            await response.content()
            return response.code == 200

        await self.until(isReady)

    async def ask(self, path: str = "/r", headers: dict | None = None) -> tuple[int, bytes]:
        response = await self.client.post(self.url + path + "/v1/chat/completions", json=CHAT,
                                          headers=headers or {})
        return response.code, await response.content()

    async def metrics(self) -> str:
        return await (await self.client.get(self.admin + "/metrics")).text()


def _sample(metrics: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", metrics, re.M)
    return float(found.group(1)) if found else 0.0


class WorkersTests(TestCase):
    """
    Two workers behind one port and one admin port.
    """

    timeout = 180

    def setUp(self) -> None:
        self.fakellm = startFakeLLM(self)

    async def test_serveAndSum(self) -> None:
        """
        Both workers serve on the one port; the admin's C{/metrics} is the
        sum of theirs; each access line names its worker.
        """
        gateway = _Gateway(self, writeFile(self, _config(self.fakellm)))
        await gateway.ready()
        pids = gateway.pids()
        self.assertEqual(sorted(pids), [1, 2])
        codes = await gatherResults([Deferred.fromCoroutine(gateway.ask()) for _ in range(30)])
        self.assertEqual([code for code, _ in codes], [200] * 30)
        metrics = await gateway.metrics()
        self.assertEqual(_sample(metrics, 'aigateway_requests_total{route="r",status="200"}'), 30)
        self.assertEqual(_sample(metrics, "aigateway_requests_in_flight"), 0)
        self.assertEqual(metrics.count("# TYPE aigateway_requests_total counter"), 1)
        await deferLater(reactor, 0.5, lambda: None)
        log = gateway.log()
        served = re.findall(r"\[worker (\d) aigateway\.access#info\] POST /r/v1/chat/completions r -> 200", log)
        self.assertEqual(len(served), 30, log)
        for pid in pids.values():
            os.kill(pid, 0)

    async def test_workerRestarted(self) -> None:
        """
        A worker killed is logged and started again; the other serves
        meanwhile, and the counts of the one killed stay in the sums.
        """
        gateway = _Gateway(self, writeFile(self, _config(self.fakellm)))
        await gateway.ready()
        for _ in range(4):
            self.assertEqual((await gateway.ask())[0], 200)
        pid = gateway.pids()[1]
        # Requests are counted a moment after they end.
        await deferLater(reactor, 0.2, lambda: None)
        os.kill(pid, signal.SIGKILL)
        for _ in range(4):
            self.assertEqual((await gateway.ask())[0], 200)

        async def restarted() -> bool:
            return gateway.pids().get(1) not in (None, pid)

        await gateway.until(restarted)
        self.assertIn(f"worker 1 (pid {pid}) ended: killed by signal 9; starting it again in", gateway.log())
        await gateway.ready()
        metrics = await gateway.metrics()
        self.assertEqual(_sample(metrics, 'aigateway_requests_total{route="r",status="200"}'), 8)
        self.assertEqual(_sample(metrics, "aigateway_worker_restarts_total"), 1)

    async def test_reload(self) -> None:
        """
        A change to the file reloads every worker: the new route answers,
        whichever worker takes the request.
        """
        path = writeFile(self, _config(self.fakellm))
        gateway = _Gateway(self, path)
        await gateway.ready()
        with open(path, "a") as f:
            f.write("  - {name: s, match: {pathPrefix: /s}, backend: local}\n")

        async def bothReloaded() -> bool:
            return len(re.findall(r"\[worker \d aigateway\.app\.service#info\] configuration reloaded", gateway.log())) == 2

        await gateway.until(bothReloaded)
        codes = await gatherResults([Deferred.fromCoroutine(gateway.ask("/s")) for _ in range(10)])
        self.assertEqual([code for code, _ in codes], [200] * 10)

    async def test_drain(self) -> None:
        """
        C{SIGTERM} lets a stream in flight finish, then every process ends.
        """
        gateway = _Gateway(self, writeFile(self, _config(self.fakellm)))
        await gateway.ready()
        pids = list(gateway.pids().values())
        response = await gateway.client.post(
            gateway.url + "/r/v1/chat/completions", json=dict(CHAT, stream=True),
            headers={"x-fakellm-chunks": "10", "x-fakellm-gap": "100"},
        )
        gateway.process.process.send_signal(signal.SIGTERM)
        body = await response.content()
        self.assertEqual(response.code, 200)
        self.assertTrue(body.endswith(b"data: [DONE]\n\n"), body[-200:])
        # twistd ends by the signal that stopped it, as a single gateway does.
        self.assertEqual(gateway.process.process.wait(20), -signal.SIGTERM, gateway.log())
        for pid in pids:
            with self.assertRaises(ProcessLookupError):
                os.kill(pid, 0)


class RefusedTests(TestCase):
    """
    What cannot be served by several workers is refused before anything
    starts.
    """

    def run_(self, config: str, *args: str) -> subprocess.CompletedProcess:
        path = writeFile(self, config)
        return subprocess.run(
            twistdCommand() + ["--pidfile=", "-n", "aigateway", "-c", path, *args],
            capture_output=True, text=True, timeout=60, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
        )

    def test_limitsInMemory(self) -> None:
        """
        Workers with rate limits in memory would each admit the whole
        limit: a config error naming both fields, from the file or from
        C{--workers}.
        """
        limits = ("backends: {local: {provider: openai, url: 'http://127.0.0.1:9'}}\nroutes:\n"
                  "  - {name: r, match: {pathPrefix: /r}, backend: local, "
                  "rateLimits: [{requests: {limit: 10, per: 1m}}]}\n")
        for config, args, field in [("workers: 2\n" + limits, (), "workers"),
                                    (limits, ("--workers", "2"), "--workers")]:
            done = self.run_(config, *args)
            self.assertEqual(done.returncode, 1)
            self.assertIn(f": {field}: 2 workers with routes[0].rateLimits need state.redis", done.stderr)


class SharedLimitTests(TestCase):
    """
    Two replicas of two workers each, one Redis.
    """

    timeout = 180

    def setUp(self) -> None:
        self.redis = RedisServer()
        self.redis.start()
        self.addCleanup(self.redis.kill)
        self.fakellm = startFakeLLM(self)

    async def test_twoByTwo(self) -> None:
        """
        40 requests spread over 2 replicas x 2 workers against a limit of
        10: exactly 10 pass.
        """
        config = _config(self.fakellm, extra=_state(self.redis.port, ", timeout: 1s")).replace(
            "backend: local}", "backend: local, rateLimits: [{requests: {limit: 10, per: 1h}}]}"
        )
        path = writeFile(self, config)
        replicas = [_Gateway(self, path) for _ in range(2)]
        for replica in replicas:
            await replica.ready()
        codes = await gatherResults([Deferred.fromCoroutine(replicas[i % 2].ask()) for i in range(40)])
        self.assertEqual(([c for c, _ in codes].count(200), [c for c, _ in codes].count(429)), (10, 30))
        total = [_sample(await replica.metrics(), 'aigateway_requests_total{route="r",status="429"}')
                 for replica in replicas]
        self.assertEqual(sum(total), 30)
