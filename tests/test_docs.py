"""
The README tells the truth about the commands users run, and it and
docs/ point only at things that exist.
"""

from __future__ import annotations

import glob
import json
import os
import re

import yaml

from twisted.trial.unittest import SynchronousTestCase

from aigateway.config import loadConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*parts: str) -> str:
    with open(os.path.join(REPO, *parts)) as f:
        return f.read()


def _docs() -> list[str]:
    """
    The paths of docs/*.md, relative to the repository.
    """
    return sorted(
        os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md"))
    )


def _pages() -> list[str]:
    """
    The README and every page of docs/, relative to the repository.
    """
    return ["README.md"] + _docs()


def _prose(text: str) -> str:
    """
    Markdown text without its fenced code blocks.
    """
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def _links(page: str) -> list[str]:
    """
    The targets of a page's Markdown links, outside code blocks.
    """
    return re.findall(r"\]\(([^)\s]+)\)", _prose(_read(page)))


class ReadmeTests(SynchronousTestCase):
    """
    What the README promises.
    """

    def test_testCommand(self) -> None:
        """
        CI runs exactly the README's test command.
        """
        command = re.search(r'^TEST_COMMAND="(.*)"$', _read(".ci", "run"), re.M).group(1)
        self.assertIn(f"\n{command}\n", _read("README.md"))

    def test_procfile(self) -> None:
        """
        The run command's Procfile starts the fake LLM with the key that
        the shipped config sends it, on the port the config names.
        """
        procfile = _read("Procfile")
        backend = loadConfig(_read("etc", "gateway.yaml")).backends["local"]
        self.assertIn(f"--key {backend.authToken.ref}", procfile)
        self.assertIn(f"tcp:{backend.url.rsplit(':', 1)[1]}", procfile)

    def test_labToken(self) -> None:
        """
        The README's ALICE_TOKEN is the lab's.
        """
        from tests.lab import ALICE_TOKEN

        self.assertIn(f'export ALICE_TOKEN="{ALICE_TOKEN}"', _read("README.md"))


class DocsTests(SynchronousTestCase):
    """
    What the README and docs/ point at exists.
    """

    def test_docsLinkedFromReadme(self) -> None:
        """
        Every page of docs/ is linked from the README.
        """
        docs = _docs()
        self.assertTrue(docs)
        linked = {os.path.normpath(target.split("#", 1)[0]) for target in _links("README.md")}
        self.assertEqual([d for d in docs if d not in linked], [])

    def test_relativeLinks(self) -> None:
        """
        Every relative link in the README and docs/ names an existing file.
        """
        broken = []
        count = 0
        for page in _pages():
            for target in _links(page):
                if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
                    continue
                count += 1
                path = os.path.join(REPO, os.path.dirname(page), target.split("#", 1)[0])
                if not os.path.exists(path):
                    broken.append(f"{page}: {target}")
        self.assertGreaterEqual(count, len(_docs()))
        self.assertEqual(broken, [])

    def test_modulePaths(self) -> None:
        """
        Every aigateway/....py path the README and docs/ mention exists.
        """
        missing = []
        count = 0
        for page in _pages():
            for path in re.findall(r"\baigateway/[\w/]*\.py\b", _read(page)):
                count += 1
                if not os.path.isfile(os.path.join(REPO, path)):
                    missing.append(f"{page}: {path}")
        self.assertTrue(count)
        self.assertEqual(missing, [])

    def test_configuration(self) -> None:
        """
        The annotated YAML of docs/configuration.md is well-formed YAML, and
        the file it names as the reference, etc/gateway.yaml, loads.

        The annotated block itself does not load as it is: its PEM key is
        elided (C{...}) and its C{tracing:} holds only comments, which is
        null; so the full load is checked on the example config.
        """
        text = _read("docs", "configuration.md")
        blocks = re.findall(r"^```yaml\n(.*?)^```", text, re.M | re.S)
        self.assertEqual(len(blocks), 1)
        self.assertIsInstance(yaml.safe_load(blocks[0]), dict)
        self.assertIn("`etc/gateway.yaml` is the reference", text)
        config = loadConfig(_read("etc", "gateway.yaml"))
        self.assertEqual([r.name for r in config.routes], ["openai", "local"])


