"""
C{twistd aigateway}: command line options and the service they make.

This is the one module that imports the global reactor.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.python import usage

from aigateway import __version__
from aigateway.app.listeners import CannotListen
from aigateway.config import ConfigError, parseEndpoint

__all__ = ["Options", "ProcessService", "makeService", "listenOverride"]


class Options(usage.Options):
    """
    Options for C{twistd aigateway}.
    """

    optParameters = [
        ["config", "c", "etc/gateway.yaml", "The YAML configuration file."],
    ]
    # Without one, usage.Options shows the docstring of whatever __main__ is.
    longdesc = "Run the gateway on a configuration file; docs/configuration.md describes it."

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["workers"] = None

    # twistd shows these docstrings as the options' help: plain words.
    def opt_listen(self, description: str) -> None:
        """
        Listen on this Twisted endpoint instead of the config's listen (repeat for several).
        """
        self["listen"].append(description)

    def opt_workers(self, value: str) -> None:
        """
        Serve in this many processes (a number, or auto: one per core) instead of the config's workers.
        """
        if value != "auto" and not (value.isdigit() and int(value) >= 1):
            raise usage.UsageError(f"--workers must be a number of processes (1 or more) or auto, not {value!r}")
        self["workers"] = value if value == "auto" else int(value)

    def opt_version(self) -> None:
        """
        Display aigateway's version and exit.
        """
        print(f"aigateway {__version__}")
        sys.exit(0)


def listenOverride(options: Options) -> tuple[str, ...]:
    """
    The endpoints given with C{--listen}, checked.

    @raise ConfigError: naming the bad one.
    """
    return tuple(parseEndpoint(d, f"--listen[{i}]") for i, d in enumerate(options["listen"]))


def fileReader(configPath: str):
    """
    Reads files by paths as the configuration gives them: relative ones
    are found beside the configuration file.
    """
    base = os.path.dirname(os.path.abspath(configPath))

    def readFile(path: str) -> bytes:
        with open(os.path.join(base, path), "rb") as f:
            return f.read()

    return readFile


class ProcessService(MultiService):
    """
    The top of C{twistd aigateway}'s services.  A listener that cannot be
    opened at the start ends a foreground process (C{twistd -n}) with one
    line (C{aigateway: cannot listen on tcp:8080: address already in use})
    and exit status 1, instead of C{twistd}'s traceback.  A daemon raises
    the error to C{twistd}, which reports it to the shell that started it
    and removes the pid file.

    @ivar foreground: whether the process runs in the foreground.
    """

    def __init__(self, foreground: bool = True) -> None:
        super().__init__()
        self.foreground = foreground

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListen as e:
            self._cannotListen(e)

    def startService(self) -> None:
        try:
            super().startService()
        except CannotListen as e:
            self._cannotListen(e)

    def _cannotListen(self, error: CannotListen) -> None:
        if self.foreground:
            raise SystemExit(f"aigateway: {error}") from None
        raise error


def makeService(options: Options) -> IService:
    """
    Load the configuration and build the gateway, served by this process
    or, with more than one worker, by a L{Supervisor}'s workers; a broken
    configuration is reported on one line and the process exits with
    status 1.  C{SIGHUP} reloads the configuration.
    """
    from twisted.internet import reactor

    from aigateway.app.configfile import ConfigFile
    from aigateway.app.heap import HeapSettler
    from aigateway.app.service import GatewayService
    from aigateway.app.supervisor import Supervisor, cores
    from aigateway.config import workerCount

    path = options["config"]
    readFile = fileReader(path)
    try:
        listen = listenOverride(options)
        config, _ = ConfigFile(os.path.abspath(path), readFile, listen, options["workers"]).load()
        if workerCount(config.workers, cores()) > 1:
            service: Any = Supervisor(reactor, os.path.abspath(path), readFile, listen, options["workers"])
        else:
            service = GatewayService(reactor, os.path.abspath(path), readFile=readFile, listen=listen)
    except ConfigError as e:
        sys.stderr.write(f"aigateway: {path}: {e}\n")
        raise SystemExit(1)
    signal.signal(
        signal.SIGHUP, lambda *args: reactor.callFromThread(service.reload, "SIGHUP")
    )
    parent = getattr(options, "parent", None)
    top = ProcessService(foreground=bool(parent is None or parent.get("nodaemon")))
    service.setServiceParent(top)
    if isinstance(service, GatewayService):
        HeapSettler().setServiceParent(top)
    return top
