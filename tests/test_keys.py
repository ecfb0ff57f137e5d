"""
Tests for L{aigateway.auth.keys}: loading key material, thumbprints, a remote
key set kept fresh, and the treq fetch it uses in production.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import math
from typing import cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from aigateway.auth.jwt import JWTError, JWTProvider, Verifier
from aigateway.auth.keys import (
    KeyLoadError,
    RemoteJWKS,
    StaticKeys,
    loadKeys,
    keysFromText,
    rocaVulnerable,
    thumbprint,
    treqFetch,
)
from aigateway.auth.token import publicJWK, sign
from tests.test_jwt import (
    CLAIMS,
    EC_KEY,
    LAB_KID,
    LAB_PEM,
    NOW,
    OTHER_RSA_KEY,
    P521_KEY,
    RSA_KEY,
    SMALL_RSA_KEY,
    _b64,
    _pem,
)

# RFC 7638 section 3.1, whose thumbprint is given there.
RFC7638_JWK = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjB"
         "ZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8K"
         "JZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_x"
         "BniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def _private(key, fmt=serialization.PrivateFormat.PKCS8, password: bytes | None = None) -> str:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption).decode()


def _certificate(key) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")])
    start = datetime.datetime(2026, 1, 1)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=1))
        .sign(RSA_KEY, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def _jwk(key, **members) -> dict:
    jwk = publicJWK(_pem(key))
    jwk.update(members)
    return {k: v for k, v in jwk.items() if v is not None}


class ThumbprintTests(SynchronousTestCase):
    """
    RFC 7638 thumbprints.
    """

    def test_rfc7638(self) -> None:
        """
        RFC 7638's own example.
        """
        self.assertEqual(thumbprint(RFC7638_JWK), RFC7638_THUMBPRINT)
        [key] = keysFromText(json.dumps(RFC7638_JWK))
        self.assertEqual(key.thumbprint, RFC7638_THUMBPRINT)

    def test_ec(self) -> None:
        """
        An EC key's thumbprint hashes crv, kty, x, y in that order, compact.
        """
        jwk = publicJWK(_pem(EC_KEY))
        canonical = '{"crv":"P-256","kty":"EC","x":"%s","y":"%s"}' % (jwk["x"], jwk["y"])
        expected = _b64(hashlib.sha256(canonical.encode()).digest())
        self.assertEqual(thumbprint(jwk), expected)
        self.assertEqual(keysFromText(_pem(EC_KEY))[0].kid, expected)

    def test_oct(self) -> None:
        """
        A shared secret's thumbprint hashes k and kty.
        """
        canonical = '{"k":"%s","kty":"oct"}' % _b64(b"k" * 32)
        self.assertEqual(thumbprint({"kty": "oct", "k": _b64(b"k" * 32), "kid": "x"}),
                         _b64(hashlib.sha256(canonical.encode()).digest()))

    def test_errors(self) -> None:
        """
        Missing or non-string members and unknown types are a
        L{KeyLoadError}, never a C{KeyError}.
        """
        cases: list[object] = [{}, {"kty": "OKP", "x": "AA"}, {"kty": "RSA", "n": "AQAB"},
                               {"kty": "RSA", "n": 1, "e": "AQAB"}, {"kty": "EC", "crv": "P-256", "x": "AA"},
                               {"kty": 7}, []]
        for jwk in cases:
            self.assertRaises(KeyLoadError, thumbprint, jwk)


class PEMTests(SynchronousTestCase):
    """
    PEM public keys, private keys and certificates.
    """

    def test_labPEM(self) -> None:
        """
        The lab's PEM is one RSA-2048 key whose kid is its thumbprint.
        """
        [key] = keysFromText(LAB_PEM)
        self.assertEqual((key.kty, key.bits, key.kid, key.thumbprint), ("RSA", 2048, LAB_KID, LAB_KID))
        self.assertEqual((key.alg, key.use, key.crv), (None, None, None))
        self.assertEqual(sorted(key.algorithms), ["RS256", "RS384", "RS512"])
        self.assertEqual(publicJWK(LAB_PEM)["kid"], LAB_KID)

    def test_indentedAndSurrounded(self) -> None:
        """
        Text around the PEM block (as in certificate bundles) is ignored.
        """
        [key] = keysFromText("subject=CN = issuer\n" + LAB_PEM + "\ntrailing words\n")
        self.assertEqual(key.kid, LAB_KID)

    def test_pkcs1(self) -> None:
        """
        C{BEGIN RSA PUBLIC KEY} (PKCS#1) is the same key.
        """
        pkcs1 = RSA_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.PKCS1).decode()
        self.assertIn("BEGIN RSA PUBLIC KEY", pkcs1)
        self.assertEqual(keysFromText(pkcs1)[0].kid, keysFromText(_pem(RSA_KEY))[0].kid)

    def test_certificate(self) -> None:
        """
        A certificate gives its public key.
        """
        [key] = keysFromText(_certificate(EC_KEY))
        self.assertEqual((key.kty, key.crv, key.kid), ("EC", "P-256", publicJWK(_pem(EC_KEY))["kid"]))

    def test_privateKeys(self) -> None:
        """
        Private keys in PKCS#8 and traditional form give their public part
        only, and never an HMAC secret.
        """
        for key, fmt in ((RSA_KEY, serialization.PrivateFormat.PKCS8),
                         (RSA_KEY, serialization.PrivateFormat.TraditionalOpenSSL),
                         (EC_KEY, serialization.PrivateFormat.PKCS8),
                         (EC_KEY, serialization.PrivateFormat.TraditionalOpenSSL)):
            [loaded] = keysFromText(_private(key, fmt))
            self.assertEqual(loaded.kid, publicJWK(_pem(key))["kid"])
            self.assertFalse([a for a in loaded.algorithms if a.startswith("HS")])
            for verifier in loaded.algorithms.values():
                self.assertTrue(verifier.is_public())

    def test_severalBlocks(self) -> None:
        """
        Several PEM blocks: RSA, EC P-521 and a certificate.
        """
        keys = keysFromText(_pem(RSA_KEY) + "\n" + _pem(P521_KEY) + _certificate(OTHER_RSA_KEY))
        self.assertEqual([(k.kty, k.crv, k.bits) for k in keys],
                         [("RSA", None, 2048), ("EC", "P-521", 521), ("RSA", None, 2048)])
        self.assertEqual(list(keys[1].algorithms), ["ES512"])

    def test_unsupportedSkipped(self) -> None:
        """
        An Ed25519 key beside an RSA key is left out, with a note; alone,
        it is an error that says why.
        """
        okp = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        load = loadKeys(okp + _pem(RSA_KEY))
        self.assertEqual([k.kty for k in load.keys], ["RSA"])
        self.assertEqual(load.skipped, ("PEM block 1: a key is neither RSA nor EC",))
        with self.assertRaises(KeyLoadError) as caught:
            keysFromText(okp)
        self.assertEqual(str(caught.exception), "PEM block 1: a key is neither RSA nor EC")

    def test_errors(self) -> None:
        """
        Unusable PEM gets one sentence, never the key material.
        """
        cases = {
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----":
                "PEM block 1 (PUBLIC KEY) is not a valid key",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n" + _pem(SMALL_RSA_KEY):
                "no usable key: PEM block 1 (PUBLIC KEY) is not a valid key; PEM block 2: an RSA key of "
                "1024 bits is too small (at least 2048)",
            "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAskFAGESgB22iOsGk":
                "no complete PEM block found",
            _pem(SMALL_RSA_KEY): "PEM block 1: an RSA key of 1024 bits is too small (at least 2048)",
            _private(RSA_KEY, password=b"secret"): "PEM block 1 (ENCRYPTED PRIVATE KEY) is encrypted",
            _pem(ec.generate_private_key(ec.SECP256K1())): "PEM block 1: the EC curve secp256k1 is not supported",
        }
        for text, message in cases.items():
            with self.assertRaises(KeyLoadError) as caught:
                keysFromText(text)
            self.assertEqual(str(caught.exception), message)


class JWKTests(SynchronousTestCase):
    """
    JWKS documents and single JWKs.
    """

    def test_jwks(self) -> None:
        """
        A JWKS with RSA and EC keys keeps kid, alg, use, crv and bits.
        """
        document = {"keys": [_jwk(RSA_KEY, kid="a", alg="RS256"), _jwk(EC_KEY, kid="b", use=None),
                             _jwk(P521_KEY, kid="c", alg="ES512")]}
        keys = keysFromText(json.dumps(document))
        self.assertEqual([(k.kty, k.kid, k.alg, k.use, k.crv, k.bits) for k in keys],
                         [("RSA", "a", "RS256", "sig", None, 2048), ("EC", "b", None, None, "P-256", 256),
                          ("EC", "c", "ES512", "sig", "P-521", 521)])
        self.assertEqual(list(keys[0].algorithms), ["RS256"])

    def test_singleJWK(self) -> None:
        """
        A bare JWK is a set of one; without kid, its kid stays unset.
        """
        [key] = keysFromText(json.dumps(RFC7638_JWK))
        self.assertEqual(key.kid, "2011-04-29")
        jwk = dict(RFC7638_JWK)
        del jwk["kid"]
        self.assertIsNone(keysFromText(json.dumps(jwk))[0].kid)

    def test_privateJWK(self) -> None:
        """
        Private RSA and EC JWKs give their public part only.
        """
        numbers = RSA_KEY.private_numbers()
        rsaPrivate = dict(_jwk(RSA_KEY), d=_b64(numbers.d.to_bytes(256, "big")),
                          p=_b64(numbers.p.to_bytes(128, "big")), q=_b64(numbers.q.to_bytes(128, "big")))
        ecPrivate = dict(_jwk(EC_KEY), d=_b64(EC_KEY.private_numbers().private_value.to_bytes(32, "big")))
        for jwk in (rsaPrivate, ecPrivate):
            [key] = keysFromText(json.dumps(jwk))
            self.assertFalse([a for a in key.algorithms if a.startswith("HS")])
            for verifier in key.algorithms.values():
                self.assertTrue(verifier.is_public())

    def test_notForSignatures(self) -> None:
        """
        Encryption keys and unknown key types are left out; the unknown
        types with a note.
        """
        document = {"keys": [dict(RFC7638_JWK, use="enc", kid="x"),
                             dict(RFC7638_JWK, key_ops=["encrypt"], kid="z"),
                             {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
                             dict(RFC7638_JWK, kid="y")]}
        load = loadKeys(json.dumps(document))
        self.assertEqual([k.kid for k in load.keys], ["y"])
        self.assertEqual(load.skipped, ("key 2: its key type 'OKP' is not supported",))

    def test_sharedSecrets(self) -> None:
        """
        An oct key verifies the HMAC algorithms its length allows, and only
        the one its JWK alg names.
        """
        for size, algorithms in ((32, ["HS256"]), (48, ["HS256", "HS384"]), (64, ["HS256", "HS384", "HS512"])):
            [key] = keysFromText(json.dumps({"kty": "oct", "k": _b64(bytes(range(size)))}))
            self.assertEqual((key.kty, list(key.algorithms), key.bits, key.thumbprint),
                             ("oct", algorithms, size * 8, None))
        [key] = keysFromText(json.dumps({"kty": "oct", "k": _b64(bytes(64)), "alg": "HS384"}))
        self.assertEqual(list(key.algorithms), ["HS384"])

    def test_secretThatIsAPublicKey(self) -> None:
        """
        A "shared secret" that is a PEM public key is refused.
        """
        with self.assertRaises(KeyLoadError) as caught:
            keysFromText(json.dumps({"kty": "oct", "k": _b64(_pem(RSA_KEY).encode())}))
        self.assertEqual(str(caught.exception), "the JWK: its shared secret looks like a public key")

    def test_mixedDocument(self) -> None:
        """
        One document that publishes public keys and a shared secret is
        refused (the secret would be public); keys of every kind can still
        be combined from separate sources.
        """
        with self.assertRaises(KeyLoadError) as caught:
            keysFromText(json.dumps({"keys": [RFC7638_JWK, {"kty": "oct", "k": _b64(b"k" * 32)}]}))
        self.assertEqual(str(caught.exception), "a key set must not mix shared secrets with public keys")

    def test_duplicateKid(self) -> None:
        """
        Two signature keys under one kid are refused; an encryption key
        may share a signature key's kid.
        """
        with self.assertRaises(KeyLoadError) as caught:
            keysFromText(json.dumps({"keys": [_jwk(RSA_KEY, kid="a"), _jwk(EC_KEY, kid="a")]}))
        self.assertEqual(str(caught.exception), "two keys in the set share one kid")
        keys = keysFromText(json.dumps({"keys": [_jwk(RSA_KEY, kid="a"), _jwk(EC_KEY, kid="a", use="enc")]}))
        self.assertEqual([k.kty for k in keys], ["RSA"])

    def test_weakRSA(self) -> None:
        """
        RSA under 2048 bits and an exponent of 1 or an even one are refused
        (ROCA: see L{test_roca} and the Wycheproof vectors).
        """
        small = _jwk(SMALL_RSA_KEY)
        cases = {
            json.dumps(small): "an RSA key of 1024 bits is too small (at least 2048)",
            json.dumps(dict(RFC7638_JWK, e="AQ")): "it is not a valid RSA public key",
            json.dumps(dict(RFC7638_JWK, e="AQAA")): "it is not a valid RSA public key",
        }
        for text, message in cases.items():
            with self.assertRaises(KeyLoadError) as caught:
                keysFromText(text)
            self.assertIn(message, str(caught.exception))

    def test_roca(self) -> None:
        """
        The ROCA fingerprint: a modulus of the form 1 + k * (product of the
        small primes) has it; real keys do not.
        """
        product = math.prod((3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73,
                             79, 83, 89, 97, 101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157,
                             163, 167))
        self.assertTrue(rocaVulnerable(1 + 12345 * product))
        for key in (RSA_KEY, OTHER_RSA_KEY):
            self.assertFalse(rocaVulnerable(key.public_key().public_numbers().n))
        self.assertFalse(rocaVulnerable(keysFromText(LAB_PEM)[0].algorithms["RS256"]
                                        .prepared_key.public_numbers().n))

    def test_ecErrors(self) -> None:
        """
        EC points off their curve, coordinates of the wrong size and
        unknown curves are refused.
        """
        jwk = _jwk(EC_KEY)
        y = bytearray(base64.urlsafe_b64decode(jwk["y"] + "="))
        y[-1] ^= 1
        cases = {
            json.dumps(dict(jwk, y=_b64(bytes(y)))): "its EC point is not on the curve P-256",
            json.dumps(dict(jwk, crv="P-384")): "its EC coordinates do not fit the curve P-384",
            json.dumps(dict(jwk, crv="secp256k1")): "its EC curve is not supported (P-256, P-384, P-521)",
            json.dumps(dict(jwk, alg="ES384")): "its alg 'ES384' is not one this gateway verifies with an EC P-256 key",
        }
        for text, message in cases.items():
            with self.assertRaises(KeyLoadError) as caught:
                keysFromText(text)
            self.assertEqual(str(caught.exception), f"the JWK: {message}")

    def test_errors(self) -> None:
        """
        Each unusable input gets one sentence, never the key material.
        """
        secret = _b64(b"short")
        cases = {
            "": "the key material is neither PEM, a JWKS document nor a JWK",
            "[1]": "the key material is neither PEM, a JWKS document nor a JWK",
            "{not json": "the key set is not valid JSON",
            '{"kty":"RSA","kty":"EC"}': "the key set is not valid JSON",
            json.dumps({"keys": {}}): "the JWKS member 'keys' is not a list",
            json.dumps({"keys": []}): "the key set has no key for verifying signatures",
            json.dumps({"keys": [dict(RFC7638_JWK, use="enc")]}): "the key set has no key for verifying signatures",
            json.dumps({"kty": "oct", "k": secret}): "the JWK: its shared secret is shorter than 32 bytes",
            json.dumps({"kty": "oct", "k": ""}): "the JWK: its shared secret is shorter than 32 bytes",
            json.dumps({"kty": "oct", "k": _b64(bytes(40)), "alg": "HS384"}):
                "the JWK: its shared secret is shorter than the 48 bytes HS384 needs",
            json.dumps({"kty": "oct", "k": secret + "="}): "the JWK: its member 'k' is not canonical base64url",
            json.dumps(dict(RFC7638_JWK, n=None)): "the JWK: its member 'n' is missing or not a string",
            json.dumps(dict(RFC7638_JWK, kid=7)): "the JWK: its member 'kid' is not a string",
            json.dumps({"keys": [dict(RFC7638_JWK, e="AQ")]}): "key 0: it is not a valid RSA public key",
            json.dumps({"keys": [1, "x", {}, {"kty": "RSA"}, {"kty": "OKP"}]}):
                "no usable key: key 0: it is not a JSON object; key 1: it is not a JSON object; "
                "key 2: it has no key type; and 2 more",
        }
        for text, message in cases.items():
            with self.assertRaises(KeyLoadError) as caught:
                keysFromText(text)
            self.assertEqual(str(caught.exception), message)
            self.assertNotIn(RFC7638_JWK["n"][:20], str(caught.exception))
            self.assertNotIn(secret, str(caught.exception))

    def test_staticKeys(self) -> None:
        """
        L{StaticKeys} hands out the same keys each time.
        """
        keys = keysFromText(LAB_PEM)
        self.assertIs(StaticKeys(keys)(), keys)


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
        self.calls[-1].errback(ConnectionRefusedError("Connection refused"))


class RemoteTests(SynchronousTestCase):
    """
    L{RemoteJWKS} with a fake clock and a JWKS server the test controls.
    """

    URL = "https://idp.example/jwks"

    def setUp(self) -> None:
        self.clock = Clock()
        self.server = _Server()
        self.events: list[dict] = []
        self.remote = RemoteJWKS(self.URL, 300, self.clock, self.server.fetch)
        self.remote.log = Logger(observer=cast(ILogObserver, self.events.append))
        self.verifier = Verifier([JWTProvider("idp", "solo.io", (), lambda: self.remote.keys,
                                              onUnknownKid=self.remote.refreshForUnknownKid)])
        self.addCleanup(self.remote.stop)

    def verify(self, key, kid: str | None) -> str | None:
        try:
            return self.verifier.verify(sign(dict(CLAIMS, kid=kid), key, kid=kid), NOW).subject
        except JWTError as e:
            return e.reason

    def warnings(self) -> list[dict]:
        return [e for e in self.events if e["log_level"].name == "warn"]

    def test_firstFetch(self) -> None:
        """
        No keys and not ready until the first answer; then both.
        """
        self.remote.start()
        self.assertEqual(len(self.server.calls), 1)
        self.assertEqual((self.remote.keys, self.remote.ready), ((), False))
        self.assertEqual(self.verify(RSA_KEY, "k1"), "no keys available")
        self.server.answer((RSA_KEY, "k1"))
        self.assertTrue(self.remote.ready)
        self.assertEqual([k.kid for k in self.remote.keys], ["k1"])
        self.assertEqual(self.verify(RSA_KEY, "k1"), "alice")

    def test_startTwice(self) -> None:
        """
        Starting a started key set fetches nothing more.
        """
        self.remote.start()
        self.remote.start()
        self.assertEqual(len(self.server.calls), 1)

    def test_refreshEveryCacheDuration(self) -> None:
        """
        The set is fetched again every cacheDuration, not sooner.
        """
        self.remote.start()
        self.server.answer((RSA_KEY, "k1"))
        for n in range(2, 5):
            self.clock.advance(299)
            self.assertEqual(len(self.server.calls), n - 1)
            self.clock.advance(1)
            self.assertEqual(len(self.server.calls), n)
            self.server.answer((RSA_KEY, "k1"))

    def test_rotation(self) -> None:
        """
        After a refresh, a new key verifies and a removed one no longer
        does, even for a token verified (and cached) before.
        """
        self.remote.start()
        self.server.answer((RSA_KEY, "k1"))
        old = sign(CLAIMS, RSA_KEY, kid="k1")
        self.assertEqual(self.verifier.verify(old, NOW).subject, "alice")
        self.assertEqual(self.verify(OTHER_RSA_KEY, "k2"), "no matching key")
        self.clock.advance(300)
        self.server.answer((RSA_KEY, "k1"), (OTHER_RSA_KEY, "k2"))
        self.assertEqual(self.verify(OTHER_RSA_KEY, "k2"), "alice")
        self.clock.advance(300)
        self.server.answer((OTHER_RSA_KEY, "k2"))
        self.assertEqual(self.verify(OTHER_RSA_KEY, "k2"), "alice")
        with self.assertRaises(JWTError) as caught:
            self.verifier.verify(old, NOW)
        self.assertEqual(caught.exception.reason, "no matching key")

    def test_unknownKidRefetchOncePerInterval(self) -> None:
        """
        An unknown kid brings a fetch forward, at most once per interval;
        the key it brings then verifies.
        """
        self.remote.start()
        self.server.answer((RSA_KEY, "k1"))
        self.clock.advance(100)
        self.assertEqual(self.verify(OTHER_RSA_KEY, "k2"), "no matching key")
        self.assertEqual(len(self.server.calls), 2)
        self.assertEqual(self.verify(OTHER_RSA_KEY, "k2"), "no matching key")
        self.assertEqual(len(self.server.calls), 2, "no second fetch while one is in flight")
        self.server.answer((RSA_KEY, "k1"))
        for _ in range(5):
            self.clock.advance(10)
            self.assertEqual(self.verify(OTHER_RSA_KEY, "k3"), "no matching key")
        self.assertEqual(len(self.server.calls), 2)
        # The regular refresh, cacheDuration after the last fetch:
        self.clock.advance(250)
        self.assertEqual(len(self.server.calls), 3)
        self.server.answer((RSA_KEY, "k1"))
        # cacheDuration after the last early fetch, one more may happen.
        self.clock.advance(50)
        self.assertEqual(self.verify(OTHER_RSA_KEY, "k2"), "no matching key")
        self.assertEqual(len(self.server.calls), 4)
        self.server.answer((RSA_KEY, "k1"), (OTHER_RSA_KEY, "k2"))
        self.assertEqual(self.verify(OTHER_RSA_KEY, "k2"), "alice")

    def test_kidlessTokensFetchNothing(self) -> None:
        """
        A token without kid that finds no key brings no fetch forward.
        """
        self.remote.start()
        self.server.answer((RSA_KEY, "k1"))
        self.assertEqual(self.verify(EC_KEY, None), "no matching key")
        self.assertEqual(len(self.server.calls), 1)

    def test_failureKeepsKeys(self) -> None:
        """
        A failed fetch or a bad document keeps the last good keys, and is
        logged as a warning with the URL and no key material.
        """
        self.remote.start()
        self.server.answer((RSA_KEY, "k1"))
        self.clock.advance(300)
        self.server.down()
        self.assertEqual(self.verify(RSA_KEY, "k1"), "alice")
        self.clock.advance(300)
        self.server.calls[-1].callback(b"<html>oops</html>")
        self.clock.advance(300)
        document = {"keys": [dict(publicJWK(_pem(RSA_KEY)), kid="k1"),
                             {"kty": "oct", "k": _b64(b"s" * 32)}]}
        self.server.calls[-1].callback(json.dumps(document).encode())
        self.assertEqual(self.verify(RSA_KEY, "k1"), "alice")
        self.assertTrue(self.remote.ready)
        problems = [e["problem"] for e in self.warnings()]
        self.assertEqual(problems, [
            "Connection refused",
            "the key material is neither PEM, a JWKS document nor a JWK",
            "a key set must not mix shared secrets with public keys",
        ])
        for event in self.warnings():
            self.assertEqual(event["url"], self.URL)
            self.assertEqual(event["count"], 1)
            self.assertNotIn(publicJWK(_pem(RSA_KEY))["n"][:20], repr(event))
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        self.assertEqual(len(self.server.calls), 4)

    def test_fetchRaises(self) -> None:
        """
        A fetch function that raises is a failed fetch, retried later.
        """
        def fetch(url: str) -> Deferred:
            raise RuntimeError("no network")

        remote = RemoteJWKS(self.URL, 300, self.clock, fetch)
        remote.log = Logger(observer=cast(ILogObserver, self.events.append))
        remote.start()
        self.addCleanup(remote.stop)
        self.assertEqual([e["problem"] for e in self.warnings()], ["no network"])
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [5])

    def test_downAtStart(self) -> None:
        """
        A server down at start is retried every few seconds, and its keys
        are used once it answers; then refreshes go back to cacheDuration.
        """
        self.remote.start()
        self.server.down()
        self.assertFalse(self.remote.ready)
        self.clock.advance(5)
        self.assertEqual(len(self.server.calls), 2)
        self.server.down()
        self.clock.advance(5)
        self.assertEqual(len(self.server.calls), 3)
        self.server.answer((RSA_KEY, "k1"))
        self.assertTrue(self.remote.ready)
        self.assertEqual(self.verify(RSA_KEY, "k1"), "alice")
        self.clock.advance(299)
        self.assertEqual(len(self.server.calls), 3)
        self.clock.advance(1)
        self.assertEqual(len(self.server.calls), 4)

    def test_stop(self) -> None:
        """
        Stopped, it schedules nothing and keeps its keys.
        """
        self.remote.start()
        self.server.answer((RSA_KEY, "k1"))
        self.remote.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.verify(RSA_KEY, "k1"), "alice")
        self.remote.refreshForUnknownKid()
        self.assertEqual(len(self.server.calls), 1)

    def test_stopCancelsFetch(self) -> None:
        """
        Stopping while a fetch is in flight cancels it, quietly.
        """
        self.remote.start()
        self.remote.stop()
        self.assertTrue(self.server.calls[0].called)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.warnings(), [])
        self.assertEqual(len(self.flushLoggedErrors()), 0)


class _JWKSResource(Resource):
    """
    A JWKS server for treq's in-memory client.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[bytes] = []
        self.body = json.dumps({"keys": [publicJWK(_pem(RSA_KEY))]}).encode()

    def render_GET(self, request):
        self.paths.append(request.path)
        if request.path == b"/jwks":
            request.setHeader(b"content-type", b"application/json")
            return self.body
        if request.path == b"/moved":
            request.setResponseCode(302)
            request.setHeader(b"location", b"http://idp.example/jwks")
            return b""
        if request.path == b"/big":
            return b" " * 5000
        if request.path == b"/hang":
            return NOT_DONE_YET
        request.setResponseCode(500)
        return b"oops"


class TreqFetchTests(SynchronousTestCase):
    """
    L{treqFetch}: the production fetch, against an in-memory server.
    """

    def setUp(self) -> None:
        self.resource = _JWKSResource()
        self.stub = StubTreq(self.resource)
        self.clock = Clock()
        self.fetch = treqFetch(self.stub, self.clock, timeout=10, maxBytes=1000)

    def result(self, url: str):
        d = self.fetch(url)
        self.stub.flush()
        return d

    def test_fetch(self) -> None:
        """
        A 2xx answer's body, which a L{RemoteJWKS} then uses.
        """
        self.assertEqual(self.successResultOf(self.result("http://idp.example/jwks")), self.resource.body)
        remote = RemoteJWKS("http://idp.example/jwks", 300, self.clock, self.fetch)
        remote.start()
        self.stub.flush()
        self.addCleanup(remote.stop)
        self.assertEqual([k.kid for k in remote.keys], [publicJWK(_pem(RSA_KEY))["kid"]])

    def test_noRedirects(self) -> None:
        """
        A redirect is not followed: it is a failure.
        """
        failure = self.failureResultOf(self.result("http://idp.example/moved"), KeyLoadError)
        self.assertEqual(failure.getErrorMessage(), "the key set URL answered HTTP 302")
        self.assertEqual(self.resource.paths, [b"/moved"])

    def test_errorStatus(self) -> None:
        """
        A 5xx answer is a failure.
        """
        failure = self.failureResultOf(self.result("http://idp.example/broken"), KeyLoadError)
        self.assertEqual(failure.getErrorMessage(), "the key set URL answered HTTP 500")

    def test_tooLarge(self) -> None:
        """
        A body over maxBytes is a failure.
        """
        failure = self.failureResultOf(self.result("http://idp.example/big"), KeyLoadError)
        self.assertEqual(failure.getErrorMessage(), "the key set is larger than 1000 bytes")

    def test_timeout(self) -> None:
        """
        A server that never answers times the fetch out.
        """
        d = self.result("http://idp.example/hang")
        self.assertNoResult(d)
        self.clock.advance(10)
        failure = self.failureResultOf(d, KeyLoadError)
        self.assertEqual(failure.getErrorMessage(), "the key set URL did not answer within 10 seconds")
