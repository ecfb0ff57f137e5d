"""
JWT verification: strict parsing, key selection, signature and claims.

Everything here is pure: no reactor, no I/O, and the time is an argument.
python-jose checks signatures with keys this module selected and
L{aigateway.auth.keys} built; the strict parts are ours, in this order:

  1. the token's shape and encoding, before any cryptography: ASCII, at
     most C{maxTokenBytes}, exactly three canonical unpadded base64url
     segments, a header that is a strict JSON object (UTF-8, no duplicate
     members, no NaN), a known C{alg}, no C{crit};
  2. the provider, by the payload's C{iss};
  3. the keys: never from the token (C{jku}, C{x5u}, C{jwk} and C{x5c} are
     ignored and never fetched); each algorithm bound to its kind of key; a
     token with C{kid} tried only against keys with that C{kid} (padded or
     not) or without one, a token without C{kid} against every key that
     fits its C{alg} (where the lab's peer gateway fails);
  4. the signature, of exactly C{header_b64 + "." + payload_b64}, after its
     length (and, for ECDSA, C{0 < r, s < n}) is checked;
  5. the registered claims, with the provider's clock skew.

The reasons a token is refused, as L{JWTError.reason} says them (short,
lowercase, safe to show to the caller, stable; see L{REASONS}):
C{malformed token}, C{token too large}, C{unsupported critical header},
C{algorithm not allowed}, C{algorithm not supported}, C{unknown issuer},
C{no keys available}, C{no matching key}, C{signature verification failed},
C{token expired}, C{token not yet valid}, C{token issued in the future},
C{missing exp}, C{token lifetime too long}, C{audience not allowed}, and
C{invalid claim <name>} for C{iss}, C{exp}, C{nbf}, C{iat}, C{aud}, C{sub}.
"""

from __future__ import annotations

import collections
import types
from typing import Any, Callable, Iterable, Mapping, Sequence

import attrs

from aigateway.auth.keys import MIN_RSA_BITS, VerifyKey, b64urlDecode, strictJSON

__all__ = [
    "REASONS",
    "SUPPORTED_ALGORITHMS",
    "JWTError",
    "JWTProvider",
    "ParsedToken",
    "VerifiedToken",
    "Verifier",
    "candidateKeys",
    "checkClaims",
    "parseToken",
    "verifySignature",
]

REASONS = (
    "malformed token",
    "token too large",
    "unsupported critical header",
    "algorithm not allowed",
    "algorithm not supported",
    "unknown issuer",
    "no keys available",
    "no matching key",
    "signature verification failed",
    "token expired",
    "token not yet valid",
    "token issued in the future",
    "missing exp",
    "token lifetime too long",
    "audience not allowed",
    "invalid claim iss",
    "invalid claim exp",
    "invalid claim nbf",
    "invalid claim iat",
    "invalid claim aud",
    "invalid claim sub",
)

SUPPORTED_ALGORITHMS = frozenset(
    ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "HS256", "HS384", "HS512"]
)
# The kind of key each family of algorithms needs.
_KTY = {"RS": "RSA", "ES": "EC", "HS": "oct"}
_ES_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_ES_SIZES = {"ES256": 32, "ES384": 48, "ES512": 66}
_ES_ORDERS = {
    "ES256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "ES384": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77A"
        "ECEC196ACCC52973",
        16,
    ),
    "ES512": int(
        "01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA51868783BF"
        "2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
        16,
    ),
}
_HS_SIZES = {"HS256": 32, "HS384": 48, "HS512": 64}
# |exp|, |nbf|, |iat| must stay below this (about the year 318857).
_MAX_TIME = 1e13


