"""
C{python -m aigateway check -c FILE}: validate a configuration, as the
gateway would load it, and print what is wrong.  Exit status 0 when it is
good, 1 when it is not.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from twisted.internet.task import Clock

from aigateway import __version__
from aigateway.config import ConfigError, loadConfig
from aigateway.build import buildGateway
from aigateway.app.tap import fileReader


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aigateway")
    parser.add_argument("--version", action="version", version=f"aigateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate a configuration file")
    check.add_argument("-c", "--config", default="etc/gateway.yaml")
    args = parser.parse_args(argv)
    readFile = fileReader(args.config)
    try:
        try:
            with open(args.config, "rb") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError("", f"cannot read the configuration: {e.strerror or e}") from None
        config = loadConfig(text)
        buildGateway(config, None, Clock(), environ={}, readFile=readFile,
                     fetch=lambda url: None)
    except ConfigError as e:
        print(f"{args.config}: {e}", file=sys.stderr)
        return 1
    print(f"{args.config}: ok ({len(config.routes)} routes, {len(config.backends)} backends)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
