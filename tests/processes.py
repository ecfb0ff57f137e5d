"""
Real processes for integration tests: C{twistd aigateway} and
C{twistd fakellm} started as a user starts them, on ports the kernel picks.
"""

from __future__ import annotations

import atexit
import os
import re
import select
import shutil
import subprocess
import sys
import time
from typing import Any

__all__ = ["REPO", "Twistd", "startFakeLLM", "startGateway", "twistdCommand", "writeFile"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def twistdCommand() -> list[str]:
    """
    The C{twistd} that belongs to this Python.
    """
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [script]
    found = shutil.which("twistd")
    if found:
        return [found]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class Twistd:
    """
    One C{twistd -n} process, its output collected, stopped at exit.

    @ivar ports: the ports the process logged it listens on, in order.
    """

    def __init__(self, args: list[str], listeners: int = 1, env: dict | None = None,
                 cwd: str = REPO, timeout: float = 20.0) -> None:
        environ = dict(os.environ)
        environ.pop("OPENAI_API_KEY", None)
        environ["PYTHONPATH"] = REPO
        environ.update(env or {})
        self.process = subprocess.Popen(
            twistdCommand() + ["--pidfile=", "-n"] + args,
            cwd=cwd,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.output = b""
        self.ports: list[int] = []
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while len(self.ports) < listeners:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.process.poll() is not None:
                self.stop()
                raise RuntimeError(
                    f"twistd {' '.join(args)} did not start:\n{self.output.decode(errors='replace')}"
                )
            self.read(min(remaining, 0.2))
            self.ports = [int(p) for p in re.findall(rb"starting on (\d+)", self.output)]

    def read(self, wait: float = 0.0) -> bytes:
        """
        Collect what the process printed so far.
        """
        stdout = self.process.stdout
        assert stdout is not None
        while select.select([stdout], [], [], wait)[0]:
            chunk = os.read(stdout.fileno(), 65536)
            if not chunk:
                break
            self.output += chunk
            wait = 0
        return self.output

    def stop(self) -> None:
        """
        Stop the process (SIGTERM, then SIGKILL).
        """
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None and not self.process.stdout.closed:
            self.read()
            self.process.stdout.close()


def startFakeLLM(case: Any, key: str | None = None) -> Twistd:
    """
    A fake LLM on a free loopback port, stopped when C{case} ends.
    """
    args = ["fakellm", "--listen", "tcp:0:interface=127.0.0.1"]
    if key is not None:
        args += ["--key", key]
    process = Twistd(args)
    case.addCleanup(process.stop)
    return process


def startGateway(case: Any, configPath: str) -> Twistd:
    """
    The gateway on C{configPath}, which must listen on one port and one
    admin port; stopped when C{case} ends.
    """
    process = Twistd(["aigateway", "-c", configPath], listeners=2)
    case.addCleanup(process.stop)
    return process


def writeFile(case: Any, text: str, name: str = "gateway.yaml") -> str:
    """
    Write C{text} to C{name} in a directory of the test's own, and return
    the file's absolute path.
    """
    directory = os.path.abspath(case.mktemp())
    os.makedirs(directory)
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(text)
    return path
