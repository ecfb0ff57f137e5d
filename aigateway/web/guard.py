"""
The JWT guard: a transparent resource in front of a route's chain.

It finds the caller's token (a header, a query parameter or a cookie, as the
policy says), verifies it with the route's L{Verifier}, and then either
answers 401 itself or hands the request to the protected resource with what
it learned, an L{Identity}, as the request's L{IIdentity} component.  It
consumes no path segment.  In every case the token is kept from the
provider.
"""

from __future__ import annotations

import json
import re
from typing import Mapping
from urllib.parse import unquote_plus

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from zope.interface import Interface

from aigateway.auth.jwt import JWTError, VerifiedToken, Verifier
from aigateway.config import JWTPolicy, TokenSource
from aigateway.observe.record import IExchange
from aigateway.observe.report import Exchange
from aigateway.web.errors import refuse
from aigateway.web.routes import renderChild

__all__ = ["AmbiguousToken", "IIdentity", "Identity", "JWTGuard", "TokenLocation", "claimHeaders"]

_REALM = b'Bearer realm="aigateway"'
# Query parameters are split on both separators some servers know: a
# parameter that the gateway reads as part of another one's value must not
# become a token of its own upstream.
_QUERY_SEPARATOR = re.compile(rb"[&;]")


def _parameterName(part: bytes) -> str:
    return unquote_plus(part.partition(b"=")[0].decode("latin-1"), encoding="latin-1")


class AmbiguousToken(JWTError):
    """
    The request carries its token more than once, with different values.
    """

    def __init__(self) -> None:
        super().__init__("malformed token")


@attrs.frozen
class TokenLocation:
    """
    Where the policy reads tokens from, with what the upstream request must
    lose so that no token reaches the provider.

    @ivar dropHeaders: request headers removed before the upstream call: the
        token's header and every header that C{claimsToHeaders} writes, so a
        caller cannot forge them.
    """

    source: TokenSource
    dropHeaders: frozenset[bytes]
    _header: bytes | None = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        header = self.source.header.encode("ascii") if self.source.header is not None else None
        object.__setattr__(self, "_header", header)

    def find(self, request: IRequest) -> str | None:
        """
        The token the request carries, or L{None}.

        @raise AmbiguousToken: when it carries two different ones in the
            place it is read from.
        """
        source = self.source
        if self._header is not None:
            raw = request.requestHeaders.getRawHeaders(self._header)
            if raw:
                if len(set(raw)) > 1:
                    raise AmbiguousToken()
                # Latin-1 never fails: a token with other bytes is then
                # refused as malformed by the verifier, not a 500 here.
                value = raw[-1].decode("latin-1")
                prefix = source.prefix
                if not prefix:
                    return value.strip()
                if value[: len(prefix)].lower() == prefix.lower():
                    return value[len(prefix):].strip()
        if source.queryParam is not None and b"?" in request.uri:
            found = {
                unquote_plus(part.partition(b"=")[2].decode("latin-1"), encoding="latin-1")
                for part in _QUERY_SEPARATOR.split(request.uri.partition(b"?")[2])
                if _parameterName(part) == source.queryParam
            }
            if len(found) > 1:
                raise AmbiguousToken()
            if found:
                return found.pop()
        if source.cookie is not None:
            cookie = request.getCookie(source.cookie.encode("latin-1"))
            if cookie is not None:
                return cookie.decode("latin-1")
        return None

    def upstreamQuery(self, query: bytes) -> bytes:
        """
        C{query} without the token's parameter, however it is spelled
        (C{%61ccess_token} too); the other parameters go as they came,
        joined by C{&}.
        """
        name = self.source.queryParam
        if name is None or not query:
            return query
        return b"&".join(
            part for part in _QUERY_SEPARATOR.split(query)
            if part and _parameterName(part) != name
        )

    def upstreamCookie(self, cookie: bytes) -> bytes | None:
        """
        A C{Cookie} header value without the token's cookie.
        """
        if self.source.cookie is None:
            return cookie
        name = self.source.cookie.encode("latin-1")
        kept = [
            part.strip()
            for part in cookie.split(b";")
            if part.strip() and part.strip().partition(b"=")[0] != name
        ]
        return b"; ".join(kept) or None


