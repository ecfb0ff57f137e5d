"""
Key material for JWT verification.

PEM public keys, PEM private keys (their public part only) and certificates,
JWKS documents and single JWKs are turned, once per load, into
L{VerifyKey}s that carry the verifier objects they need; L{RemoteJWKS}
keeps an issuer's key set fresh from its URL.

What a key may verify is decided here, never by a token: an RSA key of at
least 2048 bits verifies RS256/384/512, an EC key only the ES algorithm of
its curve, and only a JWK with C{kty: oct} (a key configured as a shared
secret) verifies HMAC, and only with a hash no longer than the secret.  A
key derived from a public key, in any encoding, is never an HMAC secret.

Keys that are not for signatures (C{use: enc}, C{key_ops} without
C{verify}) and key types this gateway does not verify (C{OKP}) are left
out; so are weak keys (RSA under 2048 bits, an even or tiny exponent, a
ROCA modulus).  A text that leaves no usable key at all is a
L{KeyLoadError}, a C{ValueError} whose message says why in one sentence and
never shows key material.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import types
from typing import Any, Callable, Mapping, Sequence

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from jose.backends.cryptography_backend import (
    CryptographyECKey,
    CryptographyHMACKey,
    CryptographyRSAKey,
)
from jose.exceptions import JOSEError
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = [
    "KeyLoadError",
    "KeyLoad",
    "MIN_RSA_BITS",
    "RemoteJWKS",
    "StaticKeys",
    "VerifyKey",
    "b64urlDecode",
    "b64urlEncode",
    "keysFromText",
    "loadKeys",
    "publicKeyFromPEM",
    "rocaVulnerable",
    "strictJSON",
    "thumbprint",
    "treqFetch",
]

MIN_RSA_BITS = 2048

# JWK crv -> (cryptography curve, the one JWS algorithm it verifies)
_CURVES: dict[str, tuple[type[ec.EllipticCurve], str]] = {
    "P-256": (ec.SECP256R1, "ES256"),
    "P-384": (ec.SECP384R1, "ES384"),
    "P-521": (ec.SECP521R1, "ES512"),
}
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_RSA_ALGORITHMS = ("RS256", "RS384", "RS512")
# HMAC algorithm -> the shortest secret it may use (RFC 7518 section 3.2)
_HMAC_SIZES = {"HS256": 32, "HS384": 48, "HS512": 64}
_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class KeyLoadError(ValueError):
    """
    Key material that cannot be used, with one sentence that says why and
    never shows the material itself.
    """


def b64urlDecode(text: str) -> bytes:
    """
    Decode canonical unpadded base64url, refusing anything else: padding,
    the standard alphabet, whitespace, an impossible length, and non-zero
    unused trailing bits (re-encoding must give C{text} back).

    @raise ValueError: for anything that is not canonical.
    """
    if not isinstance(text, str) or len(text) % 4 == 1 or not _B64URL.fullmatch(text):
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64urlEncode(data) != text:
        raise ValueError("non-canonical base64url")
    return data


def b64urlEncode(data: bytes) -> str:
    """
    Unpadded base64url.
    """
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _noDuplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("duplicate member")
    return document


def _noConstants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_noDuplicates, parse_constant=_noConstants)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def strictJSON(data: bytes | str) -> Any:
    """
    Parse JSON strictly: UTF-8, no duplicate object members, no C{NaN} or
    C{Infinity}, no unpaired surrogates.

    @raise ValueError: for anything else (C{UnicodeError} and
        C{RecursionError} are turned into C{ValueError}).
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        document = _DECODER.decode(text)
        # An escaped lone surrogate ("\\ud800") decodes to a str that is not
        # Unicode text; refuse it here rather than fail later on encoding.
        if _SURROGATE_ESCAPE.search(text):
            json.dumps(document, ensure_ascii=False).encode("utf-8")
    except (UnicodeError, RecursionError) as e:
        raise ValueError(f"not JSON text: {type(e).__name__}") from None
    return document