def _yamlBlocks(page: str) -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", _read(*page.split("/")), re.M | re.S)


def _curls(page: str) -> list[tuple[str, str, dict[str, str], bytes | None]]:
    """
    The curl commands of a page's C{sh} blocks: method, path, headers and
    body of each.
    """
    import shlex

    out = []
    for block in re.findall(r"^```sh\n(.*?)^```", _read(*page.split("/")), re.M | re.S):
        for command in block.replace("\\\n", " ").splitlines():
            words = shlex.split(command)
            if not words or words[0] != "curl":
                continue
            headers: dict[str, str] = {}
            body = None
            url = None
            i = 1
            while i < len(words):
                word = words[i]
                if word == "-H":
                    name, value = words[i + 1].split(":", 1)
                    headers[name.strip()] = value.strip()
                    i += 1
                elif word == "-d":
                    body = words[i + 1].encode()
                    i += 1
                elif not word.startswith("-"):
                    url = word
                i += 1
            assert url is not None and url.startswith("localhost:8080/"), command
            out.append(("POST" if body is not None else "GET", url[len("localhost:8080"):],
                        headers, body))
    return out


class ProvidersDocTests(SynchronousTestCase):
    """
    docs/providers.md and the config it runs, etc/providers.yaml, are
    configurations the gateway accepts, and its requests work against it.
    """

    def test_yamlBlocks(self) -> None:
        """
        Every YAML block of docs/providers.md loads as a configuration,
        a block of backends being loaded as the C{backends:} of one; every
        provider has one.
        """
        blocks = _yamlBlocks("docs/providers.md")
        providers = set()
        for block in blocks:
            document = yaml.safe_load(block)
            self.assertIsInstance(document, dict, block)
            if not {"backends", "routes", "listen"} & set(document):
                block = "backends:\n" + "".join(
                    "  " + line if line.strip() else line for line in block.splitlines(True))
            config = loadConfig(block)
            self.assertTrue(config.backends, block)
            providers.update(b.provider for b in config.backends.values())
        from aigateway.config.parse import PROVIDERS

        self.assertEqual(providers, set(PROVIDERS))
        self.assertGreaterEqual(len(blocks), len(PROVIDERS) + 2)

    def test_providersConfig(self) -> None:
        """
        etc/providers.yaml loads, has one route per provider, and points
        every backend at the fake LLM of the Procfile, with its key.
        """
        from aigateway.config.parse import PROVIDERS

        config = loadConfig(_read("etc", "providers.yaml"))
        procfile = _read("Procfile")
        kinds = [route.backend.provider for route in config.routes]
        self.assertEqual(sorted(kinds), sorted(PROVIDERS))
        for backend in config.backends.values():
            self.assertEqual(backend.url, "http://127.0.0.1:9000")
            self.assertIn("tcp:9000", procfile)
            if backend.provider != "bedrock":
                self.assertIn(f"--key {backend.authToken.ref}", procfile)
        self.assertIn("etc/providers.yaml", _read("docs", "providers.md"))

    def test_providersRequests(self) -> None:
        """
        The curl requests of docs/providers.md get a 200 from
        etc/providers.yaml, its bedrock route signing with the AWS keys of
        the environment.
        """
        from tests.memory import MemoryGateway

        aws = {"AWS_ACCESS_KEY_ID": "AKIDFAKELLM", "AWS_SECRET_ACCESS_KEY": "fakellm-secret-key"}
        gateway = MemoryGateway(_read("etc", "providers.yaml"), key="sk-fakellm-local",
                                environ=aws, awsAccessKeyId=aws["AWS_ACCESS_KEY_ID"],
                                awsSecretAccessKey=aws["AWS_SECRET_ACCESS_KEY"])
        curls = _curls("docs/providers.md")
        self.assertGreaterEqual(len(curls), 4)
        for method, path, headers, body in curls:
            with self.subTest(path=path):
                if method == "POST":
                    response, answer = gateway.post(self, path, body, headers)
                else:
                    d = gateway.client.get("http://gw" + path, headers=headers)
                    gateway.pump()
                    response = self.successResultOf(d)
                    answer = self.successResultOf(response.content())
                self.assertEqual(response.code, 200, answer)
                if b'"stream": true' not in (body or b""):
                    self.assertIsInstance(json.loads(answer), dict)
