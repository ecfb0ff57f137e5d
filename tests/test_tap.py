"""
Tests for L{aigateway.app.tap}: the command line.
"""

from __future__ import annotations

import contextlib
import io
import re

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from aigateway import __version__
from aigateway.__main__ import main
from aigateway.config import ConfigError
from aigateway.app.tap import Options, listenOverride

class OptionsTests(SynchronousTestCase):
    """
    C{--config}, C{--listen} and C{--workers}.
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

    def test_workers(self) -> None:
        """
        C{--workers} takes a number of processes or C{auto}; anything else
        is a usage error that says what it takes.
        """
        for value, expected in (("3", 3), ("auto", "auto")):
            options = Options()
            options.parseOptions(["--workers", value])
            self.assertEqual(options["workers"], expected)
        for bad in ("0", "-2", "two", ""):
            with self.assertRaises(UsageError) as caught:
                Options().parseOptions(["--workers", bad])
            self.assertIn("--workers must be a number of processes (1 or more) or auto", str(caught.exception))

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


def _ourPlugins() -> list[IServiceMaker]:
    return [p for p in getPlugins(IServiceMaker) if p.tapname in ("aigateway", "fakellm")]


def _printed(call) -> tuple[object, str]:
    """
    What C{call} printed on standard output before it exited, and the exit
    code.
    """
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            call()
        except SystemExit as e:
            return e.code, out.getvalue()
    raise AssertionError("did not exit")


class WordsTests(SynchronousTestCase):
    """
    The command line speaks plain words and knows its version.
    """

    def test_version(self) -> None:
        """
        C{--version}, to C{twistd aigateway}, C{twistd fakellm} and
        C{python -m aigateway}, prints C{aigateway 0.1.0} and exits 0.
        """
        self.assertEqual(__version__, "0.1.0")
        calls = [lambda p=p: p.options().parseOptions(["--version"]) for p in _ourPlugins()]
        self.assertEqual(len(calls), 2)
        calls.append(lambda: main(["--version"]))
        for call in calls:
            self.assertEqual(_printed(call), (0, "aigateway 0.1.0\n"))

    def test_helpWithoutMarkup(self) -> None:
        """
        No C{--help} text of either plugin shows epytext markup such as
        C{C{listen}} or C{L{...}}, whatever program runs them (usage.Options
        falls back on the docstring of C{__main__}).
        """
        import __main__

        self.patch(__main__, "__doc__", "A program that says C{AMP} and L{IService}.")
        for plugin in _ourPlugins():
            options = plugin.options()
            code, text = _printed(lambda: options.parseOptions(["--help"]))
            self.assertEqual(code, 0)
            self.assertIn("--version", text)
            self.assertEqual(re.findall(r"\b[A-Z]\{[^}]*\}", text), [], plugin.tapname)
            self.assertEqual(re.findall(r"\b[A-Z]\{[^}]*\}", plugin.description), [], plugin.tapname)