def _intBytes(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "oct": ("k", "kty")}


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """
    The RFC 7638 thumbprint of a JWK: SHA-256 over its required members,
    unpadded base64url.

    @raise KeyLoadError: when the key type is unknown or a required member
        is missing or not a string.
    """
    kty = jwk.get("kty") if isinstance(jwk, Mapping) else None
    names = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if names is None:
        raise KeyLoadError("a thumbprint needs a JWK with kty RSA, EC or oct")
    members = {}
    for name in names:
        value = jwk.get(name)
        if not isinstance(value, str):
            raise KeyLoadError(f"a thumbprint needs the {kty} JWK member {name!r} as a string")
        members[name] = value
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return b64urlEncode(hashlib.sha256(canonical.encode("utf-8")).digest())


# ROCA (CVE-2017-15361): moduli made by the flawed Infineon generator have,
# for every one of these small primes p, n mod p in the subgroup of Z_p*
# generated by 65537.  A random modulus passes all 38 tests with negligible
# probability.
_ROCA_PRIMES = (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73,
                79, 83, 89, 97, 101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157,
                163, 167)


def _subgroup(p: int) -> frozenset[int]:
    members, x = set(), 1
    while x not in members:
        members.add(x)
        x = x * 65537 % p
    return frozenset(members)


_ROCA_SUBGROUPS = tuple((p, _subgroup(p)) for p in _ROCA_PRIMES)


def rocaVulnerable(n: int) -> bool:
    """
    Whether an RSA modulus has the fingerprint of the ROCA key generator.
    """
    return all(n % p in members for p, members in _ROCA_SUBGROUPS)


@attrs.frozen(eq=False)
class VerifyKey:
    """
    One key, ready to verify signatures.  Compared by identity: a cached
    verification remembers the very key that made it.

    @ivar kty: C{"RSA"}, C{"EC"} or C{"oct"}.
    @ivar kid: the key id; a key from a PEM gets its RFC 7638 thumbprint.
    @ivar alg: the JWK's own C{alg}, when it names one; the key then
        verifies that algorithm only.
    @ivar use: the JWK's C{use} (only C{"sig"} keys are ever built).
    @ivar crv: the JWK curve name of an EC key (C{"P-256"}...).
    @ivar bits: the modulus size, the curve size, or the secret's length.
    @ivar thumbprint: the RFC 7638 thumbprint of an RSA or EC key.
    @ivar algorithms: the algorithms this key may verify, each with the
        python-jose key object built for it once, at load.
    """

    kty: str
    kid: str | None
    alg: str | None = None
    use: str | None = None
    crv: str | None = None
    bits: int = 0
    thumbprint: str | None = None
    algorithms: Mapping[str, Any] = attrs.field(
        factory=dict, converter=lambda m: types.MappingProxyType(dict(m)), repr=False
    )


@attrs.frozen
class KeyLoad:
    """
    What L{loadKeys} made of a text.

    @ivar keys: the usable keys.
    @ivar skipped: one short note per key left out (never key material).
    """

    keys: tuple[VerifyKey, ...]
    skipped: tuple[str, ...] = ()


@attrs.frozen
class StaticKeys:
    """
    A key source that never changes, for L{aigateway.auth.jwt.JWTProvider.keys}.
    """

    keys: tuple[VerifyKey, ...]

    def __call__(self) -> tuple[VerifyKey, ...]:
        return self.keys


class _Skip(Exception):
    """
    A key that is left out, and why.
    """


def _algorithmsFor(fields: dict[str, Any], possible: Sequence[str]) -> list[str]:
    alg = fields.get("alg")
    if alg is None:
        return list(possible)
    if alg not in possible:
        kind = fields["kty"] + (f" {fields['crv']}" if fields.get("crv") else "")
        raise _Skip(f"its alg {alg!r} is not one this gateway verifies with an {kind} key")
    return [alg]


