"""
Who may call which model, and how much: claim-based authorization rules
and rate limits, as CEL expressions compiled once per configuration load.

They run after the request body is read, so a rule can name the model the
caller asked for (C{llm.requestModel}), which a gateway that decides before
reading the body cannot do.

Variables an expression sees:
  - C{jwt}: the verified claims (empty when there is no token);
  - C{request}: C{method}, C{path}, C{headers} (lowercase names);
  - C{llm}: C{requestModel}, C{stream}, C{provider};
  - C{route}: C{name}.

A rule that cannot be evaluated (a missing claim, a wrong type) is false,
never an error page.
"""

from __future__ import annotations

import collections
import math
import re
from typing import Any, Callable, Mapping, Sequence

import attrs
import cel
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import Interface

from aigateway.llm.provider import ProviderError, UpstreamCall, clientModel
from aigateway.observe.record import IExchange
from aigateway.web.errors import finishWith, refuse
from aigateway.web.guard import IIdentity
from aigateway.web.routes import renderChild
from aigateway.web.site import BodyTooLarge, requestBody
from aigateway.state.memory import UNAVAILABLE, BucketStore, Check, Refused

from aigateway.config import Bucket

__all__ = [
    "Admission",
    "IAdmission",
    "PolicyResource",
    "Bucket",
    "Expression",
    "ExpressionError",
    "Limit",
    "Refusal",
    "Rule",
    "RoutePolicy",
    "Variables",
    "compileExpression",
]

VARIABLES = frozenset(["jwt", "request", "llm", "route"])


class ExpressionError(ValueError):
    """
    An expression that does not compile, in one line.
    """


_PATH = re.compile(r"[a-z]+(\.[A-Za-z_][A-Za-z0-9_]*)+")


@attrs.frozen(eq=False)
class Expression:
    """
    A compiled CEL expression and the variables it reads.

    @ivar path: for an expression that only names a field (C{jwt.sub}, the
        usual rate limit key), the field's path, looked up directly.
    """

    source: str
    program: Any = attrs.field(repr=False)
    variables: frozenset[str]
    path: tuple[str, ...] | None = None

    def evaluate(self, variables: "Variables") -> object:
        """
        Evaluate with the variables it reads.

        @return: the value, or L{None} when evaluation failed.
        """
        if self.path is not None:
            value: object = variables[self.path[0]]
            for name in self.path[1:]:
                if not isinstance(value, Mapping):
                    return None
                value = value.get(name)
            return value
        try:
            return self.program.execute(variables.context())
        except Exception:
            return None


class Variables(dict):
    """
    The variables of one request, each built the first time it is read,
    and converted for CEL once for all the expressions of the request.

    @ivar needed: the variables the CEL expressions read.
    @ivar claims: the token's claims object, if any.
    @ivar key: with C{claims}, everything the variables are made of, when
        that is few enough values to remember decisions by; else L{None}.
    """

    def __init__(self, builders: Mapping[str, Callable[[], object]],
                 needed: frozenset[str] = VARIABLES, claimsContext: Callable[[], Any] | None = None,
                 claims: Mapping[str, Any] | None = None, key: tuple | None = None) -> None:
        super().__init__()
        self.builders = builders
        self.needed = needed
        self.claimsContext = claimsContext
        self.claims = claims
        self.key = key
        self._context: Any = None

    def __missing__(self, name: str) -> object:
        value = self[name] = self.builders[name]()
        return value

    def context(self) -> Any:
        if self._context is None:
            if self.claimsContext is None:
                self._context = cel.Context({name: self[name] for name in self.needed})
            else:
                # A context that already holds this token's claims: only
                # this request's own variables are converted.
                context = self.claimsContext()
                context.update({name: self[name] for name in self.needed if name != "jwt"})
                self._context = context
        return self._context


