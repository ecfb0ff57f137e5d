"""
Tests for L{aigateway.llm.body}: a body is read strictly, or refused with a
short reason and a code.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from aigateway.llm.body import MAX_DEPTH, BodyError, readJSONObject

CHAT = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write a haiku about the sea.\nThen count its syllables."},
        {"role": "assistant", "content": "Waves fold into foam, \u00e9t\u00e9 \U0001F30A"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "And this picture?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ],
        },
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ],
    "temperature": 0.7,
    "top_p": 1,
    "max_tokens": 256,
    "stream": True,
    "stream_options": {"include_usage": True},
    "stop": ["\n\n", "END"],
    "logit_bias": {"50256": -100},
    "user": "user-1234",
    "metadata": None,
}


def _nested(depth: int, kinds: str = "[") -> bytes:
    """
    C{depth} containers, one inside the other, cycling through C{kinds},
    with a number at the bottom.
    """
    opens, closes = [], []
    for level in range(depth):
        if kinds[level % len(kinds)] == "[":
            opens.append(b"[")
            closes.append(b"]")
        else:
            opens.append(b'{"k":')
            closes.append(b"}")
    return b"".join(opens) + b"1" + b"".join(reversed(closes))


class _Cases(SynchronousTestCase):
    def assertRefused(self, body: bytes, code: str, message: str) -> None:
        with self.assertRaises(BodyError, msg=repr(body[:60])) as caught:
            readJSONObject(body)
        self.assertEqual((caught.exception.code, caught.exception.message), (code, message),
                         body[:60])
        self.assertEqual(str(caught.exception), message)


class AcceptTests(_Cases):
    """
    Bodies that every parser reads alike come back as they are.
    """

    def test_chat(self) -> None:
        """
        A typical chat completion body reads as C{json.loads} reads it.
        """
        for raw in [json.dumps(CHAT).encode(), json.dumps(CHAT, ensure_ascii=False).encode(),
                    json.dumps(CHAT, indent=2).encode()]:
            self.assertEqual(readJSONObject(raw), CHAT)

    def test_returnsPlainDicts(self) -> None:
        """
        Objects at every depth are plain C{dict}s, arrays plain C{list}s.
        """
        result = readJSONObject(json.dumps(CHAT).encode())
        self.assertIs(type(result), dict)
        self.assertIs(type(result["messages"]), list)
        self.assertIs(type(result["messages"][3]["content"][1]["image_url"]), dict)

    def test_small(self) -> None:
        """
        Small objects, whitespace around them and every JSON value type.
        """
        self.assertEqual(readJSONObject(b"{}"), {})
        self.assertEqual(readJSONObject(b" \t\r\n{ } \n"), {})
        self.assertEqual(
            readJSONObject(b'{"a":null,"b":true,"c":false,"d":-0.5e-3,"e":[],"f":{},"g":"\\u00e9"}'),
            {"a": None, "b": True, "c": False, "d": -0.0005, "e": [], "f": {}, "g": "\u00e9"},
        )

    def test_fieldsAllowed(self) -> None:
        """
        C{stream} may be true, false or null; C{stream_options} an object or
        null; C{model} any non-empty string.
        """
        for extra in [
            {"stream": True}, {"stream": False}, {"stream": None},
            {"stream_options": {}}, {"stream_options": None}, {"stream_options": {"include_usage": True}},
            {"model": "x"}, {"model": " "}, {"model": "\u00e9"}, {"model": "a" * 10000},
        ]:
            self.assertEqual(readJSONObject(json.dumps(extra).encode()), extra)

    def test_fieldsOnlyAtTopLevel(self) -> None:
        """
        C{model}, C{stream} and C{stream_options} are checked at the top
        level only.
        """
        body = {"metadata": {"model": 1, "stream": "yes", "stream_options": []}}
        self.assertEqual(readJSONObject(json.dumps(body).encode()), body)

    def test_surrogatePairs(self) -> None:
        """
        Escaped surrogate pairs, in either case, are characters.
        """
        self.assertEqual(readJSONObject(b'{"a":"\\ud83c\\udf0a"}'), {"a": "\U0001F30A"})
        self.assertEqual(readJSONObject(b'{"a":"\\uD83C\\uDF0A\\uD83C\\uDF0A"}'), {"a": "\U0001F30A" * 2})
        self.assertEqual(readJSONObject(b'{"\\ud83c\\udf0a":"\\ud7ff\\ue000"}'),
                         {"\U0001F30A": "\ud7ff\ue000"})

    def test_escapedBackslashBeforeU(self) -> None:
        """
        An escaped backslash followed by C{ud800} is text, not an escape.
        """
        self.assertEqual(readJSONObject(b'{"a":"\\\\ud800"}'), {"a": "\\ud800"})
        self.assertEqual(readJSONObject(b'{"a":"\\\\\\\\ud800\\\\uDC00"}'), {"a": "\\\\ud800\\uDC00"})
        self.assertEqual(readJSONObject(b'{"a":"\\\\\\ud83c\\udf0a"}'), {"a": "\\\U0001F30A"})

    def test_largeNumbers(self) -> None:
        """
        Large but finite numbers and long integers are read.
        """
        self.assertEqual(readJSONObject(b'{"a":1e308,"b":-1.7e308,"c":1e-400}'),
                         {"a": 1e308, "b": -1.7e308, "c": 0.0})
        self.assertEqual(readJSONObject(b'{"a":' + b"9" * 4000 + b"}"), {"a": int("9" * 4000)})

    def test_oneMegabyte(self) -> None:
        """
        A 1 MB chat body, with thousands of objects, reads as
        C{json.loads} reads it.
        """
        body = dict(CHAT, messages=CHAT["messages"] * 3000)
        raw = json.dumps(body).encode()
        self.assertGreater(len(raw), 1_000_000)
        self.assertEqual(readJSONObject(raw), json.loads(raw))


class EncodingTests(_Cases):
    """
    Only UTF-8, without a byte order mark.
    """

    def test_byteOrderMark(self) -> None:
        """
        A UTF-8 byte order mark is refused.
        """
        for body in [b"\xef\xbb\xbf{}", b'\xef\xbb\xbf{"model":"x"}', b"\xef\xbb\xbf"]:
            self.assertRefused(body, "invalid_encoding", "the body starts with a byte order mark")

    def test_utf16And32(self) -> None:
        """
        UTF-16 and UTF-32, with or without a byte order mark, are refused.
        """
        text = '{"model":"gpt-4o"}'
        for codec in ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]:
            self.assertRefused(text.encode(codec), "invalid_encoding",
                               "the body must be UTF-8, not UTF-16 or UTF-32")
        for body in [b"\xff\xfe", b"\xfe\xff", b"\x00{}", b"{\x00}", b" \x00"]:
            self.assertRefused(body, "invalid_encoding", "the body must be UTF-8, not UTF-16 or UTF-32")

    def test_notUtf8(self) -> None:
        """
        Bytes that strict UTF-8 refuses are refused, wherever they are.
        """
        for bad in [b"\xff", b"\x80", b"\xc3", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80",
                    b"\xc0\xaf", b"\xf5\x80\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xe9t\xe9"]:
            for body in [b'{"a":"' + bad + b'"}', b'{"' + bad + b'":1}', b"{}" + bad]:
                self.assertRefused(body, "invalid_encoding", "the body is not valid UTF-8")


class SyntaxTests(_Cases):
    """
    What is not JSON is refused, naming where without echoing the body.
    """

    def test_empty(self) -> None:
        """
        An empty or blank body is refused.
        """
        for body in [b"", b" ", b"\r\n\t "]:
            self.assertRefused(body, "invalid_json", "the body is empty")

    def test_invalid(self) -> None:
        """
        Broken JSON is refused with the parser's reason and position.
        """
        for body, reason in [
            (b"{", "Expecting property name enclosed in double quotes at line 1 column 2"),
            (b'{"a"}', "Expecting ':' delimiter at line 1 column 5"),
            (b'{"a":}', "Expecting value at line 1 column 6"),
            (b'{"a":1,}', "Expecting property name enclosed in double quotes at line 1 column 8"),
            (b'{"a":1 "b":2}', "Expecting ',' delimiter at line 1 column 8"),
            (b"{'a':1}", "Expecting property name enclosed in double quotes at line 1 column 2"),
            (b'{"a":"x', "Unterminated string starting at line 1 column 6"),
            (b'{"a":"\x01"}', "Invalid control character at line 1 column 7"),
            (b'{"a":"\\x"}', "Invalid \\escape at line 1 column 7"),
            (b'{"a":"\\u12"}', "Invalid \\uXXXX escape at line 1 column 8"),
            (b"{} {}", "Extra data at line 1 column 4"),
            (b"{}x", "Extra data at line 1 column 3"),
            (b'{"a":01}', "Expecting ',' delimiter at line 1 column 7"),
            (b'{"a":+1}', "Expecting value at line 1 column 6"),
            (b'{"a":.5}', "Expecting value at line 1 column 6"),
            (b'{"a":tru}', "Expecting value at line 1 column 6"),
            (b'{"a":None}', "Expecting value at line 1 column 6"),
            (b"x", "Expecting value at line 1 column 1"),
            (b'\n\n{"a":', "Expecting value at line 3 column 6"),
            (b'{"a":1}\x0c', "Extra data at line 1 column 8"),
        ]:
            self.assertRefused(body, "invalid_json", "the body is not valid JSON: " + reason)

    def test_messageHidesContent(self) -> None:
        """
        The message never holds the body's text.
        """
        for body in [b'{"secret-token-x": sk-live-123}', b'{"a": "sk-live-123', b"sk-live-123"]:
            with self.assertRaises(BodyError) as caught:
                readJSONObject(body)
            self.assertNotIn("sk-live", caught.exception.message)

    def test_constants(self) -> None:
        """
        C{NaN}, C{Infinity} and C{-Infinity} are refused, wherever they are.
        """
        for name in ["NaN", "Infinity", "-Infinity"]:
            for template in ['{"a":%s}', '{"a":[1,%s]}', '{"a":{"b":%s}}', "%s"]:
                self.assertRefused((template % name).encode(), "invalid_json",
                                   f"the body is not valid JSON: {name} is not a JSON number")

    def test_infiniteNumbers(self) -> None:
        """
        A number too large for a double is refused, not read as infinity.
        """
        for number in [b"1e400", b"-1e400", b"1E309", b"2" + b"0" * 308 + b".0", b"-2" + b"0" * 308 + b"e0"]:
            self.assertRefused(b'{"temperature":' + number + b"}", "invalid_json",
                               "the body has a number too large to read")

    def test_longIntegers(self) -> None:
        """
        An integer too long for Python to convert is refused cleanly.
        """
        for digits in [4301, 5000, 100000]:
            self.assertRefused(b'{"max_tokens":' + b"1" * digits + b"}", "invalid_json",
                               "the body has a number too long to read")

    def test_loneSurrogates(self) -> None:
        """
        An escaped surrogate that is not half of a pair is refused, in a
        value or a key, at any depth.
        """
        for text in [
            "\\ud800", "\\uDBFF", "\\udc00", "\\uDFFF", "a\\ud83c", "\\udf0a\\ud83c",
            "\\ud83c\\ud83c", "\\ud83c\\u0041", "\\ud83cx\\udf0a", "\\\\\\ud800",
            "\\ud83c\\\\udf0a", "\\ud83c\\udf0a\\udf0a",
        ]:
            for template in ['{"a":"%s"}', '{"%s":1}', '{"a":[{"b":["%s"]}]}']:
                self.assertRefused((template % text).encode(), "invalid_json",
                                   "the body has an escaped lone surrogate")


class DuplicateKeyTests(_Cases):
    """
    A key twice in any object is refused, naming the key.
    """

    def test_topLevel(self) -> None:
        """
        A second C{model}, before or after other keys, is refused.
        """
        for body in [
            b'{"model":"a","model":"b"}',
            b'{"model":"a","messages":[],"model":"b"}',
            b'{"model":"gpt-4o","model":"gpt-4o"}',
            b'{"messages":[],"model":1,"model":"b"}',
        ]:
            self.assertRefused(body, "duplicate_key", "the body has a duplicate key 'model'")

    def test_nested(self) -> None:
        """
        Duplicates inside nested objects and arrays are refused too.
        """
        for body, key in [
            (b'{"messages":[{"role":"user","role":"system"}]}', "role"),
            (b'{"a":{"b":{"c":{"d":1,"d":2}}}}', "d"),
            (b'{"a":[[[{"x":1}],[{"y":1,"y":1}]]]}', "y"),
            (b'{"stream_options":{"include_usage":true,"include_usage":false}}', "include_usage"),
            (b'{"a":{"":1,"":2}}', ""),
        ]:
            self.assertRefused(body, "duplicate_key", f"the body has a duplicate key {key!r}")

    def test_escapedSpelling(self) -> None:
        """
        Keys that are the same once unescaped are duplicates.
        """
        for body in [b'{"model":"a","mod\\u0065l":"b"}', b'{"\\u006dodel":"a","model":"b"}',
                     b'{"\\u006D\\u006f\\u0064\\u0065\\u006c":1,"model":2}']:
            self.assertRefused(body, "duplicate_key", "the body has a duplicate key 'model'")

    def test_longKeyCut(self) -> None:
        """
        A long key is named by its first 40 characters only.
        """
        key = "k" * 1000
        body = json.dumps({key: 1}).encode()[:-1] + b"," + json.dumps(key).encode() + b":2}"
        self.assertRefused(body, "duplicate_key", f"the body has a duplicate key {'k' * 40!r}...")

    def test_otherKeysNotDuplicates(self) -> None:
        """
        Keys that differ in case or by a character are not duplicates.
        """
        body = {"model": 1, "Model": 2, "model ": 3, "m\u00f6del": 4}
        self.assertEqual(readJSONObject(json.dumps({"x": body}).encode()), {"x": body})


class DepthTests(_Cases):
    """
    Nesting deeper than L{MAX_DEPTH} is refused cleanly, however deep.
    """

    def test_atLimit(self) -> None:
        """
        Exactly 64 levels, counting the top-level object, are read.
        """
        self.assertEqual(MAX_DEPTH, 64)
        for kinds in ["{", "{[", "{[[", "{{["]:
            body = _nested(MAX_DEPTH, kinds)
            self.assertEqual(readJSONObject(body), json.loads(body))

    def test_overLimit(self) -> None:
        """
        65 levels or more, of objects, arrays or both, are refused.
        """
        for depth in [MAX_DEPTH + 1, MAX_DEPTH + 2, 100, 500, 900]:
            for kinds in ["{", "[", "{[", "[{", "{[[", "{{["]:
                self.assertRefused(_nested(depth, kinds), "too_deep",
                                   "the body nests deeper than 64 levels")

    def test_deepInsideWideBody(self) -> None:
        """
        One deep branch among many shallow ones is found.
        """
        body = dict(CHAT, messages=CHAT["messages"] * 50)
        raw = json.dumps(body).encode()[:-1] + b',"deep":' + _nested(MAX_DEPTH) + b"}"
        self.assertRefused(raw, "too_deep", "the body nests deeper than 64 levels")
        raw = json.dumps(body).encode()[:-1] + b',"deep":' + _nested(MAX_DEPTH - 1) + b"}"
        self.assertEqual(readJSONObject(raw)["deep"], json.loads(_nested(MAX_DEPTH - 1)))

    def test_manyBracketsShallow(self) -> None:
        """
        Many containers, or brackets inside strings, are not depth.
        """
        body = {"a": [[1]] * 1000, "b": "[" * 1000 + "{" * 1000, "c": [{}] * 1000}
        self.assertEqual(readJSONObject(json.dumps(body).encode()), body)

    def test_huge(self) -> None:
        """
        100,000 brackets, closed or not, give a L{BodyError}, never a
        C{RecursionError}.
        """
        for body in [
            b"[" * 100_000,
            b"[" * 100_000 + b"]" * 100_000,
            b"{" + b'"a":{' * 100_000,
            b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
            b'{"a":' + b'[{"k":' * 50_000,
        ]:
            self.assertRefused(body, "too_deep", "the body nests deeper than 64 levels")


class ShapeTests(_Cases):
    """
    The top level is an object, and the fields the gateway reads have
    their types.
    """

    def test_notAnObject(self) -> None:
        """
        A top level that is not an object is refused.
        """
        for body in [b"[]", b'[{"model":"x"}]', b"1", b"-0.5", b'"model"', b"true", b"false",
                     b"null", _nested(MAX_DEPTH)]:
            self.assertRefused(body, "not_an_object", "the body must be a JSON object")

    def test_model(self) -> None:
        """
        C{model} that is not a string, or is empty, is refused.
        """
        for value in [b"1", b"0", b"1.5", b"true", b"false", b"null", b"[]", b'["gpt-4o"]',
                      b'{"name":"gpt-4o"}']:
            self.assertRefused(b'{"model":' + value + b"}", "invalid_field", "'model' must be a string")
        self.assertRefused(b'{"model":""}', "invalid_field", "'model' must not be empty")
        self.assertRefused(b'{"messages":[],"model":""}', "invalid_field", "'model' must not be empty")

    def test_stream(self) -> None:
        """
        C{stream} that is not a boolean or null is refused.
        """
        for value in [b"1", b"0", b'"true"', b'""', b"[]", b"{}", b"1.0"]:
            self.assertRefused(b'{"stream":' + value + b"}", "invalid_field", "'stream' must be a boolean")

    def test_streamOptions(self) -> None:
        """
        C{stream_options} that is not an object or null is refused.
        """
        for value in [b"1", b"true", b"false", b'""', b'"include_usage"', b"[]", b"[{}]"]:
            self.assertRefused(b'{"stream_options":' + value + b"}", "invalid_field",
                               "'stream_options' must be an object")


_KEYS = st.one_of(st.text(max_size=8), st.sampled_from(["model", "stream", "stream_options", "messages"]))
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=4),
    max_leaves=20,
)
_OBJECTS = st.dictionaries(_KEYS, _VALUES, max_size=6)


def _valid(d: dict[str, Any]) -> bool:
    """
    Whether the fields the gateway reads have their types.
    """
    if "model" in d and not (type(d["model"]) is str and d["model"]):
        return False
    if "stream" in d and not (d["stream"] is None or type(d["stream"]) is bool):
        return False
    if "stream_options" in d and not (d["stream_options"] is None or type(d["stream_options"]) is dict):
        return False
    return True


def _cut(d: dict[str, Any], at: int) -> bytes:
    """
    The JSON of C{d}, cut short somewhere.
    """
    raw = json.dumps(d).encode("utf-8")
    return raw[: at % (len(raw) + 1)]


class PropertyTests(SynchronousTestCase):
    """
    Properties that hold for every object.
    """

    @settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
    @given(_OBJECTS, st.booleans())
    def test_roundTrip(self, d: dict[str, Any], asciiOnly: bool) -> None:
        """
        Any object C{json.dumps} writes reads back equal, unless a field the
        gateway reads has the wrong type.
        """
        raw = json.dumps(d, ensure_ascii=asciiOnly).encode("utf-8")
        if _valid(d):
            self.assertEqual(readJSONObject(raw), d)
        else:
            with self.assertRaises(BodyError) as caught:
                readJSONObject(raw)
            self.assertEqual(caught.exception.code, "invalid_field")

    @settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=60) | st.builds(_cut, _OBJECTS, st.integers(min_value=0)))
    def test_returnsOrRefuses(self, body: bytes) -> None:
        """
        Any bytes give a plain dict or a L{BodyError}, nothing else.
        """
        try:
            result = readJSONObject(body)
        except BodyError as e:
            self.assertIn(e.code, {"invalid_encoding", "invalid_json", "duplicate_key", "too_deep",
                                   "not_an_object", "invalid_field"})
        else:
            self.assertIs(type(result), dict)
