"""
JWT verification: strict parsing, key selection, signature and claims.

Everything here is pure: no reactor, no I/O, and the time is an argument.
The strict parts are ours (python-jose is lenient on its own): the token's
shape and encoding are checked before any cryptography, keys are chosen by
the gateway (never by C{jku}, C{x5u}, C{jwk} or C{x5c} in the token), and
each algorithm is bound to the kind of key that may verify it.

A token without C{kid} is tried against every configured key that fits its
C{alg}; a token with C{kid} only against keys with that C{kid} (or without
any).  That is the point where the lab's peer gateway fails.

The reasons a token is refused, as L{JWTError.reason} says them:
C{malformed token}, C{token too large}, C{unsupported critical header},
C{algorithm not allowed}, C{algorithm not supported}, C{unknown issuer},
C{no keys available}, C{no matching key}, C{signature verification failed},
C{token expired}, C{token not yet valid}, C{token issued in the future},
C{missing exp}, C{token lifetime too long}, C{audience not allowed},
C{invalid claim <name>}.
"""

from __future__ import annotations

import collections
import json
import math
from typing import Any, Callable, Mapping, Sequence

import attrs

from aigateway.keys import VerifyKey, b64urlDecode

__all__ = [
    "JWTError",
    "JWTProvider",
    "ParsedToken",
    "VerifiedToken",
    "Verifier",
    "parseToken",
    "verifySignature",
]