def compileExpression(source: str) -> Expression:
    """
    Compile a CEL expression.

    @raise ExpressionError: for a syntax error or an unknown variable.
    """
    try:
        program = cel.compile(source)
    except (ValueError, RuntimeError) as e:
        found = re.search(r"<input>:(\d+):(\d+): ([^\n]*)", str(e))
        detail = (
            f" (line {found.group(1)}, column {found.group(2)}): {found.group(3)}" if found else ""
        )
        raise ExpressionError(f"not a valid CEL expression{detail}") from None
    names = frozenset(program.variables())
    unknown = names - VARIABLES
    if unknown:
        raise ExpressionError(
            f"unknown variable {sorted(unknown)[0]!r} (known: {', '.join(sorted(VARIABLES))})"
        )
    path = tuple(source.strip().split(".")) if _PATH.fullmatch(source.strip()) else None
    return Expression(source, program, names, path)


@attrs.frozen
class Rule:
    """
    One authorization rule: C{allow}, C{deny} or C{require}.
    """

    kind: str
    expression: Expression
    where: str


@attrs.frozen
class Limit:
    """
    A rate limit: requests and/or tokens per window, one bucket per value
    of C{key}.
    """

    key: Expression | None
    requests: Bucket | None
    tokens: Bucket | None
    where: str


@attrs.frozen
class Refusal:
    """
    Why a request may not go on, and how to answer.
    """

    status: int
    message: str
    code: str
    headers: tuple[tuple[bytes, bytes], ...] = ()


def _seconds(value: float) -> bytes:
    return b"%d" % max(1, math.ceil(value))


class _PerClaims:
    """
    Values made for a token's claims object (and a key beside it), the
    most recently used kept: the verified-token cache hands out the same
    claims object for as long as it keeps the token, and an entry only
    ever answers for the very object it was made for.
    """

    def __init__(self) -> None:
        self._entries: collections.OrderedDict[tuple, tuple[Mapping[str, Any] | None, Any]] = (
            collections.OrderedDict()
        )

    def get(self, claims: Mapping[str, Any] | None, key: tuple, make: Callable[[], Any], keep: int) -> Any:
        """
        The value for C{claims} and C{key}, made by C{make} the first time;
        at most C{keep} are kept.
        """
        entries = self._entries
        entryKey = (id(claims),) + key
        found = entries.get(entryKey)
        if found is not None and found[0] is claims:
            entries.move_to_end(entryKey)
            return found[1]
        value = make()
        entries[entryKey] = (claims, value)
        if len(entries) > keep:
            entries.popitem(last=False)
        return value


# What the limits decided: a refusal or L{None}, and the charge of the
# tokens the answer used.
Admitted = tuple[Refusal | None, Callable[..., None] | None]


