"""
Tests for L{aigateway.llm.bedrock.Signer}'s own SigV4: byte for byte what
botocore's C{SigV4Auth} signs, on many requests.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

import botocore.auth  # type: ignore[import-untyped]
import botocore.awsrequest  # type: ignore[import-untyped]
import botocore.credentials  # type: ignore[import-untyped]
from twisted.trial.unittest import SynchronousTestCase

from aigateway.llm.bedrock import Signer

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