def _rsaKey(public: rsa.RSAPublicKey, fields: dict[str, Any]) -> VerifyKey:
    numbers = public.public_numbers()
    if public.key_size < MIN_RSA_BITS:
        raise _Skip(f"an RSA key of {public.key_size} bits is too small (at least {MIN_RSA_BITS})")
    if numbers.e < 3 or numbers.e % 2 == 0:
        raise _Skip("an RSA key has an unsafe public exponent")
    if rocaVulnerable(numbers.n):
        raise _Skip("an RSA key was made by a generator with the ROCA weakness")
    jwk = {"kty": "RSA", "n": b64urlEncode(_intBytes(numbers.n)), "e": b64urlEncode(_intBytes(numbers.e))}
    fields = dict(fields, kty="RSA")
    algorithms = {a: CryptographyRSAKey(public, a) for a in _algorithmsFor(fields, _RSA_ALGORITHMS)}
    return VerifyKey(bits=public.key_size, thumbprint=thumbprint(jwk), algorithms=algorithms, **fields)


def _ecKey(public: ec.EllipticCurvePublicKey, fields: dict[str, Any]) -> VerifyKey:
    crv = _CURVE_NAMES.get(public.curve.name)
    if crv is None:
        raise _Skip(f"the EC curve {public.curve.name} is not supported")
    numbers = public.public_numbers()
    size = (public.curve.key_size + 7) // 8
    jwk = {"kty": "EC", "crv": crv, "x": b64urlEncode(numbers.x.to_bytes(size, "big")),
           "y": b64urlEncode(numbers.y.to_bytes(size, "big"))}
    fields = dict(fields, kty="EC", crv=crv)
    algorithms = {a: CryptographyECKey(public, a) for a in _algorithmsFor(fields, [_CURVES[crv][1]])}
    return VerifyKey(bits=public.curve.key_size, thumbprint=thumbprint(jwk), algorithms=algorithms,
                     **fields)


def _publicKey(public: Any, fields: dict[str, Any]) -> VerifyKey:
    if isinstance(public, rsa.RSAPublicKey):
        return _rsaKey(public, fields)
    if isinstance(public, ec.EllipticCurvePublicKey):
        return _ecKey(public, fields)
    raise _Skip("a key is neither RSA nor EC")


def _publicFromPEM(label: str, block: bytes) -> Any:
    if label == "CERTIFICATE":
        return x509.load_pem_x509_certificate(block).public_key()
    if "PRIVATE" in label:
        # Only the public part is ever kept.
        return load_pem_private_key(block, password=None).public_key()
    return load_pem_public_key(block)


def publicKeyFromPEM(text: str) -> Any:
    """
    The public key (a C{cryptography} object) of the first PEM block in
    C{text}: a public key, a private key or a certificate.

    @raise KeyLoadError: when there is no such block or it is not a key.
    """
    found = _PEM.search(text)
    if found is None:
        raise KeyLoadError("no PEM block found")
    try:
        return _publicFromPEM(found.group(1), found.group(0).encode("ascii", "replace"))
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyLoadError(f"the PEM block ({found.group(1)}) is not a usable key") from None


def _fromPEM(text: str) -> KeyLoad:
    keys: list[VerifyKey] = []
    skipped: list[str] = []
    for number, found in enumerate(_PEM.finditer(text), 1):
        label = found.group(1)
        try:
            public = _publicFromPEM(label, found.group(0).encode("ascii", "replace"))
        except TypeError:
            skipped.append(f"PEM block {number} ({label}) is encrypted")
            continue
        except (ValueError, UnsupportedAlgorithm):
            skipped.append(f"PEM block {number} ({label}) is not a valid key")
            continue
        try:
            key = _publicKey(public, {"kid": None})
        except _Skip as e:
            skipped.append(f"PEM block {number}: {e}")
            continue
        keys.append(attrs.evolve(key, kid=key.thumbprint))
    if not keys and not skipped:
        raise KeyLoadError("no complete PEM block found")
    return KeyLoad(tuple(keys), tuple(skipped))


