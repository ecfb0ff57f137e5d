"""
What a route with two rate limits (requests and tokens, one bucket per
user) costs the gateway in CPU per request, with its buckets in memory and
in Redis: `python bench/limits.py [--requests N] [--redis-port PORT]`.

Each request is one decision (the policy's C{admit}) and, once admitted,
one token charge, as the relay makes after an answer; C{--concurrency}
decisions are in flight at once.  Without C{--redis-port} the script starts
a C{redis-server} of its own on a free port.  The CPU time is this
process's (user and system), not Redis's; the table gives both.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from twisted.internet import defer, task  # noqa: E402

from aigateway.build import compileLimits  # noqa: E402
from aigateway.config import loadConfig  # noqa: E402
from aigateway.state import storeFor  # noqa: E402
from aigateway.web.policy import RoutePolicy  # noqa: E402

LIMITS = ("backends: {b: {provider: openai, url: 'http://127.0.0.1:1'}}\nroutes:\n"
          "  - {name: r, match: {pathPrefix: /r}, backend: b, rateLimits: ["
          "{key: jwt.sub, requests: {limit: 1000000000, per: 1m}}, "
          "{key: jwt.sub, tokens: {limit: 1000000000, per: 1m}}]}\n")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _redisCpu(port: int) -> float:
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "cpu"], capture_output=True, text=True).stdout
    values = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return float(values["used_cpu_user"]) + float(values["used_cpu_sys"])


async def _run(reactor, store, requests: int, concurrency: int) -> float:
    config = loadConfig(LIMITS)
    policy = RoutePolicy("r", (), compileLimits(config.routes[0].rateLimits), store)
    users = [{"sub": f"user{i}"} for i in range(100)]

    async def one(i: int) -> None:
        variables = policy.variables(users[i % 100], "POST", "/r", dict, "gpt-4o", False, "openai")
        decided = policy.admit(variables, reactor.seconds())
        if isinstance(decided, defer.Deferred):
            decided = await decided
        refusal, charge = decided
        assert refusal is None, refusal
        charge(12, reactor.seconds())

    async def worker(start: int) -> None:
        for i in range(start, requests, concurrency):
            await one(i)

    # warm up
    await defer.gatherResults([defer.Deferred.fromCoroutine(worker(j)) for j in range(concurrency)])
    started = _cpu()
    await defer.gatherResults([defer.Deferred.fromCoroutine(worker(j)) for j in range(concurrency)])
    return (_cpu() - started) / requests


def main(reactor, args) -> defer.Deferred:
    async def go() -> None:
        process = None
        port = args.redis_port
        if port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            process = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--save", "",
                                        "--appendonly", "no"], stdout=subprocess.DEVNULL)
            time.sleep(0.5)
        try:
            memory = storeFor(loadConfig(LIMITS).state, reactor, {})
            perMemory = await _run(reactor, memory, args.requests, args.concurrency)
            state = loadConfig(LIMITS + f"state: {{redis: {{url: 'redis://127.0.0.1:{port}', timeout: 1s}}}}\n").state
            redis = storeFor(state, reactor, {}, lambda reason: print("fallback", reason))
            redis.start()
            while not redis.connected:
                await task.deferLater(reactor, 0.01, lambda: None)
            before = _redisCpu(port)
            perRedis = await _run(reactor, redis, args.requests, args.concurrency)
            redisSide = (_redisCpu(port) - before) / (2 * args.requests)
            # The last charges are not waited for: let them land.
            await task.deferLater(reactor, 0.2, lambda: None)
            await redis.stop()
        finally:
            if process is not None:
                process.kill()
        print("| buckets | gateway CPU per request | Redis CPU per request |")
        print("| --- | --- | --- |")
        print(f"| memory | {perMemory * 1e6:.1f} us | |")
        print(f"| Redis | {perRedis * 1e6:.1f} us | {redisSide * 1e6:.1f} us |")
        print(f"| difference | {(perRedis - perMemory) * 1e6:+.1f} us | |")

    return defer.Deferred.fromCoroutine(go())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--redis-port", type=int)
    if os.environ.get("BENCH_LOG"):
        from twisted.logger import globalLogBeginner, textFileLogObserver
        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    task.react(main, [parser.parse_args()])
