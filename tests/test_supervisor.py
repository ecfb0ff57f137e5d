"""
Tests for L{aigateway.app.supervisor} and L{aigateway.app.worker} in
memory: the workers started, started again, told to reload and stopped,
with a fake process spawner, a clock and files kept in a dict.  The real
processes are in L{tests.test_workers}.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from aigateway.app.listeners import CannotListen
from aigateway.app.supervisor import Supervisor, cores, cpuQuota
from aigateway.app.worker import Channel, WorkerOptions, eventMessage
from aigateway.config import ConfigError
from tests.test_listeners import ListeningReactor
from tests.test_watch import FakeNotifier

PATH = "/etc/aigateway/gateway.yaml"


def configText(workers: object = 2, listen: str = "tcp:8080", extra: str = "") -> bytes:
    return (
        f"listen: {listen}\nadmin: {{listen: tcp:9090}}\nworkers: {workers}\nshutdownTimeout: 5s\n{extra}"
        "backends: {local: {provider: openai, url: 'http://fakellm'}}\n"
        "routes:\n  - {name: a, match: {pathPrefix: /a}, backend: local}\n"
    ).encode()


class FakeSockets:
    """
    What the supervisor uses of L{SharedSockets}: descriptors 100, 101, ...
    one per endpoint string.
    """

    def __init__(self, refused: tuple[str, ...] = ()) -> None:
        self.ports: dict[str, int] = {}
        self.refused = refused
        self.closed = False
        self.next = 100

    def open(self, description: str) -> int:
        if description in self.refused:
            raise CannotListen(description, "address already in use")
        self.ports[description] = self.next
        self.next += 1
        return self.ports[description]

    def follow(self, descriptions: tuple[str, ...]) -> bool:
        changed = set(descriptions) != set(self.ports)
        self.ports = {d: self.ports[d] for d in descriptions if d in self.ports}
        for d in descriptions:
            if d not in self.ports:
                self.open(d)
        return changed

    def arguments(self, first: int) -> tuple[list[str], dict[int, int]]:
        arguments: list[str] = []
        childFDs = {}
        for i, (description, fd) in enumerate(self.ports.items()):
            arguments += ["--listen", f"{first + i}:inet:{description}"]
            childFDs[first + i] = fd
        return arguments, childFDs

    def close(self) -> None:
        self.closed = True
        self.ports = {}


class FakeProcess:
    """
    A spawned worker: what it was given, what it was sent.
    """

    def __init__(self, protocol: Any, args: list[str], env: dict, childFDs: dict, pid: int) -> None:
        self.protocol = protocol
        self.args = args
        self.env = env
        self.childFDs = childFDs
        self.pid = pid
        self.stdin = b""
        self.signals: list[str] = []
        protocol.makeConnection(self)

    def writeToChild(self, fd: int, data: bytes) -> None:
        assert fd == 0
        self.stdin += data

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def say(self, message: dict) -> None:
        """
        The worker writes C{message} on its standard output, in two pieces.
        """
        line = json.dumps(message).encode() + b"\n"
        self.protocol.childDataReceived(1, line[:5])
        self.protocol.childDataReceived(1, line[5:])

    def end(self, signal: int | None = None) -> None:
        reason = ProcessDone(0) if signal is None else ProcessTerminated(signal=signal)
        self.protocol.processEnded(Failure(reason))


class Spawner:
    def __init__(self) -> None:
        self.processes: list[FakeProcess] = []

    def __call__(self, protocol: Any, executable: str, args: list[str], env: dict, childFDs: dict) -> FakeProcess:
        process = FakeProcess(protocol, args, env, childFDs, 1000 + len(self.processes))
        self.processes.append(process)
        return process

    def live(self) -> list[FakeProcess]:
        return [p for p in self.processes if not p.protocol.ended.called]


class SupervisorTests(SynchronousTestCase):
    """
    The supervisor runs the number of workers asked for, on the sockets it
    opened, and keeps them running.
    """

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.path = os.path.join(directory, "gateway.yaml")
        self.files = {self.path: configText()}
        self.reactor = ListeningReactor()
        self.spawn = Spawner()
        self.sockets = FakeSockets()
        self.notifier = FakeNotifier()

    def supervisor(self, **kwargs: Any) -> Supervisor:
        supervisor = Supervisor(
            self.reactor, self.path, self.files.__getitem__, spawn=self.spawn, executable="/usr/bin/python3",
            notifier=self.notifier, cores=lambda: 3, sockets=self.sockets, **kwargs,
        )
        self.addCleanup(lambda: supervisor.running and supervisor.stopService())
        return supervisor

    def start(self, **kwargs: Any) -> Supervisor:
        supervisor = self.supervisor(**kwargs)
        supervisor.privilegedStartService()
        supervisor.startService()
        return supervisor

    def test_startsWorkers(self) -> None:
        """
        Each worker is this Python running the worker module on the
        configuration, with its number, the shared sockets as descriptors
        from 3 and the directory its metrics are summed from.
        """
        supervisor = self.start()
        self.assertEqual([p.args for p in self.spawn.processes], [
            ["/usr/bin/python3", "-m", "aigateway.app.worker", "--config", self.path, "--index", str(i),
             "--listen", "3:inet:tcp:8080"] for i in (1, 2)
        ])
        self.assertEqual([p.childFDs for p in self.spawn.processes], [{0: "w", 1: "r", 2: "r", 3: 100}] * 2)
        directory = supervisor.metricsDirectory
        self.assertTrue(os.path.isdir(directory))
        self.assertEqual({p.env["PROMETHEUS_MULTIPROC_DIR"] for p in self.spawn.processes}, {directory})

    def test_auto(self) -> None:
        """
        C{workers: auto} is one worker per core; C{--workers} wins over
        the configuration.
        """
        self.files[self.path] = configText("auto")
        self.start()
        self.assertEqual(len(self.spawn.processes), 3)
        self.spawn.processes.clear()
        self.sockets = FakeSockets()
        self.start(workers=2)
        self.assertEqual(len(self.spawn.processes), 2)

    def test_cannotListen(self) -> None:
        """
        A socket that cannot be opened stops the start with the one line
        C{twistd aigateway} prints, before any worker starts.
        """
        self.sockets.refused = ("tcp:8080",)
        supervisor = self.supervisor()
        with self.assertRaises(CannotListen) as caught:
            supervisor.privilegedStartService()
        self.assertEqual(str(caught.exception), "cannot listen on tcp:8080: address already in use")
        self.assertEqual(self.spawn.processes, [])

    def test_badConfiguration(self) -> None:
        """
        A configuration that does not build is refused at the start, as a
        single gateway refuses it.
        """
        self.files[self.path] = configText(extra="authorization: {rules: [{name: r, allow: 'jwt.sub ==='}]}\n")
        with self.assertRaises(ConfigError) as caught:
            self.supervisor()
        self.assertIn("authorization.rules[0]", str(caught.exception))

    def test_ready(self) -> None:
        """
        C{/readyz} waits for every worker to serve and for what each
        waits for; the routes are a serving worker's.
        """
        supervisor = self.start()
        self.assertEqual(supervisor.ready, ["worker 1: starting", "worker 2: starting"])
        first, second = self.spawn.processes
        first.say({"serving": first.pid})
        first.say({"status": {"pending": ["jwks https://idp/keys"], "routes": {"a": [{"backend": "local"}]}}})
        self.assertEqual(supervisor.ready, ["worker 1: jwks https://idp/keys", "worker 2: starting"])
        self.assertEqual(supervisor.routes, {"a": [{"backend": "local"}]})
        second.say({"serving": second.pid})
        first.say({"status": {"pending": [], "routes": {}}})
        self.assertEqual(supervisor.ready, [])

    def test_restarted(self) -> None:
        """
        A worker that ends unasked is started again, with the same number:
        at once if it had served a while; after 1, 2, 4 ... up to 30
        seconds while it keeps ending soon after its start.  Each restart
        is logged and counted.
        """
        supervisor = self.start()
        self.reactor.advance(60)
        with capturedLogs() as events:
            self.spawn.processes[0].end(signal=9)
        self.assertEqual([formatEvent(e) for e in events if e["log_level"] == LogLevel.error],
                         ["worker 1 (pid 1000) ended: killed by signal 9; starting it again in 0 s"])
        self.reactor.advance(0)
        self.assertEqual(self.spawn.processes[-1].args[6], "1")
        pauses = []
        for _ in range(7):
            before = len(self.spawn.processes)
            self.spawn.processes[-1].end()
            waited = 0.0
            while len(self.spawn.processes) == before:
                self.reactor.advance(0.5)
                waited += 0.5
            pauses.append(waited)
        self.assertEqual(pauses, [1, 2, 4, 8, 16, 30, 30])
        self.assertIn("aigateway_worker_restarts_total 8.0", _metrics(supervisor))

    def test_reload(self) -> None:
        """
        A reload checks the configuration here and tells every worker to
        take it; one a worker could not take is the last error.
        """
        supervisor = self.start()
        self.files[self.path] = configText(extra="accessLog: false\n")
        self.assertIsNone(supervisor.reload("test"))
        self.assertEqual([p.stdin for p in self.spawn.processes], [b"reload\n"] * 2)
        self.spawn.processes[1].say({"reloaded": "routes[0].backend: no backend named 'x'"})
        self.assertEqual(supervisor.lastError, "worker 2: routes[0].backend: no backend named 'x'")
        self.assertIn('aigateway_config_reloads_total{result="ok"} 1.0', _metrics(supervisor))

    def test_badReload(self) -> None:
        """
        A configuration that does not load or build is not sent to the
        workers: the reload says why.
        """
        supervisor = self.start()
        self.files[self.path] = configText(extra="authorization: {rules: [{name: r, allow: 'jwt.sub ==='}]}\n")
        error = supervisor.reload("test")
        self.assertIn("authorization.rules[0]", error)
        self.assertEqual(supervisor.lastError, error)
        self.assertEqual([p.stdin for p in self.spawn.processes], [b"", b""])
        self.assertIn('aigateway_config_reloads_total{result="failed"} 1.0', _metrics(supervisor))

    def test_fileChanged(self) -> None:
        """
        A change on disk reloads every worker.
        """
        self.start()
        self.notifier.event(self.path)
        self.reactor.advance(1)
        self.assertEqual([p.stdin for p in self.spawn.processes], [b"reload\n"] * 2)

    def test_moreOrFewer(self) -> None:
        """
        A reload to more workers starts the new ones; to fewer, the last
        ones are stopped and not started again.
        """
        supervisor = self.start()
        self.files[self.path] = configText(3)
        supervisor.reload("test")
        self.assertEqual([p.args[6] for p in self.spawn.live()], ["1", "2", "3"])
        self.files[self.path] = configText(1)
        supervisor.reload("test")
        self.assertEqual([p.signals for p in self.spawn.processes], [[], ["TERM"], ["TERM"]])
        for process in self.spawn.processes[1:]:
            process.end()
        self.reactor.advance(60)
        self.assertEqual(len(self.spawn.processes), 3)

    def test_otherListeners(self) -> None:
        """
        A reload to other listeners starts new workers on the new sockets
        and stops the old ones, which drain.
        """
        supervisor = self.start()
        self.files[self.path] = configText(listen="tcp:8081")
        self.assertIsNone(supervisor.reload("test"))
        old, new = self.spawn.processes[:2], self.spawn.processes[2:]
        self.assertEqual([p.signals for p in old], [["TERM"], ["TERM"]])
        self.assertEqual([p.args[-1] for p in new], ["3:inet:tcp:8081"] * 2)
        self.assertEqual([p.childFDs[3] for p in new], [101, 101])

    def test_stop(self) -> None:
        """
        Stopping sends every worker C{SIGTERM}; one still running past the
        drain's timeout and a grace is killed.  The stop ends when every
        worker has, and removes the metrics' directory.
        """
        supervisor = self.start()
        directory = supervisor.metricsDirectory
        first, second = self.spawn.processes
        stopped = supervisor.stopService()
        self.assertEqual([first.signals, second.signals], [["TERM"], ["TERM"]])
        first.end()
        self.reactor.advance(9.9)
        self.assertEqual(second.signals, ["TERM"])
        self.assertNoResult(stopped)
        self.reactor.advance(0.1)
        self.assertEqual(second.signals, ["TERM", "KILL"])
        second.end(signal=9)
        self.successResultOf(stopped)
        self.assertFalse(os.path.exists(directory))
        self.assertTrue(self.sockets.closed)
        self.reactor.advance(60)
        self.assertEqual(len(self.spawn.processes), 2)

    def test_workerLog(self) -> None:
        """
        A worker's log events are logged here as they were made, marked
        with the worker's number; other lines it prints are logged as
        text.
        """
        self.start()
        process = self.spawn.processes[1]
        with capturedLogs() as events:
            process.say({"log": {"text": "GET /a {a} -> 200", "level": "warn", "namespace": "aigateway.access",
                                 "system": "aigateway.access#warn", "time": 5.0,
                                 "fields": {"status": 200, "route": "a"}}})
            process.protocol.childDataReceived(1, b"not json\n")
            process.protocol.childDataReceived(2, b"Traceback (most recent call last):\n")
        first = events[0]
        self.assertEqual((formatEvent(first), first["log_level"], first["worker"], first["status"],
                          first["log_time"], first["log_system"]),
                         ("GET /a {a} -> 200", LogLevel.warn, 2, 200, 5.0, "worker 2 aigateway.access#warn"))
        self.assertEqual([formatEvent(e) for e in events[1:]],
                         ["worker 2: not json", "worker 2: Traceback (most recent call last):"])


def _metrics(supervisor: Supervisor) -> str:
    from prometheus_client import generate_latest

    return generate_latest(supervisor.registry).decode()


class CoresTests(SynchronousTestCase):
    """
    C{workers: auto} counts the cores a container may use.
    """

    def cgroup(self, files: dict[str, str]) -> str:
        root = os.path.abspath(self.mktemp())
        for name, text in files.items():
            os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
            with open(os.path.join(root, name), "w") as f:
                f.write(text)
        return root

    def test_quota(self) -> None:
        """
        A CPU limit (cgroup v2 or v1) caps the count, rounded up; no limit
        leaves the cores the process may run on.
        """
        available = len(os.sched_getaffinity(0))
        cases = [({"cpu.max": "max 100000\n"}, available),
                 ({"cpu.max": "50000 100000\n"}, 1),
                 ({"cpu.max": f"{available * 100000 + 1} 100000\n"}, available),
                 ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, available),
                 ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
                 ({}, available)]
        for files, expected in cases:
            self.assertEqual(cores(self.cgroup(files)), expected, files)
        self.assertEqual(cpuQuota(self.cgroup({"cpu.max": "150000 100000\n"})), 1.5)


class FakeService:
    def __init__(self) -> None:
        self.running = True
        self.ready: list[str] = []
        self.routes: dict = {}
        self.reloads: list[str] = []
        self.error: str | None = None

    def reload(self, reason: str) -> str | None:
        self.reloads.append(reason)
        return self.error


class ChannelTests(SynchronousTestCase):
    """
    The worker's side: commands in, messages out.
    """

    def setUp(self) -> None:
        self.reactor = ListeningReactor()
        self.stopped: list[bool] = []
        read, self.write = os.pipe()
        self.read = os.fdopen(read, "rb")
        self.addCleanup(self.read.close)
        self.addCleanup(os.close, self.write)
        self.channel = Channel(self.reactor, lambda: self.stopped.append(True), stdout=self.write)
        self.channel.service = FakeService()

    def messages(self) -> list[dict]:
        self.reactor.advance(0)
        os.write(self.write, b"end\n")
        lines = []
        while (line := self.read.readline()) != b"end\n":
            lines.append(json.loads(line))
        return lines

    def test_reload(self) -> None:
        """
        C{reload} on standard input, in any pieces, reloads and says how
        it went.
        """
        self.channel.service.error = "routes: bad"
        self.channel.dataReceived(b"rel")
        self.channel.dataReceived(b"oad\nreload\n")
        self.assertEqual(self.channel.service.reloads, ["supervisor", "supervisor"])
        self.assertEqual(self.messages(), [{"reloaded": "routes: bad"}, {"status": {"pending": [], "routes": {}}},
                                           {"reloaded": "routes: bad"}])

    def test_statusWhenChanged(self) -> None:
        """
        The status is sent when it changes, not otherwise.
        """
        self.channel.sendStatus()
        self.channel.sendStatus()
        self.channel.service.ready = ["jwks https://idp/keys"]
        self.channel.sendStatus()
        self.assertEqual(self.messages(), [{"status": {"pending": [], "routes": {}}},
                                           {"status": {"pending": ["jwks https://idp/keys"], "routes": {}}}])

    def test_batched(self) -> None:
        """
        Messages wait for the end of the reactor's turn, then go out in one
        write; after the reactor has stopped, each goes at once.
        """
        self.channel.send({"a": 1})
        self.channel.send({"b": 2})
        self.assertEqual(len(self.channel._out), 2)
        self.assertEqual(self.messages(), [{"a": 1}, {"b": 2}])
        self.channel.ending()
        self.channel.send({"c": 3})
        self.assertEqual(self.channel._out, [])
        self.assertEqual(self.messages(), [{"c": 3}])

    def test_supervisorGone(self) -> None:
        """
        The end of standard input stops the worker.
        """
        self.channel.readConnectionLost()
        self.assertEqual(self.stopped, [True])

    def test_eventMessage(self) -> None:
        """
        An event is sent as its text, with the failure's traceback, its
        level and its plain fields; Twisted's own fields and objects stay
        behind.
        """
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        message = eventMessage({"log_format": "{what} failed", "what": "it", "log_level": LogLevel.error,
                                "log_namespace": "aigateway.x", "log_time": 7.0, "log_failure": failure,
                                "log_logger": object(), "status": 500, "user": object()})
        self.assertTrue(message["text"].startswith("it failed\nTraceback"))
        self.assertIn("ZeroDivisionError", message["text"])
        self.assertEqual({k: v for k, v in message.items() if k != "text"},
                         {"level": "error", "namespace": "aigateway.x", "system": "aigateway.x#error",
                          "time": 7.0, "fields": {"what": "it", "status": 500}})

    def test_options(self) -> None:
        """
        The worker's command line names the sockets it serves.
        """
        options = WorkerOptions()
        options.parseOptions(["--config", PATH, "--index", "2", "--listen", "3:inet6:tcp6:8080:interface=\\:\\:"])
        self.assertEqual(options["listen"], [(3, "inet6", "tcp6:8080:interface=\\:\\:")])
