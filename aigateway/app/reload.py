"""
Reloading: load and build the configuration again and, if both work, hand
the result over; if not, keep serving what was served and say why.
"""

from __future__ import annotations

from typing import Callable, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from aigateway.app.current import CurrentGateway
from aigateway.build import Gateway
from aigateway.config import Config, ConfigError

__all__ = ["Reloader"]

# The gateway service's namespace, which these lines have always had.
log = Logger(namespace="aigateway.app.service")


class Reloader:
    """
    Takes a new configuration, or keeps the last good one.

    @ivar lastError: why the last reload failed, or L{None}.
    @ivar count: called with C{"ok"} or C{"failed"} after each reload (the
        reloads metric).
    @ivar followers: called with each configuration taken, after the swap
        (the listeners, the watched files).
    """

    def __init__(
        self,
        load: Callable[[], tuple[Config, bytes]],
        build: Callable[[Config], Gateway],
        current: CurrentGateway,
        count: Callable[[str], object],
        clock: IReactorTime,
        followers: Sequence[Callable[[Config], object]] = (),
    ) -> None:
        self.load = load
        self.build = build
        self.current = current
        self.count = count
        self.clock = clock
        self.followers = followers
        self.lastError: str | None = None

    def reload(self, reason: str) -> str | None:
        """
        Load the configuration again and, if it is good, serve it.

        @param reason: what asked for the reload, for the log.
        @return: L{None}, or why the configuration was not taken.
        """
        started = self.clock.seconds()
        try:
            config, text = self.load()
            gateway = self.build(config)
        except ConfigError as e:
            self.lastError = str(e)
            self.count("failed")
            log.error("configuration not reloaded ({reason}): {error}", reason=reason, error=str(e))
            return self.lastError
        self.current.swap(config, text, gateway)
        self.lastError = None
        self.count("ok")
        for follow in self.followers:
            follow(config)
        log.info(
            "configuration reloaded ({reason}): {routes} routes in {ms:.1f} ms",
            reason=reason, routes=len(config.routes), ms=(self.clock.seconds() - started) * 1000,
        )
        return None
