"""
The README tells the truth about the commands users run.
"""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from aigateway.config import loadConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*parts: str) -> str:
    with open(os.path.join(REPO, *parts)) as f:
        return f.read()


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
