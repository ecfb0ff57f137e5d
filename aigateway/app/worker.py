"""
One worker process of a supervisor (L{aigateway.app.supervisor}):
C{python -m aigateway.app.worker --config FILE --listen FD:FAMILY:ENDPOINT ...}.

A worker serves the gateway on listening sockets its supervisor opened and
handed down as file descriptors, and talks to the supervisor over its
standard streams, one JSON object a line:

  - on standard input it reads C{reload} (load the configuration again);
    the end of standard input means the supervisor is gone, and the worker
    drains and exits, as it does on C{SIGTERM};
  - on standard output it writes its log events (C{{"log": {...}}}, for
    the supervisor to log as its own, marked with the worker's number) and
    what the supervisor shows at C{/readyz} and C{/config}: C{serving}
    once it listens, C{reloaded} after each reload (with the error, if the
    configuration was not taken), and C{status} (what it still waits for,
    its routes' health) whenever that changes.

The worker has no admin listener and does not watch the configuration: the
supervisor does both for all its workers.  Its metrics are written to the
directory in C{PROMETHEUS_MULTIPROC_DIR}, where the supervisor's
C{/metrics} sums them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from typing import Any, Callable

from twisted.application.service import MultiService
from twisted.internet import stdio
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamServerEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import LogEvent, Logger, formatEvent, globalLogBeginner
from twisted.python import usage
from zope.interface import implementer

from aigateway.config import ConfigError

__all__ = ["Channel", "WorkerOptions", "adoptedEndpoints", "eventMessage", "main"]

log = Logger()

FAMILIES = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}

# How often the worker looks whether its status changed.
STATUS_INTERVAL = 1.0


class WorkerOptions(usage.Options):
    """
    What the supervisor tells a worker on its command line.
    """

    optParameters = [
        ["config", "c", None, "The YAML configuration file."],
        ["index", None, "1", "The worker's number, from 1."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, value: str) -> None:
        """
        FD:FAMILY:ENDPOINT: serve ENDPOINT on the listening socket FD (repeat for several).
        """
        fd, family, description = value.split(":", 2)
        if family not in FAMILIES:
            raise usage.UsageError(f"unknown address family {family!r}")
        self["listen"].append((int(fd), family, description))

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config is required")


def adoptedEndpoints(listen: list[tuple[int, str, str]]) -> Callable[[Any, str], IStreamServerEndpoint]:
    """
    Makes the endpoint of each listen string: the socket handed down for it.
    """
    sockets = {description: (fd, FAMILIES[family]) for fd, family, description in listen}

    def endpoint(reactor: Any, description: str) -> IStreamServerEndpoint:
        fd, family = sockets[description]
        return AdoptedStreamServerEndpoint(reactor, fd, family)

    return endpoint


# Fields of a log event that are Twisted's bookkeeping, not the caller's.
_PLAIN = (str, int, float, bool, type(None))


def eventMessage(event: LogEvent) -> dict[str, Any]:
    """
    A log event as the supervisor takes it: its text (with the traceback of
    its failure, if any), level, namespace, system (as a classic log line
    shows it) and time, and the caller's fields that are plain values.
    """
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            text = f"{text}\n{failure.getTraceback()}"
        except Exception:
            text = f"{text}\n{failure!r}"
    level = event.get("log_level")
    namespace = event.get("log_namespace", "log_legacy")
    system = event.get("log_system")
    if system is None:
        system = "-" if namespace == "log_legacy" else f"{namespace}#{level.name if level else 'info'}"
    fields = {
        key: value for key, value in event.items()
        if not key.startswith("log_") and value.__class__ in _PLAIN
        and key not in ("format", "message", "isError", "time", "system", "why", "failure")
    }
    return {
        "text": text,
        "level": level.name if level is not None else "info",
        "namespace": namespace,
        "system": system,
        "time": event.get("log_time"),
        "fields": fields,
    }


@implementer(IHalfCloseableProtocol)
class Channel(Protocol):
    """
    The worker's side of its standard streams (see the module docstring).

    @ivar service: the gateway served, once built.
    @ivar stop: called when the supervisor is gone.
    @ivar stdout: where messages are written.
    @ivar direct: whether each message is written as it comes.
    """

    def __init__(self, reactor: Any, stop: Callable[[], object], stdout: int = 1) -> None:
        self.reactor = reactor
        self.stop = stop
        self.stdout = stdout
        self.service: Any = None
        self.direct = False
        self._buffer = b""
        self._status: Any = None
        self._out: list[bytes] = []
        self._flush: Any = None

    def send(self, message: dict[str, Any]) -> None:
        """
        Write one message to the supervisor: at the end of the reactor's
        turn with the others of that turn while it runs, at once when it
        does not.
        """
        self._out.append(json.dumps(message, separators=(",", ":"), default=str).encode("utf-8") + b"\n")
        if self.direct:
            self.flush()
        elif self._flush is None:
            self._flush = self.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """
        Write what is waiting.  Standard output stays blocking: a worker
        that writes faster than its supervisor reads waits for it, and
        nothing is lost when the worker ends.
        """
        self._flush = None
        out, self._out = b"".join(self._out), []
        while out:
            out = out[os.write(self.stdout, out):]

    def ending(self) -> None:
        """
        The reactor has stopped: write everything from now on at once.
        """
        self.direct = True
        self.flush()

    def logEvent(self, event: LogEvent) -> None:
        """
        A log observer: each event goes to the supervisor.
        """
        self.send({"log": eventMessage(event)})

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            if line.strip() == b"reload":
                self.reload("supervisor")

    def reload(self, reason: str) -> None:
        """
        Load the configuration again and say how it went.
        """
        if self.service is None:
            return
        try:
            error = self.service.reload(reason)
        except Exception as e:
            log.failure("reloading the configuration")
            error = f"reloading failed: {e}"
        self.send({"reloaded": error})
        self.sendStatus()

    def sendStatus(self) -> None:
        """
        Say what the worker waits for and how its routes are, if that
        changed since it last said.
        """
        if self.service is None or not self.service.running:
            return
        status = {"pending": self.service.ready, "routes": self.service.routes}
        if status != self._status:
            self._status = status
            self.send({"status": status})

    def readConnectionLost(self) -> None:
        self.stop()

    def writeConnectionLost(self) -> None:
        self.stop()

    def connectionLost(self, reason: Any = None) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    """
    Run one worker until it is told to stop.
    """
    options = WorkerOptions()
    try:
        options.parseOptions(argv if argv is not None else sys.argv[1:])
    except usage.UsageError as e:
        raise SystemExit(f"aigateway worker: {e}")

    from twisted.internet import reactor

    from aigateway.app.heap import HeapSettler
    from aigateway.app.service import GatewayService
    from aigateway.app.tap import fileReader

    stopping = []

    def stop() -> None:
        if not stopping:
            stopping.append(True)
            try:
                reactor.stop()
            except ReactorNotRunning:
                pass

    channel = Channel(reactor, stop)
    globalLogBeginner.beginLoggingTo([channel.logEvent], discardBuffer=False)
    # Standard input is read on the reactor; the channel writes standard
    # output itself (see Channel.flush), so the reader gets a writer of
    # its own that is never used.
    stdio.StandardIO(channel, stdin=0, stdout=os.open(os.devnull, os.O_WRONLY), reactor=reactor)
    reactor.addSystemEventTrigger("after", "shutdown", channel.ending)
    path = options["config"]
    try:
        service = GatewayService(
            reactor, os.path.abspath(path), readFile=fileReader(path),
            listen=tuple(description for _, _, description in options["listen"]),
            watch=False, endpoint=adoptedEndpoints(options["listen"]), worker=True,
        )
    except ConfigError as e:
        channel.send({"failed": f"{path}: {e}"})
        raise SystemExit(1)
    channel.service = service
    top = MultiService()
    service.setServiceParent(top)
    HeapSettler().setServiceParent(top)

    def start() -> None:
        # The supervisor sends SIGTERM to stop a worker; the SIGINT of a
        # terminal's Control-C reaches the supervisor too, which stops
        # its workers in order.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, lambda *args: reactor.callFromThread(channel.reload, "SIGHUP"))
        try:
            top.privilegedStartService()
            top.startService()
        except Exception as e:
            channel.send({"failed": str(e)})
            log.failure("the worker could not start")
            stop()
            return
        channel.send({"serving": os.getpid()})
        LoopingCall(channel.sendStatus).start(STATUS_INTERVAL)

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
