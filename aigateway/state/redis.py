"""
Token buckets in Redis, shared by every gateway (replica or process) that
names the same server, through C{txredisapi}.

One decision is one round trip: a Lua script that reads Redis's own clock
(so gateways with skewed clocks agree), refills every bucket of the
request, checks them all and takes from them only when all admit.  The
decisions asked for in one turn of the reactor (a burst of requests read
at once), and the token charges of the answers that ended in it, share one
script call sent at the next turn: the script takes the charges, then
decides each request in order as if alone, so the result is the one
separate calls would give, for a fraction of the client's work per call.
Nobody waits for a charge.  Each key expires a little after its bucket
would be full again, so an idle bucket costs nothing.

Every call has a deadline (C{timeout}).  The decisions of a call that
misses it, fails, or finds no connection are decided by C{onError} (allow
or deny), each counted by the fallback callback, and logged at most once a
minute; the connection is re-established in the background, and decisions
go back to Redis as soon as it answers again.
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

__all__ = ["BATCH_SCRIPT", "RedisBuckets"]

log = Logger()

# How long after a bucket would be full again its key lives, in ms.
EXPIRY_MARGIN_MS = 1000

# The most often a kind of trouble with Redis is logged, in seconds.
LOG_EVERY = 60.0

# The charges and decisions of one turn of the reactor, in order: the
# charges first (the answers they belong to ended before these requests
# were judged), then each decision as if alone.  It reads Redis's clock, so
# gateways with skewed clocks agree.  (Since Redis 5 scripts replicate their
# effects, so a script may read TIME and then write; replicate_commands
# turns that on for older servers.)
#
# KEYS: every bucket of the call, once.  ARGV[1], numbers separated by
# spaces (one argument: the client encodes each argument on its own, and
# that is most of its work): the count of charges and of decisions; each
# charge as the place of its key in KEYS, the bucket's limit and period (in
# ms), and the amount (taken even into debt); each decision as its count of
# buckets, then each bucket as its key's place, limit, period and what to
# take (0: only check that it is not empty).  A decision takes from its
# buckets only when all admit it.
#
# Returns 0 when every decision admitted, else one status line (which the
# client reads without a second pass, unlike a bulk string) with a word per
# decision: 0 when admitted, or the refusing bucket's place in the decision
# (from 1) and its level, as "place:level".
BATCH_SCRIPT = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = {}
for x in string.gmatch(ARGV[1], '%S+') do v[#v + 1] = tonumber(x) end
local held, limits, pers, written = {}, {}, {}, {}
local function level(k, limit, per)
  local l = held[k]
  if l == nil then
    local stored = redis.call('HMGET', KEYS[k], 'l', 't')
    if stored[1] then
      l = tonumber(stored[1]) + math.max(0, now - tonumber(stored[2])) * limit / per
    else
      l = limit
    end
  end
  return math.min(limit, l)
end
local function set(k, value, limit, per)
  if not limits[k] then written[#written + 1] = k end
  held[k], limits[k], pers[k] = value, limit, per
end
local p = 3
for c = 1, v[1] do
  local k, limit, per = v[p], v[p + 1], v[p + 2]
  set(k, level(k, limit, per) - v[p + 3], limit, per)
  p = p + 4
end
local refused = nil
for d = 1, v[2] do
  local n = v[p]
  p = p + 1
  local levels = {}
  for i = 1, n do
    local q = p + 4 * (i - 1)
    local l = level(v[q], v[q + 1], v[q + 2])
    if l <= 0 or l < v[q + 3] then
      refused = refused or {}
      refused[d] = i .. ':' .. string.format('%.17g', l)
      break
    end
    levels[i] = l
  end
  if not (refused and refused[d]) then
    for i = 1, n do
      local q = p + 4 * (i - 1)
      if v[q + 3] > 0 then set(v[q], levels[i] - v[q + 3], v[q + 1], v[q + 2]) end
    end
  end
  p = p + 4 * n
end
for _, k in ipairs(written) do
  local value, limit, per = held[k], limits[k], pers[k]
  redis.call('HSET', KEYS[k], 'l', string.format('%.17g', value), 't', now)
  redis.call('PEXPIRE', KEYS[k], math.ceil((limit - value) * per / limit) + MARGIN)
end
if not refused then return 0 end
local words = {}
for d = 1, v[2] do words[d] = refused[d] or '0' end
return {ok = table.concat(words, ' ')}
""".replace("MARGIN", str(EXPIRY_MARGIN_MS))

# The most decisions one call carries (a script blocks Redis while it runs).
BATCH_MOST = 128


class _Script:
    """
    A script, by its text and its SHA-1 (what EVALSHA sends).
    """

    def __init__(self, text: str) -> None:
        self.text = text.encode("utf-8")
        self.sha = hashlib.sha1(self.text).hexdigest().encode("ascii")


_BATCH = _Script(BATCH_SCRIPT)