class RoutePolicy:
    """
    A route's authorization rules and rate limits, built once per load.

    @cvar decisionsKept: how many authorization decisions are remembered.
    """

    decisionsKept = 4096

    def __init__(
        self,
        routeName: str,
        rules: Sequence[Rule],
        limits: Sequence[Limit],
        store: BucketStore,
    ) -> None:
        self.routeName = routeName
        self.rules = tuple(rules)
        self.allows = tuple(r for r in rules if r.kind == "allow")
        self.limits = tuple(limits)
        self.store = store
        expressions = [r.expression for r in self.rules] + [l.key for l in self.limits if l.key]
        self.needed = frozenset().union(*(e.variables for e in expressions if e.path is None))
        # Reading every header into the request variable is the dearest part
        # of it; only an expression that mentions headers gets them.
        self.readsHeaders = any("headers" in e.source for e in expressions)
        self.readsModel = any("requestModel" in e.source for e in expressions)
        self._claimContexts = _PerClaims()
        self._decisions = _PerClaims()

    def variables(
        self, claims: Mapping[str, Any] | None, method: str, path: str,
        headers: Callable[[], dict[str, str]], requestModel: str | None, stream: bool,
        provider: str,
    ) -> Variables:
        """
        The variables expressions may read, each built only if read.
        """
        # Headers are too many and too varied to remember decisions by.
        key = None if self.readsHeaders else (method, path, requestModel, stream, provider)
        return Variables({
            "jwt": lambda: claims or {},
            "request": lambda: {"method": method, "path": path, "headers": headers() if self.readsHeaders else {}},
            "llm": lambda: {"requestModel": requestModel or "", "stream": stream, "provider": provider},
            "route": lambda: {"name": self.routeName},
        }, self.needed, (lambda: self._claimsContext(claims)) if claims and "jwt" in self.needed else None,
            claims, key)

    def _claimsContext(self, claims: Mapping[str, Any]) -> Any:
        """
        A CEL context holding C{claims} as C{jwt}, made once per token: the
        verified-token cache hands out the same claims object for as long
        as it keeps the token, and converting them was a third of the cost
        of the rules.  Requests are evaluated one at a time on the reactor,
        so each sets its own variables in the shared context before use.
        """
        return self._claimContexts.get(claims, (), lambda: cel.Context({"jwt": claims}), 1024)

    def unknownModel(self) -> Refusal | None:
        """
        The refusal for a request whose model the gateway cannot read (a
        body it does not parse): a rule or limit that reads
        C{llm.requestModel} cannot judge it, so it fails closed.
        """
        if not self.readsModel:
            return None
        return Refusal(403, "authorization failed: a rule reads llm.requestModel, and this "
                       "request's model cannot be read", "authorization_failed")

    def authorize(self, variables: Variables) -> Refusal | None:
        """
        Apply the rules: any deny that matches, or any require that does
        not hold, refuses; so does having allow rules of which none matches.

        Rules are pure functions of the variables, so the decision for a
        token's claims object (the verified-token cache hands out the same
        one for as long as it keeps the token) and the same request values
        is remembered, for the C{decisionsKept} most recently used.
        """
        if variables.key is None or not self.rules:
            return self._authorize(variables)
        return self._decisions.get(variables.claims, variables.key, lambda: self._authorize(variables),
                                   self.decisionsKept)

    def _authorize(self, variables: Variables) -> Refusal | None:
        for rule in self.rules:
            if rule.kind == "allow":
                continue
            holds = rule.expression.evaluate(variables) is True
            if rule.kind == "deny" and holds:
                return Refusal(403, f"authorization failed: {rule.where} (deny) matched", "authorization_failed")
            if rule.kind == "require" and not holds:
                return Refusal(403, f"authorization failed: {rule.where} (require) does not hold",
                               "authorization_failed")
        if self.allows and not any(r.expression.evaluate(variables) is True for r in self.allows):
            return Refusal(403, "authorization failed: no allow rule matched", "authorization_failed")
        return None

    def _name(self, index: int, limit: Limit, kind: str, variables: Variables) -> str:
        value = limit.key.evaluate(variables) if limit.key is not None else ""
        text = "" if value is None else str(value)
        return f"{self.routeName}\x00{index}\x00{kind}\x00{text}"

    def admit(self, variables: Variables, now: float) -> Admitted | Deferred[Admitted]:
        """
        Check every limit; take one request from each request bucket only
        when all of them admit the request (token buckets must not be
        empty; their tokens are charged after the answer).

        @return: a refusal or L{None}, and a function to charge the tokens
            the answer used; or, from a store across the network, a
            L{Deferred} that fires with them.
        """
        checks: list[Check] = []
        limits: list[tuple[Bucket, str]] = []
        tokenBuckets: list[tuple[str, Bucket]] = []
        for index, limit in enumerate(self.limits):
            if limit.requests is not None:
                checks.append((self._name(index, limit, "requests", variables), limit.requests, 1))
                limits.append((limit.requests, "requests"))
            if limit.tokens is not None:
                name = self._name(index, limit, "tokens", variables)
                checks.append((name, limit.tokens, 0))
                limits.append((limit.tokens, "tokens"))
                tokenBuckets.append((name, limit.tokens))
        if not checks:
            return None, None
        store = self.store

        def charge(tokens: int, at: float | None = None) -> None:
            store.charge(tokenBuckets, tokens, now if at is None else at)

        def decided(verdict: Refused | None) -> Admitted:
            if verdict is None:
                return None, charge if tokenBuckets else None
            if verdict is UNAVAILABLE:
                return _UNDECIDED, _nothing
            bucket, what = limits[verdict.index]
            return self._tooMany(bucket, verdict.level, 1, what), _nothing

        verdict = store.decide(checks, now)
        if isinstance(verdict, Deferred):
            return verdict.addCallback(decided)
        return decided(verdict)

    def _tooMany(self, bucket: Bucket, level: float, need: float, what: str) -> Refusal:
        wait = (need - level) / bucket.rate
        return Refusal(
            429,
            f"rate limit exceeded: {bucket.limit:g} {what} per {bucket.per:g}s",
            "rate_limit_exceeded",
            (
                (b"retry-after", _seconds(wait)),
                (b"x-ratelimit-limit", b"%d" % bucket.limit),
                (b"x-ratelimit-remaining", b"%d" % max(0, math.floor(level))),
                (b"x-ratelimit-reset", _seconds((bucket.limit - level) / bucket.rate)),
            ),
        )


