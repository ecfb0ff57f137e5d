"""
Token buckets in Redis, shared by every gateway (replica or process) that
names the same server, through C{txredisapi}.

One decision is one round trip: a Lua script that reads Redis's own clock
(so gateways with skewed clocks agree), refills every bucket of the
request, checks them all and takes from them only when all admit.  Token
charges after an answer are one more script call, not waited for.  Each
key expires a little after its bucket would be full again, so an idle
bucket costs nothing.

Every call has a deadline (C{timeout}).  A call that misses it, fails, or
finds no connection is decided by C{onError} (allow or deny), counted by
the fallback callback and logged at most once a minute; the connection is
re-established in the background, and decisions go back to Redis as soon
as it answers again.
"""

from __future__ import annotations

import collections
import hashlib
import math
from typing import Any, Callable, Sequence
from urllib.parse import quote

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

import txredisapi

from aigateway.config import Bucket, RedisConfig
from aigateway.state.memory import UNAVAILABLE, BucketStore, Check, Refused, Verdict

__all__ = ["ADMIT_SCRIPT", "CHARGE_SCRIPT", "RedisBuckets"]

log = Logger()

# How long after a bucket would be full again its key lives, in ms.
EXPIRY_MARGIN_MS = 1000

# The most often a kind of trouble with Redis is logged, in seconds.
LOG_EVERY = 60.0

# Common to both scripts: Redis's time in ms, and a bucket's level now.
# (Since Redis 5 scripts replicate their effects, so a script may read TIME
# and then write; replicate_commands turns that on for older servers.)
_PRELUDE = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function level(key, limit, per)
  local stored = redis.call('HMGET', key, 'l', 't')
  if not stored[1] then return limit end
  return math.min(limit, tonumber(stored[1]) + math.max(0, now - tonumber(stored[2])) * limit / per)
end
local function store(key, value, limit, per)
  redis.call('HSET', key, 'l', string.format('%.17g', value), 't', now)
  redis.call('PEXPIRE', key, math.ceil((limit - value) * per / limit) + MARGIN)