@attrs.frozen
class Identity:
    """
    What authentication learned about the caller.

    @ivar token: the verified token, or L{None} for an anonymous caller
        (a missing token under C{optional}, anything under C{permissive}).
    @ivar addHeaders: headers to send upstream, from C{claimsToHeaders}.
    """

    location: TokenLocation
    token: VerifiedToken | None = None
    addHeaders: tuple[tuple[bytes, bytes], ...] = ()

    @property
    def subject(self) -> str | None:
        return self.token.subject if self.token is not None else None


def _claim(claims: Mapping[str, object], path: str) -> object:
    value: object = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def claimHeaders(
    claims: Mapping[str, object], mapping: tuple[tuple[str, str], ...]
) -> tuple[tuple[bytes, bytes], ...]:
    """
    The upstream headers C{claimsToHeaders} asks for: nested claims by
    dotted path, strings as they are, anything else as JSON.  Claims that
    are absent or cannot be sent as a header value are left out.
    """
    headers = []
    for path, header in mapping:
        value = _claim(claims, path)
        if value is None:
            continue
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        try:
            encoded = text.encode("ascii")
        except UnicodeEncodeError:
            encoded = json.dumps(text).encode("ascii")
        if any(b < 0x20 or b == 0x7F for b in encoded):
            continue
        headers.append((header.encode("ascii"), encoded))
    return tuple(headers)


class IIdentity(Interface):
    """
    What the JWT guard learned about the caller, as a request component
    (an L{Identity}).
    """


class JWTGuard(Resource):
    """
    Authenticates on the request's head, then hands the request to the
    protected resource with what it learned as the request's L{IIdentity}
    component; or answers 401 itself (403 when the policy's
    C{failureStatus} says so).  Either carries the C{WWW-Authenticate:
    Bearer} challenge: RFC 6750 asks it of a 401, and RFC 7235 (4.1) lets
    any response carry it when other credentials would change the answer,
    as they would here.

    @ivar protected: the resource that serves an authenticated (or, where
        the mode allows, anonymous) caller.
    """

    isLeaf = True

    def __init__(
        self,
        policy: JWTPolicy,
        verifier: Verifier,
        protected: IResource,
        clock: IReactorTime,
    ) -> None:
        super().__init__()
        self.mode = policy.mode
        self.failureStatus = policy.failureStatus
        self.verifier = verifier
        self.protected = protected
        self.clock = clock
        self._claimsToHeaders = {p.name: p.claimsToHeaders for p in policy.providers}
        drop = {h.encode("ascii") for p in policy.providers for _, h in p.claimsToHeaders}
        if policy.tokenFrom.header is not None:
            drop.add(policy.tokenFrom.header.encode("ascii"))
        self.location = TokenLocation(policy.tokenFrom, frozenset(drop))
        self._anonymous = Identity(self.location)

    def render(self, request: IRequest) -> bytes | int:
        exchange = request.getComponent(IExchange)
        try:
            token = self.location.find(request)
        except AmbiguousToken as e:
            if self.mode == "permissive":
                return self._pass(request, self._anonymous)
            return self._refuse(request, exchange, e)
        if token is None:
            if self.mode == "strict":
                exchange.authFailure = "no bearer token found"
                return refuse(
                    request,
                    self.failureStatus,
                    "authentication failure: no bearer token found",
                    "missing_token",
                    [(b"www-authenticate", _REALM)],
                )
            return self._pass(request, self._anonymous)
        try:
            verified = self.verifier.verify(token, self.clock.seconds())
        except JWTError as e:
            if self.mode == "permissive":
                return self._pass(request, self._anonymous)
            return self._refuse(request, exchange, e)
        exchange.subject = verified.subject
        identity = Identity(
            self.location,
            verified,
            claimHeaders(verified.claims, self._claimsToHeaders.get(verified.provider, ())),
        )
        return self._pass(request, identity)

    def _pass(self, request: IRequest, identity: Identity) -> bytes | int:
        request.setComponent(IIdentity, identity)
        return renderChild(self.protected, request)

    def _refuse(self, request: IRequest, exchange: Exchange, e: JWTError) -> bytes:
        exchange.authFailure = e.reason
        description = e.reason.replace('"', "'").encode("ascii", "replace")
        return refuse(
            request,
            self.failureStatus,
            f"authentication failure: {e.reason}",
            "invalid_token",
            [(b"www-authenticate",
              _REALM + b', error="invalid_token", error_description="' + description + b'"')],
        )