def _nothing(tokens: int, at: float | None = None) -> None:
    pass


# A request the limits could not judge (their store did not answer), under
# state.onError: deny.
_UNDECIDED = Refusal(503, "rate limits cannot be checked right now (state.onError: deny)",
                     "rate_limit_unavailable", ((b"retry-after", b"1"),))


log = Logger()


class IAdmission(Interface):
    """
    What the policy admitted, as a request component (an L{Admission}).
    """


# Made for every request admitted and changed by nothing: plain rather
# than frozen, which costs a call per field.
@attrs.define(eq=False)
class Admission:
    """
    A request the policy let through, as it is to go upstream.

    @ivar call: the upstream call, judged as it will be sent.
    @ivar identity: what the JWT guard learned, or L{None} on a route
        without one.
    @ivar charge: takes the tokens the answer used from the route's token
        buckets, or L{None} when the route has none.
    @ivar plan: the targets to try, in order, each with its health; C{call}
        is for the first.
    @ivar reading: what C{prepare} was given, for the calls of the next
        targets.
    """

    call: UpstreamCall
    identity: Any = None
    charge: Callable[[int, float], None] | None = None
    plan: list = attrs.Factory(list)
    reading: tuple = ()


RETRIES_FIELD = b"x-aigateway-retries"


def _narrowed(request: IRequest) -> int | None:
    """
    The retries a client allows with C{x-aigateway-retries} (it can only
    narrow the route's), or L{None}.
    """
    values = request.requestHeaders.getRawHeaders(RETRIES_FIELD)
    if not values:
        return None
    value = values[-1].strip()
    return int(value) if value.isdigit() and len(value) < 4 else None


