"""
Several processes serving one gateway (C{workers: N}, C{--workers N}): a
supervisor and its workers (L{aigateway.app.worker}).

The supervisor opens the listening sockets and hands them down: every
worker accepts connections on the same sockets and the kernel gives each
connection to one of them.  (A shared socket rather than C{SO_REUSEPORT}:
no other process can bind the port beside the gateway, a port of C{0}
means one port for all, and a worker that ends leaves no queue of accepted
connections behind to reset.)

The supervisor does what there is one of: the admin listener (its
C{/metrics} sums every worker's, through prometheus-client's multiprocess
mode), the watch on the configuration, the reloads (it checks the new
configuration by building it, then tells every worker to take it), and
the log (every worker's events are logged here, marked with the worker's
number).  A worker that ends unasked is started again, at once if it had
served a while, after a growing pause if it keeps ending.  C{SIGTERM}
stops every worker; each drains as a single gateway does, within
C{shutdownTimeout}.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from typing import Any, Callable, Mapping

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from twisted.application.service import MultiService, Service
from twisted.internet import inotify
from twisted.internet.address import IPv6Address
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import LogLevel, Logger, globalLogPublisher
from twisted.python.failure import Failure

from aigateway import __version__
from aigateway.app.admin import AdminRoot, AdminSite
from aigateway.app.configfile import ConfigFile
from aigateway.app.listeners import CannotListen, Listeners, listenFailureReason
from aigateway.app.summary import describeStart
from aigateway.app.watch import ConfigWatcher
from aigateway.build import buildGateway, readFile as _readFile
from aigateway.config import Config, ConfigError, workerCount
from aigateway.http.client import UpstreamAgent
from aigateway.observe.report import tracesEndpoint

__all__ = ["SharedSockets", "Supervisor", "WorkerProcess", "cores"]

log = Logger(namespace="aigateway.app.supervisor")

# A worker that served at least this long is started again at once when
# it ends; one that ended sooner waits, twice as long each time.
STEADY = 10.0
FIRST_PAUSE = 1.0
LONGEST_PAUSE = 30.0

# How long past the drain's timeout a worker may take to end before it is
# killed.
KILL_GRACE = 5.0


def cores(cgroup: str = "/sys/fs/cgroup") -> int:
    """
    How many cores this process may use: those it may run on, or fewer when
    its control group's CPU quota (a container's CPU limit) allows fewer,
    rounded up.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (not Linux)
        count = os.cpu_count() or 1
    quota = cpuQuota(cgroup)
    return max(1, min(count, math.ceil(quota))) if quota is not None else count


