"""
The running gateway, composed of small services: the gateway being served
(L{CurrentGateway}), the watch on its files (L{ConfigWatcher}), its
listeners under a graceful stop (L{Listeners} in a L{Drain}), the admin
listeners, and the reloads (L{Reloader}) that change them.  Everything takes
its reactor, agent and environment as arguments; only
L{aigateway.app.tap} knows the global reactor.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

from twisted.application.service import MultiService, Service
from twisted.internet import inotify
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.web.iweb import IAgent

from aigateway.app.admin import AdminRoot, AdminSite
from aigateway.app.configfile import ConfigFile
from aigateway.app.current import CurrentGateway
from aigateway.app.drain import Drain, within
from aigateway.app.listeners import Listeners
from aigateway.app.reload import Reloader
from aigateway.app.summary import describeStart, describeTracing
from aigateway.app.watch import ConfigWatcher
from aigateway.auth.keys import treqFetch
from aigateway.build import Gateway, buildGateway, readFile as _readFile
from aigateway.config import Config
from aigateway.http.client import UpstreamAgent
from aigateway.observe.report import InFlight, Metrics, Telemetry, buildTracerProvider
from aigateway.state import storeFor
from aigateway.state.memory import BucketStore
from aigateway.web.site import GatewaySite, ListenerFactory
from aigateway import __version__

__all__ = ["GatewayService"]

log = Logger()

# Requests are reported this long after they end (see Telemetry).
REPORT_DELAY = 0.001

# How long spans still queued at the end of the drain may take to be sent.
TRACE_FLUSH_GRACE = 5.0


def configureAgent(agent: UpstreamAgent, config: Config) -> None:
    """
    Give the upstream agent each backend's idle time and the connection
    timeout of the routes that use it (the shortest, when several do).
    """
    agent.setIdleTimeouts({b.url: b.idleTimeout for b in config.backends.values()
                           if b.idleTimeout is not None})
    connect: dict[str, float] = {}
    for route in config.routes:
        for target in route.targets:
            url = target.backend.url
            connect[url] = min(route.timeouts.connect, connect.get(url, route.timeouts.connect))
    agent.setConnectTimeouts(connect)


def _tracesURL(tracerProvider: Any) -> str | None:
    return tracerProvider.sender.url.decode("utf-8") if tracerProvider is not None else None


class GatewayService(MultiService):
    """
    The running gateway: its listeners and admin listener, the remote key
    sets of the configuration it serves, reloads of that configuration
    (on a change on disk, C{SIGHUP} or C{POST /reload}), and a graceful
    drain when it stops.

    A reload builds the whole new route tree first and only then swaps it
    in; requests in flight finish on the tree they started with.  A
    configuration that does not load changes nothing.

    This is the L{aigateway.app.admin.GatewayControl} the admin site shows.

    @ivar current: the gateway being served.
    @ivar listeners: the gateway's listeners (inside C{drain}).
    @ivar adminListeners: the admin site's listeners.
    @ivar watcher: the watch on the configuration's files, or L{None}.
    @ivar reloader: what takes a new configuration.
    """

    def __init__(
        self,
        reactor: Any,
        configPath: str,
        agent: IAgent | None = None,
        environ: Mapping[str, str] = os.environ,
        readFile: Callable[[str], bytes] = _readFile,
        listen: tuple[str, ...] = (),
        watch: bool = True,
        notifier: Callable[[Any], Any] = inotify.INotify,
        endpoint: Callable[[Any, str], IStreamServerEndpoint] = serverFromString,
        worker: bool = False,
    ) -> None:
        """
        Load and build the configuration.

        @param readFile: reads the files the configuration names, and the
            configuration itself.
        @param listen: endpoints that replace the configuration's C{listen}.
        @param watch: whether a change on disk reloads.
        @param notifier: makes the inotify reader (see L{ConfigWatcher}).
        @param endpoint: makes the endpoint of each C{listen} string.
        @param worker: whether this is one of the worker processes of a
            supervisor (L{aigateway.app.workers}), which has the admin
            listener and counts reloads: then this one has neither, and
            its metrics are written where the supervisor sums them.
        @raise aigateway.config.ConfigError: when the configuration is bad.
        """
        super().__init__()
        self.reactor = reactor
        self.agent = agent if agent is not None else UpstreamAgent(reactor)
        self.environ = environ
        self.readFile = readFile
        self.worker = worker
        self.metrics = Metrics(multiprocess=worker)
        self.inFlight = InFlight(self.metrics)
        # The rate-limit buckets outlive reloads while the configuration's
        # state section stays the same (a new one is used once a
        # configuration with another is served).
        self.buckets: BucketStore | None = None
        self._state: Any = None
        self._pendingStore: tuple[Any, BucketStore] | None = None
        # The targets' health, by route and backend, outlives reloads as
        # the buckets do.
        self.health: dict = {}
        self.file = ConfigFile(configPath, readFile, listen)
        config, text = self.file.load()
        self.tracerProvider: Any = None
        self.retiredTracerProviders: list[Any] = []
        self._exporting: tuple[Any, ...] | None = None
        self._built: tuple[tuple[Any, ...], Any] | None = None
        gateway = self._build(config)
        self._followTracing(config)
        self._followState(config)
        self.site = GatewaySite(gateway.root, reactor)
        self.current = CurrentGateway(self.site, reactor, config, text, gateway)
        self.current.setServiceParent(self)
        self.watcher = (
            ConfigWatcher(reactor, self.file.dependencies(config), lambda: self.reload("file changed"),
                          notifier=notifier)
            if watch else None
        )
        if self.watcher is not None:
            # Watch before listening: a change made as soon as the gateway
            # answers must not be missed.
            self.watcher.setServiceParent(self)
        self.listeners = Listeners(
            reactor, lambda: ListenerFactory(self.site, self.current.config.maxConnections), endpoint
        )
        self.drain = Drain(self.site, self.inFlight, reactor, lambda: self.current.config.shutdownTimeout)
        self.listeners.setServiceParent(self.drain)
        self.drain.setServiceParent(self)
        adminSite = AdminSite(AdminRoot(self, self.metrics.registry), reactor=reactor)
        self.adminListeners = Listeners(reactor, lambda: adminSite)
        self.adminListeners.setServiceParent(self)
        self.reloader = Reloader(
            self.file.load, self._build, self.current,
            (lambda result: None) if worker else (lambda result: self.metrics.reloads.labels(result).inc()),
            reactor,
            followers=[self._followTracing, self._followState, self._followListeners, self._followFiles],
        )
        self._followListeners(config)

    def _tracerProviderFor(self, config: Config) -> tuple[tuple[Any, ...], Any]:
        """
        The tracer provider for C{config}'s tracing: the one in use when the
        exporter's settings (endpoint, headers, sampling, service name) are
        those it was made with, else a new one (or L{None}: tracing off).
        """
        tracing = config.tracing
        settings = (tracing.otlpEndpoint, tracing.otlpHeaders, tracing.sampleRatio, tracing.serviceName)
        if settings == self._exporting:
            return settings, self.tracerProvider
        return settings, buildTracerProvider(tracing, self.reactor, self.agent, self.environ)

    def _storeFor(self, config: Config) -> BucketStore:
        """
        The bucket store for C{config}'s state section: the one in use when
        the section is the same, else a new one, started once a tree that
        uses it is served.
        """
        if self.buckets is not None and config.state == self._state:
            self._pendingStore = None
            return self.buckets
        fallbacks = self.metrics.stateFallbacks
        store = storeFor(config.state, self.reactor, self.environ,
                         lambda reason: self.metrics.child(fallbacks, reason).inc())
        self._pendingStore = (config.state, store)
        return store

    def _followState(self, config: Config) -> None:
        """
        After a swap to a tree with a new bucket store, start it, and stop
        the one it replaces.
        """
        pending, self._pendingStore = self._pendingStore, None
        if pending is None:
            return
        old = self.buckets
        self._state, self.buckets = pending
        if self.running:
            self.buckets.start()
        if old is not None:
            old.stop().addErrback(lambda f: log.failure("stopping the old bucket store", f))

    def _build(self, config: Config) -> Gateway:
        buckets = self._storeFor(config)
        settings, tracerProvider = self._tracerProviderFor(config)
        self._built = settings, tracerProvider
        telemetry = Telemetry(config.tracing, self.metrics, self.reactor, tracerProvider, self.inFlight,
                              accessLog=config.accessLog, reportDelay=REPORT_DELAY)
        gateway = buildGateway(
            config, self.agent, self.reactor, self.environ, self.readFile,
            treqFetch(self.agent, self.reactor), telemetry, buckets, self.health,
        )
        if isinstance(self.agent, UpstreamAgent):
            configureAgent(self.agent, config)
        return gateway

    def _followTracing(self, config: Config) -> None:
        """
        After a swap, the tracer provider of the tree now served is the
        gateway's; one it replaces sends what it still has (requests in
        flight on the old tree end their spans there) and is flushed again
        when the gateway stops.
        """
        assert self._built is not None
        settings, tracerProvider = self._built
        self._built = None
        if tracerProvider is self.tracerProvider:
            return
        old, self.tracerProvider, self._exporting = self.tracerProvider, tracerProvider, settings
        if old is not None:
            old.flush()
            self.retiredTracerProviders.append(old)
        log.info("{tracing}", tracing=describeTracing(config.tracing, _tracesURL(tracerProvider)))

    def _followListeners(self, config: Config) -> None:
        for listener in self.listeners:
            listener.factory.maxConnections = config.maxConnections
        self.listeners.follow(config.listen)
        self.adminListeners.follow(config.admin.listen if config.admin and not self.worker else ())

    def _followFiles(self, config: Config) -> None:
        if self.watcher is not None:
            self.watcher.watch(self.file.dependencies(config))

    @property
    def config(self) -> Config:
        """
        The configuration being served.
        """
        return self.current.config

    @property
    def text(self) -> bytes:
        """
        The text of the configuration being served.
        """
        return self.current.text

    @property
    def digest(self) -> str:
        """
        Its SHA-256, in hex.
        """
        return self.current.digest

    @property
    def loadedAt(self) -> float:
        """
        When it was loaded (POSIX time).
        """
        return self.current.loadedAt

    @property
    def lastError(self) -> str | None:
        """
        Why the last reload failed, or L{None}.
        """
        return self.reloader.lastError

    @property
    def ready(self) -> list[str]:
        """
        What the gateway still waits for before it can serve: the remote
        key sets without keys.
        """
        return self.current.pending

    @property
    def routes(self) -> dict[str, list[dict[str, object]]]:
        """
        Each route's targets and their health.
        """
        return self.current.gateway.health(self.reactor.seconds())

    def reload(self, reason: str) -> str | None:
        """
        Load the configuration again and, if it is good, serve it.

        @return: L{None}, or why the configuration was not taken.
        """
        return self.reloader.reload(reason)

    def startService(self) -> None:
        """
        Start, then say in a few lines what listens where, which routes are
        served and where spans go.
        """
        super().startService()
        assert self.buckets is not None
        self.buckets.start()
        if self.worker:
            # Its supervisor tells this once for all its workers.
            return
        for line in describeStart(self.config, self.listeners.descriptions, self.adminListeners.descriptions,
                                  _tracesURL(self.tracerProvider), __version__):
            log.info("{line}", line=line)

    def stopService(self) -> Deferred[None]:
        """
        Drain first, while the admin listener still answers; then stop the
        other children one at a time, last started first, and send what
        the telemetry still holds.
        """
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        await self.drain.stopService()
        for child in reversed(list(self)):
            if child is not self.drain:
                await maybeDeferred(child.stopService)
        assert self.buckets is not None
        await self.buckets.stop()
        self.current.gateway.root.telemetry.flushReports()
        providers = self.retiredTracerProviders + [self.tracerProvider]
        flushes = [provider.flush() for provider in providers if provider is not None]
        if flushes:
            assert self.drain.deadline is not None
            await within(gatherResults(flushes), self.drain.deadline + TRACE_FLUSH_GRACE, self.reactor)