def _member(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise _Skip(f"its member {name!r} is missing or not a string")
    try:
        return b64urlDecode(value)
    except ValueError:
        raise _Skip(f"its member {name!r} is not canonical base64url") from None


def _fromJWK(jwk: object) -> VerifyKey | None:
    """
    One JWK as a key; L{None} for a key that is not meant for verifying
    signatures.

    @raise _Skip: for a key that is meant for it but cannot be used.
    """
    if not isinstance(jwk, dict):
        raise _Skip("it is not a JSON object")
    kty = jwk.get("kty")
    fields: dict[str, Any] = {name: jwk.get(name) for name in ("kid", "alg", "use")}
    for name, value in fields.items():
        if value is not None and not isinstance(value, str):
            raise _Skip(f"its member {name!r} is not a string")
    if fields["use"] is not None and fields["use"] != "sig":
        return None
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    if kty == "RSA":
        n = int.from_bytes(_member(jwk, "n"), "big")
        e = int.from_bytes(_member(jwk, "e"), "big")
        try:
            rsaPublic = rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError:
            raise _Skip("it is not a valid RSA public key") from None
        return _rsaKey(rsaPublic, fields)
    if kty == "EC":
        crv = jwk.get("crv")
        if not isinstance(crv, str) or crv not in _CURVES:
            raise _Skip("its EC curve is not supported (P-256, P-384, P-521)")
        curve = _CURVES[crv][0]()
        size = (curve.key_size + 7) // 8
        x, y = _member(jwk, "x"), _member(jwk, "y")
        if len(x) != size or len(y) != size:
            raise _Skip(f"its EC coordinates do not fit the curve {crv}")
        try:
            ecPublic = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
            ).public_key()
        except ValueError:
            raise _Skip(f"its EC point is not on the curve {crv}") from None
        return _ecKey(ecPublic, fields)
    if kty == "oct":
        secret = _member(jwk, "k")
        fields = dict(fields, kty="oct")
        alg = fields["alg"]
        if alg in _HMAC_SIZES and len(secret) < _HMAC_SIZES[alg]:
            raise _Skip(f"its shared secret is shorter than the {_HMAC_SIZES[alg]} bytes {alg} needs")
        possible = [name for name, size in _HMAC_SIZES.items() if len(secret) >= size]
        if not possible:
            raise _Skip("its shared secret is shorter than 32 bytes")
        algorithms = _algorithmsFor(fields, possible)
        try:
            verifiers = {name: CryptographyHMACKey(secret, name) for name in algorithms}
        except JOSEError:
            # python-jose refuses secrets that look like PEM or SSH keys.
            raise _Skip("its shared secret looks like a public key") from None
        return VerifyKey(bits=len(secret) * 8, algorithms=verifiers, **fields)
    raise _Skip(f"its key type {kty!r} is not supported" if isinstance(kty, str)
                else "it has no key type")


def _fromJSON(document: object) -> KeyLoad:
    single = False
    if isinstance(document, dict) and "keys" in document:
        entries = document["keys"]
        if not isinstance(entries, list):
            raise KeyLoadError("the JWKS member 'keys' is not a list")
    elif isinstance(document, dict):
        entries = [document]
        single = True
    else:
        raise KeyLoadError("the JSON document is neither a JWKS nor a JWK")
    keys: list[VerifyKey] = []
    skipped: list[str] = []
    # The kids of every key meant for signatures, usable or not.
    kids: list[object] = []
    for index, entry in enumerate(entries):
        try:
            key = _fromJWK(entry)
        except _Skip as e:
            skipped.append(f"the JWK: {e}" if single else f"key {index}: {e}")
            if isinstance(entry, dict) and entry.get("kid") is not None:
                kids.append(entry["kid"])
            continue
        if key is not None:
            keys.append(key)
            if key.kid is not None:
                kids.append(key.kid)
    # Wycheproof's reasoning, and ours: a document that publishes public
    # keys is public, so a shared secret in it is no secret; and two keys
    # under one kid leave "the key this token names" ambiguous.
    if any(k.kty == "oct" for k in keys) and any(k.kty != "oct" for k in keys):
        raise KeyLoadError("a key set must not mix shared secrets with public keys")
    if len(kids) != len(set(map(repr, kids))):
        raise KeyLoadError("two keys in the set share one kid")
    return KeyLoad(tuple(keys), tuple(skipped))


