"""
Tests for L{aigateway.app.tap}: the command line.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from aigateway.config import ConfigError
from aigateway.app.tap import Options, listenOverride

class OptionsTests(SynchronousTestCase):
    """
    C{--config} and C{--listen}.
    """

    def test_defaults(self) -> None:
        """
        The config file defaults to C{etc/gateway.yaml}; no override.
        """
        options = Options()
        options.parseOptions([])
        self.assertEqual((options["config"], listenOverride(options)), ("etc/gateway.yaml", ()))

    def test_listenOverrides(self) -> None:
        """
        C{--listen}, repeated, gives the endpoints that replace the config's.
        """
        options = Options()
        options.parseOptions(["-c", "x.yaml", "--listen", "tcp:9090", "--listen", "unix:/tmp/gw.sock"])
        self.assertEqual(listenOverride(options), ("tcp:9090", "unix:/tmp/gw.sock"))

    def test_badListen(self) -> None:
        """
        A bad C{--listen} is named like a config field.
        """
        options = Options()
        options.parseOptions(["--listen", "tpc:9090"])
        with self.assertRaises(ConfigError) as caught:
            listenOverride(options)
        self.assertEqual(
            str(caught.exception), "--listen[0]: invalid endpoint 'tpc:9090': Unknown endpoint type: 'tpc'"
        )
