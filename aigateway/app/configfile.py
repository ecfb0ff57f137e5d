"""
The configuration file: read and parsed as the gateway takes it, and the
other files it names, which a change on disk must also reload.
"""

from __future__ import annotations

import os
from typing import Callable

import attrs

from aigateway.config import Config, ConfigError, checkWorkers, loadConfig

__all__ = ["ConfigFile"]


@attrs.frozen
class ConfigFile:
    """
    @ivar path: the configuration file, absolute.
    @ivar readFile: reads a file by the path the configuration gives,
        raising L{OSError}.
    @ivar listen: endpoints that replace the configuration's C{listen}
        (C{--listen}), or none.
    @ivar workers: the number of workers that replaces the configuration's
        C{workers} (C{--workers}), or L{None}.
    """

    path: str
    readFile: Callable[[str], bytes]
    listen: tuple[str, ...] = ()
    workers: int | str | None = None

    def load(self) -> tuple[Config, bytes]:
        """
        The configuration and its text.

        @raise ConfigError: when the file cannot be read or is not a good
            configuration.
        """
        try:
            text = self.readFile(self.path)
        except OSError as e:
            raise ConfigError("", f"cannot read the configuration: {e.strerror or e}") from None
        config = loadConfig(text)
        if self.listen:
            config = attrs.evolve(config, listen=self.listen)
        if self.workers is not None:
            config = attrs.evolve(config, workers=self.workers)
            checkWorkers(config, "--workers")
        elif self.listen:
            checkWorkers(config, "workers")
        return config, text

    def dependencies(self, config: Config) -> list[str]:
        """
        The files a change of which changes what C{config} serves: this one,
        backend key files and JWKS files, as absolute paths.
        """
        base = os.path.dirname(os.path.abspath(self.path))
        files = [self.path]
        files += [b.authToken.ref for b in config.backends.values()
                  if b.authToken is not None and b.authToken.kind == "file"]
        policies = [config.jwt] + [r.jwt for r in config.routes]
        files += [p.jwks.path for policy in policies if policy is not None
                  for p in policy.providers if p.jwks.kind == "file" and p.jwks.path]
        return [os.path.join(base, f) for f in files]
