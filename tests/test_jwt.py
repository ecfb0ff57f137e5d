"""
Tests for L{aigateway.auth.jwt}: the lab's token passes, every rule of the
verifier holds, and the tokens an attacker would forge do not pass.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time

import attrs
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jose.backends.cryptography_backend import CryptographyHMACKey, CryptographyRSAKey
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from aigateway.auth.jwt import (
    REASONS,
    JWTError,
    JWTProvider,
    ParsedToken,
    Verifier,
    parseToken,
    verifySignature,
)
from aigateway.auth.keys import RemoteJWKS, StaticKeys, VerifyKey, keysFromText
from aigateway.auth.token import main as tokenMain
from aigateway.auth.token import publicJWK, sign
from tests.lab import ALICE_TOKEN, LAB_PEM

# The RFC 7638 thumbprint of the lab's key: the kid the gateway gives it.
LAB_KID = "uC8qbYNruYw1BLzUrcbvo7ahSXmWZZbOJ4ppX5jcp4U"

NOW = 1_800_000_000.0
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SMALL_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=1024)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
P384_KEY = ec.generate_private_key(ec.SECP384R1())
P521_KEY = ec.generate_private_key(ec.SECP521R1())
SECRET = bytes(range(64))
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
CLAIMS = {"iss": "solo.io", "sub": "alice", "exp": NOW + 600}


def _pem(key) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _part(part: object) -> str:
    if isinstance(part, (dict, list)):
        part = json.dumps(part)
    if isinstance(part, str):
        part = part.encode("utf-8")
    assert isinstance(part, bytes)
    return _b64(part)


def _raw(header: object, claims: object, signature: bytes = b"") -> str:
    """
    A token with any header and payload (dicts are JSON-encoded, text and
    bytes taken as they are) and the given signature bytes.
    """
    return _part(header) + "." + _part(claims) + "." + _b64(signature)


def _forge(header: object, claims: object, key=RSA_KEY) -> str:
    """
    Like L{_raw}, but with a valid RS256 signature by C{key}, so only the
    parsing rules can refuse it.
    """
    signingInput = _part(header) + "." + _part(claims)
    signature = key.sign(signingInput.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return signingInput + "." + _b64(signature)


def _keys(*texts: str) -> tuple[VerifyKey, ...]:
    return sum((keysFromText(t) for t in texts), ())


def _verifier(*keyTexts: str, keys=None, issuer: str = "solo.io", **options) -> Verifier:
    keys = keys if keys is not None else _keys(*(keyTexts or (_pem(RSA_KEY),)))
    audiences = options.pop("audiences", ())
    cacheSize = options.pop("cacheSize", 10000)
    return Verifier([JWTProvider("p", issuer, audiences, StaticKeys(tuple(keys)), **options)],
                    cacheSize=cacheSize)


class _Counting:
    """
    A signature check that counts its calls, for L{Verifier}'s hook.
    """

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, token: ParsedToken, keys) -> VerifyKey:
        self.calls += 1
        return verifySignature(token, keys)


class _Case(SynchronousTestCase):
    def assertReason(self, verifier: Verifier, token: str, reason: str, now: float = NOW) -> None:
        with self.assertRaises(JWTError) as caught:
            verifier.verify(token, now)
        self.assertEqual(caught.exception.reason, reason)
        self.assertIn(caught.exception.reason, REASONS)


class LabTests(_Case):
    """
    The lab's own key and token.
    """

    def test_aliceToken(self) -> None:
        """
        RS256, no kid, no exp, issuer solo.io: it passes with all its claims.
        """
        verified = _verifier(LAB_PEM).verify(ALICE_TOKEN, NOW)
        self.assertEqual(verified.provider, "p")
        self.assertEqual(verified.subject, "alice")
        self.assertIsNone(verified.expiresAt)
        self.assertEqual(dict(verified.claims), {
            "iss": "solo.io", "org": "solo.io", "sub": "alice", "team": "dev",
            "llms": {"openai": ["gpt-3.5-turbo"]},
        })

    def test_aliceHasNoKidButTheKeyHasOne(self) -> None:
        """
        The token has no kid while the PEM key gets its thumbprint as kid:
        a kid-less token is tried against every key, so it passes.
        """
        self.assertIsNone(parseToken(ALICE_TOKEN).kid)
        self.assertEqual([k.kid for k in keysFromText(LAB_PEM)], [LAB_KID])
        others = json.dumps({"keys": [dict(publicJWK(_pem(RSA_KEY)), kid="a"),
                                      dict(publicJWK(_pem(EC_KEY)), kid="b")]})
        verifier = _verifier(others, LAB_PEM)
        self.assertEqual(verifier.verify(ALICE_TOKEN, NOW).subject, "alice")

    def test_aliceWrongIssuer(self) -> None:
        """
        With the right key but configured for another issuer: refused.
        """
        self.assertReason(_verifier(LAB_PEM, issuer="other.example"), ALICE_TOKEN, "unknown issuer")

    def test_aliceTampered(self) -> None:
        """
        Alice's signature over another payload does not pass.
        """
        head, payload, signature = ALICE_TOKEN.split(".")
        claims = json.loads(_unb64(payload))
        forged = _part(dict(claims, sub="root"))
        self.assertReason(_verifier(LAB_PEM), f"{head}.{forged}.{signature}",
                          "signature verification failed")

    def test_aliceRequireExp(self) -> None:
        """
        With C{requireExp} or C{maxLifetime}, the lab's token (no exp) is
        refused.
        """
        self.assertReason(_verifier(LAB_PEM, requireExp=True), ALICE_TOKEN, "missing exp")
        self.assertReason(_verifier(LAB_PEM, maxLifetime=3600), ALICE_TOKEN, "missing exp")

    def test_claimsReadOnly(self) -> None:
        """
        The claims handed out (and cached) cannot be changed by a caller.
        """
        verified = _verifier(LAB_PEM).verify(ALICE_TOKEN, NOW)
        with self.assertRaises(TypeError):
            verified.claims["sub"] = "root"  # type: ignore[index]


class ParseTests(_Case):
    """
    Strict parsing, before any cryptography.
    """

    def test_segments(self) -> None:
        """
        One, two, four and five segments, and empty ones, are malformed.
        """
        verifier = _verifier()
        token = sign(CLAIMS, RSA_KEY)
        head, payload, signature = token.split(".")
        for bad in (head, f"{head}.{payload}", f"{token}.x", f"{token}.x.y", f"{token}.",
                    "", ".", "..", "...", f".{payload}.{signature}", f"{head}..{signature}"):
            self.assertReason(verifier, bad, "malformed token")

    def test_padding(self) -> None:
        """
        Base64 padding in any segment is malformed.
        """
        verifier = _verifier()
        head, payload, signature = sign(CLAIMS, RSA_KEY).split(".")
        for bad in (f"{head}=.{payload}.{signature}", f"{head}.{payload}==.{signature}",
                    f"{head}.{payload}.{signature}==", f"{head}.{payload}.{signature}="):
            self.assertReason(verifier, bad, "malformed token")

    def test_standardAlphabet(self) -> None:
        """
        C{+} and C{/} (standard base64) are malformed, even where the
        base64url character would have been the same bits.
        """
        verifier = _verifier()
        token = sign(dict(CLAIMS, pad="\xfb\xff"), RSA_KEY)
        head, payload, signature = token.split(".")
        swapped = [s.replace("-", "+").replace("_", "/") for s in (head, payload, signature)]
        self.assertNotEqual(swapped, [head, payload, signature])
        for index in range(3):
            parts = [head, payload, signature]
            parts[index] = swapped[index]
            if parts != [head, payload, signature]:
                self.assertReason(verifier, ".".join(parts), "malformed token")
        self.assertReason(verifier, f"{head}.{payload}.+{signature[1:]}", "malformed token")

    def test_whitespace(self) -> None:
        """
        Spaces, tabs and newlines anywhere are malformed.
        """
        verifier = _verifier()
        head, payload, signature = sign(CLAIMS, RSA_KEY).split(".")
        for bad in (f" {head}.{payload}.{signature}", f"{head}.{payload}.{signature}\n",
                    f"{head}. {payload}.{signature}", f"{head}.{payload}.{signature[:9]}\t{signature[9:]}",
                    f"{head[:5]}\r\n{head[5:]}.{payload}.{signature}"):
            self.assertReason(verifier, bad, "malformed token")

    def test_nonCanonicalTrailingBits(self) -> None:
        """
        A segment whose unused trailing bits are not zero decodes (leniently)
        to the same bytes, yet is malformed: re-encoding must give it back.
        """
        verifier = _verifier()
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        for pad in range(3):
            token = sign(dict(CLAIMS, pad="x" * pad), RSA_KEY)
            verifier.verify(token, NOW)
            parts = token.split(".")
            for index, segment in enumerate(parts):
                if len(segment) % 4 == 0:
                    continue
                sibling = alphabet[alphabet.index(segment[-1]) ^ 1]
                bad = segment[:-1] + sibling
                self.assertEqual(_unb64(bad), _unb64(segment))
                mutated = list(parts)
                mutated[index] = bad
                self.assertReason(verifier, ".".join(mutated), "malformed token")

    def test_impossibleLength(self) -> None:
        """
        A segment of 4k+1 characters is not base64url.
        """
        verifier = _verifier()
        head, payload, signature = sign(CLAIMS, RSA_KEY).split(".")
        extra = "A" * ((1 - len(signature)) % 4)
        self.assertEqual((len(signature) + len(extra)) % 4, 1)
        self.assertReason(verifier, f"{head}.{payload}.{signature}{extra}", "malformed token")

    def test_nonASCII(self) -> None:
        """
        Any non-ASCII character is malformed.
        """
        verifier = _verifier()
        head, payload, signature = sign(CLAIMS, RSA_KEY).split(".")
        for bad in (f"{head}.{payload}.{signature}\u00e9", f"{head}\uff10.{payload}.{signature}",
                    f"{head}.{payload}\u2024{signature}"):
            self.assertReason(verifier, bad, "malformed token")

    def test_headerNotAnObject(self) -> None:
        """
        A header that is not a JSON object is malformed.
        """
        verifier = _verifier()
        for header in ('["RS256"]', '"RS256"', "1", "null", "not json", "", "{", b"\xff\xfe"):
            self.assertReason(verifier, _forge(header, CLAIMS), "malformed token")

    def test_payloadNotAnObject(self) -> None:
        """
        A validly signed payload that is not a JSON object is malformed.
        """
        verifier = _verifier()
        for payload in ("1", "[]", '"solo.io"', "null", "foo", "", b"\xff", '{"iss":"solo.io"'):
            self.assertReason(verifier, _forge({"alg": "RS256"}, payload), "malformed token")

    def test_duplicateMembers(self) -> None:
        """
        Duplicate members (a parser differential) are malformed, even under
        a valid signature.
        """
        verifier = _verifier()
        self.assertReason(verifier, _forge('{"alg":"RS256","alg":"none"}', CLAIMS), "malformed token")
        self.assertReason(verifier, _forge({"alg": "RS256"}, '{"iss":"solo.io","iss":"evil","sub":"a"}'),
                          "malformed token")
        self.assertReason(verifier, _forge({"alg": "RS256"},
                                           '{"iss":"solo.io","llms":{"a":1,"a":2}}'), "malformed token")

    def test_nonFiniteNumbers(self) -> None:
        """
        NaN and Infinity are not JSON; a number too large for a float is an
        invalid claim.
        """
        verifier = _verifier()
        for constant in ("NaN", "Infinity", "-Infinity"):
            self.assertReason(verifier, _forge({"alg": "RS256"}, f'{{"iss":"solo.io","exp":{constant}}}'),
                              "malformed token")
        self.assertReason(verifier, _forge({"alg": "RS256"}, '{"iss":"solo.io","exp":1e400}'),
                          "invalid claim exp")

    def test_notUTF8(self) -> None:
        """
        Header or payload bytes that are not UTF-8, or a lone surrogate, are
        malformed.
        """
        verifier = _verifier()
        self.assertReason(verifier, _forge(b'{"alg":"RS256","x":"\xff"}', CLAIMS), "malformed token")
        self.assertReason(verifier, _forge({"alg": "RS256"}, b'{"iss":"solo.io","sub":"\xc3("}'),
                          "malformed token")
        self.assertReason(verifier, _forge({"alg": "RS256"}, '{"iss":"solo.io","sub":"\\ud800"}'),
                          "malformed token")
        self.assertReason(verifier, _forge(b"\xef\xbb\xbf" + b'{"alg":"RS256"}', CLAIMS), "malformed token")

    def test_tooLarge(self) -> None:
        """
        A megabyte token is refused before it is decoded; the limit is
        C{maxTokenBytes}, inclusive.
        """
        token = sign(dict(CLAIMS, pad="x" * 1_000_000), RSA_KEY)
        self.assertReason(_verifier(), token, "token too large")
        self.assertReason(_verifier(), "." * 2_000_000, "token too large")
        small = sign(CLAIMS, RSA_KEY)
        keys = StaticKeys(keysFromText(_pem(RSA_KEY)))
        exact = Verifier([JWTProvider("p", "solo.io", (), keys)], maxTokenBytes=len(small))
        self.assertEqual(exact.verify(small, NOW).subject, "alice")
        under = Verifier([JWTProvider("p", "solo.io", (), keys)], maxTokenBytes=len(small) - 1)
        self.assertReason(under, small, "token too large")

    def test_crit(self) -> None:
        """
        Any C{crit} we would have to understand is refused; a C{crit} that
        is not a non-empty list of strings is malformed.
        """
        verifier = _verifier()
        for crit in (["exp"], ["b64"], ["x"], ["x", "y"]):
            self.assertReason(verifier, sign(CLAIMS, RSA_KEY, header={"crit": crit, "x": 1, "b64": True}),
                              "unsupported critical header")
        malformed: list[object] = [[], "exp", [1], None, {"exp": 1}, [["exp"]]]
        for bad in malformed:
            self.assertReason(verifier, sign(CLAIMS, RSA_KEY, header={"crit": bad}), "malformed token")

    def test_algShape(self) -> None:
        """
        C{alg} must be present and a string.
        """
        verifier = _verifier()
        for header in ({}, {"alg": 256}, {"alg": None}, {"alg": ["RS256"]}, {"alg": {"a": "RS256"}},
                       {"alg": True}):
            self.assertReason(verifier, _forge(header, CLAIMS), "malformed token")

    def test_kidShape(self) -> None:
        """
        C{kid}, when present, must be a string.
        """
        verifier = _verifier()
        kids: list[object] = [1, None, [], {"a": 1}, False]
        for kid in kids:
            self.assertReason(verifier, _forge({"alg": "RS256", "kid": kid}, CLAIMS), "malformed token")

    def test_payloadAnyBytes(self) -> None:
        """
        At the JWS level (L{parseToken}) the payload need not be JSON, and
        the signing input is exactly the first two segments.
        """
        token = _raw({"alg": "HS256"}, b"foo", b"x")
        parsed = parseToken(token)
        self.assertEqual(parsed.payload, b"foo")
        self.assertEqual(parsed.signingInput, token.rsplit(".", 1)[0].encode("ascii"))
        self.assertEqual(parsed.signature, b"x")


class AlgorithmTests(_Case):
    """
    C{alg}: refused, unsupported, or bound to its kind of key.
    """

    def test_algNone(self) -> None:
        """
        C{none} in any spelling, with an empty, a made-up or a real
        signature, is not allowed.
        """
        verifier = _verifier()
        real = _unb64(sign(CLAIMS, RSA_KEY).split(".")[2])
        for alg in ("none", "None", "NONE", "nOnE", "NoNe"):
            for signature in (b"", b"x", real):
                self.assertReason(verifier, _raw({"alg": alg, "typ": "JWT"}, CLAIMS, signature),
                                  "algorithm not allowed")
            self.assertReason(verifier, _raw({"alg": alg}, CLAIMS)[:-1], "malformed token")

    def test_unsupported(self) -> None:
        """
        PS256/384/512, EdDSA, ES256K and made-up names are not supported.
        """
        verifier = _verifier()
        for alg in ("PS256", "PS384", "PS512", "EdDSA", "ES256K", "HS1", "RS1", "rs256", "RS256 ",
                    "", "ES521", "A256GCM", "RSA-OAEP"):
            self.assertReason(verifier, _raw({"alg": alg}, CLAIMS, b"x" * 256), "algorithm not supported")

    def publicKeyEncodings(self, key) -> list[bytes]:
        public = key.public_key()
        jwk = publicJWK(_pem(key))
        encodings = [
            _pem(key).encode(),
            _pem(key).strip().encode(),
            public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
            json.dumps(jwk).encode(),
            jwk["kid"].encode(),
        ]
        if isinstance(public, rsa.RSAPublicKey):
            encodings += [
                public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
                public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1),
                _unb64(jwk["n"]), _unb64(jwk["e"]), _unb64(jwk["n"]) + _unb64(jwk["e"]),
                jwk["n"].encode(),
            ]
        else:
            encodings += [_unb64(jwk["x"]) + _unb64(jwk["y"]), public.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)]
        return encodings

    def test_publicKeyAsHMACSecret(self) -> None:
        """
        RS->HS (and ES->HS) confusion: HMAC signed with the public key as
        PEM, DER, JWK or its n, e (x, y) bytes never passes; with no shared
        secret configured there is no key to try at all.
        """
        for key in (RSA_KEY, EC_KEY):
            verifier = _verifier(_pem(key))
            for secret in self.publicKeyEncodings(key):
                for alg in ("HS256", "HS384", "HS512"):
                    self.assertReason(verifier, sign(CLAIMS, secret, alg), "no matching key")

    def test_publicKeyAsHMACSecretBesideARealSecret(self) -> None:
        """
        With a real shared secret configured too, HMAC tokens keyed with a
        public key are tried against that secret only, and fail.
        """
        keys = _keys(_pem(RSA_KEY), json.dumps({"kty": "oct", "k": _b64(SECRET)}))
        verifier = _verifier(keys=keys)
        verifier.verify(sign(CLAIMS, SECRET, "HS256"), NOW)
        for secret in self.publicKeyEncodings(RSA_KEY):
            self.assertReason(verifier, sign(CLAIMS, secret, "HS256"), "signature verification failed")

    def test_labKeyAsHMACSecret(self) -> None:
        """
        The lab's own PEM text as an HMAC secret, the classic attack on it.
        """
        for secret in (LAB_PEM.encode(), LAB_PEM.strip().encode()):
            forged = sign({"iss": "solo.io", "sub": "root"}, secret, "HS256")
            self.assertReason(_verifier(LAB_PEM), forged, "no matching key")

    def test_joseWouldAcceptDER(self) -> None:
        """
        python-jose on its own lets DER public key bytes be an HMAC secret;
        a key built that way by mistake (an RSA key carrying an HMAC
        verifier) is still never used for HS256.
        """
        der = RSA_KEY.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        rogue = VerifyKey(kty="RSA", kid=None, bits=2048, algorithms={"HS256": CryptographyHMACKey(der, "HS256")})
        forged = sign(CLAIMS, der, "HS256")
        signingInput, signature = forged.rsplit(".", 1)
        self.assertTrue(rogue.algorithms["HS256"].verify(signingInput.encode(), _unb64(signature)))
        self.assertReason(_verifier(keys=(rogue,)), forged, "no matching key")

    def test_keyTypeBinding(self) -> None:
        """
        RS only with RSA keys, ES only with EC keys of its own curve.
        """
        self.assertReason(_verifier(_pem(EC_KEY)), sign(CLAIMS, RSA_KEY), "no matching key")
        self.assertReason(_verifier(_pem(RSA_KEY)), sign(CLAIMS, EC_KEY), "no matching key")
        self.assertReason(_verifier(_pem(EC_KEY)), sign(CLAIMS, P384_KEY), "no matching key")
        self.assertReason(_verifier(_pem(P384_KEY)), sign(CLAIMS, EC_KEY), "no matching key")
        self.assertReason(_verifier(_pem(EC_KEY), _pem(P384_KEY)), sign(CLAIMS, P521_KEY), "no matching key")
        rogue = VerifyKey(kty="EC", kid=None, crv="P-256", bits=256,
                          algorithms={"RS256": CryptographyRSAKey(RSA_KEY.public_key(), "RS256")})
        self.assertReason(_verifier(keys=(rogue,)), sign(CLAIMS, RSA_KEY), "no matching key")

    def test_everySupportedAlgorithm(self) -> None:
        """
        RS256/384/512, ES256/384/512 and HS256/384/512 each verify with the
        right key.
        """
        keys = _keys(_pem(RSA_KEY), _pem(EC_KEY), _pem(P384_KEY), _pem(P521_KEY))
        verifier = _verifier(keys=keys)
        for key, alg in ((RSA_KEY, "RS256"), (RSA_KEY, "RS384"), (RSA_KEY, "RS512"),
                         (EC_KEY, "ES256"), (P384_KEY, "ES384"), (P521_KEY, "ES512")):
            self.assertEqual(verifier.verify(sign(CLAIMS, key, alg), NOW).subject, "alice", alg)
        hmac = _verifier(json.dumps({"kty": "oct", "k": _b64(SECRET)}))
        for alg in ("HS256", "HS384", "HS512"):
            self.assertEqual(hmac.verify(sign(CLAIMS, SECRET, alg), NOW).subject, "alice", alg)

    def test_shortSecret(self) -> None:
        """
        A 32-byte secret verifies HS256 only: HS384/512 need a longer one.
        """
        verifier = _verifier(json.dumps({"kty": "oct", "k": _b64(SECRET[:32])}))
        verifier.verify(sign(CLAIMS, SECRET[:32], "HS256"), NOW)
        self.assertReason(verifier, sign(CLAIMS, SECRET[:32], "HS384"), "no matching key")
        self.assertReason(verifier, sign(CLAIMS, SECRET[:32], "HS512"), "no matching key")


class SignatureTests(_Case):
    """
    Signatures that are missing, cut, altered or of the wrong form.
    """

    def test_nullAndTruncated(self) -> None:
        """
        Empty, zero, truncated, extended and altered RSA signatures.
        """
        verifier = _verifier()
        token = sign(CLAIMS, RSA_KEY)
        head, payload, signature = token.split(".")
        raw = _unb64(signature)
        for bad in (b"", b"\x00", bytes(len(raw)), raw[:-1], raw[:128], raw + b"\x00",
                    b"\x00" + raw, raw[:-1] + bytes([raw[-1] ^ 1]), raw * 2):
            self.assertReason(verifier, f"{head}.{payload}.{_b64(bad)}", "signature verification failed")
        self.assertEqual(verifier.verify(token, NOW).subject, "alice")

    def test_tamperedPayloadAndHeader(self) -> None:
        """
        Another payload or header under a real signature fails.
        """
        verifier = _verifier()
        head, payload, signature = sign(CLAIMS, RSA_KEY).split(".")
        forged = _part(dict(CLAIMS, sub="root"))
        self.assertReason(verifier, f"{head}.{forged}.{signature}", "signature verification failed")
        otherHead = _part({"alg": "RS256", "typ": "at+jwt"})
        self.assertReason(verifier, f"{otherHead}.{payload}.{signature}", "signature verification failed")

    def test_otherKey(self) -> None:
        """
        A token signed by a key that is not configured.
        """
        self.assertReason(_verifier(), sign(CLAIMS, OTHER_RSA_KEY), "signature verification failed")

    def test_exactSigningInput(self) -> None:
        """
        Only the signature of C{header_b64 + "." + payload_b64} counts, not
        one of the decoded JSON or of a re-encoding.
        """
        verifier = _verifier()
        header, claims = {"alg": "RS256"}, CLAIMS
        for signed in (json.dumps(header) + "." + json.dumps(claims),
                       _part(header) + "." + _part(claims) + ".",
                       _part(header) + _part(claims),
                       _b64(json.dumps(header, indent=1).encode()) + "." + _part(claims)):
            signature = RSA_KEY.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
            self.assertReason(verifier, _raw(header, claims, signature), "signature verification failed")

    def test_es256Degenerate(self) -> None:
        """
        ES256 with r or s zero or not below n, DER-encoded, too long or too
        short, fails; the raw r||s signature passes.
        """
        verifier = _verifier(_pem(EC_KEY))
        token = sign(CLAIMS, EC_KEY)
        head, payload, signature = token.split(".")
        raw = _unb64(signature)
        r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")

        def rs(r: int, s: int, size: int = 32) -> bytes:
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")

        der = EC_KEY.sign(f"{head}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))
        for bad in (bytes(64), rs(0, s), rs(r, 0), rs(P256_ORDER, s), rs(r, P256_ORDER),
                    rs(r + P256_ORDER, s, 33), rs(2**256 - 1, 2**256 - 1), der, encode_dss_signature(r, s),
                    der.ljust(64, b"\x00")[:64], raw + b"\x00", b"\x00" + raw, raw[:-1], raw[:32],
                    raw * 2, b""):
            self.assertReason(verifier, f"{head}.{payload}.{_b64(bad)}", "signature verification failed")
        self.assertEqual(verifier.verify(token, NOW).subject, "alice")

    def test_es384AndES512Lengths(self) -> None:
        """
        ES384 needs exactly 96 bytes and ES512 exactly 132.
        """
        for key in (P384_KEY, P521_KEY):
            verifier = _verifier(_pem(key))
            head, payload, signature = sign(CLAIMS, key).split(".")
            raw = _unb64(signature)
            for bad in (raw[:-1], raw + b"\x00", b"\x00" + raw, bytes(len(raw))):
                self.assertReason(verifier, f"{head}.{payload}.{_b64(bad)}", "signature verification failed")

    def test_hmacTruncated(self) -> None:
        """
        A truncated or extended HMAC never passes.
        """
        verifier = _verifier(json.dumps({"kty": "oct", "k": _b64(SECRET)}))
        head, payload, signature = sign(CLAIMS, SECRET, "HS256").split(".")
        raw = _unb64(signature)
        for bad in (raw[:16], raw[:-1], raw + b"\x00", b"", bytes(32)):
            self.assertReason(verifier, f"{head}.{payload}.{_b64(bad)}", "signature verification failed")


class EmbeddedKeyTests(_Case):
    """
    Keys named or carried by the token itself (C{jwk}, C{jku}, C{x5u},
    C{x5c}) are never used and never fetched.
    """

    URL = "https://idp.example/jwks"

    def setUp(self) -> None:
        self.clock = Clock()
        self.fetched: list[str] = []
        self.remote = RemoteJWKS(self.URL, 300, self.clock, self.fetch)
        self.remote.start()
        self.addCleanup(self.remote.stop)
        self.verifier = Verifier([JWTProvider("idp", "solo.io", (), lambda: self.remote.keys,
                                              onUnknownKid=self.remote.refreshForUnknownKid)])

    def fetch(self, url: str) -> Deferred:
        if url != self.URL:
            self.fail(f"fetched {url}")
        self.fetched.append(url)
        document = {"keys": [dict(publicJWK(_pem(RSA_KEY)), kid="ours")]}
        return succeed(json.dumps(document).encode())

    def test_embeddedJWK(self) -> None:
        """
        A token signed by the attacker's key and carrying that key as
        C{jwk} is refused, with and without a kid.
        """
        attacker = publicJWK(_pem(OTHER_RSA_KEY))
        token = sign(CLAIMS, OTHER_RSA_KEY, header={"jwk": attacker})
        self.assertReason(self.verifier, token, "signature verification failed")
        token = sign(CLAIMS, OTHER_RSA_KEY, kid=attacker["kid"], header={"jwk": attacker})
        self.assertReason(self.verifier, token, "no matching key")
        token = sign(CLAIMS, OTHER_RSA_KEY, kid="ours", header={"jwk": dict(attacker, kid="ours")})
        self.assertReason(self.verifier, token, "signature verification failed")

    def test_noFetch(self) -> None:
        """
        C{jku}, C{x5u}, C{jwk} and C{x5c} cause no fetch: only the key set's
        own URL is ever fetched (once at start, once more for an unknown
        kid), and the attacker's URLs never.
        """
        self.assertEqual(self.fetched, [self.URL])
        attacker = publicJWK(_pem(OTHER_RSA_KEY))
        for extra in ({"jku": "https://evil.example/jwks"}, {"x5u": "https://evil.example/cert.pem"},
                      {"jwk": attacker}, {"x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A"]},
                      {"jku": "file:///etc/passwd", "x5u": "http://169.254.169.254/"}):
            self.assertReason(self.verifier, sign(CLAIMS, OTHER_RSA_KEY, header=extra),
                              "signature verification failed")
        self.assertEqual(self.fetched, [self.URL])
        self.assertReason(self.verifier, sign(CLAIMS, OTHER_RSA_KEY, kid="new",
                                              header={"jku": "https://evil.example/jwks"}),
                          "no matching key")
        self.assertEqual(self.fetched, [self.URL, self.URL])
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [300])

    def test_ourKeyStillWorks(self) -> None:
        """
        The key set's own key verifies, whatever the token says about keys.
        """
        token = sign(CLAIMS, RSA_KEY, kid="ours", header={"jku": "https://evil.example/jwks"})
        self.assertEqual(self.verifier.verify(token, NOW).subject, "alice")


class KidTests(_Case):
    """
    Key selection by C{kid}, as Envoy does it.
    """

    def mixed(self, **options) -> Verifier:
        document = {"keys": [dict(publicJWK(_pem(RSA_KEY)), kid="r1"),
                             dict(publicJWK(_pem(EC_KEY)), kid="e1"),
                             dict(publicJWK(_pem(OTHER_RSA_KEY)), kid="r2")]}
        return _verifier(json.dumps(document), **options)

    def test_kidInjection(self) -> None:
        """
        Hostile kid values find no key, and quickly.
        """
        unknown: list[str] = []
        verifier = self.mixed(onUnknownKid=lambda: unknown.append("x"))
        kids = ("../../dev/null", "' UNION SELECT 1 --", "|sleep 10", "$(sleep 10)", "`id`",
                "\u0000", "%00", "a" * 5000, "/etc/passwd", "http://evil.example/key")
        started = time.monotonic()
        for kid in kids:
            self.assertReason(verifier, sign(CLAIMS, OTHER_RSA_KEY, kid=kid), "no matching key")
        self.assertLess(time.monotonic() - started, 0.5)
        self.assertEqual(len(unknown), len(kids))

    def test_kidOnlyItsKey(self) -> None:
        """
        A token with a kid is tried only against the key with that kid.
        """
        verifier = self.mixed()
        self.assertEqual(verifier.verify(sign(CLAIMS, RSA_KEY, kid="r1"), NOW).subject, "alice")
        self.assertReason(verifier, sign(CLAIMS, RSA_KEY, kid="r2"), "signature verification failed")
        self.assertReason(verifier, sign(CLAIMS, RSA_KEY, kid="e1"), "no matching key")
        self.assertReason(verifier, sign(CLAIMS, RSA_KEY, kid="nope"), "no matching key")

    def test_noKidEveryKey(self) -> None:
        """
        A token without kid is tried against every key that fits its alg.
        """
        verifier = self.mixed()
        for key in (RSA_KEY, EC_KEY, OTHER_RSA_KEY):
            self.assertEqual(verifier.verify(sign(CLAIMS, key), NOW).subject, "alice")

    def test_thumbprintKid(self) -> None:
        """
        A PEM key's kid is its thumbprint, matched padded or not.
        """
        verifier = _verifier()
        kid = publicJWK(_pem(RSA_KEY))["kid"]
        self.assertEqual(len(kid), 43)
        verifier.verify(sign(CLAIMS, RSA_KEY, kid=kid), NOW)
        verifier.verify(sign(dict(CLAIMS, n=2), RSA_KEY, kid=kid + "="), NOW)
        self.assertReason(verifier, sign(CLAIMS, RSA_KEY, kid=kid[:-1]), "no matching key")
        self.assertReason(_verifier(LAB_PEM), sign(CLAIMS, RSA_KEY, kid=LAB_KID),
                          "signature verification failed")

    def test_paddedKidInTheKeySet(self) -> None:
        """
        A key set whose kid is padded matches a token whose kid is not.
        """
        kid = publicJWK(_pem(RSA_KEY))["kid"]
        verifier = _verifier(json.dumps(dict(publicJWK(_pem(RSA_KEY)), kid=kid + "=")))
        verifier.verify(sign(CLAIMS, RSA_KEY, kid=kid), NOW)

    def test_keyWithoutKid(self) -> None:
        """
        A key without kid may verify tokens with any kid.
        """
        jwk = publicJWK(_pem(RSA_KEY))
        del jwk["kid"]
        verifier = _verifier(json.dumps({"keys": [jwk]}))
        self.assertEqual(verifier.verify(sign(CLAIMS, RSA_KEY, kid="anything"), NOW).subject, "alice")

    def test_onUnknownKid(self) -> None:
        """
        C{onUnknownKid} is called when a kid matches no key, not when a
        kid-less token finds no key nor when the kid's key fails.
        """
        calls: list[int] = []
        verifier = self.mixed(onUnknownKid=lambda: calls.append(1))
        self.assertReason(verifier, sign(CLAIMS, RSA_KEY, kid="new"), "no matching key")
        self.assertEqual(len(calls), 1)
        self.assertReason(verifier, sign(CLAIMS, P384_KEY), "no matching key")
        self.assertReason(verifier, sign(CLAIMS, OTHER_RSA_KEY, kid="r1"), "signature verification failed")
        self.assertEqual(len(calls), 1)


class KeyFilterTests(_Case):
    """
    Which keys are never used, and a set of every kind.
    """

    def test_mixedSet(self) -> None:
        """
        RSA, EC (two curves) and a shared secret in one provider: each kind
        of token verifies, with and without kid, with the right key.
        """
        secret = json.dumps({"kty": "oct", "k": _b64(SECRET), "kid": "s1"})
        ecSet = json.dumps({"keys": [dict(publicJWK(_pem(P384_KEY)), kid="e384")]})
        keys = _keys(_pem(RSA_KEY), _pem(EC_KEY), ecSet, secret)
        verifier = _verifier(keys=keys)
        rsaKid = publicJWK(_pem(RSA_KEY))["kid"]
        ecKid = publicJWK(_pem(EC_KEY))["kid"]
        cases = ((RSA_KEY, "RS256", rsaKid, "RSA"), (EC_KEY, "ES256", ecKid, "EC"),
                 (P384_KEY, "ES384", "e384", "EC"), (SECRET, "HS256", "s1", "oct"),
                 (SECRET, "HS512", "s1", "oct"))
        for key, alg, kid, kty in cases:
            for tokenKid in (kid, None):
                token = sign(CLAIMS, key, alg, kid=tokenKid)
                self.assertEqual(verifier.verify(token, NOW).subject, "alice")
                used = verifySignature(parseToken(token), keys)
                self.assertEqual((used.kty, used.kid), (kty, kid))

    def test_encryptionKeysSkipped(self) -> None:
        """
        Keys for encryption (C{use: enc}, C{key_ops} without verify) are
        never used, even if built by hand.
        """
        jwk = publicJWK(_pem(RSA_KEY))
        others = dict(publicJWK(_pem(EC_KEY)), kid="ec")
        for variant in (dict(jwk, use="enc"), dict(jwk, key_ops=["encrypt"]), dict(jwk, key_ops=[])):
            verifier = _verifier(json.dumps({"keys": [variant, others]}))
            self.assertReason(verifier, sign(CLAIMS, RSA_KEY), "no matching key")
        [key] = keysFromText(_pem(RSA_KEY))
        self.assertReason(_verifier(keys=(attrs.evolve(key, use="enc"),)), sign(CLAIMS, RSA_KEY),
                          "no matching key")

    def test_smallRSASkipped(self) -> None:
        """
        An RSA-1024 key is left out of a key set, and never used even if
        built by hand.
        """
        document = {"keys": [dict(publicJWK(_pem(SMALL_RSA_KEY)), kid="small"),
                             dict(publicJWK(_pem(RSA_KEY)), kid="big")]}
        keys = keysFromText(json.dumps(document))
        self.assertEqual([k.kid for k in keys], ["big"])
        verifier = _verifier(keys=keys)
        self.assertReason(verifier, sign(CLAIMS, SMALL_RSA_KEY, kid="small"), "no matching key")
        self.assertReason(verifier, sign(CLAIMS, SMALL_RSA_KEY), "signature verification failed")
        public = SMALL_RSA_KEY.public_key()
        handmade = VerifyKey(kty="RSA", kid=None, bits=1024,
                             algorithms={"RS256": CryptographyRSAKey(public, "RS256")})
        self.assertReason(_verifier(keys=(handmade,)), sign(CLAIMS, SMALL_RSA_KEY), "no matching key")

    def test_jwkAlgMismatchSkipped(self) -> None:
        """
        A key whose JWK alg is set verifies that algorithm only.
        """
        verifier = _verifier(json.dumps(dict(publicJWK(_pem(RSA_KEY)), alg="RS512")))
        self.assertReason(verifier, sign(CLAIMS, RSA_KEY, "RS256"), "no matching key")
        self.assertEqual(verifier.verify(sign(CLAIMS, RSA_KEY, "RS512"), NOW).subject, "alice")
        [key] = keysFromText(_pem(RSA_KEY))
        self.assertReason(_verifier(keys=(attrs.evolve(key, alg="RS384"),)), sign(CLAIMS, RSA_KEY),
                          "no matching key")


class ClaimTests(_Case):
    """
    Registered claims: types, times with the clock skew, audience.
    """

    def test_timeClaimTypes(self) -> None:
        """
        exp, nbf and iat of the wrong type, not finite, or out of range are
        invalid claims.
        """
        verifier = _verifier()
        for name in ("exp", "nbf", "iat"):
            for value in ("1800000000", None, True, False, [1], {"a": 1}, 1e13, -1e13, 1e300, -1e300,
                          10**400, -(10**400), 10**13):
                claims = dict(CLAIMS, **{name: value})
                self.assertReason(verifier, sign(claims, RSA_KEY), f"invalid claim {name}")
            self.assertReason(verifier, _forge({"alg": "RS256"}, f'{{"iss":"solo.io","{name}":-1e400}}'),
                              f"invalid claim {name}")

    def test_numbers(self) -> None:
        """
        Integer and fractional times both pass.
        """
        verifier = _verifier()
        verified = verifier.verify(sign(dict(CLAIMS, exp=NOW + 0.5, iat=NOW - 1.5, nbf=int(NOW)), RSA_KEY), NOW)
        self.assertEqual(verified.expiresAt, NOW + 0.5)

    def test_expiry(self) -> None:
        """
        exp at or before now minus the skew is expired; after it, it passes.
        """
        verifier = _verifier()
        self.assertReason(verifier, sign(dict(CLAIMS, exp=NOW - 61), RSA_KEY), "token expired")
        self.assertReason(verifier, sign(dict(CLAIMS, exp=NOW - 60), RSA_KEY), "token expired")
        verifier.verify(sign(dict(CLAIMS, exp=NOW - 59), RSA_KEY), NOW)
        strict = _verifier(clockSkew=0)
        self.assertReason(strict, sign(dict(CLAIMS, exp=NOW), RSA_KEY), "token expired")
        strict.verify(sign(dict(CLAIMS, exp=NOW + 1), RSA_KEY), NOW)

    def test_notBefore(self) -> None:
        """
        nbf after now plus the skew is not yet valid.
        """
        verifier = _verifier()
        self.assertReason(verifier, sign(dict(CLAIMS, nbf=NOW + 61), RSA_KEY), "token not yet valid")
        verifier.verify(sign(dict(CLAIMS, nbf=NOW + 60), RSA_KEY), NOW)

    def test_issuedInTheFuture(self) -> None:
        """
        iat after now plus the skew is refused.
        """
        verifier = _verifier()
        self.assertReason(verifier, sign(dict(CLAIMS, iat=NOW + 61), RSA_KEY), "token issued in the future")
        verifier.verify(sign(dict(CLAIMS, iat=NOW + 60), RSA_KEY), NOW)

    def test_requireExp(self) -> None:
        """
        With requireExp, a token without exp is refused.
        """
        verifier = _verifier(requireExp=True)
        claims = dict(CLAIMS)
        del claims["exp"]
        self.assertReason(verifier, sign(claims, RSA_KEY), "missing exp")
        verifier.verify(sign(CLAIMS, RSA_KEY), NOW)

    def test_maxLifetime(self) -> None:
        """
        exp may be at most maxLifetime after iat (or after now without iat).
        """
        verifier = _verifier(maxLifetime=3600)
        verifier.verify(sign(dict(CLAIMS, iat=NOW, exp=NOW + 3600), RSA_KEY), NOW)
        self.assertReason(verifier, sign(dict(CLAIMS, iat=NOW, exp=NOW + 3601), RSA_KEY),
                          "token lifetime too long")
        self.assertReason(verifier, sign(dict(CLAIMS, iat=NOW - 7200, exp=NOW + 600), RSA_KEY),
                          "token lifetime too long")
        verifier.verify(sign(dict(CLAIMS, exp=NOW + 3000), RSA_KEY), NOW)
        self.assertReason(verifier, sign(dict(CLAIMS, exp=NOW + 4000), RSA_KEY), "token lifetime too long")
        claims = dict(CLAIMS)
        del claims["exp"]
        self.assertReason(verifier, sign(claims, RSA_KEY), "missing exp")

    def test_audience(self) -> None:
        """
        With audiences configured, one of them must be in aud (a string or
        a list).
        """
        verifier = _verifier(audiences=("api", "llm"))
        verifier.verify(sign(dict(CLAIMS, aud="llm"), RSA_KEY), NOW)
        verifier.verify(sign(dict(CLAIMS, aud=["x", "api"]), RSA_KEY), NOW)
        self.assertReason(verifier, sign(dict(CLAIMS, aud="web"), RSA_KEY), "audience not allowed")
        self.assertReason(verifier, sign(dict(CLAIMS, aud=[]), RSA_KEY), "audience not allowed")
        self.assertReason(verifier, sign(dict(CLAIMS, aud="API"), RSA_KEY), "audience not allowed")
        self.assertReason(verifier, sign(CLAIMS, RSA_KEY), "audience not allowed")

    def test_audienceUnchecked(self) -> None:
        """
        Without configured audiences, aud is not matched (but still typed).
        """
        _verifier().verify(sign(dict(CLAIMS, aud="anything"), RSA_KEY), NOW)
        _verifier().verify(sign(dict(CLAIMS, aud=[]), RSA_KEY), NOW)

    def test_otherClaimTypes(self) -> None:
        """
        aud must be a string or a list of strings, sub and iss strings.
        """
        verifier = _verifier()
        cases: dict[str, list[object]] = {
            "aud": [1, ["a", 1], {"a": "b"}, None, True, [["a"]]],
            "sub": [7, None, ["alice"], {"a": 1}, False],
            "iss": [7, None, ["solo.io"], {"a": 1}, True],
        }
        for name, values in cases.items():
            for value in values:
                self.assertReason(verifier, sign(dict(CLAIMS, **{name: value}), RSA_KEY), f"invalid claim {name}")
        claims = dict(CLAIMS)
        del claims["iss"]
        self.assertReason(verifier, sign(claims, RSA_KEY), "unknown issuer")
        self.assertReason(verifier, sign(dict(CLAIMS, iss="Solo.io"), RSA_KEY), "unknown issuer")


class ProviderTests(_Case):
    """
    Choosing the provider by iss.
    """

    def test_sharedIssuer(self) -> None:
        """
        Several providers for one issuer are each tried.
        """
        first = JWTProvider("first", "solo.io", (), StaticKeys(keysFromText(_pem(OTHER_RSA_KEY))))
        second = JWTProvider("second", "solo.io", (), StaticKeys(keysFromText(_pem(RSA_KEY))))
        verifier = Verifier([first, second])
        self.assertEqual(verifier.verify(sign(CLAIMS, RSA_KEY), NOW).provider, "second")
        self.assertEqual(verifier.verify(sign(CLAIMS, OTHER_RSA_KEY), NOW).provider, "first")
        self.assertReason(verifier, sign(CLAIMS, EC_KEY), "no matching key")

    def test_sharedIssuerAudiences(self) -> None:
        """
        Two providers with the same keys and different audiences: the one
        whose audience matches takes the token.
        """
        keys = StaticKeys(keysFromText(_pem(RSA_KEY)))
        verifier = Verifier([JWTProvider("web", "solo.io", ("web",), keys),
                             JWTProvider("api", "solo.io", ("api",), keys)])
        self.assertEqual(verifier.verify(sign(dict(CLAIMS, aud="api"), RSA_KEY), NOW).provider, "api")
        self.assertEqual(verifier.verify(sign(dict(CLAIMS, aud="web"), RSA_KEY), NOW).provider, "web")
        self.assertReason(verifier, sign(dict(CLAIMS, aud="cli"), RSA_KEY), "audience not allowed")

    def test_furthestFailure(self) -> None:
        """
        Of several providers' failures, the one that got furthest is said.
        """
        verifier = Verifier([
            JWTProvider("empty", "solo.io", (), StaticKeys(())),
            JWTProvider("ec", "solo.io", (), StaticKeys(keysFromText(_pem(EC_KEY)))),
            JWTProvider("rsa", "solo.io", (), StaticKeys(keysFromText(_pem(OTHER_RSA_KEY)))),
        ])
        self.assertReason(verifier, sign(CLAIMS, RSA_KEY), "signature verification failed")
        self.assertReason(verifier, sign(CLAIMS, P384_KEY), "no matching key")

    def test_noKeysAvailable(self) -> None:
        """
        A provider without keys yet (a remote set not fetched) says so.
        """
        self.assertReason(_verifier(keys=()), sign(CLAIMS, RSA_KEY), "no keys available")


class CacheTests(_Case):
    """
    Verified tokens are remembered, and re-checked against the time.
    """

    def verifier(self, keys=None, cacheSize: int = 10000) -> tuple[Verifier, _Counting]:
        counting = _Counting()
        source = keys if keys is not None else StaticKeys(keysFromText(_pem(RSA_KEY)))
        verifier = Verifier([JWTProvider("p", "solo.io", (), source)], cacheSize=cacheSize,
                            checkSignature=counting)
        return verifier, counting

    def test_hitSkipsSignature(self) -> None:
        """
        A second verification of the same token checks no signature.
        """
        verifier, counting = self.verifier()
        token = sign(CLAIMS, RSA_KEY)
        first = verifier.verify(token, NOW)
        self.assertEqual(counting.calls, 1)
        self.assertIs(verifier.verify(token, NOW + 1), first)
        self.assertEqual(counting.calls, 1)

    def test_cachedTokenExpires(self) -> None:
        """
        A cached token is refused once expired, and forgotten.
        """
        verifier, counting = self.verifier()
        token = sign(CLAIMS, RSA_KEY)
        verifier.verify(token, NOW)
        verifier.verify(token, NOW + 659)
        self.assertReason(verifier, token, "token expired", now=NOW + 660)
        self.assertEqual(len(verifier._cache), 0)

    def test_cachedTokenNotBefore(self) -> None:
        """
        A cached token's nbf is checked against each new now too.
        """
        verifier, counting = self.verifier()
        token = sign(dict(CLAIMS, nbf=NOW + 30), RSA_KEY)
        verifier.verify(token, NOW)
        self.assertReason(verifier, token, "token not yet valid", now=NOW - 100)

    def test_noCache(self) -> None:
        """
        With cacheSize 0, every verification checks the signature.
        """
        verifier, counting = self.verifier(cacheSize=0)
        token = sign(CLAIMS, RSA_KEY)
        for _ in range(3):
            verifier.verify(token, NOW)
        self.assertEqual(counting.calls, 3)
        self.assertEqual(len(verifier._cache), 0)

    def test_leastRecentlyUsedOut(self) -> None:
        """
        The cache keeps at most cacheSize tokens, the least recently used
        going first.
        """
        verifier, counting = self.verifier(cacheSize=2)
        a, b, c = (sign(dict(CLAIMS, n=i), RSA_KEY) for i in range(3))
        for token in (a, b, a, c):
            verifier.verify(token, NOW)
        self.assertEqual(counting.calls, 3)
        verifier.verify(a, NOW)
        self.assertEqual(counting.calls, 3)
        verifier.verify(b, NOW)
        self.assertEqual(counting.calls, 4)
        self.assertEqual(len(verifier._cache), 2)

    def test_failuresNotCached(self) -> None:
        """
        A token refused for want of keys passes once the keys arrive.
        """
        keys: list = [()]
        verifier, counting = self.verifier(keys=lambda: keys[0])
        token = sign(CLAIMS, RSA_KEY)
        self.assertReason(verifier, token, "no keys available")
        keys[0] = keysFromText(_pem(RSA_KEY))
        verifier.verify(token, NOW)

    def test_removedKeyRevokesCachedTokens(self) -> None:
        """
        Once the key that verified a cached token leaves the key set, the
        token is verified again, and refused.
        """
        keys = [keysFromText(_pem(RSA_KEY))]
        verifier, counting = self.verifier(keys=lambda: keys[0])
        token = sign(CLAIMS, RSA_KEY)
        verifier.verify(token, NOW)
        keys[0] = keys[0] + keysFromText(_pem(EC_KEY))
        verifier.verify(token, NOW)
        self.assertEqual(counting.calls, 1)
        keys[0] = keysFromText(_pem(OTHER_RSA_KEY))
        self.assertReason(verifier, token, "signature verification failed")
        self.assertEqual(counting.calls, 2)


class FuzzTests(_Case):
    """
    Whatever the input, only L{JWTError} with a listed reason comes out.
    """

    verifier = _verifier(_pem(RSA_KEY), _pem(EC_KEY))
    good = sign(CLAIMS, RSA_KEY)

    def assertOnlyJWTError(self, token: object) -> None:
        try:
            self.verifier.verify(token, NOW)  # type: ignore[arg-type]
        except JWTError as e:
            self.assertIn(e.reason, REASONS)

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.text(max_size=300))
    def test_anyText(self, token: str) -> None:
        """
        Any text at all.
        """
        self.assertOnlyJWTError(token)

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.text("ABCDEFabcdef0123456789-_=+/. ", max_size=40), min_size=1, max_size=6))
    def test_segmentLike(self, parts: list[str]) -> None:
        """
        Text made of base64-ish pieces joined by dots.
        """
        self.assertOnlyJWTError(".".join(parts))

    jsonValues = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
        lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children,
                                                                            max_size=3),
        max_leaves=8,
    )
    header = st.fixed_dictionaries(
        {}, optional={"alg": st.sampled_from(["RS256", "ES256", "HS256", "none", "PS256", 1]) | st.text(max_size=6),
                      "kid": jsonValues, "crit": jsonValues, "typ": jsonValues, "jku": jsonValues})
    payload = st.fixed_dictionaries(
        {}, optional={"iss": st.sampled_from(["solo.io"]) | jsonValues, "exp": jsonValues,
                      "nbf": jsonValues, "iat": jsonValues, "aud": jsonValues, "sub": jsonValues})

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(header, payload, st.binary(max_size=300))
    def test_anyJSON(self, header: dict, payload: dict, signature: bytes) -> None:
        """
        Any JSON header and payload, any signature bytes.
        """
        self.assertOnlyJWTError(_raw(header, payload, signature))

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def test_mutations(self, data) -> None:
        """
        Any one-character change to a valid token makes it fail.
        """
        index = data.draw(st.integers(0, len(self.good) - 1))
        char = data.draw(st.sampled_from(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \u00e9"))
        mutated = self.good[:index] + char + self.good[index + 1:]
        if mutated == self.good:
            return
        with self.assertRaises(JWTError) as caught:
            self.verifier.verify(mutated, NOW)
        self.assertIn(caught.exception.reason, REASONS)

    def test_notAString(self) -> None:
        """
        A token that is not a str at all is malformed.
        """
        for token in (None, b"a.b.c", 1, ["a", "b", "c"]):
            self.assertReason(self.verifier, token, "malformed token")  # type: ignore[arg-type]


class TokenCommandTests(_Case):
    """
    C{python -m aigateway.auth.token}: keygen, jwk and mint, as the README uses
    them.
    """

    def command(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = tokenMain(list(argv), now=NOW, stdout=out, stderr=err)
        return status, out.getvalue(), err.getvalue()

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def test_keygenMintVerify(self) -> None:
        """
        A key pair from keygen, a token from mint: the gateway verifies it
        with the public PEM, with every claim asked for.
        """
        self.assertEqual(self.command("keygen", "--type", "rsa", "--out", self.path("issuer"))[0], 0)
        self.assertEqual(os.stat(self.path("issuer.key")).st_mode & 0o777, 0o600)
        status, out, err = self.command(
            "mint", "--key", self.path("issuer.key"), "--iss", "solo.io", "--sub", "alice",
            "--aud", "api", "--exp-in", "5m", "--claim", "team=dev",
            "--claim", 'llms={"openai": ["gpt-4o-mini"]}')
        self.assertEqual((status, err), (0, ""))
        token = out.strip()
        with open(self.path("issuer.pub")) as f:
            verifier = _verifier(f.read(), audiences=("api",), maxLifetime=3600)
        verified = verifier.verify(token, NOW)
        self.assertEqual(dict(verified.claims), {
            "iss": "solo.io", "sub": "alice", "aud": "api", "iat": int(NOW), "exp": int(NOW) + 300,
            "team": "dev", "llms": {"openai": ["gpt-4o-mini"]},
        })
        self.assertEqual(parseToken(token).alg, "RS256")
        self.assertIsNone(parseToken(token).kid)

    def test_ecAndThumbprintKid(self) -> None:
        """
        An EC P-384 key mints ES384; --thumbprint-kid puts the kid the
        gateway gives the PEM key, and jwk prints that same kid.
        """
        self.command("keygen", "--type", "ec", "--curve", "P-384", "--out", self.path("ec"))
        status, out, _ = self.command("mint", "--key", self.path("ec.key"), "--iss", "solo.io",
                                  "--no-exp", "--thumbprint-kid")
        token = out.strip()
        status, jwkText, _ = self.command("jwk", self.path("ec.pub"))
        jwk = json.loads(jwkText)
        self.assertEqual(parseToken(token).header["kid"], jwk["kid"])
        self.assertEqual(parseToken(token).alg, "ES384")
        self.assertNotIn("d", jwk)
        self.assertEqual(self.command("jwk", self.path("ec.key"))[1], jwkText)
        verified = _verifier(json.dumps({"keys": [jwk]})).verify(token, NOW)
        self.assertNotIn("exp", verified.claims)
        with open(self.path("ec.pub")) as f:
            self.assertEqual([k.kid for k in keysFromText(f.read())], [jwk["kid"]])

    def test_errors(self) -> None:
        """
        Each mistake is one line on stderr and exit status 2.
        """
        self.command("keygen", "--out", self.path("k"))
        for argv in (
            ("mint", "--key", self.path("missing.key"), "--iss", "x"),
            ("mint", "--key", self.path("k.pub"), "--iss", "x"),
            ("mint", "--key", self.path("k.key"), "--iss", "x", "--alg", "ES256"),
            ("mint", "--key", self.path("k.key"), "--iss", "x", "--exp-in", "soon"),
            ("mint", "--key", self.path("k.key"), "--iss", "x", "--claim", "novalue"),
            ("mint", "--key", self.path("k.key"), "--iss", "x", "--no-exp", "--exp-in", "1h"),
            ("mint", "--key", self.path("k.key")),
            ("keygen", "--out", self.path("k")),
            ("jwk", self.path("nothing.pem")),
            ("frobnicate",),
            (),
        ):
            status, out, err = self.command(*argv)
            self.assertEqual(status, 2, argv)
            self.assertEqual(out, "", argv)
            self.assertEqual(err.count("\n"), 1, (argv, err))
            self.assertTrue(err.startswith("python -m aigateway.auth.token"), err)
