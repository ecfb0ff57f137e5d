"""
The README tells the truth about the commands users run, and it and
docs/ point only at things that exist.
"""

from __future__ import annotations

import glob
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