class JWTError(Exception):
    """
    A token that does not pass.

    @ivar reason: one of L{REASONS}: a short phrase that is safe to show to
        the caller.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.frozen
class ParsedToken:
    """
    A compact JWS whose shape and encoding passed, its signature not yet
    checked.

    @ivar header: the decoded protected header.
    @ivar payload: the decoded payload bytes (not necessarily JSON).
    @ivar signingInput: exactly the bytes the signature covers.
    @ivar signature: the decoded signature bytes.
    """

    header: Mapping[str, Any]
    payload: bytes = attrs.field(repr=False)
    signingInput: bytes = attrs.field(repr=False)
    signature: bytes = attrs.field(repr=False)

    @property
    def alg(self) -> str:
        """
        The header's C{alg}, one of L{SUPPORTED_ALGORITHMS}.
        """
        return self.header["alg"]

    @property
    def kid(self) -> str | None:
        """
        The header's C{kid}, if it has one.
        """
        return self.header.get("kid")


def _decodeObject(segment: str) -> dict[str, Any]:
    try:
        document = strictJSON(b64urlDecode(segment))
    except ValueError:
        raise JWTError("malformed token") from None
    if not isinstance(document, dict):
        raise JWTError("malformed token")
    return document


def parseToken(token: str, maxBytes: int = 16384) -> ParsedToken:
    """
    Check a compact JWS token's shape and decode it; no cryptography yet.

    @param maxBytes: the largest token to look at.
    @raise JWTError: C{token too large}; C{malformed token} when the token
        is not exactly three canonical base64url segments with a JSON object
        header whose C{alg} is a string, C{kid} a string and C{crit} a
        non-empty list of strings; C{algorithm not allowed} for C{none} in
        any spelling; C{algorithm not supported}; C{unsupported critical
        header} for any C{crit} (we understand no extension).
    """
    if not isinstance(token, str):
        raise JWTError("malformed token")
    if len(token) > maxBytes:
        raise JWTError("token too large")
    if not token.isascii() or token.count(".") != 2:
        raise JWTError("malformed token")
    head, body, tail = token.split(".")
    header = _decodeObject(head)
    try:
        payload = b64urlDecode(body)
        signature = b64urlDecode(tail)
    except ValueError:
        raise JWTError("malformed token") from None
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise JWTError("malformed token")
    if alg.lower() == "none":
        raise JWTError("algorithm not allowed")
    if alg not in SUPPORTED_ALGORITHMS:
        raise JWTError("algorithm not supported")
    if "crit" in header:
        crit = header["crit"]
        if not isinstance(crit, list) or not crit or not all(isinstance(n, str) for n in crit):
            raise JWTError("malformed token")
        raise JWTError("unsupported critical header")
    if "kid" in header and not isinstance(header["kid"], str):
        raise JWTError("malformed token")
    return ParsedToken(header, payload, (head + "." + body).encode("ascii"), signature)


def _sameKid(keyKid: str, tokenKid: str) -> bool:
    # A thumbprint kid may come padded ("...=") or not.
    return keyKid == tokenKid or keyKid.rstrip("=") == tokenKid.rstrip("=")


def _fits(key: VerifyKey, alg: str) -> bool:
    """
    Whether C{key} may verify C{alg}: the algorithm bound to the key type
    (and curve), the JWK's own C{alg} and C{use} respected, no weak RSA.
    """
    if alg not in key.algorithms or key.kty != _KTY[alg[:2]]:
        return False
    if key.alg is not None and key.alg != alg:
        return False
    if key.use is not None and key.use != "sig":
        return False
    if key.kty == "RSA":
        return key.bits >= MIN_RSA_BITS
    if key.kty == "EC":
        return key.crv == _ES_CURVES[alg]
    return True


def candidateKeys(token: ParsedToken, keys: Sequence[VerifyKey]) -> list[VerifyKey]:
    """
    The keys C{token} may be tried against: those that fit its C{alg} and,
    when it has a C{kid}, carry that C{kid} or none.
    """
    alg, kid = token.alg, token.kid
    return [
        key for key in keys
        if _fits(key, alg) and (kid is None or key.kid is None or _sameKid(key.kid, kid))
    ]


def _shapeOK(alg: str, key: VerifyKey, signature: bytes) -> bool:
    family = alg[:2]
    if family == "RS":
        return len(signature) == (key.bits + 7) // 8
    if family == "HS":
        return len(signature) == _HS_SIZES[alg]
    size = _ES_SIZES[alg]
    if len(signature) != 2 * size:
        return False
    order = _ES_ORDERS[alg]
    r = int.from_bytes(signature[:size], "big")
    s = int.from_bytes(signature[size:], "big")
    return 0 < r < order and 0 < s < order


def verifySignature(token: ParsedToken, keys: Sequence[VerifyKey]) -> VerifyKey:
    """
    Find the key among C{keys} that signed C{token}.  No claims are looked
    at; L{Verifier.verify} uses this, and so can a signature-only check.

    @return: the key that verified the signature.
    @raise JWTError: C{no matching key} when no key may verify this token,
        C{signature verification failed} when none of those that may did.
    """
    candidates = candidateKeys(token, keys)
    if not candidates:
        raise JWTError("no matching key")
    alg = token.alg
    for key in candidates:
        if _shapeOK(alg, key, token.signature):
            try:
                if key.algorithms[alg].verify(token.signingInput, token.signature) is True:
                    return key
            except Exception:
                # python-jose should answer False, never raise; if it does,
                # the signature did not verify.
                continue
    raise JWTError("signature verification failed")


def _strings(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


@attrs.frozen
class JWTProvider:
    """
    An issuer whose tokens the gateway accepts.

    @ivar name: the provider's name in the configuration.
    @ivar issuer: the C{iss} its tokens carry.
    @ivar audiences: at least one must be in a token's C{aud}; empty, and
        C{aud} is not checked.
    @ivar keys: returns the current keys (a remote key set changes); read
        at each verification.  L{aigateway.auth.keys.StaticKeys} for fixed keys.
    @ivar clockSkew: seconds of leeway for C{exp}, C{nbf} and C{iat}.
    @ivar requireExp: refuse tokens without C{exp}.
    @ivar maxLifetime: when set, tokens need C{exp}, and C{exp} may be at
        most this many seconds after C{iat} (or after now, without C{iat}).
    @ivar onUnknownKid: called when a token's C{kid} matched no key (a
        remote key set's C{refreshForUnknownKid}).
    """

    name: str
    issuer: str
    audiences: tuple[str, ...] = attrs.field(converter=_strings)
    keys: Callable[[], Sequence[VerifyKey]]
    clockSkew: float = 60.0
    requireExp: bool = False
    maxLifetime: float | None = None
    onUnknownKid: Callable[[], None] | None = None


@attrs.frozen
class VerifiedToken:
    """
    A token that passed.

    @ivar provider: the name of the provider that accepted it.
    @ivar claims: its claims, read-only.
    @ivar subject: its C{sub}, if any.
    @ivar expiresAt: its C{exp}, if any.
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
    # Compare before converting: a huge int does not fit a float.
    if not -_MAX_TIME < value < _MAX_TIME:
        raise JWTError(f"invalid claim {name}")
    return float(value)


