"""
One reading of a request: what the gateway judged (the route, the rules on
the model, the model override, the token budget) is exactly what the
provider gets, however the client spells its request.  Raw requests on a
real channel, with the fake LLM behind.
"""

from __future__ import annotations

import json

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tests.lab import FAKE_BACKENDS, UPSTREAM_KEY
from tests.memory import MemorySite

KEY = UPSTREAM_KEY
CONFIG = FAKE_BACKENDS + """
routes:
  - name: ruled
    match: {pathPrefix: /r}
    backend: local
    authorization:
      rules:
        - deny: llm.requestModel == "gpt-forbidden"
  - name: budget
    match: {pathPrefix: /b}
    backend: local
    rateLimits: [{tokens: {limit: 30, per: 1h}}]
  - name: pinned
    match: {pathPrefix: /p}
    backend: pinned
  - name: plain
    match: {pathPrefix: /open}
    backend: local
"""
ALLOWED = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
FORBIDDEN = dict(ALLOWED, model="gpt-forbidden")

# Spellings of the chat completions endpoint under a prefix that upstream
# servers take for it.
CHAT_SPELLINGS = [
    b"/v1/chat/completions",
    b"/v1/chat/completions#x",
    b"/v1/chat/completions?x=1#frag?y",
    b"/v1/chat/%63ompletions",
    b"/v1/chat/c%6Fmpletions",
    b"/v1/%63%68%61%74/completions",
    b"//v1//chat///completions",
    b"/v1/chat/completions/",
    b"/v1/chat/completions//",
    b"/V1/Chat/Completions",
    b"/v1/CHAT/COMPLETIONS#",
    b"",
    b"/",
    b"#x",
    b"/chat/completions",
    b"/Chat/Completions/",
]
# Targets that have no safe normal form.
REFUSED = [
    b"/v1/chat/completions;x=1",
    b"/v1/chat;/completions",
    b"/v1/chat%2fcompletions",
    b"/v1/chat%2Fcompletions",
    b"/x/..%2fv1/chat/completions",
    b"/v1/%2e%2e/v1/chat/completions",
    b"/v1/./chat/completions",
    b"/v1/chat/.%2e/chat/completions",
    b"/v1/chat%5ccompletions",
    b"/v1/chat/completions%00",
    b"/v1/chat/completions%",
    b"/v1/chat/completions%zz",
]


def _request(method: bytes, target: bytes, body: bytes, *headers: bytes) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"host: gw",
             b"content-type: application/json", b"content-length: %d" % len(body)]
    return b"\r\n".join(lines + list(headers)) + b"\r\n\r\n" + body