SUPPORTED = frozenset(["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "HS256", "HS384", "HS512"])
_ES_SIZES = {"ES256": 32, "ES384": 48, "ES512": 66}
_ES_ORDERS = {
    "ES256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "ES384": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
        16,
    ),
    "ES512": int(
        "01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
        16,
    ),
}
_MAX_TIME = 1e13


class JWTError(Exception):
    """
    A token that does not pass.

    @ivar reason: a short phrase that is safe to show to the caller.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.frozen
class ParsedToken:
    """
    A compact JWS whose shape and encoding passed, not yet its signature.
    """

    header: Mapping[str, Any]
    payload: bytes = attrs.field(repr=False)
    signingInput: bytes = attrs.field(repr=False)
    signature: bytes = attrs.field(repr=False)

    @property
    def alg(self) -> str:
        return self.header["alg"]

    @property
    def kid(self) -> str | None:
        return self.header.get("kid")


def _noDuplicates(pairs: list[tuple[str, Any]]) -> dict:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("duplicate member")
    return document


def _noConstants(name: str) -> Any:
    raise ValueError("not JSON")


def _object(data: bytes) -> dict:
    try:
        document = json.loads(
            data.decode("utf-8"), object_pairs_hook=_noDuplicates, parse_constant=_noConstants
        )
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise JWTError("malformed token") from None
    if not isinstance(document, dict):
        raise JWTError("malformed token")
    return document


def parseToken(token: str, maxBytes: int = 16384) -> ParsedToken:
    """
    Check a compact JWS token's shape and decode it; no cryptography yet.

    @raise JWTError: when the token is not exactly three canonical base64url
        segments (a JSON object header, a payload, a signature), or is too
        large, or has an algorithm or critical header that never passes.
    """
    if not isinstance(token, str):
        raise JWTError("malformed token")
    if len(token) > maxBytes:
        raise JWTError("token too large")
    if not token.isascii():
        raise JWTError("malformed token")
    parts = token.split(".")
    if len(parts) != 3:
        raise JWTError("malformed token")
    try:
        header = _object(b64urlDecode(parts[0]))
        payload = b64urlDecode(parts[1])
        signature = b64urlDecode(parts[2])
    except ValueError:
        raise JWTError("malformed token") from None
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise JWTError("malformed token")
    if alg.lower() == "none":
        raise JWTError("algorithm not allowed")
    if alg not in SUPPORTED:
        raise JWTError("algorithm not supported")
    if "crit" in header:
        raise JWTError("unsupported critical header")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JWTError("malformed token")
    signingInput = (parts[0] + "." + parts[1]).encode("ascii")
    return ParsedToken(header, payload, signingInput, signature)


def _kidMatches(keyKid: str | None, tokenKid: str) -> bool:
    if keyKid is None:
        return True
    return keyKid == tokenKid or keyKid == tokenKid.rstrip("=")


def _candidates(token: ParsedToken, keys: Sequence[VerifyKey]) -> list[VerifyKey]:
    alg = token.alg
    kid = token.kid
    return [
        key
        for key in keys
        if alg in key.algorithms
        and (key.alg is None or key.alg == alg)
        and (kid is None or _kidMatches(key.kid, kid))
    ]


def _signatureShapeOK(alg: str, signature: bytes) -> bool:
    size = _ES_SIZES.get(alg)
    if size is None:
        return bool(signature)
    if len(signature) != 2 * size:
        return False
    order = _ES_ORDERS[alg]
    r = int.from_bytes(signature[:size], "big")
    s = int.from_bytes(signature[size:], "big")
    return 0 < r < order and 0 < s < order


def verifySignature(token: ParsedToken, keys: Sequence[VerifyKey]) -> VerifyKey:
    """
    Find the key among C{keys} that signed C{token}.

    @return: the key that verified the signature.
    @raise JWTError: C{no matching key} when no key may verify this token,
        C{signature verification failed} when none of those that may did.
    """
    candidates = _candidates(token, keys)
    if not candidates:
        raise JWTError("no matching key")
    alg = token.alg
    if _signatureShapeOK(alg, token.signature):
        for key in candidates:
            if key.algorithms[alg].verify(token.signingInput, token.signature):
                return key
    raise JWTError("signature verification failed")


@attrs.frozen
class JWTProvider:
    """
    An issuer whose tokens the gateway accepts.

    @ivar keys: returns the current keys (a remote key set changes).
    @ivar onUnknownKid: called when a token names a kid no key has.
    """

    name: str
    issuer: str
    audiences: tuple[str, ...]
    keys: Callable[[], Sequence[VerifyKey]]
    clockSkew: float = 60.0
    requireExp: bool = False
    maxLifetime: float | None = None
    onUnknownKid: Callable[[], None] | None = None


@attrs.frozen
class VerifiedToken:
    """
    A token that passed: which provider accepted it and what it claims.
    """

    provider: str
    claims: Mapping[str, Any]
    subject: str | None
    expiresAt: float | None


def _time(claims: Mapping[str, Any], name: str) -> float | None:
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise JWTError(f"invalid claim {name}")
    if isinstance(value, int) and abs(value) >= _MAX_TIME:
        raise JWTError(f"invalid claim {name}")
    if not math.isfinite(value) or abs(value) >= _MAX_TIME:
        raise JWTError(f"invalid claim {name}")
    return float(value)


def checkClaims(claims: Mapping[str, Any], provider: JWTProvider, now: float) -> VerifiedToken:
    """
    Check the registered claims of a token C{provider} has verified.

    @raise JWTError: naming the claim that fails.
    """
    skew = provider.clockSkew
    exp = _time(claims, "exp")
    nbf = _time(claims, "nbf")
    iat = _time(claims, "iat")
    sub = claims.get("sub")
    if sub is not None and not isinstance(sub, str):
        raise JWTError("invalid claim sub")
    if exp is None and (provider.requireExp or provider.maxLifetime is not None):
        raise JWTError("missing exp")
    if exp is not None and exp <= now - skew:
        raise JWTError("token expired")
    if nbf is not None and nbf > now + skew:
        raise JWTError("token not yet valid")
    if iat is not None and iat > now + skew:
        raise JWTError("token issued in the future")
    if provider.maxLifetime is not None and exp is not None:
        if exp - (iat if iat is not None else now) > provider.maxLifetime:
            raise JWTError("token lifetime too long")
    if "aud" in claims:
        aud = claims["aud"]
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise JWTError("invalid claim aud")
    else:
        audiences = []
    if provider.audiences and not set(audiences) & set(provider.audiences):
        raise JWTError("audience not allowed")
    return VerifiedToken(provider.name, claims, sub, exp)


class Verifier:
    """
    Verifies tokens for a set of providers, remembering the tokens that
    passed (keyed by the token, until their C{exp}) so a repeat costs no
    signature check.  Failures are not remembered: they are cheap to
    reach again and must never hide a key that arrived since.
    """

    def __init__(
        self,
        providers: Sequence[JWTProvider],
        cacheSize: int = 10000,
        maxTokenBytes: int = 16384,
    ) -> None:
        self.byIssuer: dict[str, list[JWTProvider]] = {}
        for provider in providers:
            self.byIssuer.setdefault(provider.issuer, []).append(provider)
        self.cacheSize = cacheSize
        self.maxTokenBytes = maxTokenBytes
        # token -> (what it verified to, the time after which it is expired)
        self._cache: collections.OrderedDict[str, tuple[VerifiedToken, float]] = (
            collections.OrderedDict()
        )

    def verify(self, token: str, now: float) -> VerifiedToken:
        """
        Verify C{token} at time C{now}.

        @raise JWTError: for every token that does not pass, whatever it is.
        """
        cached = self._cache.get(token)
        if cached is not None:
            if now < cached[1]:
                self._cache.move_to_end(token)
                return cached[0]
            del self._cache[token]
        verified, expires = self._verify(token, now)
        if self.cacheSize > 0:
            self._cache[token] = (verified, expires)
            if len(self._cache) > self.cacheSize:
                self._cache.popitem(last=False)
        return verified

    def _verify(self, token: str, now: float) -> tuple[VerifiedToken, float]:
        parsed = parseToken(token, self.maxTokenBytes)
        claims = _object(parsed.payload)
        issuer = claims.get("iss")
        if not isinstance(issuer, str):
            raise JWTError("unknown issuer" if issuer is None else "invalid claim iss")
        providers = self.byIssuer.get(issuer)
        if not providers:
            raise JWTError("unknown issuer")
        failure: JWTError | None = None
        for provider in providers:
            keys = provider.keys()
            if not keys:
                failure = failure or JWTError("no keys available")
                continue
            try:
                verifySignature(parsed, keys)
            except JWTError as e:
                if e.reason == "no matching key" and parsed.kid is not None and provider.onUnknownKid:
                    provider.onUnknownKid()
                if failure is None or failure.reason in ("no keys available", "no matching key"):
                    failure = e
                continue
            verified = checkClaims(claims, provider, now)
            expires = math.inf if verified.expiresAt is None else verified.expiresAt + provider.clockSkew
            return verified, expires
        assert failure is not None
        raise failure
