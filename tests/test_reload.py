"""
Live configuration with real processes and a real inotify watch: every
way users change a file, broken files, streams across a reload, SIGHUP,
C{POST /reload}, the admin's C{/config}, and the drain on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from tests.lab import CHAT
from tests.processes import REPO, startFakeLLM, startGateway, writeFile

ROUTE = "  - {{name: {name}, match: {{pathPrefix: /{name}}}, backend: local}}\n"


def _config(fakellm: int, routes: list[str], admin: bool = True, key: str = "value: sk-fake",
            listen: str = "tcp:0:interface=127.0.0.1") -> str:
    text = f"listen: {listen}\n"
    if admin:
        text += "admin: {listen: tcp:0:interface=127.0.0.1}\n"
    text += f"backends: {{local: {{provider: openai, url: 'http://127.0.0.1:{fakellm}', authToken: {{{key}}}}}}}\n"
    text += "routes:\n" + "".join(ROUTE.format(name=name) for name in routes)
    return text


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReloadTests(TestCase):
    """
    The gateway follows its configuration file.
    """

    def setUp(self) -> None:
        self.fakellm = startFakeLLM(self, "sk-fake")
        self.path = writeFile(self, self.config(["a"]))
        self.directory = os.path.dirname(self.path)
        self.client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

    def config(self, routes: list[str], **kwargs) -> str:
        return _config(self.fakellm.ports[0], routes, **kwargs)

    def write(self, path: str, text: str) -> None:
        with open(path, "w") as f:
            f.write(text)

    def start(self, configPath: str | None = None) -> None:
        self.gateway = startGateway(self, configPath or self.path)
        self.url = f"http://127.0.0.1:{self.gateway.ports[0]}"
        self.admin = f"http://127.0.0.1:{self.gateway.ports[1]}"

    async def status(self, route: str, base: str | None = None) -> int:
        response = await self.client.post(f"{base or self.url}/{route}", json=CHAT)
        await response.content()
        return response.code

    async def running(self) -> dict:
        response = await self.client.get(self.admin + "/config")
        return await response.json()

    async def waitFor(self, predicate, timeout: float = 10.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if await predicate():
                return time.monotonic() - started
            await deferLater(reactor, 0.02, lambda: None)
        self.fail("the gateway did not follow the change in time")

    async def routeServes(self, route: str) -> bool:
        return await self.status(route) == 200

    async def test_inPlaceWrite(self) -> None:
        """
        Writing the file in place: the new route serves, and the removed one
        is a 404 (the lab's clean-up).
        """
        self.start()
        self.assertEqual(await self.status("a"), 200)
        self.write(self.path, self.config(["b"]))
        await self.waitFor(lambda: self.routeServes("b"))
        self.assertEqual(await self.status("a"), 404)

    async def test_atomicRename(self) -> None:
        """
        An editor's save: a temporary file renamed over the config.
        """
        self.start()
        temporary = os.path.join(self.directory, ".gateway.yaml.swp")
        self.write(temporary, self.config(["a", "b"]))
        os.rename(temporary, self.path)
        await self.waitFor(lambda: self.routeServes("b"))

    async def test_deleteAndRecreate(self) -> None:
        """
        The file deleted, then written anew.
        """
        self.start()
        os.remove(self.path)
        await deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(await self.status("a"), 200)
        self.write(self.path, self.config(["b"]))
        await self.waitFor(lambda: self.routeServes("b"))

    async def test_configMapSwap(self) -> None:
        """
        A Kubernetes ConfigMap update: the C{..data} symlink is swapped to a
        new directory and the config's own symlink follows it.
        """
        mount = os.path.join(self.directory, "configmap")
        os.makedirs(os.path.join(mount, "..2026_11_28_v1"))
        self.write(os.path.join(mount, "..2026_11_28_v1", "gateway.yaml"), self.config(["a"]))
        os.symlink("..2026_11_28_v1", os.path.join(mount, "..data"))
        os.symlink("..data/gateway.yaml", os.path.join(mount, "gateway.yaml"))
        self.start(os.path.join(mount, "gateway.yaml"))
        self.assertEqual(await self.status("a"), 200)
        os.makedirs(os.path.join(mount, "..2026_11_28_v2"))
        self.write(os.path.join(mount, "..2026_11_28_v2", "gateway.yaml"), self.config(["b"]))
        os.symlink("..2026_11_28_v2", os.path.join(mount, "..data_tmp"))
        os.rename(os.path.join(mount, "..data_tmp"), os.path.join(mount, "..data"))
        await self.waitFor(lambda: self.routeServes("b"))
        self.assertEqual(await self.status("a"), 404)

    async def test_brokenThenFixed(self) -> None:
        """
        A broken file changes nothing but C{/config}'s error and a metric;
        fixing it recovers without a restart.
        """
        self.start()
        before = await self.running()
        self.write(self.path, self.config(["a"]) + "  - {name: b, match: {pathPrefix: /b}, backend: nope}\n")

        async def failed() -> bool:
            return (await self.running())["lastError"] is not None

        await self.waitFor(failed)
        state = await self.running()
        self.assertEqual(state["lastError"], "routes[1].backend: no backend named 'nope'")
        self.assertEqual(state["sha256"], before["sha256"])
        self.assertEqual(await self.status("a"), 200)
        metrics = await (await self.client.get(self.admin + "/metrics")).text()
        self.assertIn('aigateway_config_reloads_total{result="failed"} 1.0', metrics)
        self.assertIn("configuration not reloaded (file changed): routes[1].backend", self.gateway.read().decode())
        self.write(self.path, self.config(["a", "b"]))
        await self.waitFor(lambda: self.routeServes("b"))
        self.assertIsNone((await self.running())["lastError"])

    async def test_streamSurvivesReload(self) -> None:
        """
        A stream that started before its route was removed finishes whole.
        """
        self.start()
        response = await self.client.post(
            self.url + "/a", json=dict(CHAT, stream=True), unbuffered=True,
            headers={"x-fakellm-chunks": "20", "x-fakellm-gap": "50"},
        )
        self.assertEqual(response.code, 200)
        self.write(self.path, self.config(["b"]))
        await self.waitFor(lambda: self.routeServes("b"))
        body = await response.content()
        self.assertTrue(body.endswith(b"data: [DONE]\n\n"))
        self.assertEqual(await self.status("a"), 404)

    async def test_signalAndAdmin(self) -> None:
        """
        C{SIGHUP} and C{POST /reload} reload; C{/config} shows the running
        configuration with its secrets redacted.
        """
        self.start()
        self.gateway.process.send_signal(signal.SIGHUP)

        async def reloaded(count: int):
            metrics = await (await self.client.get(self.admin + "/metrics")).text()
            return f'aigateway_config_reloads_total{{result="ok"}} {count}.0' in metrics

        await self.waitFor(lambda: reloaded(1))
        response = await self.client.post(self.admin + "/reload")
        self.assertEqual((await response.json())["reloaded"], True)
        await self.waitFor(lambda: reloaded(2))
        state = await self.running()
        self.assertEqual(state["config"]["backends"]["local"]["authToken"], {"value": "<redacted>"})
        self.assertNotIn("sk-fake", json.dumps(state))

    async def test_keyFileRotation(self) -> None:
        """
        Rotating a backend's key file takes effect with no config edit.
        """
        keyFile = os.path.join(self.directory, "openai.key")
        self.write(keyFile, "sk-old\n")
        self.write(self.path, self.config(["a"], key="file: openai.key"))
        self.start()
        self.assertEqual(await self.status("a"), 401)
        self.write(keyFile, "sk-fake\n")
        await self.waitFor(lambda: self.routeServes("a"))

    async def test_listenersFollow(self) -> None:
        """
        A listener added to C{listen} is opened; one removed is closed.
        """
        self.start()
        port = _freePort()
        self.write(self.path, self.config(["a"], listen=f"[tcp:0:interface=127.0.0.1, 'tcp:{port}:interface=127.0.0.1']"))
        other = f"http://127.0.0.1:{port}"

        async def serves() -> bool:
            try:
                return await self.status("a", other) == 200
            except Exception:
                return False

        await self.waitFor(serves)
        self.write(self.path, self.config(["a"], listen=f"'tcp:{port}:interface=127.0.0.1'"))

        async def closed() -> bool:
            try:
                await self.status("a")
            except Exception:
                return True
            return False

        await self.waitFor(closed)
        self.assertEqual(await self.status("a", other), 200)


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

    def check(self, text: str) -> subprocess.CompletedProcess:
        path = writeFile(self, text)
        return subprocess.run([sys.executable, "-m", "aigateway", "check", "-c", path],
                              capture_output=True, cwd=REPO, timeout=60)

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
        result = self.check(_config(1, ["a"]).replace("backend: local", "backend: locl"))
        self.assertEqual(result.returncode, 1)
        self.assertIn("routes[0].backend: no backend named 'locl' (did you mean 'local'?)", result.stderr.decode())