def loadKeys(text: str) -> KeyLoad:
    """
    Like L{keysFromText}, and also say which keys were left out and why.

    @raise KeyLoadError: as L{keysFromText} does.
    """
    if not isinstance(text, str):
        raise KeyLoadError("key material must be text")
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            document = strictJSON(stripped)
        except ValueError:
            raise KeyLoadError("the key set is not valid JSON") from None
        load = _fromJSON(document)
    elif "-----BEGIN " in stripped:
        load = _fromPEM(stripped)
    else:
        raise KeyLoadError("the key material is neither PEM, a JWKS document nor a JWK")
    if not load.keys:
        if not load.skipped:
            raise KeyLoadError("the key set has no key for verifying signatures")
        if len(load.skipped) == 1:
            raise KeyLoadError(load.skipped[0])
        detail = "; ".join(load.skipped[:3])
        more = len(load.skipped) - 3
        if more > 0:
            detail += f"; and {more} more"
        raise KeyLoadError(f"no usable key: {detail}")
    return load


def keysFromText(text: str) -> tuple[VerifyKey, ...]:
    """
    Keys from one or more PEM blocks (public keys, private keys of which
    only the public part is used, certificates), a JWKS document
    C{{"keys": [...]}} or a single JWK.

    Keys that cannot verify signatures here (C{use: enc}, other key types,
    weak keys) are left out; a text with no usable key at all is an error.

    @raise KeyLoadError: saying what is wrong, without key material.
    """
    return loadKeys(text).keys


def treqFetch(
    agentOrClient: Any,
    clock: IReactorTime | None = None,
    timeout: float = 10.0,
    maxBytes: int = 1024 * 1024,
) -> Callable[[str], "Deferred[bytes]"]:
    """
    A C{fetch} function for L{RemoteJWKS}, made with treq: it follows no
    redirects, keeps no cookies, needs a 2xx answer, reads at most
    C{maxBytes}, and gives up after C{timeout} seconds for the whole fetch.

    @param agentOrClient: an C{IAgent}, or a treq client (C{HTTPClient},
        C{treq.testing.StubTreq}).
    @param clock: what times the whole fetch out; without it, treq's own
        timeout (which covers the wait for the response headers) is used.
    """
    import treq
    from treq.client import HTTPClient

    if callable(getattr(agentOrClient, "get", None)) and callable(getattr(agentOrClient, "request", None)):
        client = agentOrClient
    else:
        client = HTTPClient(agentOrClient)

    async def fetch(url: str) -> bytes:
        options: dict[str, Any] = {"allow_redirects": False, "unbuffered": True,
                                   "headers": {"accept": "application/json"}}
        if clock is None:
            options["timeout"] = timeout
        response = await client.get(url, **options)
        chunks: list[bytes] = []
        size = [0]

        def collect(data: bytes) -> None:
            size[0] += len(data)
            if size[0] > maxBytes:
                raise KeyLoadError(f"the key set is larger than {maxBytes} bytes")
            chunks.append(data)

        await treq.collect(response, collect)
        if not 200 <= response.code < 300:
            raise KeyLoadError(f"the key set URL answered HTTP {response.code}")
        return b"".join(chunks)

    def start(url: str) -> "Deferred[bytes]":
        d = Deferred.fromCoroutine(fetch(url))
        if clock is not None:
            d.addTimeout(timeout, clock, onTimeoutCancel=_timedOut)
        return d

    return start