end
local values = {}
for v in string.gmatch(ARGV[1], '%S+') do values[#values + 1] = tonumber(v) end
""".replace("MARGIN", str(EXPIRY_MARGIN_MS))

# KEYS: the buckets; ARGV[1]: limit, per (ms) and take of each bucket,
# separated by spaces (one argument: the client encodes each argument on its
# own, and that is most of its work).  Returns 0 when admitted (and taken),
# else the refusing bucket's place (from 1) and its level, in one status
# line (a reply the client reads without a bulk string's second read).
ADMIT_SCRIPT = _PRELUDE + """
local levels = {}
for i = 1, #KEYS do
  local limit, per, take = values[3*i-2], values[3*i-1], values[3*i]
  local l = level(KEYS[i], limit, per)
  if l <= 0 or l < take then return {ok = i .. ' ' .. string.format('%.17g', l)} end
  levels[i] = l
end
for i = 1, #KEYS do
  local limit, per, take = values[3*i-2], values[3*i-1], values[3*i]
  if take > 0 then store(KEYS[i], levels[i] - take, limit, per) end
end
return 0
"""

# KEYS: the buckets; ARGV[1]: limit, per (ms) and amount of each bucket,
# separated by spaces.  Takes each amount, into debt.
CHARGE_SCRIPT = _PRELUDE + """
for i = 1, #KEYS do
  local limit, per, amount = values[3*i-2], values[3*i-1], values[3*i]
  store(KEYS[i], level(KEYS[i], limit, per) - amount, limit, per)
end
return 0
"""


class _Script:
    """
    A script, by its text and its SHA-1 (what EVALSHA sends).
    """

    def __init__(self, text: str) -> None:
        self.text = text.encode("utf-8")
        self.sha = hashlib.sha1(self.text).hexdigest().encode("ascii")


_ADMIT = _Script(ADMIT_SCRIPT)
_CHARGE = _Script(CHARGE_SCRIPT)


class _TLSEndpoint:
    """
    A client endpoint that speaks TLS over another, connecting the given
    factory's protocol (not the TLS wrapper) as txredisapi expects.
    """

    def __init__(self, endpoint: Any, host: str) -> None:
        self.endpoint = endpoint
        self.creator = optionsForClientTLS(host)

    def connect(self, factory: Any) -> Deferred[Any]:
        wrapper = TLSMemoryBIOFactory(self.creator, True, factory)
        return self.endpoint.connect(wrapper).addCallback(lambda protocol: protocol.wrappedProtocol)


def bucketKey(prefix: str, name: str) -> str:
    """
    The Redis key of the bucket C{name} (the route, the limit's place, its
    kind and the key's value, separated by NULs): each part escaped, so
    that no two routes or values ever meet in one key.
    """
    return prefix + ":".join(quote(part, safe="") for part in name.split("\x00", 3))


class RedisBuckets(BucketStore):
    """
    Token buckets in one Redis server.

    @ivar onFallback: called with the reason (C{timeout}, C{error},
        C{unavailable}) each time a decision or charge could not be made
        in Redis.
    @ivar keys: the Redis key of each bucket name, for the most recent
        names, encoded.
    """

    maxDelay = 2.0

    def __init__(self, config: RedisConfig, onError: str, reactor: IReactorTime,
                 password: str | None = None,
                 onFallback: Callable[[str], None] = lambda reason: None) -> None:
        """
        @param password: the password, read where C{config} says.
        @param reactor: connects, and times the calls.
        """
        self.config = config
        self.deny = onError == "deny"
        self.reactor = reactor
        self.password = password
        self.onFallback = onFallback
        self.keys: dict[str, bytes] = {}
        self._buckets: dict[Bucket, bytes] = {}
        # Charges made in this turn of the reactor, sent together.
        self._charges: dict[bytes, list] = {}
        # The calls made in this turn of the reactor, whose deadline starts
        # at the next.
        self._sent: list[Deferred[Any]] = []
        # Whether the next turn's work (L{_nextTurn}) is arranged.
        self._turn = False
        # The deadlines running, oldest first.
        self._timers: collections.deque[Any] = collections.deque()
        self._factory: Any = None
        # What waits for the first connection since start; L{None} once
        # there was one (or before start).
        self._starting: list[Callable[[], None]] | None = None
        self._logged: dict[str, float] = {}
        self._since: dict[str, int] = {}

    def start(self) -> None:
        if self._factory is not None:
            return
        factory = txredisapi.RedisFactory(
            self.config.url, self.config.database or None, 1, True, txredisapi.ConnectionHandler,
            "utf-8", self.password, None, False, self.config.username,
        )
        factory.maxDelay = self.maxDelay
        endpoint: Any = HostnameEndpoint(self.reactor, self.config.host, self.config.port,
                                         timeout=max(1, int(math.ceil(self.config.timeout * 20))))
        if self.config.tls:
            endpoint = _TLSEndpoint(endpoint, self.config.host)
        factory.startConnecting(endpoint)
        self._factory = factory
        self._starting = []

        def connected(_: object) -> None:
            waiting, self._starting = self._starting or [], None
            for send in waiting:
                send()

        factory.deferred.addBoth(connected)

    def stop(self) -> Deferred[None]:
        if self._charges:
            # The charges of this turn go out before the connection closes.
            self._sendCharges()
        factory, self._factory = self._factory, None
        self._starting = None
        # What is still in flight fails with the connection.
        while self._timers:
            timer = self._timers.popleft()
            if timer.active():
                timer.cancel()
        if factory is None:
            return succeed(None)
        return factory.disconnect().addCallback(lambda _: None)

    @property
    def connected(self) -> bool:
        """
        Whether a connection to Redis is up.
        """
        factory = self._factory
        return factory is not None and any(c.connected for c in factory.pool)

    def _connection(self) -> Any:
        factory = self._factory
        if factory is not None:
            for connection in factory.pool:
                if connection.connected:
                    return connection
        return None

    def _key(self, name: str) -> bytes:
        key = self.keys.get(name)
        if key is None:
            if len(self.keys) > 10_000:
                self.keys.clear()
            key = self.keys[name] = bucketKey(self.config.keyPrefix, name).encode("utf-8")
        return key

    def _bucket(self, bucket: Bucket) -> bytes:
        found = self._buckets.get(bucket)
        if found is None:
            found = self._buckets[bucket] = _number(bucket.limit) + b" " + _number(bucket.per * 1000)
        return found

    def _call(self, script: _Script, args: tuple[bytes, ...]) -> Deferred[Any]:
        """
        Run C{script} (EVALSHA, or EVAL when Redis does not know it yet),
        within the timeout.

        @param args: the number of keys, the keys, then the arguments.
        @return: a L{Deferred} that fires with the reply, or fails with the
            reason for a fallback: a L{_Fallback}, a L{CancelledError} for
            a call that missed its deadline, or the client's error.
        @raise _Fallback: when there is no connection, and none coming.
        """
        connection = self._connection()
        if connection is not None:
            try:
                d = connection.execute_command(b"EVALSHA", script.sha, *args)
            except Exception:
                d = fail()
            d.addErrback(self._unknown, connection, script, args)
        elif self._starting is not None:
            # Just started, not connected yet: the first requests wait for
            # the connection, within the same deadline.
            d = self._afterStart(script, args)
        else:
            raise _Fallback("unavailable")
        self._deadline(d)
        return d

    def _unknown(self, failure: Failure, connection: Any, script: _Script, args: tuple[bytes, ...]) -> Any:
        """
        Redis restarted, or SCRIPT FLUSH: send the script itself.  The
        call stays under the first one's deadline (a cancelled L{Deferred}
        cancels the one it waits for).
        """
        if failure.check(txredisapi.ResponseError) and str(failure.value).startswith("NOSCRIPT"):
            return connection.execute_command(b"EVAL", script.text, *args)
        return failure

    def _afterStart(self, script: _Script, args: tuple[bytes, ...]) -> Deferred[Any]:
        """
        A call made before the first connection is up: sent once it is, or
        given up at the deadline as unavailable.
        """
        waiting: Deferred[Any] = Deferred(lambda d: d.errback(_Fallback("unavailable")))

        def forward(result: Any) -> None:
            if not waiting.called:
                if isinstance(result, Failure):
                    waiting.errback(result)
                else:
                    waiting.callback(result)

        def send() -> None:
            connection = self._connection()
            if connection is not None and not waiting.called:
                try:
                    d = connection.execute_command(b"EVALSHA", script.sha, *args)
                except Exception:
                    d = fail()
                d.addErrback(self._unknown, connection, script, args).addBoth(forward)

        assert self._starting is not None
        self._starting.append(send)
        return waiting

    def _deadline(self, d: Deferred[Any]) -> None:
        """
        Give C{d} C{timeout}, counted from the next turn of the reactor, when
        the call is written out: the rest of this turn is the gateway's own
        work (a burst of requests read at once), not Redis's.  Every call of
        a turn shares one timer.
        """
        self._sent.append(d)
        if not self._turn:
            self._turn = True
            self.reactor.callLater(0, self._nextTurn)

    def _nextTurn(self) -> None:
        """
        The calls of the last turn are written out: send its charges, and
        start the deadline of all of them.
        """
        if self._charges:
            self._sendCharges()
        sent, self._sent = self._sent, []
        if sent:
            self._timer(self.config.timeout, self._late, sent)
        self._turn = False

    def _timer(self, delay: float, f: Callable[..., None], *args: Any) -> None:
        """
        Call C{f} later, as a timer that L{stop} cancels.
        """
        timers = self._timers
        while timers and not timers[0].active():
            timers.popleft()
        timers.append(self.reactor.callLater(delay, f, *args))

    def _late(self, sent: list[Deferred[Any]]) -> None:
        # A reply that reached the socket by the deadline counts: give up
        # only after the reactor has read what is waiting (a busy reactor
        # may reach the timer first).
        self._timer(0, self._giveUp, sent)

    def _giveUp(self, sent: list[Deferred[Any]]) -> None:
        for d in sent:
            if not d.called:
                d.cancel()

    def decide(self, checks: Sequence[Check], now: float) -> Verdict | Deferred[Verdict]:
        keys = [self._key(name) for name, _, _ in checks]
        values = []
        for _, bucket, take in checks:
            values.append(self._bucket(bucket))
            values.append(_TAKE.get(take) or _number(take))
        try:
            d = self._call(_ADMIT, (_COUNT.get(len(keys)) or b"%d" % len(keys), *keys, b" ".join(values)))
        except _Fallback as e:
            return self._fallback(Failure(e))
        return d.addCallbacks(self._verdict, self._fallback)

    def _verdict(self, reply: Any) -> Verdict:
        if reply == 0:
            return None
        index, level = reply.split()
        return Refused(int(index) - 1, float(level))

    def _fallback(self, failure: Failure) -> Verdict:
        reason, detail = _reason(failure)
        self._problem(reason, detail)
        self.onFallback(reason)
        return UNAVAILABLE if self.deny else None

    def charge(self, buckets: Sequence[tuple[str, Bucket]], amount: float, now: float) -> None:
        """
        Charge C{amount} to each bucket with the other charges of this turn
        of the reactor, in one script call sent at the next.
        """
        charges = self._charges
        if not self._turn:
            self._turn = True
            self.reactor.callLater(0, self._nextTurn)
        for name, bucket in buckets:
            key = self._key(name)
            found = charges.get(key)
            if found is None:
                charges[key] = [bucket, amount]
            else:
                found[1] += amount

    def _sendCharges(self) -> None:
        charges, self._charges = self._charges, {}
        if not charges:
            return
        values = []
        total = 0.0
        for bucket, amount in charges.values():
            values.append(self._bucket(bucket))
            values.append(_number(amount))
            total += amount
        try:
            d = self._call(_CHARGE, (b"%d" % len(charges), *charges, b" ".join(values)))
        except _Fallback as e:
            d = fail(e)

        def lost(failure: Failure) -> None:
            reason, detail = _reason(failure)
            self._problem(reason, detail, f"{total:g} tokens not charged")
            self.onFallback(reason)

        d.addErrback(lost)

    def _problem(self, reason: str, detail: str | None, what: str | None = None) -> None:
        """
        Log trouble with Redis, each kind at most once every C{LOG_EVERY}
        seconds, with how often it happened since the last time.
        """
        self._since[reason] = self._since.get(reason, 0) + 1
        now = self.reactor.seconds()
        last = self._logged.get(reason)
        if last is not None and now - last < LOG_EVERY:
            return
        self._logged[reason] = now
        count, self._since[reason] = self._since[reason], 0
        words = {
            "timeout": f"did not answer within {self.config.timeout * 1000:g} ms",
            "error": "failed" + (f": {detail}" if detail else ""),
            "unavailable": "is not connected",
        }[reason]
        log.warn(
            "Redis at {url} {words}: rate limits {decision} ({what}; {count} times since the last report)",
            url=self.config.url, words=words, decision="deny" if self.deny else "allow",
            what=what or "state.onError", count=count,
        )


class _Fallback(Exception):
    """
    A call to Redis that did not give an answer, and why.
    """

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _number(value: float) -> bytes:
    return (repr(float(value)) if value != int(value) else str(int(value))).encode("ascii")


_COUNT: dict[int, bytes] = {n: b"%d" % n for n in range(1, 9)}


def _reason(failure: Failure) -> tuple[str, str | None]:
    """
    Why a call gave no answer: its fallback's reason and detail.
    """
    value = failure.value
    if isinstance(value, _Fallback):
        return value.reason, value.detail
    if isinstance(value, CancelledError):
        return "timeout", None
    return "error", failure.getErrorMessage()
_TAKE: dict[float, bytes] = {0: b"0", 1: b"1"}