class OneReadingTests(SynchronousTestCase):
    """
    Every spelling of a path is judged as the provider will read it.
    """

    def setUp(self) -> None:
        self.gateway = MemorySite(CONFIG, KEY)

    def send(self, method: bytes, target: bytes, body: object) -> tuple[int, dict, bytes]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        connection = self.gateway.connect()
        connection.send(_request(method, target, data))
        head, _, rest = connection.answer().partition(b"\r\n\r\n")
        fields = dict(
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
        )
        if fields.get(b"transfer-encoding") == b"chunked":
            rest = b"".join(rest.split(b"\r\n")[1::2])
        return connection.status(), fields, rest

    def test_ruleSeesEverySpelling(self) -> None:
        """
        A deny rule on the model holds for every spelling of the chat
        endpoint, and the allowed model reaches the one chat endpoint.
        """
        for spelling in CHAT_SPELLINGS:
            status, _, body = self.send(b"POST", b"/r" + spelling, FORBIDDEN)
            self.assertEqual(status, 403, (spelling, body))
            self.assertEqual(self.gateway.agent.calls, [], spelling)
            status, _, body = self.send(b"POST", b"/r" + spelling, ALLOWED)
            self.assertEqual(status, 200, (spelling, body))
            sent = self.gateway.agent.calls.pop()
            self.assertEqual(sent.split(b"?")[0], b"http://127.0.0.1:9000/v1/chat/completions", spelling)
            self.assertNotIn(b"#", sent)

    def test_reportedAsForwarded(self) -> None:
        """
        The access log names the path in the form that was judged.
        """
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.send(b"POST", b"/r//v1/chat/%63ompletions/#x", ALLOWED)
        self.gateway.clock.advance(1)
        paths = [e["path"] for e in events if e.get("log_namespace") == "aigateway.access"]
        self.assertEqual(paths, ["/r/v1/chat/completions"])

    def test_absoluteForm(self) -> None:
        """
        A target in absolute form is judged on its path too.
        """
        status, _, _ = self.send(b"POST", b"http://gw/r/v1/chat/%63ompletions#x", FORBIDDEN)
        self.assertEqual(status, 403)
        status, _, _ = self.send(b"POST", b"HTTP://gw/r/v1/chat/completions", ALLOWED)
        self.assertEqual(status, 200)

    def test_refused(self) -> None:
        """
        A target with no safe normal form is a 400, and nothing goes upstream.
        """
        for target in REFUSED:
            status, _, body = self.send(b"POST", b"/r" + target, ALLOWED)
            self.assertEqual(status, 400, (target, body))
            self.assertEqual(json.loads(body)["error"]["code"], "invalid_path", target)
        self.assertEqual(self.gateway.agent.calls, [])

    def test_overrideOnEverySpelling(self) -> None:
        """
        The backend's model override applies to every spelling, and the
        provider gets the one model.
        """
        for spelling in CHAT_SPELLINGS:
            status, _, body = self.send(b"POST", b"/p" + spelling, ALLOWED)
            self.assertEqual(status, 200, (spelling, body))
            sent = self.gateway.fakellm.requests[-1]
            self.assertEqual(json.loads(sent.body)["model"], "gpt-pinned", spelling)
            self.assertEqual(sent.body.count(b'"model"'), 1)

    def test_budgetOnEverySpelling(self) -> None:
        """
        Token budgets are charged whatever the spelling: requests spelled
        any one way run into the budget.
        """
        for spelling in CHAT_SPELLINGS:
            self.gateway = MemorySite(CONFIG, KEY)
            seen = [self.send(b"POST", b"/b" + spelling, ALLOWED)[0] for _ in range(8)]
            self.assertIn(429, seen, spelling)
            first = seen.index(429)
            self.assertEqual(seen[first:], [429] * (len(seen) - first), spelling)


class StrictBodyTests(SynchronousTestCase):
    """
    The body of a model endpoint is read once, strictly: what the rules
    judged is what goes upstream.
    """

    def setUp(self) -> None:
        self.gateway = MemorySite(CONFIG, KEY)

    def status(self, body: bytes, prefix: bytes = b"/r") -> tuple[int, dict]:
        connection = self.gateway.connect()
        connection.send(_request(b"POST", prefix + b"/v1/chat/completions", body))
        answer = connection.answer().partition(b"\r\n\r\n")[2]
        return connection.status(), json.loads(answer) if answer.startswith(b"{") else {}

    def test_refusedBodies(self) -> None:
        """
        Duplicate keys, a model that is not a string, bad UTF-8, a BOM,
        non-finite numbers and deep nesting are 400s naming the problem.
        """
        deep = b'{"model": "gpt-4o-mini", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"
        for body in [
            b'{"model": "gpt-4o-mini", "model": "gpt-forbidden", "messages": []}',
            b'{"model": "gpt-forbidden", "messages": [], "model": "gpt-4o-mini"}',
            b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "role": "system"}]}',
            b'{"model": 123, "messages": []}',
            b'{"model": ["gpt-forbidden"], "messages": []}',
            b'{"model": {"name": "gpt-forbidden"}, "messages": []}',
            b'{"model": true, "messages": []}',
            b'{"model": "gpt-4o-mini", "stream": "true", "messages": []}',
            b'{"model": "gpt-4o-mini\xff", "messages": []}',
            b'\xef\xbb\xbf{"model": "gpt-4o-mini", "messages": []}',
            '{"model": "gpt-4o-mini"}'.encode("utf-16"),
            b'{"model": "gpt-4o-mini", "temperature": NaN}',
            b'{"model": "gpt-4o-mini", "temperature": Infinity}',
            deep,
            b'["gpt-forbidden"]',
            b'{"model": "gpt-4o-mini",}',
            b"",
        ]:
            status, answer = self.status(body)
            self.assertEqual(status, 400, (body[:60], answer))
            self.assertEqual(answer["error"]["type"], "invalid_request_error")
        self.assertEqual(self.gateway.agent.calls, [])

    def test_forwardedAsJudged(self) -> None:
        """
        A body that passes goes upstream byte for byte.
        """
        body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"h\\u00e9"}],"x":1.5e3}'
        status, _ = self.status(body, b"/open")
        self.assertEqual(status, 200)
        self.assertEqual(self.gateway.fakellm.requests[-1].body, body)


