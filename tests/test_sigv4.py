"""
Tests for L{aigateway.llm.bedrock.Signer}'s own SigV4: byte for byte what
botocore's C{SigV4Auth} signs, on many requests, one signer signing many
of them one after another as a backend's does.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import botocore.auth  # type: ignore[import-untyped]
import botocore.awsrequest  # type: ignore[import-untyped]
import botocore.credentials  # type: ignore[import-untyped]
from twisted.trial.unittest import SynchronousTestCase

from twisted.web.http_headers import Headers

from aigateway.config import Backend
from aigateway.llm.bedrock import BedrockProvider, Signer

_SIGNED = (b"host", b"content-type")
_OURS = (b"authorization", b"x-amz-date", b"x-amz-security-token")


def botocoreFields(credentials: Any, region: str, service: str, method: bytes, url: bytes,
                   headers: list[tuple[bytes, bytes]], body: bytes,
                   now: datetime) -> list[tuple[bytes, bytes]]:
    """
    The fields botocore's C{SigV4Auth} signs the request with, given the
    fields the gateway chooses to sign (C{host}, C{content-type},
    C{x-amz-*}).
    """
    frozen = credentials.get_frozen_credentials()
    timestamp = now.strftime("%Y%m%dT%H%M%SZ")
    request = botocore.awsrequest.AWSRequest(
        method=method.decode("ascii"), url=url.decode("ascii"), data=body)
    for name, value in headers:
        lower = name.lower()
        if (lower in _SIGNED or lower.startswith(b"x-amz-")) and lower not in _OURS:
            request.headers[lower.decode("ascii")] = value.decode("latin-1")
    added = [(b"x-amz-date", timestamp.encode("ascii"))]
    if frozen.token:
        added.append((b"x-amz-security-token", frozen.token.encode("ascii")))
    for name, value in added:
        request.headers[name.decode("ascii")] = value.decode("ascii")
    request.context["timestamp"] = timestamp
    auth = botocore.auth.SigV4Auth(frozen, service, region)
    canonical = auth.canonical_request(request)
    signature = auth.signature(auth.string_to_sign(request, canonical), request)
    signed = auth.signed_headers(auth.headers_to_sign(request))
    authorization = (f"AWS4-HMAC-SHA256 Credential={auth.scope(request)}, "
                     f"SignedHeaders={signed}, Signature={signature}")
    return [(b"authorization", authorization.encode("ascii"))] + added


_HOSTS = ["bedrock-runtime.us-east-1.amazonaws.com", "Bedrock-Runtime.EU-West-3.amazonaws.com",
          "127.0.0.1", "127.0.0.1:8000", "example.com:443", "example.com:80", "[::1]",
          "[::1]:9000", "user:pw@example.com", "h"]
_SEGMENTS = ["model", "anthropic.claude-3-haiku-20240307-v1%3A0", "arn%3Aaws%3Ab%2Fp", "converse",
             "converse-stream", ".", "..", "", "a~b", "x y", "%7E", "caf%C3%A9", "a+b", "a=b",
             "a;b", "*", "!'()"]
_QUERIES = ["", "", "", "a=1", "b=2&a=1", "a=2&a=1", "x", "k=v=w", "a=%20&b=+", "=&="]
_VALUES = [b"application/json", b"  spaced   out  value ", b"tab\there", b"", b"   ",
           b"caf\xc3\xa9", b"nbsp\xa0in", b"a,b", b"UPPER"]
_NAMES = [b"Host", b"host", b"Content-Type", b"content-type", b"X-Amz-Target", b"x-amz-meta-A",
          b"x-amz-content-sha256", b"X-Amz-Date", b"Authorization", b"x-amz-security-token",
          b"User-Agent", b"Content-Length", b"traceparent", b"x-amzn-trace-id"]


def randomRequest(rng: random.Random) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]:
    """
    A request to sign: method, URL, fields, body.
    """
    scheme = rng.choice(["https", "http"])
    path = "".join("/" + rng.choice(_SEGMENTS) for _ in range(rng.randrange(0, 5)))
    if rng.random() < 0.2:
        path += "/"
    query = rng.choice(_QUERIES)
    url = f"{scheme}://{rng.choice(_HOSTS)}{path}" + (f"?{query}" if query else "")
    headers = [(rng.choice(_NAMES), rng.choice(_VALUES)) for _ in range(rng.randrange(0, 6))]
    body = bytes(rng.randrange(256) for _ in range(rng.choice([0, 0, 1, 57, 300])))
    return rng.choice([b"POST", b"GET", b"post", b"PUT"]), url.encode("ascii"), headers, body


class SignerTests(SynchronousTestCase):
    """
    L{Signer.sign} against botocore's signer.
    """

    def test_asBotocoreOnManyRequests(self) -> None:
        """
        Over a thousand varied requests (paths with dot segments and escapes,
        queries, repeated and untrimmed fields, no C{host} field, session
        tokens, bodies) are signed exactly as botocore signs them.
        """
        rng = random.Random(15)
        for i in range(1200):
            credentials = botocore.credentials.Credentials(
                rng.choice(["AKIAEXAMPLE", "AKIDEXAMPLE"]),
                rng.choice(["secret/key", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "s"]),
                rng.choice([None, "", "token+1/=="]))
            region = rng.choice(["us-east-1", "eu-central-1", "ap-south-2"])
            service = rng.choice(["bedrock", "service"])
            now = datetime(2024, 1, 1) + timedelta(seconds=rng.randrange(0, 90 * 86400))
            method, url, headers, body = randomRequest(rng)
            signer = Signer(region, credentials, service=service)
            with self.subTest(i=i, url=url, headers=headers):
                self.assertEqual(
                    signer.sign(method, url, headers, body, now),
                    botocoreFields(credentials, region, service, method, url, headers, body, now))

    def test_keyKeptAcrossDaysAndSecrets(self) -> None:
        """
        One signer signing across midnight, and with credentials whose secret
        changes, signs every request as botocore does (a signing key kept
        for a day is never used for another day or another secret).
        """
        cycle = ["first", "first", "second", "second", "first"]
        secrets = iter(cycle * 20)

        class Rotating:
            def get_frozen_credentials(self) -> Any:
                return botocore.credentials.ReadOnlyCredentials("AKIA", next(secrets), None)

        signer = Signer("us-east-1", Rotating())
        start = datetime(2024, 2, 28, 23, 59, 58)
        url = b"https://bedrock-runtime.us-east-1.amazonaws.com/model/m/converse"
        for i in range(40):
            now = start + timedelta(seconds=i * 3600 * 7)
            ours = signer.sign(b"POST", url, [(b"content-type", b"application/json")], b"{}", now)
            # The secret this call read, in the known cycle.
            credentials = botocore.credentials.Credentials("AKIA", cycle[i % 5])
            self.assertEqual(ours, botocoreFields(
                credentials, "us-east-1", "bedrock", b"POST", url,
                [(b"content-type", b"application/json")], b"{}", now))


def posix(now: datetime) -> float:
    """
    C{now} (naive means UTC) in POSIX seconds.
    """
    return now.replace(tzinfo=timezone.utc).timestamp()


class Cycling:
    """
    Credentials that give the next of C{keys} (access key, secret, token)
    at every read, as refreshable ones do when they are renewed.

    @ivar last: the credentials the last read gave.
    """

    def __init__(self, keys: list[tuple[str, str, str | None]]) -> None:
        self._keys: Iterator[tuple[str, str, str | None]] = iter(keys)
        self.last: Any = None

    def get_frozen_credentials(self) -> Any:
        self.last = botocore.credentials.Credentials(*next(self._keys))
        return self.last.get_frozen_credentials()


class OneSignerTests(SynchronousTestCase):
    """
    One L{Signer} signing many requests, some of the same kind (method,
    URL, fields) at other times, with other bodies or other credentials.
    """

    def assertSignsAsBotocore(self, signer: Signer, credentials: Any, region: str,
                              service: str, method: bytes, url: bytes,
                              headers: list[tuple[bytes, bytes]], body: bytes,
                              now: datetime, posixTime: bool) -> None:
        """
        C{signer} signs the request at C{now} (given as POSIX seconds when
        C{posixTime}) as botocore signs it with the credentials
        C{credentials} holds once read.
        """
        ours = signer.sign(method, url, headers, body, posix(now) if posixTime else now)
        self.assertEqual(ours, botocoreFields(credentials.last if isinstance(credentials, Cycling)
                                              else credentials, region, service, method, url,
                                              headers, body, now.replace(microsecond=0)))

    def test_asBotocoreOnManyRequests(self) -> None:
        """
        A signer's requests, drawn from a few kinds each signed many times at
        other seconds (as datetimes and as POSIX seconds, fractions
        included), with other bodies and with a session token that comes,
        changes and goes, are each signed as botocore signs it.
        """
        rng = random.Random(16)
        for batch in range(20):
            region = rng.choice(["us-east-1", "eu-central-1"])
            service = rng.choice(["bedrock", "service"])
            kinds = [randomRequest(rng)[:3] for _ in range(rng.randrange(1, 6))]
            calls = 60
            credentials = Cycling([
                (rng.choice(["AKIAEXAMPLE", "AKIDEXAMPLE"]), rng.choice(["secret/key", "s"]),
                 rng.choice([None, "", "token+1/==", "token2"]))
                for _ in range(calls)])
            signer = Signer(region, credentials, service=service)
            now = datetime(2024, 1, 1) + timedelta(seconds=rng.randrange(0, 90 * 86400))
            for i in range(calls):
                method, url, headers = rng.choice(kinds)
                body = rng.choice([b"", b"{}", bytes(rng.randrange(256) for _ in range(40))])
                now += timedelta(microseconds=rng.choice([0, 1, 250_000, 999_999, 3_600_000_000]))
                with self.subTest(batch=batch, i=i, url=url, headers=headers):
                    self.assertSignsAsBotocore(signer, credentials, region, service, method, url,
                                               headers, body, now, rng.random() < 0.5)

    def test_sameRequestAtOtherTimesAndBodies(self) -> None:
        """
        The same request signed again in the same second with another body,
        at the next second, across midnight, and at an earlier time is
        signed each time as botocore signs it at that time.
        """
        credentials = botocore.credentials.Credentials("AKIA", "s")
        signer = Signer("us-east-1", credentials)
        url = b"https://bedrock-runtime.us-east-1.amazonaws.com/model/m/converse"
        headers = [(b"content-type", b"application/json")]
        signatures = set()
        for now, body in ((datetime(2024, 2, 29, 23, 59, 58, 1), b"{}"),
                          (datetime(2024, 2, 29, 23, 59, 58, 999_999), b'{"a":1}'),
                          (datetime(2024, 2, 29, 23, 59, 59), b'{"a":1}'),
                          (datetime(2024, 3, 1, 0, 0, 0), b'{"a":1}'),
                          (datetime(2024, 2, 29, 23, 59, 59), b"{}"),
                          (datetime(2024, 3, 1, 0, 0, 0), b'{"a":1}')):
            for posixTime in (False, True):
                with self.subTest(now=now, body=body, posixTime=posixTime):
                    self.assertSignsAsBotocore(signer, credentials, "us-east-1", "bedrock",
                                               b"POST", url, headers, body, now, posixTime)
                    signatures.add(dict(signer.sign(b"POST", url, headers, body, now))[
                        b"authorization"])
        self.assertEqual(len(signatures), 5)

    def test_sessionTokenChanges(self) -> None:
        """
        When renewed credentials bring another session token, or none, the
        same request is signed with the token read at that call.
        """
        tokens = ["first", "second", None, "second", "", "third", "first"]
        credentials = Cycling([("AKIA", "s", token) for token in tokens])
        signer = Signer("us-east-1", credentials)
        url = b"https://bedrock-runtime.us-east-1.amazonaws.com/model/m/converse"
        now = datetime(2024, 5, 6, 7, 8, 9)
        for token in tokens:
            with self.subTest(token=token):
                self.assertSignsAsBotocore(signer, credentials, "us-east-1", "bedrock", b"POST",
                                           url, [], b"{}", now, True)

    def test_manyURLs(self) -> None:
        """
        More kinds of request than a signer keeps the shape of, visited
        twice over in another order, are each signed as botocore signs
        them.
        """
        credentials = botocore.credentials.Credentials("AKIA", "s", "token")
        signer = Signer("eu-central-1", credentials)
        urls = [b"https://bedrock-runtime.eu-central-1.amazonaws.com/model/m%d/converse" % i
                for i in range(300)]
        order = urls + urls[::-1] + urls[::7]
        now = datetime(2024, 5, 6, 7, 8, 9)
        for i, url in enumerate(order):
            headers = [(b"content-type", b"application/json"), (b"x-amz-meta-n", b"%d" % (i % 3))]
            with self.subTest(url=url, i=i):
                self.assertSignsAsBotocore(signer, credentials, "eu-central-1", "bedrock",
                                           b"POST", url, headers, b"{}", now, i % 2 == 0)

    def test_givenPayloadHash(self) -> None:
        """
        A payload hash given in C{x-amz-content-sha256} (of whatever case,
        repeated, empty) is signed as given whatever the body, as botocore
        signs it; the same request without it then signs its body's hash.
        """
        credentials = botocore.credentials.Credentials("AKIA", "s")
        signer = Signer("us-east-1", credentials)
        url = b"https://bedrock-runtime.us-east-1.amazonaws.com/model/m/converse"
        now = datetime(2024, 5, 6, 7, 8, 9)
        digest = b"44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        for given in ([(b"x-amz-content-sha256", b"UNSIGNED-PAYLOAD")],
                      [(b"X-Amz-Content-Sha256", digest)],
                      [(b"x-amz-content-sha256", b"")],
                      [(b"x-amz-content-sha256", b"UNSIGNED-PAYLOAD"),
                       (b"x-amz-content-sha256", digest)],
                      []):
            headers = [(b"content-type", b"application/json")] + given
            signatures = set()
            for body in (b"", b"{}", b"another body"):
                with self.subTest(headers=headers, body=body):
                    self.assertSignsAsBotocore(signer, credentials, "us-east-1", "bedrock",
                                               b"POST", url, headers, body, now, True)
                    signatures.add(signer.sign(b"POST", url, headers, body, now)[0])
            self.assertEqual(len(signatures), 3 if not given else 1)

    def test_otherMethods(self) -> None:
        """
        The same URL and fields with another method, or the method in
        another case, are each signed as botocore signs them.
        """
        credentials = botocore.credentials.Credentials("AKIA", "s")
        signer = Signer("us-east-1", credentials)
        url = b"https://bedrock-runtime.us-east-1.amazonaws.com/model/m/converse"
        now = datetime(2024, 5, 6, 7, 8, 9)
        for method in (b"POST", b"GET", b"post", b"PUT", b"POST", b"Get"):
            with self.subTest(method=method):
                self.assertSignsAsBotocore(signer, credentials, "us-east-1", "bedrock", method,
                                           url, [], b"{}", now, True)

    def test_repeatedAndReorderedFields(self) -> None:
        """
        Fields repeated, in another order or case, or with other values make
        another signature, each as botocore signs it.
        """
        credentials = botocore.credentials.Credentials("AKIA", "s")
        signer = Signer("us-east-1", credentials)
        url = b"https://bedrock-runtime.us-east-1.amazonaws.com/model/m/converse"
        now = datetime(2024, 5, 6, 7, 8, 9)
        a, b = (b"x-amz-meta-a", b"one"), (b"X-Amz-Meta-A", b"two")
        kinds = [[a], [a, a], [a, b], [b, a], [b], [(b"x-amz-meta-a", b" one ")],
                 [a, (b"content-type", b"text/plain")], [(b"content-type", b"text/plain"), a],
                 [(b"host", b"other.example"), a], [(b"Host", b"other.example"), (b"host", b"x")]]
        signatures = set()
        for _ in range(2):
            for headers in kinds:
                with self.subTest(headers=headers):
                    self.assertSignsAsBotocore(signer, credentials, "us-east-1", "bedrock",
                                               b"POST", url, headers, b"{}", now, True)
                    signatures.add(signer.sign(b"POST", url, headers, b"{}", now)[0])
        # Only fields of different names in another order, and spaces
        # around a value, sign alike.
        self.assertEqual(len(signatures), len(kinds) - 2)


class ProviderSignTests(SynchronousTestCase):
    """
    L{BedrockProvider.sign}: the fields of an upstream request.
    """

    def test_callerAmzFieldsDropped(self) -> None:
        """
        Of a request's fields, every C{x-amz-*} one (of any case) is dropped,
        the others are kept, and C{host} and C{content-type} are signed at
        the time given as botocore signs them.
        """
        backend = Backend("b", "bedrock", "https://bedrock-runtime.us-east-1.amazonaws.com",
                          None, None, region="us-east-1")
        provider = BedrockProvider(backend, {"AWS_ACCESS_KEY_ID": "AKIA",
                                             "AWS_SECRET_ACCESS_KEY": "s",
                                             "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                                             "AWS_CONFIG_FILE": "/nonexistent"})
        credentials = botocore.credentials.Credentials("AKIA", "s")
        url = b"https://bedrock-runtime.us-east-1.amazonaws.com/model/m/converse"
        now = datetime(2024, 5, 6, 7, 8, 9)
        rng = random.Random(3)
        names = [b"x-amz-date", b"X-AMZ-Security-Token", b"x-amz-meta-a", b"X-Amz-Target",
                 b"x-amzn-trace-id", b"x-amz", b"Content-Type", b"traceparent", b"User-Agent",
                 b"Authorization", b"x-forwarded-for", b"a-x-amz-b"]
        for i in range(300):
            headers = Headers()
            for _ in range(rng.randrange(0, 6)):
                headers.addRawHeader(rng.choice(names), rng.choice([b"v", b"application/json"]))
            kept = {name: values for name, values in headers.getAllRawHeaders()
                    if not name.lower().startswith(b"x-amz-") and name.lower() != b"authorization"}
            contentType = headers.getRawHeaders(b"content-type")
            signed = [(b"host", b"bedrock-runtime.us-east-1.amazonaws.com")] + (
                [(b"content-type", contentType[-1])] if contentType else [])
            with self.subTest(i=i, headers=headers):
                provider.sign(b"POST", url, headers, b"{}", posix(now))
                fields = dict(headers.getAllRawHeaders())
                self.assertEqual(
                    {name.lower(): values[0] for name, values in fields.items()
                     if name.lower() in (b"authorization", b"x-amz-date")},
                    dict(botocoreFields(credentials, "us-east-1", "bedrock", b"POST", url,
                                        signed, b"{}", now)))
                self.assertEqual(
                    {name: values for name, values in fields.items()
                     if name.lower() not in (b"authorization", b"x-amz-date")}, kept)
