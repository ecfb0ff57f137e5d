"""
End-to-end tests with real processes: the gateway started through its
twistd plugin, the fake LLM over a socket, and clients a user would use
(treq, the OpenAI Python SDK, plain HTTP).
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import treq
from treq.client import HTTPClient
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.lab import CHAT
from tests.processes import REPO, Twistd, twistdCommand, writeFile

KEY = "sk-test-upstream"

CONFIG = """
listen: tcp:0:interface=127.0.0.1
admin:
  listen: tcp:0:interface=127.0.0.1
backends:
  local:
    provider: openai
    url: http://127.0.0.1:{fakellm}
    authToken: {{value: {key}}}
  openai-all-models:
    provider: openai
    authToken: {{env: OPENAI_API_KEY}}
  nowhere:
    provider: openai
    url: http://127.0.0.1:1
routes:
  - {{name: local, match: {{pathPrefix: /local}}, backend: local, timeout: 5s}}
  - {{name: openai, match: {{pathPrefix: /openai}}, backend: openai-all-models}}
  - {{name: nowhere, match: {{pathPrefix: /nowhere}}, backend: nowhere}}
"""


class _Servers:
    """
    One fake LLM and one gateway in front of it, shared by this module's
    tests and stopped when the test run ends.
    """

    _started: "_Servers | None" = None

    def __init__(self) -> None:
        self.fakellm = Twistd(["fakellm", "--listen", "tcp:0:interface=127.0.0.1", "--key", KEY])
        self.directory = tempfile.mkdtemp(prefix="aigateway-test-")
        atexit.register(shutil.rmtree, self.directory, True)
        self.configPath = os.path.join(self.directory, "gateway.yaml")
        with open(self.configPath, "w") as f:
            f.write(CONFIG.format(fakellm=self.fakellm.ports[0], key=KEY))
        self.gateway = Twistd(["aigateway", "-c", self.configPath], listeners=2)
        self.port, self.adminPort = self.gateway.ports

    @classmethod
    def get(cls) -> "_Servers":
        if cls._started is None:
            cls._started = cls()
        return cls._started


def _request(port: int, method: str, path: str, body: object = None,
             headers: dict | None = None) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    data = json.dumps(body).encode() if body is not None else None
    allHeaders = {"content-type": "application/json"} if data else {}
    allHeaders.update(headers or {})
    connection.request(method, path, body=data, headers=allHeaders)
    response = connection.getresponse()
    result = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    connection.close()
    return result


class PluginTests(SynchronousTestCase):
    """
    The installed package provides both twistd plugins.
    """

    def test_pluginsInstalled(self) -> None:
        """
        C{aigateway} and C{fakellm} are among the installed IServiceMaker
        plugins, seen from outside the checkout.
        """
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        output = subprocess.check_output(
            [
                sys.executable,
                "-c",
                "from twisted.plugin import getPlugins;"
                "from twisted.application.service import IServiceMaker;"
                "print(sorted(p.tapname for p in getPlugins(IServiceMaker)))",
            ],
            cwd=tempfile.gettempdir(),
            env=env,
        ).decode()
        self.assertIn("'aigateway'", output)
        self.assertIn("'fakellm'", output)

    def test_brokenConfig(self) -> None:
        """
        A config naming a missing backend stops twistd with status 1 and one
        line naming the field.
        """
        path = writeFile(
            self,
            "backends:\n  openai-all-models: {provider: openai}\n"
            "routes:\n  - {name: openai, match: {pathPrefix: /openai}, backend: openai-all-model}\n",
            "broken.yaml",
        )
        directory = os.path.dirname(path)
        env = dict(os.environ, PYTHONPATH=REPO)
        result = subprocess.run(
            twistdCommand() + ["--pidfile=", "-n", "aigateway", "-c", path],
            capture_output=True, env=env, cwd=directory, timeout=60,
        )
        self.assertEqual(result.returncode, 1)
        lines = result.stderr.decode().strip().splitlines()
        self.assertEqual(
            lines,
            [f"aigateway: {path}: routes[0].backend: no backend named 'openai-all-model' "
             "(did you mean 'openai-all-models'?)"],
        )
        self.assertEqual(result.stdout, b"")

    def test_missingConfig(self) -> None:
        """
        A config file that does not exist is one clear line, status 1.
        """
        env = dict(os.environ, PYTHONPATH=REPO)
        result = subprocess.run(
            twistdCommand() + ["--pidfile=", "-n", "aigateway", "-c", "/nonexistent/gw.yaml"],
            capture_output=True, env=env, timeout=60,
        )
        self.assertEqual(result.returncode, 1)
        self.assertEqual(
            result.stderr.decode().strip(),
            "aigateway: /nonexistent/gw.yaml: cannot read the configuration: No such file or directory",
        )


    def test_portInUse(self) -> None:
        """
        A gateway or admin port already in use stops twistd with status 1
        and one line naming the address, not a traceback.
        """
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"tcp:{holder.getsockname()[1]}:interface=127.0.0.1"
        free = "tcp:0:interface=127.0.0.1"
        env = dict(os.environ, PYTHONPATH=REPO)
        for gateway, admin in [(taken, free), (free, taken)]:
            path = writeFile(self, f"listen: {gateway}\nadmin: {{listen: '{admin}'}}\n"
                                   "backends: {b: {provider: openai, url: 'http://127.0.0.1:1'}}\n"
                                   "routes: [{name: r, match: {pathPrefix: /r}, backend: b}]\n")
            result = subprocess.run(
                twistdCommand() + ["--pidfile=", "-n", "aigateway", "-c", path],
                capture_output=True, env=env, cwd=os.path.dirname(path), timeout=60,
            )
            output = (result.stdout + result.stderr).decode()
            self.assertEqual(result.returncode, 1, output)
            self.assertNotIn("Traceback", output)
            errors = [line for line in output.splitlines() if "cannot listen" in line]
            self.assertEqual(len(errors), 1, output)
            self.assertTrue(errors[0].endswith(f"aigateway: cannot listen on {taken}: address already in use"),
                            errors[0])


class HTTPTests(SynchronousTestCase):
    """
    The gateway answers plain HTTP clients as the README says.
    """

    def setUp(self) -> None:
        self.servers = _Servers.get()

    def test_chat(self) -> None:
        """
        C{POST /local} is a chat completion from the fake LLM.
        """
        status, headers, body = _request(self.servers.port, "POST", "/local", CHAT)
        self.assertEqual(status, 200, body)
        document = json.loads(body)
        self.assertEqual(document["object"], "chat.completion")
        self.assertEqual(document["model"], "gpt-4o-mini")
        self.assertTrue(document["choices"][0]["message"]["content"])

    def test_missingCredential(self) -> None:
        """
        Without C{OPENAI_API_KEY}, C{/openai} is a 503 naming the variable.
        """
        status, headers, body = _request(self.servers.port, "POST", "/openai", CHAT)
        self.assertEqual(status, 503)
        self.assertEqual(headers["content-type"], "application/json")
        self.assertIn("OPENAI_API_KEY is not set", json.loads(body)["error"]["message"])

    def test_unreachable(self) -> None:
        """
        A backend nobody listens on is a 502.
        """
        status, headers, body = _request(self.servers.port, "POST", "/nowhere", CHAT)
        self.assertEqual(status, 502)
        self.assertEqual(json.loads(body)["error"]["code"], "upstream_unreachable")

    def test_badJson(self) -> None:
        """
        Invalid JSON is a 400 from the gateway.
        """
        connection = http.client.HTTPConnection("127.0.0.1", self.servers.port, timeout=10)
        connection.request("POST", "/local", body=b"{nope", headers={"content-type": "application/json"})
        response = connection.getresponse()
        self.assertEqual(response.status, 400)
        self.assertEqual(json.loads(response.read())["error"]["code"], "invalid_json")

    def test_health(self) -> None:
        """
        The admin listener answers C{/healthz}.
        """
        status, headers, body = _request(self.servers.adminPort, "GET", "/healthz")
        self.assertEqual((status, body), (200, b"ok\n"))


class TreqTests(TestCase):
    """
    An asynchronous Twisted client against the real gateway.
    """

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.servers = _Servers.get()
        self.url = f"http://127.0.0.1:{self.servers.port}"
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.treq = HTTPClient(Agent(reactor, pool=pool))

    async def test_stream(self) -> None:
        """
        A streamed answer arrives as server-sent events ending in C{[DONE]}.
        """
        response = await self.treq.post(
            self.url + "/local",
            json=dict(CHAT, stream=True),
            headers={"x-fakellm-chunks": "5", "x-fakellm-gap": "20"},
            unbuffered=True,
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("x-accel-buffering"), ["no"])
        chunks: list[bytes] = []
        await treq.collect(response, chunks.append)
        text = b"".join(chunks)
        self.assertTrue(text.endswith(b"data: [DONE]\n\n"), text[-200:])
        # role, five words and finish; the usage chunk the gateway asked
        # for itself is kept from a client that did not ask for it
        self.assertEqual(text.count(b"chat.completion.chunk"), 7)
        self.assertNotIn(b'"usage":{', text)
        self.assertNotIn(b'"choices":[]', text)
        self.assertGreater(len(chunks), 1)

    async def test_models(self) -> None:
        """
        C{GET /local/v1/models} lists the fake LLM's models.
        """
        response = await self.treq.get(self.url + "/local/v1/models")
        document = await response.json()
        self.assertIn("gpt-4o-mini", [m["id"] for m in document["data"]])

    async def test_brokenStream(self) -> None:
        """
        An upstream that breaks mid-stream ends the client's stream with an
        error event and no C{[DONE]}.
        """
        response = await self.treq.post(
            self.url + "/local",
            json=dict(CHAT, stream=True),
            headers={"x-fakellm-chunks": "10", "x-fakellm-drop-after": "3"},
            unbuffered=True,
        )
        chunks: list[bytes] = []
        try:
            await treq.collect(response, chunks.append)
        except Exception:
            pass
        else:
            self.fail("the broken stream ended cleanly")
        text = b"".join(chunks)
        self.assertIn(b"event: error", text)
        self.assertNotIn(b"[DONE]", text)


class SDKTests(SynchronousTestCase):
    """
    The official OpenAI Python SDK pointed at the gateway.
    """

    def setUp(self) -> None:
        from openai import OpenAI

        servers = _Servers.get()
        self.client = OpenAI(
            base_url=f"http://127.0.0.1:{servers.port}/local/v1",
            api_key="caller-key-not-for-upstream",
            max_retries=0,
        )

    def tearDown(self) -> None:
        self.client.close()

    def test_chat(self) -> None:
        """
        Chat completions, with usage.
        """
        completion = self.client.chat.completions.create(**CHAT)
        self.assertTrue(completion.choices[0].message.content)
        self.assertGreater(completion.usage.total_tokens, 0)

    def test_stream(self) -> None:
        """
        A streamed chat, usage included on request.
        """
        stream = self.client.chat.completions.create(
            stream=True, stream_options={"include_usage": True}, **CHAT
        )
        parts = []
        usage = None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        self.assertTrue("".join(parts))
        self.assertIsNotNone(usage)

    def test_models(self) -> None:
        """
        Listing models.
        """
        ids = [model.id for model in self.client.models.list()]
        self.assertIn("gpt-4o-mini", ids)

    def test_embeddings(self) -> None:
        """
        Embeddings, in the SDK's default base64 encoding.
        """
        result = self.client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        self.assertEqual(len(result.data), 2)
        self.assertEqual(len(result.data[0].embedding), 8)

    def test_errorStatus(self) -> None:
        """
        An upstream error status reaches the SDK as that status.
        """
        from openai import RateLimitError

        with self.assertRaises(RateLimitError) as caught:
            self.client.chat.completions.create(
                extra_headers={"x-fakellm-status": "429"}, **CHAT
            )
        self.assertEqual(caught.exception.status_code, 429)