class UnknownModelTests(SynchronousTestCase):
    """
    A rule that reads the model refuses a request whose model the gateway
    cannot read; a route without such rules is not hindered.
    """

    def setUp(self) -> None:
        self.gateway = MemorySite(CONFIG, KEY)

    def status(self, method: bytes, target: bytes, body: bytes, *headers: bytes) -> int:
        connection = self.gateway.connect()
        connection.send(_request(method, target, body, *headers))
        return connection.status()

    def test_unreadBodyFailsClosed(self) -> None:
        """
        A multipart upload or a body on an endpoint the gateway does not
        read is refused where a rule reads the model, and passes elsewhere.
        """
        multipart = b"--b\r\ncontent-disposition: form-data; name=model\r\n\r\ngpt-forbidden\r\n--b--\r\n"
        for target, body in [
            (b"/v1/audio/transcriptions", multipart),
            (b"/v1/files", b'{"model": "gpt-forbidden"}'),
            (b"/v1/assistants", b'{"model": "gpt-forbidden"}'),
        ]:
            self.assertEqual(self.status(b"POST", b"/r" + target, body), 403, target)
            self.assertNotEqual(self.status(b"POST", b"/open" + target, body), 403, target)

    def test_modelBodiesRead(self) -> None:
        """
        The other endpoints whose JSON names a model are judged on it.
        """
        for target in (b"/v1/images/generations", b"/v1/audio/speech", b"/v1/moderations"):
            self.assertEqual(self.status(b"POST", b"/r" + target, b'{"model": "gpt-forbidden"}'), 403)

    def test_noBodyNoModel(self) -> None:
        """
        A request without a body has no model to hide: it is judged as it is.
        """
        self.assertEqual(self.status(b"GET", b"/r/v1/models", b""), 200)


class MethodTests(SynchronousTestCase):
    """
    A method the endpoint does not take is a 405 from the gateway.
    """

    def setUp(self) -> None:
        self.gateway = MemorySite(CONFIG, KEY)

    def test_wrongMethods(self) -> None:
        """
        Each wrong method (lower-case spellings too) gets a 405 with Allow,
        and nothing goes upstream.
        """
        body = json.dumps(FORBIDDEN).encode()
        for method, target, allow in [
            (b"PUT", b"/r/v1/chat/completions", b"POST, GET"),
            (b"post", b"/r/v1/chat/completions", b"POST, GET"),
            (b"Post", b"/r/v1/chat/%63ompletions", b"POST, GET"),
            (b"GET", b"/r/v1/embeddings", b"POST"),
            (b"DELETE", b"/r/v1/responses", b"POST"),
            (b"PATCH", b"/r/v1/completions/", b"POST"),
            (b"POST", b"/r/v1/models", b"GET, HEAD"),
        ]:
            connection = self.gateway.connect()
            connection.send(_request(method, target, body))
            self.assertEqual(connection.status(), 405, (method, target, connection.answer()))
            self.assertIn(b"allow: " + allow.lower() + b"\r\n", connection.answer().lower())
        self.assertEqual(self.gateway.agent.calls, [])
