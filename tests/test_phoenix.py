"""
The lab's trace in Arize Phoenix, when Phoenix is installed: Phoenix
started on free ports, the gateway and the fake LLM as real processes, one
of the lab's requests, and Phoenix's REST API asked for the spans it got.

Phoenix is heavy and not among the test dependencies: the test runs when
C{phoenix} is importable or a C{phoenix} command is on the C{PATH} (as
C{pip install arize-phoenix} in a virtual environment of its own leaves
it), and is skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from tests.lab import ALICE_TOKEN, CHAT, LAB_POLICY
from tests.processes import startFakeLLM, startGateway, writeFile

CONFIG = """
listen: tcp:0:interface=127.0.0.1
admin:
  listen: tcp:0:interface=127.0.0.1
backends:
  openai-all-models:
    provider: openai
    url: http://127.0.0.1:{fakellm}
    authToken: {{value: sk-lab}}
routes:
  - name: openai
    match: {{pathPrefix: /openai}}
    backend: openai-all-models
{policy}tracing:
  otlp: {{endpoint: "http://127.0.0.1:{phoenix}/v1/traces"}}
  captureContent: true
  legacyAttributes: true
  conventions: [genai, openinference]
"""


def _phoenixCommand() -> list[str] | None:
    """
    How to run Phoenix's server here, or L{None} when it is not installed.
    """
    if importlib.util.find_spec("phoenix") is not None:
        return [sys.executable, "-m", "phoenix.server.main", "serve"]
    found = shutil.which("phoenix")
    return [found, "serve"] if found else None


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PhoenixTests(TestCase):
    """
    The gateway's spans, as Phoenix stores and shows them.
    """

    timeout = 180

    async def setUp(self) -> None:
        command = _phoenixCommand()
        if command is None:
            raise SkipTest("Arize Phoenix is not installed (pip install arize-phoenix, or put its "
                           "phoenix command on the PATH): the traces in Phoenix are not checked")
        self.port = _freePort()
        work = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, work, True)
        env = dict(os.environ, PHOENIX_PORT=str(self.port), PHOENIX_GRPC_PORT=str(_freePort()),
                   PHOENIX_HOST="127.0.0.1", PHOENIX_WORKING_DIR=work)
        log = open(os.path.join(work, "phoenix.log"), "wb")
        self.addCleanup(log.close)
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)

        def stop() -> None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

        self.addCleanup(stop)
        self.treq = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        deadline = time.monotonic() + 120
        while True:
            try:
                response = await self.treq.get(f"http://127.0.0.1:{self.port}/v1/projects")
                if response.code == 200:
                    await response.content()
                    break
            except Exception:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                with open(os.path.join(work, "phoenix.log"), "rb") as f:
                    self.fail(f"Phoenix did not start: {f.read()[-2000:]!r}")
            await deferLater(reactor, 0.5, lambda: None)
        fakellm = startFakeLLM(self, "sk-lab")
        config = CONFIG.format(fakellm=fakellm.ports[0], phoenix=self.port, policy=LAB_POLICY)
        self.gateway = startGateway(self, writeFile(self, config))

    async def spans(self, count: int) -> list[dict]:
        """
        The spans of Phoenix's default project, once there are C{count}.
        """
        deadline = time.monotonic() + 30
        while True:
            response = await self.treq.get(f"http://127.0.0.1:{self.port}/v1/projects/default/spans?limit=100")
            spans = json.loads(await response.content())["data"] if response.code == 200 else []
            if len(spans) >= count or time.monotonic() > deadline:
                return spans
            await deferLater(reactor, 0.5, lambda: None)

    async def test_labTrace(self) -> None:
        """
        The lab's request with Alice's token is a trace in Phoenix: a CHAIN
        span for the request over an LLM span with the model, the
        provider, the token counts and the conversation.
        """
        response = await self.treq.post(f"http://127.0.0.1:{self.gateway.ports[0]}/openai", json=CHAT,
                                        headers={"authorization": f"Bearer {ALICE_TOKEN}"})
        self.assertEqual(response.code, 200, await response.text())
        spans = await self.spans(2)
        byKind = {span["span_kind"]: span for span in spans}
        self.assertEqual(sorted(byKind), ["CHAIN", "LLM"])
        chain, llm = byKind["CHAIN"], byKind["LLM"]
        self.assertEqual((chain["name"], llm["name"]), ("POST openai", "chat gpt-4o-mini"))
        self.assertEqual(llm["parent_id"], chain["context"]["span_id"])
        a = llm["attributes"]
        self.assertEqual((a["llm.model_name"], a["llm.provider"], a["llm.token_count.total"]),
                         ("gpt-4o-mini", "openai", 12))
        self.assertEqual(a["llm.input_messages.0.message.content"], "Whats your favorite poem?")
        self.assertTrue(a["llm.output_messages.0.message.content"].startswith("Shall I compare"))
        self.assertEqual(json.loads(chain["attributes"]["input.value"])["messages"], CHAT["messages"])
