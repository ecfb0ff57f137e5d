"""
Tests for L{aigateway.jwt}: the lab's token passes, and the tokens an
attacker would forge do not.
"""

from __future__ import annotations

import base64
import json
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.trial.unittest import SynchronousTestCase

from aigateway.jwt import JWTError, JWTProvider, Verifier, parseToken
from aigateway.keys import keysFromText
from aigateway.token import publicJWK, sign
from tests.lab import ALICE_TOKEN, LAB_PEM

NOW = 1_800_000_000.0
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
SECRET = b"s" * 32


def _pem(key) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _raw(header: dict, claims: dict, signature: bytes = b"") -> str:
    segment = lambda d: _b64(json.dumps(d).encode())  # noqa: E731
    return segment(header) + "." + segment(claims) + "." + _b64(signature)


CLAIMS = {"iss": "solo.io", "sub": "alice", "exp": NOW + 600}


def _verifier(keysText: str = "", keys=None, **options) -> Verifier:
    keys = keys if keys is not None else keysFromText(keysText or _pem(RSA_KEY))
    return Verifier([JWTProvider("p", "solo.io", options.pop("audiences", ()), lambda: keys, **options)])


class LabTests(SynchronousTestCase):
    """
    The lab's own key and token.
    """

    def test_aliceToken(self) -> None:
        """
        RS256, no kid, no exp: it passes, with its claims.
        """
        verified = _verifier(LAB_PEM).verify(ALICE_TOKEN, NOW)
        self.assertEqual(verified.subject, "alice")
        self.assertEqual(verified.claims["llms"], {"openai": ["gpt-3.5-turbo"]})
        self.assertIsNone(verified.expiresAt)

    def test_aliceWrongIssuer(self) -> None:
        """
        The same token for an issuer it is not from.
        """
        keys = keysFromText(LAB_PEM)
        verifier = Verifier([JWTProvider("p", "other.example", (), lambda: keys)])
        self.assertReason(verifier, ALICE_TOKEN, "unknown issuer")

    def test_aliceRequireExp(self) -> None:
        """
        With C{requireExp}, the lab's token (no exp) is refused.
        """
        self.assertReason(_verifier(LAB_PEM, requireExp=True), ALICE_TOKEN, "missing exp")

    def assertReason(self, verifier: Verifier, token: str, reason: str, now: float = NOW) -> None:
        with self.assertRaises(JWTError) as caught:
            verifier.verify(token, now)
        self.assertEqual(caught.exception.reason, reason)