def checkClaims(claims: Mapping[str, Any], provider: JWTProvider, now: float) -> VerifiedToken:
    """
    Check the registered claims of a token whose signature C{provider}'s
    keys verified (C{iss} already chose the provider).

    @raise JWTError: naming the claim that fails.
    """
    skew = provider.clockSkew
    exp = _time(claims, "exp")
    nbf = _time(claims, "nbf")
    iat = _time(claims, "iat")
    sub = claims.get("sub")
    if "sub" in claims and not isinstance(sub, str):
        raise JWTError("invalid claim sub")
    audiences: Sequence[str] = ()
    if "aud" in claims:
        aud = claims["aud"]
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise JWTError("invalid claim aud")
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
    if provider.audiences and not any(a in provider.audiences for a in audiences):
        raise JWTError("audience not allowed")
    return VerifiedToken(provider.name, types.MappingProxyType(claims), sub, exp)


# How far a failure got: with several providers for one issuer, the one
# that got furthest explains the refusal best.
_PROGRESS = {"no keys available": 0, "no matching key": 1, "signature verification failed": 2}


@attrs.frozen
class _Entry:
    provider: JWTProvider
    verified: VerifiedToken
    key: VerifyKey


class Verifier:
    """
    Verifies tokens for a set of providers.

    Tokens that passed are remembered (least recently used first out, at
    most C{cacheSize}, keyed by the token string), so a repeat costs no
    signature check; a hit is still refused, and forgotten, once its time
    claims fail at the new C{now} or once the key that verified it has left
    its provider's key set (a rotated-out or revoked key stops working at
    once, even for cached tokens).  Failures are not remembered: they are
    cheap to reach again (parsing, or one signature check), and must never
    hide a key that arrived since.

    @ivar providers: by issuer, in configuration order.
    """

    def __init__(
        self,
        providers: Sequence[JWTProvider],
        cacheSize: int = 10000,
        maxTokenBytes: int = 16384,
        checkSignature: Callable[[ParsedToken, Sequence[VerifyKey]], VerifyKey] = verifySignature,
    ) -> None:
        """
        @param cacheSize: how many verified tokens to remember; 0 for none.
        @param maxTokenBytes: the largest token looked at.
        @param checkSignature: finds the key that signed a token (a test
            hook; L{verifySignature} unless testing).
        """
        self.providers: dict[str, tuple[JWTProvider, ...]] = {}
        for provider in providers:
            self.providers[provider.issuer] = self.providers.get(provider.issuer, ()) + (provider,)
        self.cacheSize = cacheSize
        self.maxTokenBytes = maxTokenBytes
        self._checkSignature = checkSignature
        self._cache: collections.OrderedDict[str, _Entry] = collections.OrderedDict()

    def verify(self, token: str, now: float) -> VerifiedToken:
        """
        Verify C{token} at time C{now} (seconds since the epoch).

        @raise JWTError: for every token that does not pass, whatever it is;
            nothing else is ever raised.
        """
        entry = self._cache.get(token) if isinstance(token, str) else None
        if entry is not None:
            if any(k is entry.key for k in entry.provider.keys()):
                try:
                    checkClaims(entry.verified.claims, entry.provider, now)
                except JWTError:
                    pass
                else:
                    self._cache.move_to_end(token)
                    return entry.verified
            # Expired, not yet valid at this now, or its key is gone: verify
            # it again from scratch (another provider may take it).
            del self._cache[token]
        entry = self._verify(token, now)
        if self.cacheSize > 0:
            self._cache[token] = entry
            while len(self._cache) > self.cacheSize:
                self._cache.popitem(last=False)
        return entry.verified

    def _verify(self, token: str, now: float) -> _Entry:
        parsed = parseToken(token, self.maxTokenBytes)
        try:
            claims = strictJSON(parsed.payload)
        except ValueError:
            raise JWTError("malformed token") from None
        if not isinstance(claims, dict):
            raise JWTError("malformed token")
        if "iss" not in claims:
            raise JWTError("unknown issuer")
        issuer = claims["iss"]
        if not isinstance(issuer, str):
            raise JWTError("invalid claim iss")
        providers = self.providers.get(issuer)
        if not providers:
            raise JWTError("unknown issuer")
        failure: JWTError | None = None
        for provider in providers:
            try:
                entry = self._tryProvider(provider, parsed, claims, now)
            except JWTError as e:
                if failure is None or _PROGRESS.get(e.reason, 3) > _PROGRESS.get(failure.reason, 3):
                    failure = e
                continue
            return entry
        assert failure is not None
        raise failure

    def _tryProvider(
        self, provider: JWTProvider, parsed: ParsedToken, claims: dict[str, Any], now: float
    ) -> _Entry:
        assert provider.issuer == claims["iss"]
        keys = provider.keys()
        if not keys:
            raise JWTError("no keys available")
        try:
            key = self._checkSignature(parsed, keys)
        except JWTError as e:
            if e.reason == "no matching key" and parsed.kid is not None and provider.onUnknownKid:
                provider.onUnknownKid()
            raise
        return _Entry(provider, checkClaims(claims, provider, now), key)
