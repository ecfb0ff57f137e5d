"""
The gateway being served, and the swap to the next one.
"""

from __future__ import annotations

import hashlib

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime

from aigateway.build import Gateway
from aigateway.config import Config
from aigateway.web.site import GatewaySite

__all__ = ["CurrentGateway"]


class CurrentGateway(Service):
    """
    Holds the gateway a site serves: its configuration, the route tree in
    C{site.resource} and the site's request limits.  While running, it keeps
    the remote key sets of the gateway it holds fresh, and only those.

    L{swap} changes all of it at once, with a tree built beforehand; a
    request in flight keeps the tree it started on.

    @ivar site: the site whose resource is swapped.
    @ivar config: the configuration being served.
    @ivar text: its text.
    @ivar digest: the SHA-256 of the text, in hex.
    @ivar loadedAt: when it was taken (POSIX time).
    @ivar gateway: what was built from it.
    """

    def __init__(self, site: GatewaySite, clock: IReactorTime, config: Config, text: bytes,
                 gateway: Gateway) -> None:
        self.site = site
        self.clock = clock
        self._take(config, text, gateway)

    def _take(self, config: Config, text: bytes, gateway: Gateway) -> None:
        self.site.resource = gateway.root
        self.site.maxRequestBody = config.maxRequestBody
        self.site.requestHeadTimeout = config.requestHeadTimeout
        self.config = config
        self.text = text
        self.gateway = gateway
        self.digest = hashlib.sha256(text).hexdigest()
        self.loadedAt = self.clock.seconds()

    def swap(self, config: Config, text: bytes, gateway: Gateway) -> None:
        """
        Serve this gateway from now on, in place of the one held.
        """
        old = self.gateway
        if self.running:
            for keySet in gateway.keySets:
                keySet.start()
        self._take(config, text, gateway)
        if self.running:
            for keySet in old.keySets:
                keySet.stop()

    @property
    def pending(self) -> list[str]:
        """
        What the gateway still waits for before it can serve: the remote
        key sets without keys.
        """
        return [f"jwks {keySet.url}" for keySet in self.gateway.keySets if not keySet.ready]

    def startService(self) -> None:
        super().startService()
        for keySet in self.gateway.keySets:
            keySet.start()

    def stopService(self) -> None:
        super().stopService()
        for keySet in self.gateway.keySets:
            keySet.stop()