class AttackTests(LabTests):
    """
    The attack catalogue: every forgery is refused with a reason.
    """

    def test_algNone(self) -> None:
        """
        C{none} in any spelling, with or without a signature.
        """
        verifier = _verifier()
        for alg in ("none", "None", "NONE", "nOnE"):
            for signature in (b"", b"x"):
                self.assertReason(verifier, _raw({"alg": alg}, CLAIMS, signature), "algorithm not allowed")

    def test_rsaToHmac(self) -> None:
        """
        HS256 signed with the RSA public key as PEM, DER or JWK bytes never
        passes: an RSA key does not verify HMAC.
        """
        verifier = _verifier()
        public = RSA_KEY.public_key()
        secrets = [
            _pem(RSA_KEY).encode(),
            public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
            public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1),
            json.dumps(publicJWK(_pem(RSA_KEY))).encode(),
            base64.urlsafe_b64decode(publicJWK(_pem(RSA_KEY))["n"] + "=="),
        ]
        for secret in secrets:
            self.assertReason(verifier, sign(CLAIMS, secret, "HS256"), "no matching key")

    def test_signatureTampering(self) -> None:
        """
        Empty, truncated and altered signatures, and an altered payload.
        """
        verifier = _verifier()
        token = sign(CLAIMS, RSA_KEY)
        head, payload, signature = token.split(".")
        raw = base64.urlsafe_b64decode(signature + "==")
        for bad in (b"", raw[:-1], raw[:64], bytes(len(raw)), raw[:-1] + bytes([raw[-1] ^ 1])):
            self.assertReason(verifier, f"{head}.{payload}.{_b64(bad)}", "signature verification failed")
        forged = _b64(json.dumps(dict(CLAIMS, sub="root")).encode())
        self.assertReason(verifier, f"{head}.{forged}.{signature}", "signature verification failed")

    def test_otherKey(self) -> None:
        """
        A token signed by a key that is not configured.
        """
        self.assertReason(_verifier(), sign(CLAIMS, OTHER_RSA_KEY), "signature verification failed")

    def test_embeddedKeys(self) -> None:
        """
        A token carrying its own key (C{jwk}), or pointing at one (C{jku},
        C{x5u}, C{x5c}), is checked against the configured keys only, and
        nothing is fetched.
        """
        fetched = []
        verifier = Verifier([
            JWTProvider("p", "solo.io", (), lambda: keysFromText(_pem(RSA_KEY)),
                        onUnknownKid=lambda: fetched.append("refresh"))
        ])
        attacker = publicJWK(_pem(OTHER_RSA_KEY))
        for extra in ({"jwk": attacker}, {"jku": "https://evil.example/jwks"},
                      {"x5u": "https://evil.example/cert"}, {"x5c": ["MIIB"]}):
            token = sign(CLAIMS, OTHER_RSA_KEY, header=extra)
            self.assertReason(verifier, token, "signature verification failed")
        self.assertEqual(fetched, [])

    def test_kidInjection(self) -> None:
        """
        Hostile C{kid} values find no key, at once.
        """
        verifier = _verifier()
        started = time.monotonic()
        for kid in ("../../dev/null", "' UNION SELECT 1 --", "|sleep 10", "$(sleep 10)", "\u0000", "a" * 5000):
            self.assertReason(verifier, sign(CLAIMS, OTHER_RSA_KEY, kid=kid), "no matching key")
        self.assertLess(time.monotonic() - started, 0.5)

    def test_es256Degenerate(self) -> None:
        """
        ES256 with r = s = 0, a DER signature, or the wrong length.
        """
        verifier = _verifier(_pem(EC_KEY))
        token = sign(CLAIMS, EC_KEY)
        head, payload, signature = token.split(".")
        raw = base64.urlsafe_b64decode(signature + "==")
        der = EC_KEY.sign(f"{head}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))
        for bad in (bytes(64), der, raw + b"\x00", raw[:-1], b"\x00" + raw):
            self.assertReason(verifier, f"{head}.{payload}.{_b64(bad)}", "signature verification failed")
        self.assertEqual(verifier.verify(token, NOW).subject, "alice")

    def test_segments(self) -> None:
        """
        Two, four and five segments, and empty ones.
        """
        verifier = _verifier()
        token = sign(CLAIMS, RSA_KEY)
        for bad in (token.rsplit(".", 1)[0], token + ".x", token + ".x.y", "..", "", "."):
            self.assertReason(verifier, bad, "malformed token")

    def test_encoding(self) -> None:
        """
        Padding, the standard alphabet, whitespace, non-ASCII and
        non-canonical trailing bits are all malformed.
        """
        verifier = _verifier()
        head, payload, signature = sign(CLAIMS, RSA_KEY).split(".")
        last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(signature[-1])
        sibling = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last ^ 1]
        for bad in (
            f"{head}=.{payload}.{signature}",
            f"{head}.{payload}.{signature}=",
            f"{head}.{payload}.{signature.replace('-', '+').replace('_', '/')}x",
            f" {head}.{payload}.{signature}",
            f"{head}.{payload}.{signature}\u00e9",
            f"{head}.{payload}.{signature[:-1]}{sibling}",
        ):
            with self.assertRaises(JWTError) as caught:
                verifier.verify(bad, NOW)
            self.assertIn(caught.exception.reason, ("malformed token", "signature verification failed"))

    def test_headerAndPayloadShape(self) -> None:
        """
        Non-object JSON, duplicate members, and NaN are malformed.
        """
        verifier = _verifier()
        seg = lambda text: _b64(text.encode())  # noqa: E731
        good = seg(json.dumps(CLAIMS))
        for header, payload in (
            (seg('["RS256"]'), good),
            (seg('{"alg":"RS256","alg":"none"}'), good),
            (seg('{"alg":"RS256"}'), seg('{"iss":"solo.io","iss":"evil"}')),
            (seg('{"alg":"RS256"}'), seg('{"iss":"solo.io","exp":NaN}')),
            (seg('{"alg":"RS256"}'), seg("1")),
            (seg("not json"), good),
        ):
            self.assertReason(verifier, f"{header}.{payload}.AAAA", "malformed token")

    def test_tooLarge(self) -> None:
        """
        A megabyte token is refused before it is decoded.
        """
        token = sign(dict(CLAIMS, pad="x" * 1_000_000), RSA_KEY)
        self.assertReason(_verifier(), token, "token too large")

    def test_crit(self) -> None:
        """
        A critical header we do not understand.
        """
        self.assertReason(_verifier(), sign(CLAIMS, RSA_KEY, header={"crit": ["exp"]}),
                          "unsupported critical header")

    def test_unsupportedAlgorithms(self) -> None:
        """
        PS*, EdDSA and made-up algorithms are answered plainly.
        """
        for alg in ("PS256", "PS384", "PS512", "EdDSA", "ES256K", "HS1", "RS1"):
            self.assertReason(_verifier(), _raw({"alg": alg}, CLAIMS, b"x"), "algorithm not supported")

    def test_claimTypes(self) -> None:
        """
        Numeric claims of the wrong type or size are 401 reasons, never
        crashes.
        """
        verifier = _verifier()
        for name in ("exp", "nbf", "iat"):
            for value in ("1800000000", None, True, [1], {"a": 1}, 1e300, -1e300, 10**400):
                claims = dict(CLAIMS, **{name: value})
                self.assertReason(verifier, sign(claims, RSA_KEY), f"invalid claim {name}")
        for value in (1, ["a", 1], {"a": "b"}, None):
            self.assertReason(verifier, sign(dict(CLAIMS, aud=value), RSA_KEY), "invalid claim aud")
        self.assertReason(verifier, sign(dict(CLAIMS, sub=7), RSA_KEY), "invalid claim sub")
        self.assertReason(verifier, sign(dict(CLAIMS, iss=7), RSA_KEY), "invalid claim iss")


