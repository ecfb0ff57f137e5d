"""
Tests for L{aigateway.tap}: the command line.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from aigateway.config import ConfigError
from aigateway.tap import Options, readConfig

CONFIG = "listen: tcp:8080\nbackends: {}\n"


class OptionsTests(SynchronousTestCase):
    """
    C{--config} and C{--listen}.
    """

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        with open(self.path, "w") as f:
            f.write(CONFIG)

    def test_defaults(self) -> None:
        """
        The config's own C{listen}, from the default file name.
        """
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["config"], "etc/gateway.yaml")
        options.parseOptions(["-c", self.path])
        self.assertEqual(readConfig(options).listen, ("tcp:8080",))

    def test_listenOverrides(self) -> None:
        """
        C{--listen}, repeated, replaces the config's endpoints.
        """
        options = Options()
        options.parseOptions(["-c", self.path, "--listen", "tcp:9090", "--listen", "unix:/tmp/gw.sock"])
        self.assertEqual(readConfig(options).listen, ("tcp:9090", "unix:/tmp/gw.sock"))

    def test_badListen(self) -> None:
        """
        A bad C{--listen} is named like a config field.
        """
        options = Options()
        options.parseOptions(["-c", self.path, "--listen", "tpc:9090"])
        with self.assertRaises(ConfigError) as caught:
            readConfig(options)
        self.assertEqual(
            str(caught.exception),
            f"{self.path}: --listen[0]: invalid endpoint 'tpc:9090': Unknown endpoint type: 'tpc'",
        )
