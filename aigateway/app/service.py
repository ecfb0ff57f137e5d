"""
Serving the gateway: the HTTP site, the listeners and the admin listener,
reloads (each builds a new tree with L{aigateway.build}) and a graceful
drain.  Everything takes its reactor, agent and environment as arguments;
only L{aigateway.app.tap} knows the global reactor.
"""

from __future__ import annotations

import hashlib
import os
from typing import Callable, Mapping

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web.iweb import IAgent
from twisted.web.server import Site

from aigateway.app.admin import AdminRoot, AdminSite
from aigateway.app.watch import ConfigWatcher
from aigateway.auth.keys import treqFetch
from aigateway.build import Gateway, buildGateway, readFile as _readFile
from aigateway.config import Config, ConfigError, loadConfig
from aigateway.http.client import UpstreamAgent
from aigateway.observe.report import InFlight, Metrics, Telemetry, buildTracerProvider
from aigateway.web.policy import MemoryBuckets
from aigateway.web.site import GatewaySite, ListenerFactory

__all__ = ["GatewayService"]

log = Logger()

# Requests are reported this long after they end (see Telemetry).
REPORT_DELAY = 0.001


class _Listeners:
    """
    The listening ports for one site, opened and closed as the set of
    endpoint strings changes; on the gateway's site, each with its own
    limit of open connections.
    """

    def __init__(self, reactor, site: Site) -> None:
        self.reactor = reactor
        self.site = site
        self.running: dict[str, StreamServerEndpointService] = {}

    def update(self, descriptions: tuple[str, ...], maxConnections: int | None = None) -> list[Deferred]:
        stopping = []
        for description in list(self.running):
            if description not in descriptions:
                stopping.append(self.running.pop(description).stopService())
            elif maxConnections is not None:
                self.running[description].factory.maxConnections = maxConnections
        for description in descriptions:
            if description not in self.running:
                factory = (
                    ListenerFactory(self.site, maxConnections)
                    if isinstance(self.site, GatewaySite) and maxConnections is not None
                    else self.site
                )
                listener = StreamServerEndpointService(
                    serverFromString(self.reactor, description), factory
                )
                listener._raiseSynchronously = True
                listener.startService()
                self.running[description] = listener
        return [d for d in stopping if d is not None]

    def stop(self) -> Deferred:
        return gatherResults(self.update(()))