class ClaimTests(LabTests):
    """
    Time and audience claims, with the clock skew.
    """

    def test_expiry(self) -> None:
        """
        Expired beyond the skew is refused; within the skew it passes.
        """
        verifier = _verifier()
        self.assertReason(verifier, sign(dict(CLAIMS, exp=NOW - 61), RSA_KEY), "token expired")
        self.assertEqual(verifier.verify(sign(dict(CLAIMS, exp=NOW - 59), RSA_KEY), NOW).subject, "alice")

    def test_notBefore(self) -> None:
        """
        C{nbf} and C{iat} in the future beyond the skew.
        """
        verifier = _verifier()
        self.assertReason(verifier, sign(dict(CLAIMS, nbf=NOW + 61), RSA_KEY), "token not yet valid")
        self.assertReason(verifier, sign(dict(CLAIMS, iat=NOW + 61), RSA_KEY), "token issued in the future")
        verifier.verify(sign(dict(CLAIMS, nbf=NOW + 59, iat=NOW + 59), RSA_KEY), NOW)

    def test_maxLifetime(self) -> None:
        """
        A token that lives longer than allowed.
        """
        verifier = _verifier(maxLifetime=3600)
        self.assertReason(verifier, sign(dict(CLAIMS, iat=NOW, exp=NOW + 7200), RSA_KEY),
                          "token lifetime too long")
        verifier.verify(sign(dict(CLAIMS, iat=NOW, exp=NOW + 600), RSA_KEY), NOW)

    def test_audience(self) -> None:
        """
        Any configured audience, as a string or in a list.
        """
        verifier = _verifier(audiences=("api", "llm"))
        verifier.verify(sign(dict(CLAIMS, aud="llm"), RSA_KEY), NOW)
        verifier.verify(sign(dict(CLAIMS, aud=["x", "api"]), RSA_KEY), NOW)
        self.assertReason(verifier, sign(dict(CLAIMS, aud="web"), RSA_KEY), "audience not allowed")
        self.assertReason(verifier, sign(CLAIMS, RSA_KEY), "audience not allowed")

    def test_audienceUnchecked(self) -> None:
        """
        Without configured audiences, C{aud} is not checked.
        """
        _verifier().verify(sign(dict(CLAIMS, aud="anything"), RSA_KEY), NOW)


