"""
Tests for the packaging: C{twistd aigateway} works after either editable
install a user types, C{pip install -e .} and the README's
C{pip install --config-settings editable_mode=compat -e .}.

Each test installs the project into a fresh virtual environment, offline
(C{--no-deps --no-build-isolation}), and asks that environment's
C{twistd} for C{aigateway --help}.  The environment sees this Python's
packages through C{PYTHONPATH} rather than C{--system-site-packages}: the
latter would also run this Python's C{.pth} files, among them the one of
the gateway installed here, and so find the plugin whether or not the new
install provides it.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import subprocess
import sys
import sysconfig
import tempfile

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.processes import REPO

__all__ = ["EditableInstallTests"]

TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def _installAndAsk(test: SynchronousTestCase, *pipOptions: str) -> subprocess.CompletedProcess[str]:
    """
    Install the project editable into a new virtual environment with
    C{pipOptions} and run C{twistd aigateway --help} there.
    """
    for module in ("pip", "setuptools", "wheel"):
        if importlib.util.find_spec(module) is None:
            raise SkipTest(f"an offline editable install needs {module} (the test extra installs it)")
    home = tempfile.mkdtemp()
    test.addCleanup(subprocess.run, ["rm", "-rf", home])
    venv = os.path.join(home, "venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = os.path.join(venv, "bin", "python")
    paths = sysconfig.get_paths()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([paths["purelib"], paths["platlib"]]))
    # An editable build writes aigateway.egg-info into the checkout: one at
    # a time, when trial runs tests in several workers.
    with open(os.path.join(tempfile.gettempdir(), "aigateway-editable-install.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        installed = subprocess.run(
            [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
             *pipOptions, "-e", REPO],
            cwd=home, env=env, capture_output=True, text=True,
        )
    test.assertEqual(installed.returncode, 0, installed.stdout + installed.stderr)
    return subprocess.run([python, "-c", TWISTD, "aigateway", "--help"],
                          cwd=home, env=env, capture_output=True, text=True)


class EditableInstallTests(SynchronousTestCase):
    """
    Both editable installs leave the C{aigateway} plugin where C{twistd}
    finds it.
    """

    def assertPluginFound(self, result: subprocess.CompletedProcess[str]) -> None:
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("Usage: twistd [options] aigateway [options]", result.stdout)
        self.assertIn("--config=", result.stdout)

    def test_plainEditable(self) -> None:
        """
        After C{pip install -e .}, C{twistd aigateway --help} shows the
        gateway's options.
        """
        self.assertPluginFound(_installAndAsk(self))

    def test_compatEditable(self) -> None:
        """
        After the README's C{pip install --config-settings
        editable_mode=compat -e .}, C{twistd aigateway --help} shows the
        gateway's options.
        """
        self.assertPluginFound(_installAndAsk(self, "--config-settings", "editable_mode=compat"))