class GatewayService(Service):
    """
    The running gateway: its listeners and admin listener, the remote key
    sets of the configuration it serves, reloads of that configuration
    (on a change on disk, C{SIGHUP} or C{POST /reload}), and a graceful
    drain when it stops.

    A reload builds the whole new route tree first and only then swaps it
    in; requests in flight finish on the tree they started with.  A
    configuration that does not load changes nothing.

    @ivar config: the configuration being served.
    @ivar loadedAt: when it was loaded (POSIX time).
    @ivar digest: the SHA-256 of its text.
    @ivar lastError: why the last reload failed, or L{None}.
    """

    def __init__(
        self,
        reactor,
        configPath: str,
        agent: IAgent | None = None,
        environ: Mapping[str, str] = os.environ,
        readFile: Callable[[str], bytes] = _readFile,
        listen: tuple[str, ...] = (),
        watch: bool = True,
    ) -> None:
        self.reactor = reactor
        self.configPath = configPath
        self.agent = agent if agent is not None else UpstreamAgent(reactor)
        self.environ = environ
        self.readFile = readFile
        self.listenOverride = listen
        self.metrics = Metrics()
        self.inFlight = InFlight(self.metrics)
        self.buckets = MemoryBuckets()
        self.lastError: str | None = None
        config, text = self._load()
        self.tracerProvider = buildTracerProvider(config.tracing, reactor, self.agent, environ)
        self._serve(config, text, self._build(config))
        self.site = GatewaySite(self.gateway.root, reactor)
        self._configureSite(config)
        self.listeners = _Listeners(reactor, self.site)
        adminSite = AdminSite(AdminRoot(self, self.metrics.registry))
        self.adminListeners = _Listeners(reactor, adminSite)
        self.watcher = (
            ConfigWatcher(reactor, self._watchedFiles(config), lambda: self.reload("file changed"))
            if watch else None
        )

    def _load(self) -> tuple[Config, bytes]:
        try:
            text = self.readFile(self.configPath)
        except OSError as e:
            raise ConfigError("", f"cannot read the configuration: {e.strerror or e}") from None
        config = loadConfig(text)
        if self.listenOverride:
            config = attrs.evolve(config, listen=self.listenOverride)
        return config, text

    def _build(self, config: Config) -> Gateway:
        telemetry = Telemetry(config.tracing, self.metrics, self.reactor, self.tracerProvider, self.inFlight,
                              accessLog=config.accessLog, reportDelay=REPORT_DELAY)
        return buildGateway(
            config, self.agent, self.reactor, self.environ, self.readFile,
            treqFetch(self.agent, self.reactor), telemetry, self.buckets,
        )

    def _serve(self, config: Config, text: bytes, gateway: Gateway) -> None:
        self.config = config
        self.text = text
        self.gateway = gateway
        self.digest = hashlib.sha256(text).hexdigest()
        self.loadedAt = self.reactor.seconds()

    def _configureSite(self, config: Config) -> None:
        self.site.maxRequestBody = config.maxRequestBody
        self.site.requestHeadTimeout = config.requestHeadTimeout

    def _watchedFiles(self, config: Config) -> list[str]:
        base = os.path.dirname(os.path.abspath(self.configPath))
        files = [self.configPath]
        files += [b.authToken.ref for b in config.backends.values()
                  if b.authToken is not None and b.authToken.kind == "file"]
        policies = [config.jwt] + [r.jwt for r in config.routes]
        files += [p.jwks.path for policy in policies if policy is not None
                  for p in policy.providers if p.jwks.kind == "file" and p.jwks.path]
        return [os.path.join(base, f) for f in files]

    @property
    def ready(self) -> list[str]:
        """
        What the gateway still waits for before it can serve: the remote
        key sets without keys.
        """
        return [f"jwks {keySet.url}" for keySet in self.gateway.keySets if not keySet.ready]

    def reload(self, reason: str) -> str | None:
        """
        Load the configuration again and, if it is good, serve it.

        @return: L{None}, or why the configuration was not taken.
        """
        started = self.reactor.seconds()
        try:
            config, text = self._load()
            gateway = self._build(config)
        except ConfigError as e:
            self.lastError = str(e)
            self.metrics.reloads.labels("failed").inc()
            log.error("configuration not reloaded ({reason}): {error}", reason=reason, error=str(e))
            return self.lastError
        old = self.gateway
        for keySet in gateway.keySets:
            keySet.start()
        self.site.resource = gateway.root
        self._configureSite(config)
        for keySet in old.keySets:
            keySet.stop()
        self._serve(config, text, gateway)
        self.lastError = None
        self.metrics.reloads.labels("ok").inc()
        if self.running:
            self.listeners.update(config.listen, config.maxConnections)
            self.adminListeners.update(config.admin.listen if config.admin else ())
        if self.watcher is not None:
            self.watcher.watch(self._watchedFiles(config))
        log.info(
            "configuration reloaded ({reason}): {routes} routes in {ms:.1f} ms",
            reason=reason, routes=len(config.routes), ms=(self.reactor.seconds() - started) * 1000,
        )
        return None

    def startService(self) -> None:
        super().startService()
        # Watch before listening: a change made as soon as the gateway
        # answers must not be missed.
        if self.watcher is not None:
            self.watcher.startService()
        for keySet in self.gateway.keySets:
            keySet.start()
        self.listeners.update(self.config.listen, self.config.maxConnections)
        self.adminListeners.update(self.config.admin.listen if self.config.admin else ())

    async def _drain(self) -> None:
        """
        Stop accepting, let what is in flight finish (up to the
        configuration's C{shutdownTimeout}), then let go of the rest.
        """
        await self.listeners.stop()
        deadline = self.reactor.seconds() + self.config.shutdownTimeout
        if self.inFlight.count:
            log.info("draining {count} requests in flight", count=self.inFlight.count)
            if not await self._within(self.inFlight.whenIdle(), deadline):
                log.warn("{count} requests still in flight at shutdown", count=self.inFlight.count)
        # Idle connections are closed after their last bytes are sent: the
        # reactor's own shutdown would drop what is still buffered.
        await self._within(self.site.closeChannels(), deadline)
        await self.adminListeners.stop()
        if self.watcher is not None:
            self.watcher.stopService()
        for keySet in self.gateway.keySets:
            keySet.stop()
        self.gateway.root.telemetry.flushReports()
        if self.tracerProvider is not None:
            await self._within(self.tracerProvider.flush(), deadline + 5)

    async def _within(self, d: Deferred[None], deadline: float) -> bool:
        timer = self.reactor.callLater(max(0.0, deadline - self.reactor.seconds()), d.cancel)
        try:
            await d
        except CancelledError:
            return False
        timer.cancel()
        return True

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._drain())