class KeySelectionTests(LabTests):
    """
    Which keys a token is tried against.
    """

    def mixed(self) -> Verifier:
        rsaJWK = dict(publicJWK(_pem(RSA_KEY)), kid="r1")
        ecJWK = dict(publicJWK(_pem(EC_KEY)), kid="e1")
        otherJWK = dict(publicJWK(_pem(OTHER_RSA_KEY)), kid="r2")
        return _verifier(json.dumps({"keys": [rsaJWK, ecJWK, otherJWK]}))

    def test_mixedSet(self) -> None:
        """
        RSA and EC keys in one set: each token verifies with its own key,
        with and without kid.
        """
        verifier = self.mixed()
        for key, kid in ((RSA_KEY, "r1"), (EC_KEY, "e1"), (OTHER_RSA_KEY, "r2")):
            self.assertEqual(verifier.verify(sign(CLAIMS, key, kid=kid), NOW).subject, "alice")
            self.assertEqual(verifier.verify(sign(dict(CLAIMS, n=1), key), NOW).subject, "alice")

    def test_kidOnlyItsKey(self) -> None:
        """
        A token with a kid is tried only against the key with that kid.
        """
        verifier = self.mixed()
        self.assertReason(verifier, sign(CLAIMS, RSA_KEY, kid="r2"), "signature verification failed")
        self.assertReason(verifier, sign(CLAIMS, RSA_KEY, kid="nope"), "no matching key")

    def test_sharedSecret(self) -> None:
        """
        A key configured as a shared secret verifies HMAC tokens.
        """
        verifier = _verifier(json.dumps({"keys": [{"kty": "oct", "k": _b64(SECRET), "kid": "s"}]}))
        verifier.verify(sign(CLAIMS, SECRET, "HS256"), NOW)
        verifier.verify(sign(CLAIMS, SECRET, "HS256", kid="s"), NOW)
        self.assertReason(verifier, sign(CLAIMS, b"t" * 32, "HS256"), "signature verification failed")

    def test_thumbprintKid(self) -> None:
        """
        A PEM key's kid is its thumbprint, padded or not.
        """
        verifier = _verifier()
        kid = publicJWK(_pem(RSA_KEY))["kid"]
        verifier.verify(sign(CLAIMS, RSA_KEY, kid=kid), NOW)
        verifier.verify(sign(dict(CLAIMS, n=2), RSA_KEY, kid=kid + "="), NOW)

    def test_skippedKeys(self) -> None:
        """
        Keys for encryption and keys whose JWK alg differs are not used.
        """
        jwk = publicJWK(_pem(RSA_KEY))
        for variant in (dict(jwk, use="enc"), dict(jwk, alg="RS512"), dict(jwk, key_ops=["encrypt"])):
            others = dict(publicJWK(_pem(EC_KEY)), kid="ec")
            verifier = _verifier(json.dumps({"keys": [variant, others]}))
            self.assertReason(verifier, sign(CLAIMS, RSA_KEY), "no matching key")

    def test_ecCurveBinding(self) -> None:
        """
        An ES384 token is never checked with a P-256 key.
        """
        verifier = _verifier(_pem(EC_KEY))
        p384 = ec.generate_private_key(ec.SECP384R1())
        self.assertReason(verifier, sign(CLAIMS, p384), "no matching key")


class CacheTests(LabTests):
    """
    Verified tokens are remembered until their exp.
    """

    def test_hitSkipsSignature(self) -> None:
        """
        A cached token passes even after its key is gone, until it expires.
        """
        keys = [keysFromText(_pem(RSA_KEY))]
        verifier = Verifier([JWTProvider("p", "solo.io", (), lambda: keys[0])])
        token = sign(CLAIMS, RSA_KEY)
        verifier.verify(token, NOW)
        original = keys[0]
        keys[0] = keysFromText(_pem(OTHER_RSA_KEY))
        self.assertEqual(verifier.verify(token, NOW + 1).subject, "alice")
        keys[0] = original
        self.assertReason(verifier, token, "token expired", now=NOW + 700)

    def test_bounded(self) -> None:
        """
        The cache keeps at most C{cacheSize} tokens.
        """
        verifier = Verifier(
            [JWTProvider("p", "solo.io", (), lambda: keysFromText(_pem(RSA_KEY)))], cacheSize=2
        )
        for i in range(5):
            verifier.verify(sign(dict(CLAIMS, n=i), RSA_KEY), NOW)
        self.assertEqual(len(verifier._cache), 2)

    def test_failuresNotCached(self) -> None:
        """
        A token refused for want of keys passes once the keys arrive.
        """
        keys: list = [()]
        verifier = Verifier([JWTProvider("p", "solo.io", (), lambda: keys[0])])
        token = sign(CLAIMS, RSA_KEY)
        self.assertReason(verifier, token, "no keys available")
        keys[0] = keysFromText(_pem(RSA_KEY))
        verifier.verify(token, NOW)


class ParseTests(SynchronousTestCase):
    """
    L{parseToken} on its own.
    """

    def test_payloadAnyBytes(self) -> None:
        """
        A JWS payload need not be JSON at this level.
        """
        token = _raw({"alg": "HS256"}, {}, b"x").split(".")
        token[1] = _b64(b"foo")
        self.assertEqual(parseToken(".".join(token)).payload, b"foo")