# Decisions waiting for their call: the checks, and what fires with the
# verdict.
_Decisions = list[tuple[Sequence[Check], Deferred[Verdict]]]


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
        # The calls just made, whose deadline is yet to start.
        self._sent: list[Deferred[Any]] = []
        # The decisions asked for in this turn, sent together.
        self._decisions: _Decisions = []
        # The next turn's work (L{_nextTurn}), once arranged.
        self._turn: Any = None
        # The deadlines running, oldest first.
        self._timers: collections.deque[Any] = collections.deque()
        self._factory: Any = None
        # What waits for the first connection since start; L{None} once
        # there was one (or before start).
        self._starting: list[tuple[Callable[[], None], Deferred[Any]]] | None = None
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
            for send, _ in waiting:
                send()

        factory.deferred.addBoth(connected)

    def stop(self) -> Deferred[None]:
        if self._charges or self._decisions:
            # What this turn asked for goes out before the connection closes
            # (and fails with it, unless answered first).
            self._send()
        self._sent = []
        if self._turn is not None:
            self._turn.cancel()
            self._turn = None
        factory, self._factory = self._factory, None
        # Calls that waited for a first connection give up as unavailable.
        waiting, self._starting = self._starting or [], None
        for _, d in waiting:
            if not d.called:
                d.cancel()
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
        self._sent.append(d)
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
        self._starting.append((send, waiting))
        return waiting

    def _soon(self) -> None:
        """
        Arrange for what this turn of the reactor asked for to be sent at
        the next.
        """
        if self._turn is None:
            self._turn = self.reactor.callLater(0, self._nextTurn)

    def _nextTurn(self) -> None:
        """
        Send what the last turn asked for, and start the deadline of its
        calls: they are written out in this turn, and the rest of the last
        was the gateway's own work (a burst of requests read at once), not
        Redis's.  The calls of a turn share one timer.
        """
        self._turn = None
        self._send()
        sent, self._sent = self._sent, []
        if sent:
            self._timer(self.config.timeout, self._late, sent)

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
        # Only this store's callbacks are on these: cancelling one that has
        # its answer does nothing, and one that waits for the EVAL after a
        # NOSCRIPT cancels that.
        for d in sent:
            d.cancel()

    def decide(self, checks: Sequence[Check], now: float) -> Verdict | Deferred[Verdict]:
        """
        Decide in Redis with the other decisions (and charges) of this turn
        of the reactor, in one script call sent at the next.
        """
        if self._starting is None and self._connection() is None:
            return self._fallback(Failure(_Fallback("unavailable")))
        d: Deferred[Verdict] = Deferred()
        self._decisions.append((checks, d))
        self._soon()
        return d

    def _fallback(self, failure: Failure) -> Verdict:
        reason, detail = _reason(failure)
        self._problem(reason, detail)
        self.onFallback(reason)
        return UNAVAILABLE if self.deny else None

    def charge(self, buckets: Sequence[tuple[str, Bucket]], amount: float, now: float) -> None:
        """
        Charge C{amount} to each bucket with the other charges (and
        decisions) of this turn of the reactor, in one script call sent at
        the next.
        """
        charges = self._charges
        self._soon()
        for name, bucket in buckets:
            key = self._key(name)
            found = charges.get(key)
            if found is None:
                charges[key] = [bucket, amount]
            else:
                found[1] += amount

    def _send(self) -> None:
        """
        Send the charges and decisions made since the last call, in calls
        of at most C{BATCH_MOST} decisions.
        """
        charges, self._charges = self._charges, {}
        decisions, self._decisions = self._decisions, []
        while charges or decisions:
            self._sendBatch(charges, decisions[:BATCH_MOST])
            charges, decisions = {}, decisions[BATCH_MOST:]

    def _sendBatch(self, charges: dict[bytes, list], decisions: _Decisions) -> None:
        """
        Send one call: C{charges}, then C{decisions}, whose L{Deferred}s
        fire with the verdicts.
        """
        keys: list[bytes] = []
        places: dict[bytes, bytes] = {}
        numbers = [b"%d" % len(charges), b"%d" % len(decisions)]
        total = 0.0
        for key, (bucket, amount) in charges.items():
            keys.append(key)
            places[key] = b"%d" % len(keys)
            numbers += (places[key], self._bucket(bucket), _number(amount))
            total += amount
        keyOf = self._key
        # The buckets of a route's limits recur in every decision of the
        # call: found by identity (they are alive while the call is built).
        seen: dict[int, bytes] = {}
        for checks, _ in decisions:
            numbers.append(_COUNT.get(len(checks)) or b"%d" % len(checks))
            for name, bucket, take in checks:
                key = keyOf(name)
                place = places.get(key)
                if place is None:
                    keys.append(key)
                    place = places[key] = b"%d" % len(keys)
                numbers.append(place)
                parameters = seen.get(id(bucket))
                if parameters is None:
                    parameters = seen[id(bucket)] = self._bucket(bucket)
                numbers.append(parameters)
                numbers.append(_TAKE.get(take) or _number(take))
        try:
            d = self._call(_BATCH, (b"%d" % len(keys), *keys, b" ".join(numbers)))
        except _Fallback as e:
            d = fail(e)
        d.addCallbacks(self._answered, self._failed, callbackArgs=(decisions,), errbackArgs=(decisions, total))

    def _answered(self, reply: Any, decisions: _Decisions) -> None:
        if reply == 0:
            for _, d in decisions:
                d.callback(None)
            return
        for word, (_, d) in zip(reply.split(" "), decisions):
            if word == "0":
                d.callback(None)
            else:
                place, level = word.split(":")
                d.callback(Refused(int(place) - 1, float(level)))

    def _failed(self, failure: Failure, decisions: _Decisions,
                charged: float) -> None:
        reason, detail = _reason(failure)
        if charged:
            self._problem(reason, detail, f"{charged:g} tokens not charged")
            self.onFallback(reason)
        verdict = UNAVAILABLE if self.deny else None
        for _, d in decisions:
            self._problem(reason, detail)
            self.onFallback(reason)
            d.callback(verdict)

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
