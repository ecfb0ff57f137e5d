"""
C{twistd aigateway}: command line options and the service they make.

This is the one module that imports the global reactor.
"""

from __future__ import annotations

import os
import sys

import attrs
from twisted.application.service import IService
from twisted.python import usage

from aigateway.config import Config, ConfigError, parseEndpoint, loadConfig

__all__ = ["Options", "makeService"]


class Options(usage.Options):
    """
    Options for C{twistd aigateway}.
    """

    optParameters = [
        ["config", "c", "etc/gateway.yaml", "The YAML configuration file."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """
        Listen on this Twisted endpoint instead of the config's C{listen}
        (repeat for several).
        """
        self["listen"].append(description)


def readConfig(options: Options) -> Config:
    """
    Load the configuration file the options name, with C{--listen} applied.

    @raise ConfigError: with a message naming the file and the field.
    """
    path = options["config"]
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(path, f"cannot read the configuration: {e.strerror or e}") from None
    try:
        config = loadConfig(text)
        listen = tuple(
            parseEndpoint(d, f"--listen[{i}]") for i, d in enumerate(options["listen"])
        )
    except ConfigError as e:
        raise ConfigError(f"{path}: {e.path}" if e.path else path, e.problem) from None
    if listen:
        config = attrs.evolve(config, listen=listen)
    return config


def makeService(options: Options) -> IService:
    """
    Load the configuration and build the gateway; a broken configuration is
    reported on one line and the process exits with status 1.  Files the
    configuration names by a relative path are found beside it.
    """
    from twisted.internet import reactor

    from aigateway.service import gatewayService

    base = os.path.dirname(os.path.abspath(options["config"]))

    def readFile(path: str) -> bytes:
        with open(os.path.join(base, path), "rb") as f:
            return f.read()

    try:
        config = readConfig(options)
        try:
            return gatewayService(config, reactor, readFile=readFile)
        except ConfigError as e:
            raise ConfigError(f"{options['config']}: {e.path}", e.problem) from None
    except ConfigError as e:
        sys.stderr.write(f"aigateway: {e}\n")
        raise SystemExit(1)