def _timedOut(result: object, timeout: float | None) -> Failure:
    return Failure(KeyLoadError(f"the key set URL did not answer within {timeout:g} seconds"))


class RemoteJWKS:
    """
    An issuer's key set, fetched from its URL when started and every
    C{cacheDuration} after.  A token naming an unknown C{kid} may bring one
    fetch forward, at most once per C{cacheDuration}.  A failed fetch or a
    bad document keeps the last good keys and is logged (with the URL, never
    key material); until the first success, fetches are retried every
    C{retryDelay} (or C{cacheDuration}, if shorter).

    @ivar url: the JWKS URL.
    @ivar keys: the current keys (empty until the first good fetch).
    @ivar ready: whether a fetch has succeeded.
    """

    log = Logger()

    def __init__(
        self,
        url: str,
        cacheDuration: float,
        clock: IReactorTime,
        fetch: Callable[[str], "Deferred[bytes]"],
        retryDelay: float = 5.0,
    ) -> None:
        """
        @param fetch: gets the document's bytes; L{treqFetch} makes one.
        """
        if not cacheDuration > 0:
            raise ValueError("cacheDuration must be positive")
        self.url = url
        self.cacheDuration = cacheDuration
        self.clock = clock
        self.fetch = fetch
        self.retryDelay = retryDelay
        self.keys: tuple[VerifyKey, ...] = ()
        self.ready = False
        self._running = False
        self._next: IDelayedCall | None = None
        self._inFlight: Deferred[Any] | None = None
        self._lastEarly: float | None = None
        self._skipped: tuple[str, ...] = ()

    def start(self) -> None:
        """
        Fetch now, and keep fetching every C{cacheDuration}.
        """
        if self._running:
            return
        self._running = True
        self._refresh()

    def stop(self) -> None:
        """
        Stop refreshing, and cancel a fetch in flight.
        """
        self._running = False
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        if self._inFlight is not None:
            self._inFlight.cancel()

    def refreshForUnknownKid(self) -> None:
        """
        A token named a key we do not have, perhaps a new one: fetch now,
        unless a fetch is already running or an unknown kid brought one
        forward less than C{cacheDuration} ago.
        """
        if not self._running or self._inFlight is not None:
            return
        now = self.clock.seconds()
        if self._lastEarly is not None and now - self._lastEarly < self.cacheDuration:
            return
        self._lastEarly = now
        self._refresh()

    def _refresh(self) -> None:
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        try:
            fetched = self.fetch(self.url)
        except Exception:
            fetched = fail()
        self._inFlight = fetched
        fetched.addCallback(self._got)
        fetched.addErrback(self._failed)
        fetched.addBoth(self._done)

    def _got(self, body: bytes) -> None:
        try:
            load = loadKeys(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise KeyLoadError("the key set is not UTF-8 text") from None
        before = {(k.kid, k.thumbprint) for k in self.keys}
        self.keys = load.keys
        self.ready = True
        if load.skipped != self._skipped:
            for note in load.skipped:
                self.log.warn("key set {url}: left out {note}", url=self.url, note=note)
            self._skipped = load.skipped
        if {(k.kid, k.thumbprint) for k in self.keys} != before:
            self.log.info("key set {url}: {count} keys", url=self.url, count=len(self.keys))

    def _failed(self, failure: Failure) -> None:
        if failure.check(CancelledError) and not self._running:
            return
        self.log.warn(
            "cannot refresh the key set at {url}: {problem}; keeping {count} keys",
            url=self.url,
            problem=failure.getErrorMessage() or failure.type.__name__,
            count=len(self.keys),
        )

    def _done(self, result: object) -> None:
        self._inFlight = None
        if self._running:
            delay = self.cacheDuration if self.ready else min(self.cacheDuration, self.retryDelay)
            self._next = self.clock.callLater(delay, self._refresh)
