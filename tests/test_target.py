"""
Tests for L{aigateway.web.target}: every target has one normal form, or none
and a 400.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from aigateway.web.target import TargetError, normalTarget

_UNRESERVED = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)


class _Cases(SynchronousTestCase):
    def assertNormal(self, target: bytes, path: bytes, query: bytes = b"") -> None:
        self.assertEqual(normalTarget(target), (path, query), target)

    def assertRefused(self, target: bytes, message: str) -> None:
        with self.assertRaises(TargetError, msg=repr(target)) as caught:
            normalTarget(target)
        self.assertEqual(caught.exception.message, message, target)
        self.assertEqual(str(caught.exception), message)


class PlainTests(_Cases):
    """
    Targets that are already normal come back unchanged.
    """

    def test_commonPaths(self) -> None:
        """
        Plain paths come back as they are, with an empty query.
        """
        for target in [
            b"/",
            b"/local/v1/chat/completions",
            b"/v1/messages",
            b"/openai/v1/embeddings",
            b"/a",
            b"/a-b_c.d~e/f",
            b"/!$&'()*+,=:@",
            b"/v1/models/gpt-4o:generateContent",
            b"/users/me@example.com",
            b"/a.b/c..d/...",
            b"/.well-known/openid-configuration",
            b"/a/.hidden/..x",
        ]:
            self.assertNormal(target, target)

    def test_query(self) -> None:
        """
        The query comes back byte for byte, without its C{?}.
        """
        self.assertNormal(b"/v1/chat?api-version=2024-06-01", b"/v1/chat", b"api-version=2024-06-01")
        self.assertNormal(b"/?a=1&b=2", b"/", b"a=1&b=2")
        self.assertNormal(b"/a?x=%2f%2F%20", b"/a", b"x=%2f%2F%20")
        self.assertNormal(b"/a?/path?and=more?", b"/a", b"/path?and=more?")
        self.assertNormal(b"/a?key=sk-abc.def~!$'()*+,;=:@[]{}|^`\\\"<>", b"/a",
                          b"key=sk-abc.def~!$'()*+,;=:@[]{}|^`\\\"<>")

    def test_emptyQuery(self) -> None:
        """
        A lone C{?} is an empty query.
        """
        self.assertNormal(b"/a?", b"/a")
        self.assertNormal(b"/?", b"/")
        self.assertNormal(b"//a//?", b"/a")

    def test_queryNotNormalised(self) -> None:
        """
        Escapes in the query are not decoded or re-cased.
        """
        self.assertNormal(b"/a?%63=%2e%2E", b"/a", b"%63=%2e%2E")


class FormTests(_Cases):
    """
    Absolute-form is reduced to origin-form; other forms are refused.
    """

    def test_absoluteForm(self) -> None:
        """
        C{http://} and C{https://}, in any case, give their path and query.
        """
        for scheme in [b"http", b"https", b"HTTP", b"HTTPS", b"Http", b"hTtPs"]:
            self.assertNormal(scheme + b"://api.example.com/v1/chat/completions",
                              b"/v1/chat/completions")
            self.assertNormal(scheme + b"://api.example.com:8443/v1/x?a=b#f", b"/v1/x", b"a=b")

    def test_absoluteFormNormalised(self) -> None:
        """
        The path of absolute-form is normalised like any other.
        """
        self.assertNormal(b"http://h//v1//chat/%63ompletions/", b"/v1/chat/completions")
        self.assertRefused(b"http://h/v1/..%2fx", "the request path has an encoded slash")
        self.assertRefused(b"http://h/v1/../x", "the request path has a '.' or '..' segment")

    def test_absoluteFormWithoutPath(self) -> None:
        """
        An absolute target without a path has the path C{/}.
        """
        self.assertNormal(b"http://h", b"/")
        self.assertNormal(b"http://h?q=1", b"/", b"q=1")
        self.assertNormal(b"http://h#frag/x", b"/")
        self.assertNormal(b"https://[::1]:443", b"/")
        self.assertNormal(b"http://127.0.0.1:80/", b"/")

    def test_absoluteFormHost(self) -> None:
        """
        An empty host, user information or a strange byte in the host is
        refused.
        """
        self.assertRefused(b"http:///v1/chat", "the request target has an invalid host")
        self.assertRefused(b"http://", "the request target has an invalid host")
        self.assertRefused(b"http://user:pw@h/v1", "the request target has user information")
        self.assertRefused(b"http://@h/v1", "the request target has user information")
        self.assertRefused(b"http://h\\x/v1", "the request target has an invalid host")
        self.assertRefused(b"http://h x/v1", "the request target has an invalid host")
        self.assertRefused(b"http://h\xc3\xa9/v1", "the request target has an invalid host")

    def test_otherForms(self) -> None:
        """
        Asterisk-form, authority-form, other schemes and relative paths are
        refused.
        """
        for target in [
            b"*",
            b"api.example.com:443",
            b"v1/chat/completions",
            b"ftp://h/v1",
            b"ws://h/v1",
            b"httpx://h/v1",
            b"http:/h/v1",
            b"http:h/v1",
            b"?q",
            b"#x",
            b" /v1",
            b"\\v1\\chat",
        ]:
            self.assertRefused(target, "the request target must be a path starting with '/'")

    def test_doubleSlashStart(self) -> None:
        """
        C{//host/path} is origin-form whose slashes collapse; it is never
        read as a host.
        """
        self.assertNormal(b"//evil.example/v1", b"/evil.example/v1")
        self.assertNormal(b"//", b"/")

    def test_empty(self) -> None:
        """
        An empty target is refused.
        """
        self.assertRefused(b"", "the request target is empty")


class FragmentTests(_Cases):
    """
    The fragment, from the first C{#}, is dropped.
    """

    def test_fragmentDropped(self) -> None:
        """
        A fragment after the path is dropped.
        """
        self.assertNormal(b"/r/v1/chat/completions#x", b"/r/v1/chat/completions")
        self.assertNormal(b"/a#", b"/a")
        self.assertNormal(b"/#", b"/")
        self.assertNormal(b"/a#/../..%2f;\xff", b"/a")

    def test_fragmentAfterQuery(self) -> None:
        """
        A fragment after the query ends the query.
        """
        self.assertNormal(b"/a?b=1#c", b"/a", b"b=1")
        self.assertNormal(b"/a?#c", b"/a")
        self.assertNormal(b"/a?b=1#c?d=2", b"/a", b"b=1")

    def test_questionMarkInFragment(self) -> None:
        """
        A C{?} inside the fragment starts no query.
        """
        self.assertNormal(b"/a#x?token=secret", b"/a")
        self.assertNormal(b"/a#?", b"/a")

    def test_hashInQueryPosition(self) -> None:
        """
        A C{#} where the query would be is a fragment, not query data.
        """
        self.assertNormal(b"/a?x#y", b"/a", b"x")
        self.assertNormal(b"/a?x=1#2&y=3", b"/a", b"x=1")
        self.assertNormal(b"/a?##", b"/a")

    def test_fragmentRevealsTrailingSlash(self) -> None:
        """
        The path before the fragment is normalised like any path.
        """
        self.assertNormal(b"/a/#x", b"/a")
        self.assertNormal(b"/a//b#x", b"/a/b")
        self.assertRefused(b"/a/..#x", "the request path has a '.' or '..' segment")


class QueryTests(_Cases):
    """
    The query must be printable ASCII with valid escapes.
    """

    def test_byteNotAllowed(self) -> None:
        """
        Spaces, controls, DEL and non-ASCII bytes in the query are refused.
        """
        for byte in [b" ", b"\x00", b"\t", b"\r", b"\n", b"\x1f", b"\x7f", b"\x80", b"\xc3\xa9", b"\xff"]:
            for query in [byte, b"a=" + byte, byte + b"a", b"a=1&b=" + byte + b"&c=2"]:
                self.assertRefused(b"/a?" + query, "the request query has a byte that is not allowed")

    def test_invalidEscape(self) -> None:
        """
        A C{%} not followed by two hex digits is refused.
        """
        for query in [b"%", b"a=%", b"a=%2", b"%2", b"%zz", b"a=%g0", b"a=%0g&b", b"%%41", b"a%"]:
            self.assertRefused(b"/a?" + query, "the request query has an invalid percent-escape")

    def test_messageHidesQuery(self) -> None:
        """
        The message never holds the query, which can carry a token.
        """
        for target in [b"/a?token=sk-secret%zz", b"/a?token=sk-secret\xff"]:
            with self.assertRaises(TargetError) as caught:
                normalTarget(target)
            self.assertNotIn("secret", caught.exception.message)


class PathByteTests(_Cases):
    """
    The path may hold only RFC 3986 path characters.
    """

    def test_bytesNotAllowed(self) -> None:
        """
        Spaces, controls, DEL, non-ASCII and delimiter-like bytes are
        refused, wherever they are, naming the byte.
        """
        bad = [bytes([b]) for b in range(0x21)] + [bytes([b]) for b in range(0x7F, 0x100)]
        bad += [b'"', b"<", b">", b"^", b"`", b"{", b"|", b"}", b"[", b"]"]
        for byte in bad:
            message = f"the request path has a byte that is not allowed (0x{byte[0]:02X})"
            for target in [b"/" + byte, b"/a" + byte + b"b", b"/a/" + byte, b"/a" + byte + b"?q"]:
                self.assertRefused(target, message)

    def test_firstBadByteNamed(self) -> None:
        """
        With several bad bytes, the first is named.
        """
        self.assertRefused(b"/a b\x00", "the request path has a byte that is not allowed (0x20)")
        self.assertRefused(b"/\xc3\xa9", "the request path has a byte that is not allowed (0xC3)")

    def test_backslash(self) -> None:
        """
        A backslash is refused: some servers read it as a slash.
        """
        for target in [b"/a\\b", b"/\\", b"/v1\\..\\x", b"/a/\\/b"]:
            self.assertRefused(target, "the request path has a backslash")

    def test_parameters(self) -> None:
        """
        A C{;} is refused: servers read path parameters differently.
        """
        for target in [b"/a;b", b"/v1/chat/completions;x", b"/;", b"/a;/b", b"/..;/x",
                       b"/v1;jsessionid=1/chat?q", b"/a;b#x"]:
            self.assertRefused(target, "the request path has a parameter (';')")

    def test_encodedSemicolonKept(self) -> None:
        """
        An escaped C{;} is data, not a parameter, and stays escaped.
        """
        self.assertNormal(b"/a%3bb", b"/a%3Bb")


class EscapeTests(_Cases):
    """
    Escapes are decoded, kept in upper case or refused.
    """

    def test_unreservedDecoded(self) -> None:
        """
        Escapes of unreserved characters are decoded, in either case.
        """
        self.assertNormal(b"/v1/chat/%63ompletions", b"/v1/chat/completions")
        self.assertNormal(b"/v1/chat/%63%6F%6d%70letions", b"/v1/chat/completions")
        self.assertNormal(b"/%76%31/chat", b"/v1/chat")
        self.assertNormal(b"/v1/chat/completion%73", b"/v1/chat/completions")
        self.assertNormal(b"/%41%5a%61%7A%30%39%2D%2d%2E%5F%5f%7E%7e", b"/AZaz09--.__~~")
        self.assertNormal(b"/a%2Eb", b"/a.b")
        self.assertNormal(b"/%2e%2e%2e", b"/...")
        self.assertNormal(b"/.%2ehidden", b"/..hidden")

    def test_everyUnreservedDecoded(self) -> None:
        """
        All 66 unreserved characters are decoded from upper and lower hex.
        """
        for value in sorted(_UNRESERVED):
            for escape in [b"%%%02X" % value, b"%%%02x" % value]:
                self.assertNormal(b"/a" + escape + b"b", b"/a" + bytes([value]) + b"b")

    def test_keptUpperCase(self) -> None:
        """
        Other escapes stay escaped, with upper-case hex.
        """
        self.assertNormal(b"/%3a", b"/%3A")
        self.assertNormal(b"/a%3ab%3Ac", b"/a%3Ab%3Ac")
        self.assertNormal(b"/%c3%a9t%C3%a9", b"/%C3%A9t%C3%A9")
        self.assertNormal(b"/%20", b"/%20")
        self.assertNormal(b"/a%23b", b"/a%23b")
        self.assertNormal(b"/a%3fb", b"/a%3Fb")
        self.assertNormal(b"/%ff", b"/%FF")
        self.assertNormal(b"/%80%fE", b"/%80%FE")

    def test_percentNotDecoded(self) -> None:
        """
        C{%25} stays escaped, so nothing is decoded twice.
        """
        self.assertNormal(b"/%25", b"/%25")
        self.assertNormal(b"/%2563", b"/%2563")
        self.assertNormal(b"/%252f", b"/%252f")
        self.assertNormal(b"/%252e%252e", b"/%252e%252e")

    def test_everyOtherEscapeKept(self) -> None:
        """
        Every byte that is not unreserved, a slash or a control keeps its
        escape, upper-cased.
        """
        for value in range(0x20, 0x100):
            if value in _UNRESERVED or value in (0x2F, 0x5C, 0x7F):
                continue
            self.assertNormal(b"/%%%02x" % value, b"/%%%02X" % value)

    def test_invalid(self) -> None:
        """
        A C{%} not followed by two hex digits is refused, wherever it is.
        """
        for escape in [b"%", b"%2", b"%zz", b"%g1", b"%1g", b"%%", b"%-1", b"%+1"]:
            for target in [b"/" + escape, b"/a" + escape + b"/b", b"/a/" + escape + b"x",
                           b"/" + escape + b"?q=1"]:
                self.assertRefused(target, "the request path has an invalid percent-escape")
        self.assertRefused(b"/%%34%31", "the request path has an invalid percent-escape")
        self.assertRefused(b"/%41%", "the request path has an invalid percent-escape")

    def test_encodedSlash(self) -> None:
        """
        Escapes of C{/} and C{\\} are refused, wherever they are.
        """
        for escape in [b"%2f", b"%2F", b"%5c", b"%5C"]:
            for target in [
                b"/" + escape,
                escape.join([b"/v1", b"chat", b"completions"]),
                b"/a" + escape,
                b"/" + escape + b"a",
                b"/a/.." + escape + b"b",
                b"/" + escape + b"../b",
                b"/r/.." + escape + b"admin",
                b"/a" + escape + b"?q",
            ]:
                self.assertRefused(target, "the request path has an encoded slash")

    def test_encodedControl(self) -> None:
        """
        Escapes of control bytes, C{%00} to C{%1F} and C{%7F}, are refused.
        """
        for value in list(range(0x20)) + [0x7F]:
            for escape in [b"%%%02X" % value, b"%%%02x" % value]:
                for target in [b"/" + escape, b"/a" + escape + b"b", b"/a/" + escape]:
                    self.assertRefused(target, "the request path has an encoded control character")


class SlashTests(_Cases):
    """
    Runs of slashes collapse and a trailing slash goes.
    """

    def test_collapse(self) -> None:
        """
        Runs of slashes become one, wherever they are.
        """
        self.assertNormal(b"//v1//chat///completions/", b"/v1/chat/completions")
        self.assertNormal(b"/v1//chat", b"/v1/chat")
        self.assertNormal(b"///////a", b"/a")
        self.assertNormal(b"/a////b?q=//", b"/a/b", b"q=//")

    def test_trailing(self) -> None:
        """
        A trailing slash is removed, except from C{/} itself.
        """
        self.assertNormal(b"/v1/chat/completions/", b"/v1/chat/completions")
        self.assertNormal(b"/a/?q", b"/a", b"q")
        self.assertNormal(b"/a///", b"/a")
        self.assertNormal(b"/", b"/")
        self.assertNormal(b"///", b"/")
        self.assertNormal(b"/%41/", b"/A")


class DotSegmentTests(_Cases):
    """
    A C{.} or C{..} segment, plain or escaped, is refused.
    """

    def test_refused(self) -> None:
        """
        Dot segments at the start, middle and end, in every spelling.
        """
        message = "the request path has a '.' or '..' segment"
        for dot in [b".", b"..", b"%2e", b"%2E", b"%2e%2e", b"%2E%2E", b".%2e", b"%2e.", b".%2E", b"%2E."]:
            for target in [
                b"/" + dot,
                b"/" + dot + b"/",
                b"/" + dot + b"/a",
                b"/a/" + dot,
                b"/a/" + dot + b"/b",
                b"/a//" + dot + b"//b",
                b"/a/" + dot + b"?q",
                b"/a/" + dot + b"#f",
            ]:
                self.assertRefused(target, message)
        self.assertRefused(b"/r/../admin", message)
        self.assertRefused(b"/r/v1/../../admin/", message)

    def test_notDotSegments(self) -> None:
        """
        Segments that only hold dots among other bytes are kept.
        """
        self.assertNormal(b"/...", b"/...")
        self.assertNormal(b"/a..", b"/a..")
        self.assertNormal(b"/..a/.b", b"/..a/.b")
        self.assertNormal(b"/%2e%2e%2e/x", b"/.../x")
        self.assertNormal(b"/a/%2e%61", b"/a/.a")

    def test_messageShort(self) -> None:
        """
        A long refused target gives a short message that does not echo it.
        """
        for target in [b"/" + b"a" * 10000 + b"/..", b"/" + b"b" * 10000 + b"\xff",
                       b"/" + b"c" * 10000 + b"%zz"]:
            with self.assertRaises(TargetError) as caught:
                normalTarget(target)
            self.assertLess(len(caught.exception.message), 100)
            self.assertNotIn("aaa", caught.exception.message)


# Pieces that make interesting targets when strung together.
_PIECES = st.sampled_from(
    [
        b"/", b"//", b"a", b"v1", b"chat", b".", b"..", b"%2e", b"%2E", b"%2f", b"%2F", b"%5c",
        b"%41", b"%61", b"%3a", b"%3A", b"%7e", b"%25", b"%00", b"%7f", b"%", b"%2", b"%zz",
        b"#", b"?", b";", b"=", b"&", b"@", b":", b"~", b"\\", b" ", b"\xc3\xa9", b"\xff",
        b"http://h", b"HTTPS://h:1", b"*",
    ]
)
_TARGETS = st.one_of(
    st.lists(_PIECES, max_size=12).map(b"".join),
    st.lists(_PIECES, max_size=12).map(lambda pieces: b"/" + b"".join(pieces)),
    st.binary(max_size=40),
    st.binary(max_size=40).map(lambda data: b"/" + data),
)

_ESCAPE = re.compile(rb"%(..)")
_NORMAL_PATH = re.compile(rb"(?:/(?:[A-Za-z0-9\-._~!$&'()*+,=:@]|%[0-9A-F]{2})+)+|/")


class PropertyTests(SynchronousTestCase):
    """
    Properties that hold for every target.
    """

    @settings(max_examples=500)
    @given(_TARGETS)
    def test_returnsOrRefuses(self, target: bytes) -> None:
        """
        Any bytes give a pair of bytes or a L{TargetError}, nothing else.
        """
        try:
            result = normalTarget(target)
        except TargetError as e:
            self.assertIsInstance(e.message, str)
            self.assertLess(len(e.message), 100)
        else:
            path, query = result
            self.assertIsInstance(path, bytes)
            self.assertIsInstance(query, bytes)

    @settings(max_examples=500)
    @given(_TARGETS)
    def test_idempotent(self, target: bytes) -> None:
        """
        A normal form reads back as itself.
        """
        try:
            path, query = normalTarget(target)
        except TargetError:
            return
        again = path + b"?" + query if query else path
        self.assertEqual(normalTarget(again), (path, query))

    @settings(max_examples=500)
    @given(_TARGETS)
    def test_normalPath(self, target: bytes) -> None:
        """
        A normal path has no empty or dot segment, no fragment, no
        parameter, no encoded slash and only upper-case escapes of bytes
        that need one.
        """
        try:
            path, query = normalTarget(target)
        except TargetError:
            return
        self.assertIsNotNone(_NORMAL_PATH.fullmatch(path), path)
        for forbidden in [b"//", b"#", b";", b"?", b"%2F", b"%5C", b"%2f", b"%5c"]:
            self.assertNotIn(forbidden, path)
        self.assertNotIn(b"#", query)
        segments = path.split(b"/")[1:]
        self.assertNotIn(b".", segments)
        self.assertNotIn(b"..", segments)
        if path != b"/":
            self.assertFalse(path.endswith(b"/"))
        for escape in _ESCAPE.findall(path):
            self.assertEqual(escape, escape.upper())
            value = int(escape, 16)
            self.assertNotIn(value, _UNRESERVED)
            self.assertNotIn(value, (0x2F, 0x5C, 0x7F))
            self.assertGreaterEqual(value, 0x20)

    @given(st.lists(st.sampled_from([b"a", b"%41", b"%61", b"b", b"/", b"//", b"%3a", b"%3A"]), max_size=12))
    def test_spellingsAgree(self, pieces: list[bytes]) -> None:
        """
        Spellings that differ only in unreserved escapes, hex case and
        repeated slashes give the same normal form.
        """
        target = b"/" + b"".join(pieces)
        plain = target.replace(b"%41", b"A").replace(b"%61", b"a").replace(b"%3a", b"%3A")
        self.assertEqual(normalTarget(target), normalTarget(plain))
