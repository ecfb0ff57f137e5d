"""
Tests for L{aigateway.keys}: loading key material, and a remote key set
kept fresh.
"""

from __future__ import annotations

import base64
import datetime
import json

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from aigateway.jwt import JWTError, JWTProvider, Verifier
from aigateway.keys import KeyLoadError, RemoteJWKS, keysFromText, thumbprint
from aigateway.token import publicJWK, sign
from tests.test_jwt import CLAIMS, EC_KEY, NOW, OTHER_RSA_KEY, RSA_KEY, _b64, _pem
from tests.lab import LAB_PEM

# RFC 7638 section 3.1.
RFC7638_JWK = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}


class LoadTests(SynchronousTestCase):
    """
    PEM, certificates, JWKS and single JWKs.
    """

    def test_labPEM(self) -> None:
        """
        The lab's PEM is one RSA key whose kid is its thumbprint.
        """
        [key] = keysFromText(LAB_PEM)
        self.assertEqual((key.kty, key.bits), ("RSA", 2048))
        self.assertEqual(key.kid, key.thumbprint)
        self.assertEqual(sorted(key.algorithms), ["RS256", "RS384", "RS512"])

    def test_thumbprint(self) -> None:
        """
        RFC 7638's own example.
        """
        self.assertEqual(thumbprint(RFC7638_JWK), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")

    def test_severalPEMs(self) -> None:
        """
        Several PEM blocks, an EC key among them, and a private key whose
        public part is used.
        """
        private = EC_KEY.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        keys = keysFromText(_pem(RSA_KEY) + "\n" + private)
        self.assertEqual([k.kty for k in keys], ["RSA", "EC"])
        self.assertEqual(list(keys[1].algorithms), ["ES256"])
        self.assertNotIn("HS256", keys[1].algorithms)

    def test_certificate(self) -> None:
        """
        A certificate's public key.
        """
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")])
        now = datetime.datetime(2026, 1, 1)
        certificate = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(RSA_KEY.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(RSA_KEY, hashes.SHA256())
        )
        [key] = keysFromText(certificate.public_bytes(serialization.Encoding.PEM).decode())
        self.assertEqual(key.kid, publicJWK(_pem(RSA_KEY))["kid"])

    def test_jwks(self) -> None:
        """
        A JWKS with RSA and EC keys keeps their kids and algs.
        """
        document = {"keys": [dict(publicJWK(_pem(RSA_KEY)), kid="a", alg="RS256"),
                             dict(publicJWK(_pem(EC_KEY)), kid="b")]}
        keys = keysFromText(json.dumps(document))
        self.assertEqual([(k.kid, k.alg) for k in keys], [("a", "RS256"), ("b", None)])

    def test_singleJWK(self) -> None:
        """
        A bare JWK is a set of one.
        """
        [key] = keysFromText(json.dumps(RFC7638_JWK))
        self.assertEqual(key.kid, "2011-04-29")

    def test_skipsOthers(self) -> None:
        """
        Encryption keys and unknown key types are left out.
        """
        document = {"keys": [dict(RFC7638_JWK, use="enc", kid="x"),
                             {"kty": "OKP", "crv": "Ed25519", "x": "AA"},
                             dict(RFC7638_JWK, kid="y")]}
        self.assertEqual([k.kid for k in keysFromText(json.dumps(document))], ["y"])

    def test_errors(self) -> None:
        """
        Each unusable input gets a sentence, never the key material.
        """
        small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        cases = {
            "": "not a PEM key, a JWKS document or a JWK",
            "{not json": "not valid JSON",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----": "PEM block 1 (PUBLIC KEY) is not a valid key",
            _pem(small): "RSA key of 1024 bits is too small (at least 2048)",
            json.dumps({"keys": []}): "no usable key (no key is for verifying signatures)",
            json.dumps({"keys": [dict(RFC7638_JWK, kid="a"), dict(RFC7638_JWK, kid="a")]}): "two keys share one kid",
            json.dumps({"keys": [RFC7638_JWK, {"kty": "oct", "k": _b64(b"k" * 32)}]}):
                "a key set must not mix shared secrets with public keys",
            json.dumps({"kty": "oct", "k": _b64(b"short")}): "no usable key (key 0: shared secret is shorter than 32 bytes)",
            json.dumps(dict(RFC7638_JWK, e="AQ")): "no usable key (key 0: not a valid RSA public key)",
            json.dumps(dict(publicJWK(_pem(EC_KEY)), crv="P-384")): "no usable key (key 0: EC coordinates do not fit curve P-384)",
        }
        for text, message in cases.items():
            with self.assertRaises(KeyLoadError) as caught:
                keysFromText(text)
            self.assertEqual(str(caught.exception), message)

    def test_pointNotOnCurve(self) -> None:
        """
        An EC point off its curve is refused.
        """
        jwk = publicJWK(_pem(EC_KEY))
        y = bytearray(base64.urlsafe_b64decode(jwk["y"] + "="))
        y[-1] ^= 1
        with self.assertRaises(KeyLoadError) as caught:
            keysFromText(json.dumps(dict(jwk, y=_b64(bytes(y)))))
        self.assertIn("EC point is not on curve P-256", str(caught.exception))


class _Server:
    """
    A JWKS URL whose answers the test decides.
    """

    def __init__(self) -> None:
        self.calls: list[Deferred] = []

    def fetch(self, url: str) -> Deferred:
        d: Deferred = Deferred()
        self.calls.append(d)
        return d

    def answer(self, *keys) -> None:
        document = {"keys": [dict(publicJWK(_pem(k)), kid=kid) for k, kid in keys]}
        self.calls[-1].callback(json.dumps(document).encode())

    def down(self) -> None:
        self.calls[-1].errback(ConnectionRefusedError("down"))


class RemoteTests(SynchronousTestCase):
    """
    L{RemoteJWKS} with a fake clock and a JWKS server the test controls.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.server = _Server()
        self.remote = RemoteJWKS("https://idp.example/jwks", 300, self.clock, self.server.fetch)
        self.verifier = Verifier([JWTProvider("idp", "solo.io", (), lambda: self.remote.keys,
                                              onUnknownKid=self.remote.refreshForUnknownKid)])
        self.addCleanup(self.remote.stop)

    def verify(self, key, kid: str) -> str:
        try:
            return self.verifier.verify(sign(dict(CLAIMS, kid=kid), key, kid=kid), NOW).subject
        except JWTError as e:
            return e.reason

    def test_firstFetch(self) -> None:
        """
        No keys and not ready until the first answer; then both.
        """
        self.remote.start()
        self.assertEqual((self.remote.keys, self.remote.ready), ((), False))
        self.assertEqual(self.verify(RSA_KEY, "k1"), "no keys available")
        self.server.answer((RSA_KEY, "k1"))
        self.assertTrue(self.remote.ready)
        self.assertEqual(self.verify(RSA_KEY, "k1"), "alice")

    def test_refreshAndRotation(self) -> None:
        """
        Every cacheDuration the set is fetched again: a new key verifies,
        a removed one no longer does.
        """
        self.remote.start()
        self.server.answer((RSA_KEY, "k1"))
        self.clock.advance(300)
        self.assertEqual(len(self.server.calls), 2)
        self.server.answer((OTHER_RSA_KEY, "k2"))
        self.assertEqual(self.verify(OTHER_RSA_KEY, "k2"), "alice")
        self.assertEqual(self.verify(RSA_KEY, "k1"), "no matching key")

    def test_unknownKidRefetchOncePerInterval(self) -> None:
        """
        An unknown kid brings a fetch forward, at most once per interval.
        """
        self.remote.start()
        self.server.answer((RSA_KEY, "k1"))
        self.clock.advance(100)
        self.assertEqual(self.verify(OTHER_RSA_KEY, "k2"), "no matching key")
        self.assertEqual(len(self.server.calls), 2)
        self.server.answer((RSA_KEY, "k1"))
        self.clock.advance(10)
        self.assertEqual(self.verify(OTHER_RSA_KEY, "k3"), "no matching key")
        self.assertEqual(len(self.server.calls), 2)
        self.clock.advance(290)
        self.assertEqual(len(self.server.calls), 3)
        self.server.answer((RSA_KEY, "k1"))
        self.clock.advance(10)
        self.assertEqual(self.verify(OTHER_RSA_KEY, "k2"), "no matching key")
        self.assertEqual(len(self.server.calls), 4)
        self.server.answer((RSA_KEY, "k1"), (OTHER_RSA_KEY, "k2"))
        self.assertEqual(self.verify(OTHER_RSA_KEY, "k2"), "alice")

    def test_failureKeepsKeys(self) -> None:
        """
        A failed fetch or a bad document keeps the last good keys.
        """
        self.remote.start()
        self.server.answer((RSA_KEY, "k1"))
        self.clock.advance(300)
        self.server.down()
        self.assertEqual(self.verify(RSA_KEY, "k1"), "alice")
        self.clock.advance(300)
        self.server.calls[-1].callback(b"<html>oops</html>")
        self.assertEqual(self.verify(RSA_KEY, "k1"), "alice")
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_downAtStart(self) -> None:
        """
        A server down at start is retried soon, and its keys are used once
        it answers.
        """
        self.remote.start()
        self.server.down()
        self.assertFalse(self.remote.ready)
        self.clock.advance(5)
        self.assertEqual(len(self.server.calls), 2)
        self.server.answer((RSA_KEY, "k1"))
        self.assertEqual(self.verify(RSA_KEY, "k1"), "alice")

    def test_stop(self) -> None:
        """
        Stopped, it schedules nothing.
        """
        self.remote.start()
        self.server.answer((RSA_KEY, "k1"))
        self.remote.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
