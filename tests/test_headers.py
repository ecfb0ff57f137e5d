"""
Tests for the header rewriting in L{aigateway.web.relay} and for
L{aigateway.llm.credentials}.
"""

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from aigateway.config import SecretRef
from aigateway.llm.credentials import Credential, resolveCredential
from aigateway.web.relay import downstreamHeaders, upstreamHeaders

KEY = Credential(header=b"Bearer sk-backend")


def _incoming(**fields: list[bytes]) -> Headers:
    headers = Headers()
    for name, values in fields.items():
        headers.setRawHeaders(name.replace("_", "-").encode("ascii"), values)
    return headers


class UpstreamHeaderTests(SynchronousTestCase):
    """
    What the provider sees of the caller's headers.
    """

    def test_authorizationReplaced(self) -> None:
        """
        The caller's C{Authorization} never reaches the provider; the
        backend's does.
        """
        out = upstreamHeaders(
            _incoming(authorization=[b"Bearer caller-jwt"]), KEY, "10.1.2.3", False
        )
        self.assertEqual(out.getRawHeaders(b"authorization"), [b"Bearer sk-backend"])

    def test_noCredential(self) -> None:
        """
        A backend without a credential sends no C{Authorization} at all.
        """
        out = upstreamHeaders(_incoming(authorization=[b"Bearer x"]), Credential(), "1.1.1.1", False)
        self.assertIsNone(out.getRawHeaders(b"authorization"))

    def test_passthrough(self) -> None:
        """
        A passthrough backend forwards the caller's own C{Authorization}.
        """
        out = upstreamHeaders(
            _incoming(authorization=[b"Bearer mine"]), Credential(passthrough=True), "1.1.1.1", False
        )
        self.assertEqual(out.getRawHeaders(b"authorization"), [b"Bearer mine"])

    def test_hopByHop(self) -> None:
        """
        Hop-by-hop fields, and those named in C{Connection}, are dropped;
        the rest pass.
        """
        out = upstreamHeaders(
            _incoming(
                connection=[b"keep-alive, X-Secret-Hop"],
                keep_alive=[b"timeout=5"],
                x_secret_hop=[b"1"],
                te=[b"trailers"],
                transfer_encoding=[b"chunked"],
                upgrade=[b"h2c"],
                proxy_authorization=[b"Basic x"],
                host=[b"gw.example"],
                content_length=[b"12"],
                accept_encoding=[b"gzip"],
                content_type=[b"application/json"],
                openai_organization=[b"org-1"],
            ),
            KEY,
            "1.1.1.1",
            False,
        )
        names = {name.lower() for name, _ in out.getAllRawHeaders()}
        self.assertEqual(
            names,
            {
                b"authorization",
                b"content-type",
                b"openai-organization",
                b"x-forwarded-for",
                b"x-forwarded-proto",
                b"x-forwarded-host",
            },
        )
        self.assertEqual(out.getRawHeaders(b"x-forwarded-host"), [b"gw.example"])

    def test_forwardedFor(self) -> None:
        """
        The client's address is appended to C{X-Forwarded-For}; the scheme
        goes in C{X-Forwarded-Proto}.
        """
        out = upstreamHeaders(
            _incoming(x_forwarded_for=[b"203.0.113.9"]), KEY, "10.0.0.7", True
        )
        self.assertEqual(out.getRawHeaders(b"x-forwarded-for"), [b"203.0.113.9, 10.0.0.7"])
        self.assertEqual(out.getRawHeaders(b"x-forwarded-proto"), [b"https"])


class DownstreamHeaderTests(SynchronousTestCase):
    """
    What the caller sees of the provider's headers.
    """

    def test_hopByHopDropped(self) -> None:
        """
        Hop-by-hop fields and those named in C{Connection} are dropped.
        """
        upstream = _incoming(
            connection=[b"close, x-internal"],
            x_internal=[b"1"],
            transfer_encoding=[b"chunked"],
            content_type=[b"text/event-stream"],
            x_request_id=[b"req_1"],
        )
        names = {name.lower() for name, _ in downstreamHeaders(upstream)}
        self.assertEqual(names, {b"content-type", b"x-request-id"})


class CredentialTests(SynchronousTestCase):
    """
    Resolving a backend's secret.
    """

    def test_env(self) -> None:
        """
        An environment variable becomes a bearer header.
        """
        credential = resolveCredential(SecretRef("env", "K"), {"K": "sk-1\n"}, None)
        self.assertEqual(credential.header, b"Bearer sk-1")

    def test_envMissing(self) -> None:
        """
        A missing variable is a problem that names it.
        """
        credential = resolveCredential(SecretRef("env", "OPENAI_API_KEY"), {}, None)
        self.assertEqual(
            (credential.header, credential.problem),
            (None, "environment variable OPENAI_API_KEY is not set"),
        )

    def test_fileWithBearer(self) -> None:
        """
        A file may hold the key, or the lab's C{Bearer <key>} form.
        """
        credential = resolveCredential(
            SecretRef("file", "/k"), {}, lambda path: b"Bearer sk-2\n"
        )
        self.assertEqual(credential.header, b"Bearer sk-2")

    def test_fileMissing(self) -> None:
        """
        An unreadable file is a problem that names the file.
        """

        def missing(path: str) -> bytes:
            raise FileNotFoundError(2, "No such file or directory")

        credential = resolveCredential(SecretRef("file", "/run/k"), {}, missing)
        self.assertEqual(credential.problem, "cannot read /run/k: No such file or directory")

    def test_headerInjection(self) -> None:
        """
        A secret that would break the header line is refused, not sent.
        """
        credential = resolveCredential(SecretRef("value", "sk-1\r\nX-Evil: 1"), {}, None)
        self.assertIsNone(credential.header)
        self.assertNotIn("sk-1", credential.problem)
        self.assertNotIn("sk-1", repr(credential))