class PolicyResource(Resource):
    """
    The stage that judges a request: it reads the body (up to the route's
    limit), has the provider prepare the upstream call (so that what is
    judged is what is sent), applies the route's authorization rules and
    rate limits, and hands what it admitted to the relay as the request's
    L{IAdmission}.

    @ivar relay: the resource that sends an admitted request upstream.
    @ivar guarded: whether a JWT guard stands before this stage and so has
        given the request an L{IIdentity}.
    """

    isLeaf = True

    def __init__(self, routeName: str, maxRequestBody: int, prefix: str | None,
                 policy: RoutePolicy | None, relay: Any,
                 clock: IReactorTime, guarded: bool = False) -> None:
        super().__init__()
        self.guarded = guarded
        self.routeName = routeName
        self.maxRequestBody = maxRequestBody
        self.policy = policy
        self.relay = relay
        self.clock = clock
        self._prefixLength = len(prefix.rstrip("/").encode("utf-8")) if prefix else None

    def render(self, request: IRequest) -> bytes | int:
        exchange = request.getComponent(IExchange)
        exchange.provider = self.relay.provider.name
        problem = self.relay.unavailable()
        if problem is not None:
            return refuse(request, 503, problem, "backend_credential_missing")
        requestBody(request, self.maxRequestBody).addBoth(self._read, request)
        return NOT_DONE_YET

    def _read(self, result: bytes | Failure, request: IRequest) -> None:
        """
        The body is in, or cannot be read: judge the request, or answer.
        """
        try:
            if isinstance(result, Failure):
                self._noBody(result, request)
            else:
                self._judge(result, request)
        except Exception:
            self._bug(Failure(), request)

    def _noBody(self, failure: Failure, request: IRequest) -> None:
        """
        The body is over the route's limit, or the client left while sending
        it (and so has nobody to answer).
        """
        if failure.check(BodyTooLarge) and request.channel is not None:
            error = failure.value
            request.getComponent(IExchange).bytesIn = error.size
            finishWith(request, refuse(request, 413, error.message, "request_too_large"))

    def _bug(self, failure: Failure, request: IRequest) -> None:
        log.error("unexpected {error} on route {route} before relaying",
                  error=failure.type.__name__, route=self.routeName)
        if not request.finished and request.channel is not None:
            finishWith(request, refuse(request, 502, "the gateway failed to relay this request",
                                       "gateway_error"))

    def _judge(self, body: bytes, request: IRequest) -> None:
        """
        The whole body is in: prepare the upstream call and judge it.
        """
        exchange = request.getComponent(IExchange)
        exchange.bytesIn = len(body)
        identity = request.getComponent(IIdentity) if self.guarded else None
        path = request.path
        remainder = path[self._prefixLength:] if self._prefixLength is not None else b""
        query = request.uri.partition(b"?")[2]
        if identity is not None:
            query = identity.location.upstreamQuery(query)
        reading = (request.method, remainder, query, body, self.clock.seconds())
        try:
            plan = self.relay.plan(
                clientModel(request.method, remainder, body) if self.relay.planner.byModel else None,
                _narrowed(request))
            if not plan:
                model = clientModel(request.method, remainder, body)
                raise ProviderError(404, f"route {self.routeName} serves no model {model!r}"
                                    if model else f"route {self.routeName} serves no request "
                                    "without a model", "model_not_found")
            provider = plan[0][0].provider
            call = provider.prepare(*reading)
        except ProviderError as e:
            finishWith(request, refuse(request, e.status, e.message, e.code, e.headers))
            return
        exchange.provider = provider.name
        if self.policy is None:
            self._relay(request, Admission(call, identity, None, plan, reading))
            return
        token = identity.token if identity is not None else None
        decided = self._admit(request, token.claims if token is not None else None, call, provider.kind)
        if isinstance(decided, Deferred):
            decided.addCallback(self._decided, request, call, identity, plan, reading)
            decided.addErrback(self._bug, request)
        else:
            self._decided(decided, request, call, identity, plan, reading)

    def _decided(self, decided: Admitted, request: IRequest, call: UpstreamCall, identity: Any,
                 plan: list, reading: tuple) -> None:
        """
        The rules and limits have judged: refuse, or relay.
        """
        if request.finished or request.channel is None:
            # The client left while the limits' store answered.
            return
        refusal, charge = decided
        if refusal is not None:
            if refusal.status == 403:
                request.getComponent(IExchange).authFailure = "authorization failed"
            finishWith(request, refuse(request, refusal.status, refusal.message, refusal.code,
                                       refusal.headers))
            return
        self._relay(request, Admission(call, identity, charge, plan, reading))

    def _relay(self, request: IRequest, admission: Admission) -> None:
        request.setComponent(IAdmission, admission)
        finishWith(request, renderChild(self.relay, request))

    def _admit(
        self, request: IRequest, claims: Mapping[str, Any] | None, call: UpstreamCall, kind: str
    ) -> Admitted | Deferred[Admitted]:
        """
        The route's authorization rules, then its rate limits.
        """
        policy = self.policy
        assert policy is not None
        if call.modelUnknown:
            refusal = policy.unknownModel()
            if refusal is not None:
                return refusal, _nothing

        def headers() -> dict[str, str]:
            return {
                name.decode("latin-1").lower(): b", ".join(values).decode("latin-1")
                for name, values in request.requestHeaders.getAllRawHeaders()
            }

        variables = policy.variables(
            claims,
            request.method.decode("latin-1"),
            request.path.decode("latin-1"),
            headers,
            call.requestModel,
            call.stream,
            kind,
        )
        refusal = policy.authorize(variables)
        if refusal is not None:
            return refusal, _nothing
        return policy.admit(variables, self.clock.seconds())
