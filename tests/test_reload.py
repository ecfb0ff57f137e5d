"""
Live configuration with real processes and a real inotify watch: the ways
users change a file (in place, an editor's atomic save, delete and
recreate, a Kubernetes ConfigMap swap), SIGHUP, and the drain on SIGTERM.

What a reload or a drain does is pinned in memory by L{tests.test_service};
these few tests prove the kernel's events and twistd's signals reach it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import subprocess
import sys
import time

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from aigateway.__main__ import main
from tests.lab import CHAT
from tests.processes import REPO, startFakeLLM, startGateway, writeFile

ROUTE = "  - {{name: {name}, match: {{pathPrefix: /{name}}}, backend: local}}\n"


def _config(fakellm: int, routes: list[str], admin: bool = True) -> str:
    text = "listen: tcp:0:interface=127.0.0.1\n"
    if admin:
        text += "admin: {listen: tcp:0:interface=127.0.0.1}\n"
    text += f"backends: {{local: {{provider: openai, url: 'http://127.0.0.1:{fakellm}', authToken: {{value: sk-fake}}}}}}\n"
    text += "routes:\n" + "".join(ROUTE.format(name=name) for name in routes)
    return text


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class ReloadTests(TestCase):
    """
    The gateway follows its configuration file through real inotify.  The
    backend is never called: the admin's C{/config} tells which text is
    served.
    """

    def setUp(self) -> None:
        self.path = writeFile(self, _config(1, ["a"]))
        self.directory = os.path.dirname(self.path)
        self.client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

    def write(self, path: str, text: str) -> None:
        with open(path, "w") as f:
            f.write(text)

    def start(self, configPath: str | None = None) -> None:
        self.gateway = startGateway(self, configPath or self.path)
        self.url = f"http://127.0.0.1:{self.gateway.ports[0]}"
        self.admin = f"http://127.0.0.1:{self.gateway.ports[1]}"

    async def running(self) -> dict:
        response = await self.client.get(self.admin + "/config")
        return await response.json()

    async def waitFor(self, predicate, timeout: float = 10.0) -> None:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if await predicate():
                return
            await deferLater(reactor, 0.02, lambda: None)
        self.fail("the gateway did not follow the change in time")

    async def serving(self, text: str) -> None:
        async def served() -> bool:
            state = await self.running()
            return state["sha256"] == _digest(text) and state["lastError"] is None
        await self.waitFor(served)

    async def test_localChanges(self) -> None:
        """
        A write in place, an editor's save (a temporary file renamed over
        the config), a delete then a new file, and SIGHUP each reload; a
        route removed is a 404 at once.
        """
        self.start()
        inPlace = _config(1, ["b"])
        self.write(self.path, inPlace)
        await self.serving(inPlace)
        response = await self.client.post(self.url + "/a", json=CHAT)
        await response.content()
        self.assertEqual(response.code, 404)

        renamed = _config(1, ["c"])
        temporary = os.path.join(self.directory, ".gateway.yaml.swp")
        self.write(temporary, renamed)
        os.rename(temporary, self.path)
        await self.serving(renamed)

        os.remove(self.path)

        async def failed() -> bool:
            return (await self.running())["lastError"] is not None
        await self.waitFor(failed)
        recreated = _config(1, ["d"])
        self.write(self.path, recreated)
        await self.serving(recreated)

        loadedAt = (await self.running())["loadedAt"]
        self.gateway.process.send_signal(signal.SIGHUP)

        async def reloaded() -> bool:
            return (await self.running())["loadedAt"] != loadedAt
        await self.waitFor(reloaded)
        self.assertIn("configuration reloaded (SIGHUP)", self.gateway.read().decode())

    async def test_tracingTurnedOn(self) -> None:
        """
        Uncommenting C{tracing.otlp} in the running gateway's file makes it
        send spans to that collector, with no restart.
        """
        from twisted.internet.endpoints import TCP4ServerEndpoint
        from twisted.web.server import Site

        from tests.test_lab import _Collector

        collector = _Collector()
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(collector))
        self.addCleanup(port.stopListening)
        fakellm = startFakeLLM(self, "sk-fake")
        before = _config(fakellm.ports[0], ["a"])
        self.write(self.path, before)
        self.start()
        traced = before + (f"tracing: {{otlp: {{endpoint: 'http://127.0.0.1:{port.getHost().port}/v1/traces'}}, "
                           "serviceName: reloaded}\n")
        self.write(self.path, traced)
        await self.serving(traced)
        self.assertIn("tracing: spans to http://127.0.0.1:", self.gateway.read().decode())
        response = await self.client.post(self.url + "/a", json=CHAT)
        self.assertEqual(response.code, 200, await response.text())

        async def spans() -> bool:
            return len(collector.spans) >= 2
        await self.waitFor(spans)
        self.assertEqual(sorted(span.name for span in collector.spans), ["POST a", "chat gpt-4o-mini"])
        # Let the collector's answer go out before the gateway is stopped
        # (which blocks this reactor), or its last flush waits for it.
        await deferLater(reactor, 0.2, lambda: None)

    async def test_configMapSwap(self) -> None:
        """
        A Kubernetes ConfigMap update: the C{..data} symlink is swapped to a
        new directory and the config's own symlink follows it.
        """
        mount = os.path.join(self.directory, "configmap")
        os.makedirs(os.path.join(mount, "..2026_11_28_v1"))
        self.write(os.path.join(mount, "..2026_11_28_v1", "gateway.yaml"), _config(1, ["a"]))
        os.symlink("..2026_11_28_v1", os.path.join(mount, "..data"))
        os.symlink("..data/gateway.yaml", os.path.join(mount, "gateway.yaml"))
        self.start(os.path.join(mount, "gateway.yaml"))
        swapped = _config(1, ["b"])
        os.makedirs(os.path.join(mount, "..2026_11_28_v2"))
        self.write(os.path.join(mount, "..2026_11_28_v2", "gateway.yaml"), swapped)
        os.symlink("..2026_11_28_v2", os.path.join(mount, "..data_tmp"))
        os.rename(os.path.join(mount, "..data_tmp"), os.path.join(mount, "..data"))
        await self.serving(swapped)


class DrainTests(TestCase):
    """
    SIGTERM lets what is in flight finish.
    """

    async def test_streamCompletes(self) -> None:
        """
        A stream in flight when SIGTERM arrives completes; the process then
        exits cleanly and new connections are refused.
        """
        fakellm = startFakeLLM(self, "sk-fake")
        gateway = startGateway(self, writeFile(self, _config(fakellm.ports[0], ["a"])))
        client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        url = f"http://127.0.0.1:{gateway.ports[0]}/a"
        response = await client.post(url, json=dict(CHAT, stream=True), unbuffered=True,
                                     headers={"x-fakellm-chunks": "10", "x-fakellm-gap": "100"})
        self.assertEqual(response.code, 200)
        gateway.process.send_signal(signal.SIGTERM)
        await deferLater(reactor, 0.3, lambda: None)
        with self.assertRaises(Exception):
            await client.post(url, json=CHAT)
        body = await response.content()
        self.assertTrue(body.endswith(b"data: [DONE]\n\n"))
        # twistd ends by raising the signal that stopped it, as shells expect.
        self.assertEqual(await deferLater(reactor, 0, lambda: gateway.process.wait(15)), -signal.SIGTERM)
        output = gateway.read()
        self.assertIn(b"draining 1 requests in flight", output)
        self.assertIn(b"Server Shut Down.", output)


class CheckTests(SynchronousTestCase):
    """
    C{python -m aigateway check}.
    """

    def test_good(self) -> None:
        """
        The shipped configuration is fine: status 0.
        """
        result = subprocess.run([sys.executable, "-m", "aigateway", "check", "-c", "etc/gateway.yaml"],
                                capture_output=True, cwd=REPO, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.decode().strip(), "etc/gateway.yaml: ok (2 routes, 2 backends)")

    def test_broken(self) -> None:
        """
        A broken one: status 1 and the field named.
        """
        path = writeFile(self, _config(1, ["a"]).replace("backend: local", "backend: locl"))
        errors = io.StringIO()
        with contextlib.redirect_stderr(errors):
            status = main(["check", "-c", path])
        self.assertEqual(status, 1)
        self.assertIn("routes[0].backend: no backend named 'locl' (did you mean 'local'?)", errors.getvalue())