def cpuQuota(cgroup: str = "/sys/fs/cgroup") -> float | None:
    """
    The CPU quota of this process's control group, in cores: C{cpu.max} of
    cgroup v2 (C{"200000 100000"} is 2), else C{cpu.cfs_quota_us} over
    C{cpu.cfs_period_us} of cgroup v1; L{None} when there is none.
    """
    try:
        with open(os.path.join(cgroup, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(cgroup, "cpu", "cpu.cfs_quota_us")) as f:
            quota = f.read().strip()
        with open(os.path.join(cgroup, "cpu", "cpu.cfs_period_us")) as f:
            period = f.read().strip()
        return None if int(quota) <= 0 else int(quota) / int(period)
    except (OSError, ValueError):
        return None


class _Unused(Factory):
    """
    The factory of a shared socket in the supervisor, which never accepts
    on it.
    """

    noisy = False
    protocol = Protocol

    def logPrefix(self) -> str:
        # The port's line reads "Shared socket starting on 8080".
        return "Shared socket"


class SharedSockets:
    """
    The listening sockets the workers share, one per endpoint string,
    opened here and accepted on only by the workers.

    @ivar ports: the ports, by endpoint string.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.ports: dict[str, IListeningPort] = {}

    def open(self, description: str) -> IListeningPort:
        """
        Listen on C{description}, without accepting here.

        @raise CannotListen: when it cannot be opened.
        """
        opened: list[Any] = []
        serverFromString(self.reactor, description).listen(_Unused()).addBoth(opened.append)
        result = opened[0]
        if isinstance(result, Failure):
            raise CannotListen(description, listenFailureReason(result))
        # The workers accept; the supervisor only keeps the socket open.
        result.stopReading()
        self.ports[description] = result
        return result

    def follow(self, descriptions: tuple[str, ...]) -> bool:
        """
        Keep open exactly these: close the others, open the new ones (one
        that cannot be opened is logged and left out).

        @return: whether anything changed.
        """
        changed = False
        for description in list(self.ports):
            if description not in descriptions:
                self.ports.pop(description).stopListening()
                changed = True
        for description in descriptions:
            if description not in self.ports:
                changed = True
                try:
                    self.open(description)
                except CannotListen as e:
                    log.error("{error}", error=str(e))
        return changed

    def arguments(self, first: int) -> tuple[list[str], dict[int, int]]:
        """
        The C{--listen} arguments of a worker and the descriptors it gets:
        the sockets as descriptors C{first}, C{first + 1}, ...
        """
        arguments: list[str] = []
        childFDs: dict[int, int] = {}
        for i, (description, port) in enumerate(self.ports.items()):
            family = "inet6" if isinstance(port.getHost(), IPv6Address) else "inet"
            arguments += ["--listen", f"{first + i}:{family}:{description}"]
            childFDs[first + i] = port.fileno()
        return arguments, childFDs

    def close(self) -> None:
        for port in self.ports.values():
            port.stopListening()
        self.ports.clear()


class WorkerProcess(ProcessProtocol):
    """
    One worker, as the supervisor sees it.

    @ivar index: its number, from 1.
    @ivar pid: its process id, once started.
    @ivar serving: whether it listens.
    @ivar pending: what it still waits for (remote key sets).
    @ivar routes: its routes' targets and their health, as it last said.
    @ivar retired: whether the supervisor asked it to end.
    """

    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.pid: int | None = None
        self.started = supervisor.reactor.seconds()
        self.serving = False
        self.pending: list[str] = []
        self.routes: dict[str, Any] = {}
        self.retired = False
        self.ended: Deferred[None] = Deferred()
        self._lines = {1: b"", 2: b""}

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffered = self._lines.get(childFD, b"") + data
        *lines, self._lines[childFD] = buffered.split(b"\n")
        for line in lines:
            if childFD == 1:
                self.supervisor.message(self, line)
            elif line:
                log.error("worker {worker}: {line}", worker=self.index, line=line.decode("utf-8", "replace"))

    def send(self, command: bytes) -> None:
        """
        Write a command line to the worker's standard input.
        """
        if self.pid is not None and not self.ended.called:
            self.transport.writeToChild(0, command + b"\n")

    def signal(self, name: str) -> None:
        if self.pid is not None and not self.ended.called:
            try:
                self.transport.signalProcess(name)
            except Exception:
                pass

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.supervisor.workerEnded(self, reason)


class Supervisor(MultiService):
    """
    Runs C{workers} worker processes of the gateway and everything there is
    one of (see the module docstring).  This is the
    L{aigateway.app.admin.GatewayControl} its admin site shows.

    @ivar workers: the workers running, by number.
    @ivar lastError: why the last reload failed (here or in a worker), or
        L{None}.
    """

    def __init__(
        self,
        reactor: Any,
        configPath: str,
        readFile: Callable[[str], bytes] = _readFile,
        listen: tuple[str, ...] = (),
        workers: int | str | None = None,
        environ: Mapping[str, str] = os.environ,
        spawn: Callable[..., Any] | None = None,
        executable: str = sys.executable,
        watch: bool = True,
        notifier: Callable[[Any], Any] = inotify.INotify,
        cores: Callable[[], int] = cores,
        sockets: SharedSockets | None = None,
    ) -> None:
        """
        Load and check the configuration.

        @param workers: the number of workers given on the command line,
            which the configuration's C{workers} does not change.
        @param spawn: starts a process (L{IReactorProcess.spawnProcess}).
        @param cores: how many cores there are, for C{workers: auto}.
        @param sockets: the listening sockets (by default, opened on
            C{reactor}).
        @raise ConfigError: when the configuration is bad.
        """
        super().__init__()
        self.reactor = reactor
        self.environ = environ
        self.readFile = readFile
        self.spawn = spawn if spawn is not None else reactor.spawnProcess
        self.executable = executable
        # Counted once: /readyz asks for the number of workers each time.
        self.cores = cores()
        # What checks a configuration by building it; it never sends.
        self._checkAgent = UpstreamAgent(reactor)
        self.file = ConfigFile(configPath, readFile, listen, workers)
        self.config, self.text = self.file.load()
        self._check(self.config)
        self.loadedAt = reactor.seconds()
        self.lastError: str | None = None
        self.workers: dict[int, WorkerProcess] = {}
        self.retiring: list[WorkerProcess] = []
        self._pauses: dict[int, float] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self.sockets = sockets if sockets is not None else SharedSockets(reactor)
        # Made once the sockets are open, removed when the supervisor stops.
        self.metricsDirectory: str | None = None
        self.registry = CollectorRegistry()
        self.reloads = Counter("aigateway_config_reloads", "Configuration reloads by result.", ["result"],
                               registry=self.registry)
        self.restarts = Counter("aigateway_worker_restarts", "Workers started again after they ended unasked.",
                                registry=self.registry)
        self.watcher = (
            ConfigWatcher(reactor, self.file.dependencies(self.config), lambda: self.reload("file changed"),
                          notifier=notifier)
            if watch else None
        )
        if self.watcher is not None:
            self.watcher.setServiceParent(self)
        adminSite = AdminSite(AdminRoot(self, self.registry), reactor=reactor)
        self.adminListeners = Listeners(reactor, lambda: adminSite)
        self.adminListeners.setServiceParent(self)
        self.adminListeners.follow(self._adminListen(self.config))

    def _adminListen(self, config: Config) -> tuple[str, ...]:
        return config.admin.listen if config.admin else ()

    def _check(self, config: Config) -> None:
        """
        Build the gateway once, as each worker will, for the errors that
        only building finds (expressions, keys, files).

        @raise ConfigError: naming the field.
        """
        buildGateway(config, self._checkAgent, self.reactor, self.environ, self.readFile,
                     lambda url: Deferred())

    @property
    def count(self) -> int:
        """
        How many workers the configuration asks for.
        """
        return workerCount(self.config.workers, self.cores)

    # GatewayControl

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text).hexdigest()

    @property
    def ready(self) -> list[str]:
        pending: list[str] = []
        for index in range(1, self.count + 1):
            worker = self.workers.get(index)
            if worker is None or not worker.serving:
                pending.append(f"worker {index}: starting")
            else:
                pending += [f"worker {index}: {what}" for what in worker.pending]
        return pending

    @property
    def routes(self) -> dict[str, Any]:
        for worker in sorted(self.workers.values(), key=lambda w: w.index):
            if worker.serving:
                return worker.routes
        return {}

    def reload(self, reason: str) -> str | None:
        """
        Load the configuration again, check it, and tell every worker to
        take it; with other listeners, start workers on them in place of
        the ones there are.

        @return: L{None}, or why the configuration was not taken.
        """
        try:
            config, text = self.file.load()
            self._check(config)
        except ConfigError as e:
            self.lastError = str(e)
            self.reloads.labels("failed").inc()
            log.error("configuration not reloaded ({reason}): {error}", reason=reason, error=str(e))
            return self.lastError
        self.config, self.text, self.loadedAt, self.lastError = config, text, self.reactor.seconds(), None
        self.reloads.labels("ok").inc()
        self.adminListeners.follow(self._adminListen(config))
        if self.watcher is not None:
            self.watcher.watch(self.file.dependencies(config))
        if not self.running:
            return None
        if self.sockets.follow(config.listen):
            log.info("configuration reloaded ({reason}): listening on {listen}; starting new workers",
                     reason=reason, listen=", ".join(self.sockets.ports))
            for worker in list(self.workers.values()):
                self._retire(worker)
        else:
            log.info("configuration reloaded ({reason}): {routes} routes; each worker takes it",
                     reason=reason, routes=len(config.routes))
            for worker in self.workers.values():
                worker.send(b"reload")
        self._follow()
        return None

    # Workers

    def _follow(self) -> None:
        """
        Run exactly C{count} workers: start the missing, retire the extra.
        """
        for index in sorted(self.workers):
            if index > self.count:
                self._retire(self.workers[index])
        for index in range(1, self.count + 1):
            if index not in self.workers and index not in self._restarts:
                self._start(index)

    def _start(self, index: int) -> None:
        self._restarts.pop(index, None)
        worker = WorkerProcess(self, index)
        listen, childFDs = self.sockets.arguments(3)
        arguments = [self.executable, "-m", "aigateway.app.worker", "--config", self.file.path,
                     "--index", str(index)] + listen
        assert self.metricsDirectory is not None
        environment = dict(self.environ, PROMETHEUS_MULTIPROC_DIR=self.metricsDirectory)
        self.workers[index] = worker
        self.spawn(worker, self.executable, arguments, env=environment,
                   childFDs={0: "w", 1: "r", 2: "r", **childFDs})

    def _retire(self, worker: WorkerProcess) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        worker.retired = True
        self.retiring.append(worker)
        worker.signal("TERM")

    def message(self, worker: WorkerProcess, line: bytes) -> None:
        """
        One line a worker wrote on its standard output.
        """
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            if line.strip():
                log.info("worker {worker}: {line}", worker=worker.index, line=line.decode("utf-8", "replace"))
            return
        if "log" in message:
            self._relog(worker, message["log"])
        elif "serving" in message:
            worker.serving = True
            log.info("worker {worker} serving (pid {pid})", worker=worker.index, pid=worker.pid)
        elif "status" in message:
            worker.pending = list(message["status"].get("pending", []))
            worker.routes = message["status"].get("routes", {})
        elif "reloaded" in message:
            if message["reloaded"] is not None:
                self.lastError = f"worker {worker.index}: {message['reloaded']}"
        elif "failed" in message:
            self.lastError = f"worker {worker.index}: {message['failed']}"

    def _relog(self, worker: WorkerProcess, event: dict[str, Any]) -> None:
        """
        Log a worker's event as this process's own, marked with the
        worker's number.
        """
        try:
            level = LogLevel.levelWithName(event.get("level", "info"))
        except Exception:
            level = LogLevel.info
        namespace = str(event.get("namespace"))
        system = str(event.get("system", "-"))
        text = str(event.get("text", ""))
        fields = event.get("fields") if isinstance(event.get("fields"), dict) else {}
        globalLogPublisher(dict(
            fields,
            worker=worker.index,
            log_format=text.replace("{", "{{").replace("}", "}}"),
            log_level=level,
            log_namespace=namespace,
            log_system=f"worker {worker.index}" if system == "-" else f"worker {worker.index} {system}",
            log_time=event.get("time") or self.reactor.seconds(),
        ))

    def workerEnded(self, worker: WorkerProcess, reason: Failure) -> None:
        """
        A worker ended: start another in its place, unless it was asked to
        end.
        """
        if worker.pid is not None and self.metricsDirectory is not None:
            mark_process_dead(worker.pid, self.metricsDirectory)
        if worker in self.retiring:
            self.retiring.remove(worker)
        if worker.retired or not self.running:
            return
        del self.workers[worker.index]
        how = _how(reason)
        lived = self.reactor.seconds() - worker.started
        pause = 0.0 if lived >= STEADY else min(LONGEST_PAUSE, max(FIRST_PAUSE, 2 * self._pauses.get(worker.index, 0)))
        self._pauses[worker.index] = pause
        self.restarts.inc()
        log.error("worker {worker} (pid {pid}) ended: {how}; starting it again in {pause:g} s",
                  worker=worker.index, pid=worker.pid, how=how, pause=pause)
        self._restarts[worker.index] = self.reactor.callLater(pause, self._restart, worker.index)

    def _restart(self, index: int) -> None:
        del self._restarts[index]
        if self.running and index <= self.count and index not in self.workers:
            self._start(index)

    # Service

    def _open(self) -> None:
        """
        Open the sockets and the metrics' directory, once.
        """
        if self.metricsDirectory is not None:
            return
        try:
            for description in self.config.listen:
                self.sockets.open(description)
        except CannotListen:
            self.sockets.close()
            raise
        self.metricsDirectory = tempfile.mkdtemp(prefix="aigateway-metrics-")
        MultiProcessCollector(self.registry, path=self.metricsDirectory)

    def privilegedStartService(self) -> None:
        self._open()
        super().privilegedStartService()

    def startService(self) -> None:
        self._open()
        super().startService()
        self._follow()
        lines = describeStart(self.config, tuple(self.sockets.ports), self.adminListeners.descriptions,
                              tracesEndpoint(self.config.tracing, self.environ), __version__, self.count)
        for line in lines:
            log.info("{line}", line=line)

    def stopService(self) -> Deferred[None]:
        """
        Stop every worker (each drains), killing any still running past
        the drain's timeout; then close the sockets and the admin listener.
        """
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        for call in self._restarts.values():
            call.cancel()
        self._restarts.clear()
        for worker in list(self.workers.values()):
            self._retire(worker)
        self.sockets.close()
        ending = [worker.ended for worker in self.retiring if not worker.ended.called]
        if ending:
            kill = self.reactor.callLater(self.config.shutdownTimeout + KILL_GRACE, self._kill)
            await gatherResults(ending)
            if kill.active():
                kill.cancel()
        for child in reversed(list(self)):
            await maybeDeferred(child.stopService)
        if self.metricsDirectory is not None:
            shutil.rmtree(self.metricsDirectory, ignore_errors=True)

    def _kill(self) -> None:
        for worker in self.retiring:
            log.error("worker {worker} (pid {pid}) did not end in time: killed", worker=worker.index, pid=worker.pid)
            worker.signal("KILL")


def _how(reason: Failure) -> str:
    """
    How a process ended, in words.
    """
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exit status 0"
    signal = getattr(value, "signal", None)
    if signal is not None:
        return f"killed by signal {signal}"
    return f"exit status {getattr(value, 'exitCode', '?')}"
