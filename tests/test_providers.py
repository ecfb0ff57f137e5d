"""
Every provider behind one OpenAI API, end to end in memory: the gateway
built from configuration, the fake LLM speaking each provider's own API
behind it.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.memory import MemoryGateway

KEY = "sk-upstream-secret"
AWS = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}

CONFIG = f"""
listen: tcp:0
backends:
  openai:
    provider: openai
    url: http://fake/v1
    authToken: {{value: {KEY}}}
  azure:
    provider: azure-openai
    url: http://fake
    deployment: gpt-4o-mini-prod
    authToken: {{value: {KEY}}}
  gemini:
    provider: gemini
    url: http://fake
    authToken: {{value: {KEY}}}
  claude:
    provider: anthropic
    url: http://fake
    authToken: {{value: {KEY}}}
  bedrock:
    provider: bedrock
    region: us-east-1
    url: http://fake
    model: anthropic.claude-3-haiku-20240307-v1:0
routes:
  - {{name: openai, match: {{pathPrefix: /openai}}, backend: openai}}
  - {{name: azure, match: {{pathPrefix: /azure}}, backend: azure}}
  - {{name: gemini, match: {{pathPrefix: /gemini}}, backend: gemini}}
  - {{name: claude, match: {{pathPrefix: /claude}}, backend: claude}}
  - {{name: bedrock, match: {{pathPrefix: /bedrock}}, backend: bedrock}}
"""

# Each provider: its route, the model asked for, the field its key goes
# in, the name spans and metrics give it.
PROVIDERS = {
    "openai": ("/openai", "gpt-4o-mini", "authorization", "openai"),
    "azure": ("/azure", "gpt-4o-mini", "api-key", "azure.ai.openai"),
    "gemini": ("/gemini", "gemini-2.5-flash", "x-goog-api-key", "gcp.gemini"),
    "anthropic": ("/claude", "claude-sonnet-4-5", "x-api-key", "anthropic"),
    "bedrock": ("/bedrock", "claude", None, "aws.bedrock"),
}


def _gateway() -> MemoryGateway:
    return MemoryGateway(CONFIG, key=KEY, environ=AWS, awsAccessKeyId=AWS["AWS_ACCESS_KEY_ID"],
                         awsSecretAccessKey=AWS["AWS_SECRET_ACCESS_KEY"])


def _chat(model: str, **fields: Any) -> dict[str, Any]:
    return dict({"model": model, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say a line of a sonnet."}]}, **fields)


_TOOLS = [{"type": "function", "function": {
    "name": "count", "description": "Count words.",
    "parameters": {"type": "object", "properties": {"words": {"type": "integer"}}}}}]


def _events(body: bytes) -> list[Any]:
    """
    The data of each server-sent event, decoded where it is JSON.
    """
    out: list[Any] = []
    for block in body.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: "):
                data = line[6:]
                out.append(data.decode() if data == b"[DONE]" else json.loads(data))
    return out


class ProviderChatTests(SynchronousTestCase):
    """
    The OpenAI SDK's requests, whatever the backend.
    """

    def setUp(self) -> None:
        self.gateway = _gateway()

    def each(self):
        for name, (prefix, model, field, semconv) in PROVIDERS.items():
            yield name, prefix, model, field, semconv

    def test_plain(self) -> None:
        """
        A plain chat gets a chat.completion with the answer's text, a stop
        finish, and usage in OpenAI's terms.
        """
        for name, prefix, model, _, _ in self.each():
            with self.subTest(provider=name):
                response, body = self.gateway.post(self, prefix + "/v1/chat/completions",
                                                   _chat(model), {"x-fakellm-chunks": "4"})
                self.assertEqual(response.code, 200, body)
                answer = json.loads(body)
                self.assertEqual(answer["object"], "chat.completion")
                choice = answer["choices"][0]
                self.assertEqual(choice["message"]["role"], "assistant")
                self.assertEqual(choice["message"]["content"].split(), ["Shall", "I", "compare", "thee"])
                self.assertEqual(choice["finish_reason"], "stop")
                usage = answer["usage"]
                self.assertEqual(usage["completion_tokens"], 4)
                self.assertGreater(usage["prompt_tokens"], 0)
                self.assertEqual(usage["total_tokens"], usage["prompt_tokens"] + 4)

    def test_stream(self) -> None:
        """
        A streamed chat gets OpenAI chunks, role first, the words, a stop
        finish and [DONE]; no usage chunk when the client did not ask.
        """
        for name, prefix, model, _, _ in self.each():
            with self.subTest(provider=name):
                response, body = self.gateway.post(self, prefix + "/v1/chat/completions",
                                                   _chat(model, stream=True), {"x-fakellm-chunks": "3"})
                self.assertEqual(response.code, 200, body)
                self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith(
                    "text/event-stream"))
                events = _events(body)
                self.assertEqual(events[-1], "[DONE]")
                chunks = events[:-1]
                self.assertTrue(all(c["object"] == "chat.completion.chunk" for c in chunks))
                self.assertTrue(all(c["choices"] for c in chunks), "a usage chunk nobody asked for")
                self.assertEqual(chunks[0]["choices"][0]["delta"].get("role"), "assistant")
                text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
                self.assertEqual(text.split(), ["Shall", "I", "compare"])
                self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "stop")

    def test_streamUsage(self) -> None:
        """
        A client that asks for stream usage gets it last, in OpenAI's terms.
        """
        for name, prefix, model, _, _ in self.each():
            with self.subTest(provider=name):
                response, body = self.gateway.post(
                    self, prefix + "/v1/chat/completions",
                    _chat(model, stream=True, stream_options={"include_usage": True}),
                    {"x-fakellm-chunks": "3"})
                events = _events(body)
                usage = events[-2]
                self.assertEqual(usage["choices"], [])
                self.assertEqual(usage["usage"]["completion_tokens"], 3)

    def test_cachedAndReasoningTokens(self) -> None:
        """
        Cached input tokens count in prompt_tokens and are named in its
        details, whichever way the provider counts them.
        """
        for name, prefix, model, _, _ in self.each():
            with self.subTest(provider=name):
                plain = self.gateway.post(self, prefix + "/v1/chat/completions", _chat(model),
                                          {"x-fakellm-chunks": "2"})[1]
                cached = self.gateway.post(self, prefix + "/v1/chat/completions", _chat(model),
                                           {"x-fakellm-chunks": "2", "x-fakellm-cached-tokens": "7"})[1]
                before, after = json.loads(plain)["usage"], json.loads(cached)["usage"]
                self.assertEqual(after["prompt_tokens"], before["prompt_tokens"] + 7)
                self.assertEqual(after["prompt_tokens_details"]["cached_tokens"], 7)

    def test_toolCall(self) -> None:
        """
        A tool call comes back as OpenAI tool_calls, plain and streamed,
        with one id and whole JSON arguments.
        """
        for name, prefix, model, _, _ in self.each():
            with self.subTest(provider=name):
                headers = {"x-fakellm-tool-call": "count", "x-fakellm-chunks": "5"}
                response, body = self.gateway.post(
                    self, prefix + "/v1/chat/completions", _chat(model, tools=_TOOLS), headers)
                self.assertEqual(response.code, 200, body)
                choice = json.loads(body)["choices"][0]
                self.assertEqual(choice["finish_reason"], "tool_calls")
                [call] = choice["message"]["tool_calls"]
                self.assertEqual(call["function"]["name"], "count")
                self.assertEqual(json.loads(call["function"]["arguments"]), {"words": 5})
                response, body = self.gateway.post(
                    self, prefix + "/v1/chat/completions",
                    _chat(model, tools=_TOOLS, stream=True), headers)
                chunks = _events(body)[:-1]
                calls = [c for chunk in chunks for c in chunk["choices"][0]["delta"].get("tool_calls") or ()]
                self.assertEqual({c["index"] for c in calls}, {0})
                self.assertEqual(len([c for c in calls if c.get("id")]), 1)
                arguments = "".join(c["function"].get("arguments") or "" for c in calls)
                self.assertEqual(json.loads(arguments), {"words": 5})
                self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "tool_calls")

    def test_keyInItsField(self) -> None:
        """
        The backend's key goes in the field its API reads, the caller's
        credentials in no field at all.
        """
        for name, prefix, model, field, _ in self.each():
            with self.subTest(provider=name):
                headers = {"authorization": "Bearer caller-token", "x-api-key": "caller-key",
                           "api-key": "caller-key", "x-goog-api-key": "caller-key"}
                if name == "bedrock":
                    headers["x-amz-security-token"] = "caller-token"
                self.gateway.post(self, prefix + "/v1/chat/completions", _chat(model), headers)
                seen = self.gateway.fakellm.requests[-1]
                values = " ".join(seen.headers.values())
                self.assertNotIn("caller", values)
                if field == "authorization":
                    self.assertEqual(seen.headers[field], "Bearer " + KEY)
                elif field is not None:
                    self.assertEqual(seen.headers[field], KEY)
                else:
                    self.assertTrue(seen.headers["authorization"].startswith(
                        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"))

    def test_rateLimited(self) -> None:
        """
        A provider's rate limit is a 429 (its status line saying so) in the
        OpenAI envelope, with the wait it asked for in Retry-After.
        """
        for name, prefix, model, _, _ in self.each():
            with self.subTest(provider=name):
                response, body = self.gateway.post(self, prefix + "/v1/chat/completions",
                                                   _chat(model), {"x-fakellm-status": "429"})
                self.assertEqual(response.code, 429, body)
                self.assertEqual(response.phrase, b"Too Many Requests")
                error = json.loads(body)["error"]
                self.assertIsInstance(error["message"], str)
                self.assertEqual(error["type"], "rate_limit_error")
                self.assertEqual(response.headers.getRawHeaders("retry-after"), ["1"])

    def test_serverErrors(self) -> None:
        """
        A provider's 5xx keeps a 5xx status and the OpenAI envelope.
        """
        for name, prefix, model, _, _ in self.each():
            with self.subTest(provider=name):
                response, body = self.gateway.post(self, prefix + "/v1/chat/completions",
                                                   _chat(model), {"x-fakellm-status": "503"})
                self.assertEqual(response.code, 503, body)
                self.assertIn("message", json.loads(body)["error"])

    def test_streamError(self) -> None:
        """
        An error event inside a provider's stream ends the client's stream
        with an error and without [DONE]: it never looks complete.  (An
        OpenAI-style stream reaches the client as the upstream wrote it.)
        """
        for name, prefix, model, _, _ in self.each():
            with self.subTest(provider=name):
                response, body = self.gateway.post(
                    self, prefix + "/v1/chat/completions", _chat(model, stream=True),
                    {"x-fakellm-stream-error": "overloaded", "x-fakellm-chunks": "2"},
                    broken=name in ("gemini", "bedrock", "anthropic"))
                self.assertEqual(response.code, 200)
                self.assertNotIn(b"[DONE]", body)
                self.assertIn("error", _events(body)[-1])
                if name in ("gemini", "bedrock", "anthropic"):
                    self.assertIn(b"event: error", body)

    def test_models(self) -> None:
        """
        C{GET /v1/models} answers in OpenAI's shape for every provider.
        """
        for name, prefix, _, _, _ in self.each():
            with self.subTest(provider=name):
                response = self.successResultOf(
                    self.gateway.client.get("http://gw" + prefix + "/v1/models"))
                self.gateway.pump()
                body = self.successResultOf(response.content())
                self.assertEqual(response.code, 200, body)
                listing = json.loads(body)
                self.assertEqual(listing["object"], "list")
                self.assertTrue(listing["data"])
                self.assertTrue(all(m["object"] == "model" and m["id"] for m in listing["data"]))

    def test_providerName(self) -> None:
        """
        Metrics name each provider as the GenAI conventions do.
        """
        from prometheus_client import generate_latest

        for name, prefix, model, _, semconv in self.each():
            self.gateway.post(self, prefix + "/v1/chat/completions", _chat(model))
        self.gateway.clock.advance(1)
        text = generate_latest(self.gateway.metrics.registry).decode()
        for name, (_, _, _, semconv) in PROVIDERS.items():
            self.assertIn(f'gen_ai_provider_name="{semconv}"', text)


class ProviderRefusalTests(SynchronousTestCase):
    """
    What a provider cannot take is a 400 that names it, before anything
    goes upstream.
    """

    def setUp(self) -> None:
        self.gateway = _gateway()

    def refused(self, prefix: str, body: Any, path: str = "/v1/chat/completions") -> dict:
        before = len(self.gateway.fakellm.requests)
        response, answer = self.gateway.post(self, prefix + path, body)
        self.assertEqual(response.code, 400, answer)
        self.assertEqual(len(self.gateway.fakellm.requests), before)
        return json.loads(answer)["error"]

    def test_fieldsWithoutEquivalent(self) -> None:
        """
        A field the provider has no equivalent for is named in the 400.
        """
        for prefix, model in (("/gemini", "gemini-2.5-flash"), ("/bedrock", "claude"),
                              ("/claude", "claude-sonnet-4-5")):
            for field, value in (("n", 2), ("logprobs", True), ("logit_bias", {"1": 2}),
                                 ("no_such_field", 1)):
                with self.subTest(prefix=prefix, field=field):
                    error = self.refused(prefix, _chat(model, **{field: value}))
                    self.assertIn(field, error["message"])

    def test_otherEndpoints(self) -> None:
        """
        OpenAI endpoints a provider does not have are refused, naming the
        provider.
        """
        for prefix, kind in (("/gemini", "gemini"), ("/bedrock", "bedrock"), ("/claude", "anthropic")):
            for path in ("/v1/embeddings", "/v1/responses", "/v1/completions"):
                with self.subTest(prefix=prefix, path=path):
                    error = self.refused(prefix, {"model": "m", "input": "x"}, path)
                    self.assertIn(kind, error["message"])
                    self.assertIn(path, error["message"])


def _messages(model: str, **fields: Any) -> dict[str, Any]:
    return dict({"model": model, "max_tokens": 100, "system": "Be brief.",
                 "messages": [{"role": "user", "content": "Say a line of a sonnet."}]}, **fields)


_ANTHROPIC_TOOLS = [{"name": "count", "description": "Count words.",
                     "input_schema": {"type": "object", "properties": {"words": {"type": "integer"}}}}]


def _anthropicEvents(body: bytes) -> list[tuple[str, dict]]:
    out = []
    for block in body.split(b"\n\n"):
        name = data = None
        for line in block.split(b"\n"):
            if line.startswith(b"event: "):
                name = line[7:].decode()
            elif line.startswith(b"data: "):
                data = json.loads(line[6:])
        if name is not None and data is not None:
            out.append((name, data))
    return out


class DoorTests(SynchronousTestCase):
    """
    Anthropic's Messages API at C{/v1/messages}: native to an anthropic
    backend, translated for every other.
    """

    def setUp(self) -> None:
        self.gateway = _gateway()

    def each(self):
        for name, (prefix, model, _, _) in PROVIDERS.items():
            yield name, prefix, model

    def test_plain(self) -> None:
        """
        A Messages request gets an Anthropic message: text blocks,
        end_turn, input and output tokens.
        """
        for name, prefix, model in self.each():
            with self.subTest(provider=name):
                response, body = self.gateway.post(self, prefix + "/v1/messages", _messages(model),
                                                   {"x-fakellm-chunks": "4"})
                self.assertEqual(response.code, 200, body)
                message = json.loads(body)
                self.assertEqual((message["type"], message["role"]), ("message", "assistant"))
                self.assertEqual(message["stop_reason"], "end_turn")
                text = "".join(b["text"] for b in message["content"] if b["type"] == "text")
                self.assertEqual(text.split(), ["Shall", "I", "compare", "thee"])
                self.assertEqual(message["usage"]["output_tokens"], 4)
                self.assertGreater(message["usage"]["input_tokens"], 0)

    def test_stream(self) -> None:
        """
        A streamed Messages request gets Anthropic's event sequence, from
        message_start to message_stop, with the usage in message_delta.
        """
        for name, prefix, model in self.each():
            with self.subTest(provider=name):
                response, body = self.gateway.post(self, prefix + "/v1/messages",
                                                   _messages(model, stream=True),
                                                   {"x-fakellm-chunks": "3"})
                self.assertEqual(response.code, 200, body)
                events = _anthropicEvents(body)
                names = [n for n, _ in events if n != "ping"]
                self.assertEqual(names[0], "message_start")
                self.assertEqual(names[1], "content_block_start")
                self.assertEqual(names[-3:], ["content_block_stop", "message_delta", "message_stop"])
                text = "".join(d["delta"].get("text", "") for n, d in events
                               if n == "content_block_delta")
                self.assertEqual(text.split(), ["Shall", "I", "compare"])
                delta = [d for n, d in events if n == "message_delta"][0]
                self.assertEqual(delta["delta"]["stop_reason"], "end_turn")
                self.assertEqual(delta["usage"]["output_tokens"], 3)

    def test_streamError(self) -> None:
        """
        An error inside a provider's stream reaches a door client after the
        words that came before it, as an error event naming the upstream's
        message, and never as a complete message.  (Anthropic's own stream
        reaches the client as it came, its clean end included.)
        """
        for name, prefix, model in self.each():
            with self.subTest(provider=name):
                response, body = self.gateway.post(
                    self, prefix + "/v1/messages", _messages(model, stream=True),
                    {"x-fakellm-stream-error": "overloaded_error", "x-fakellm-chunks": "2"},
                    broken=name != "anthropic")
                self.assertEqual(response.code, 200, body)
                events = _anthropicEvents(body)
                text = "".join(d["delta"].get("text", "") for n, d in events
                               if n == "content_block_delta")
                self.assertEqual(text.split(), ["Shall", "I"])
                self.assertEqual(events[-1][0], "error")
                self.assertNotIn("message_stop", [n for n, _ in events])
                if name in ("openai", "azure"):
                    self.assertIn("The fake LLM was asked to fail the stream",
                                  events[-1][1]["error"]["message"])

    def test_toolUse(self) -> None:
        """
        A tool call reaches an Anthropic client as a tool_use block, its
        input whole, plain and streamed.
        """
        for name, prefix, model in self.each():
            with self.subTest(provider=name):
                headers = {"x-fakellm-tool-call": "count", "x-fakellm-chunks": "6"}
                response, body = self.gateway.post(
                    self, prefix + "/v1/messages", _messages(model, tools=_ANTHROPIC_TOOLS), headers)
                self.assertEqual(response.code, 200, body)
                message = json.loads(body)
                self.assertEqual(message["stop_reason"], "tool_use")
                [use] = [b for b in message["content"] if b["type"] == "tool_use"]
                self.assertEqual((use["name"], use["input"]), ("count", {"words": 6}))
                response, body = self.gateway.post(
                    self, prefix + "/v1/messages",
                    _messages(model, tools=_ANTHROPIC_TOOLS, stream=True), headers)
                events = _anthropicEvents(body)
                starts = [d for n, d in events if n == "content_block_start"
                          and d["content_block"]["type"] == "tool_use"]
                self.assertEqual(len(starts), 1)
                partial = "".join(d["delta"]["partial_json"] for n, d in events
                                  if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta")
                self.assertEqual(json.loads(partial), {"words": 6})

    def test_errors(self) -> None:
        """
        Upstream errors and the gateway's own reach a door client in
        Anthropic's error shape.
        """
        for name, prefix, model in self.each():
            with self.subTest(provider=name):
                response, body = self.gateway.post(self, prefix + "/v1/messages", _messages(model),
                                                   {"x-fakellm-status": "429"})
                self.assertEqual(response.code, 429, body)
                error = json.loads(body)
                self.assertEqual(error["type"], "error")
                self.assertEqual(error["error"]["type"], "rate_limit_error")
                response, body = self.gateway.post(self, prefix + "/v1/messages", b'{"model": 1}')
                self.assertEqual(response.code, 400, body)
                self.assertEqual(json.loads(body)["error"]["type"], "invalid_request_error")

    def test_overloaded(self) -> None:
        """
        Anthropic's 529 overloaded is a 503 for an OpenAI client, and stays
        Anthropic's own for a door client.
        """
        response, body = self.gateway.post(self, "/claude/v1/chat/completions",
                                           _chat("claude-sonnet-4-5"), {"x-fakellm-status": "529"})
        self.assertEqual(response.code, 503, body)
        self.assertIn("message", json.loads(body)["error"])
        response, body = self.gateway.post(self, "/claude/v1/messages", _messages("claude-sonnet-4-5"),
                                           {"x-fakellm-status": "529"})
        self.assertEqual(json.loads(body)["error"]["type"], "overloaded_error")

    def test_nativePassThrough(self) -> None:
        """
        To an anthropic backend the door's request goes as it came, with
        the backend's key in x-api-key, and the usage is still read.
        """
        request = _messages("claude-sonnet-4-5", stream=True)
        self.gateway.post(self, "/claude/v1/messages", request, {"x-fakellm-chunks": "3"})
        seen = self.gateway.fakellm.requests[-1]
        self.assertEqual(seen.path, "/v1/messages")
        self.assertEqual(json.loads(seen.body), request)
        self.assertEqual(seen.headers["x-api-key"], KEY)
        self.assertEqual(seen.headers["anthropic-version"], "2023-06-01")
        self.gateway.clock.advance(1)
        from prometheus_client import generate_latest

        text = generate_latest(self.gateway.metrics.registry).decode()
        self.assertIn('gen_ai_token_type="output"', text)

    def test_nativeStreamBroken(self) -> None:
        """
        A native stream that breaks reaches a door client with an error
        event in Anthropic's shape, and no message_stop.
        """
        response, body = self.gateway.post(
            self, "/claude/v1/messages", _messages("claude-sonnet-4-5", stream=True),
            {"x-fakellm-drop-after": "2", "x-fakellm-chunks": "5"}, broken=True)
        self.assertEqual(response.code, 200)
        events = _anthropicEvents(body)
        self.assertEqual(events[-1][0], "error")
        self.assertEqual(events[-1][1]["type"], "error")
        self.assertNotIn("message_stop", [n for n, _ in events])

    def test_countTokens(self) -> None:
        """
        count_tokens is passed through to anthropic backends and refused,
        in Anthropic's shape, elsewhere.
        """
        body = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "two words"}]}
        response, answer = self.gateway.post(self, "/claude/v1/messages/count_tokens", body)
        self.assertEqual(response.code, 200, answer)
        self.assertIn("input_tokens", json.loads(answer))
        response, answer = self.gateway.post(self, "/openai/v1/messages/count_tokens", body)
        self.assertEqual(response.code, 400, answer)
        self.assertEqual(json.loads(answer)["type"], "error")
        self.assertIn("anthropic", json.loads(answer)["error"]["message"])


class EveryFeatureTests(SynchronousTestCase):
    """
    What the gateway does on one provider it does on every one: rules on
    the provider, token limits charged with the translated usage, a
    missing AWS credential named.
    """

    def test_ruleOnProvider(self) -> None:
        """
        A rule on C{llm.provider} sees the provider as the configuration
        names it.
        """
        config = CONFIG + "authorization:\n  rules:\n    - deny: 'llm.provider == \"gemini\"'\n"
        gateway = MemoryGateway(config, key=KEY, environ=AWS)
        self.assertEqual(gateway.post(self, "/gemini/v1/chat/completions",
                                      _chat("gemini-2.5-flash"))[0].code, 403)
        self.assertEqual(gateway.post(self, "/claude/v1/chat/completions",
                                      _chat("claude-sonnet-4-5"))[0].code, 200)

    def test_tokenLimit(self) -> None:
        """
        A token budget is charged with each provider's real usage, read
        from the translated answer, streamed or not.
        """
        for name, (prefix, model, _, _) in PROVIDERS.items():
            with self.subTest(provider=name):
                config = CONFIG.replace(
                    f"match: {{pathPrefix: {prefix}}}, backend:",
                    f"rateLimits: [{{key: route.name, tokens: {{limit: 30, per: 1m}}}}], "
                    f"match: {{pathPrefix: {prefix}}}, backend:")
                gateway = MemoryGateway(config, key=KEY, environ=AWS)
                headers = {"x-fakellm-chunks": "25"}
                self.assertEqual(gateway.post(self, prefix + "/v1/chat/completions",
                                              _chat(model, stream=True), headers)[0].code, 200)
                response, body = gateway.post(self, prefix + "/v1/chat/completions", _chat(model),
                                              headers)
                self.assertEqual(response.code, 429, body)

    def test_noAWSCredentials(self) -> None:
        """
        A Bedrock backend without AWS credentials answers 503 naming what
        to set, and sends nothing.
        """
        gateway = MemoryGateway(CONFIG, key=KEY, environ={})
        response, body = gateway.post(self, "/bedrock/v1/chat/completions", _chat("claude"))
        self.assertEqual(response.code, 503, body)
        self.assertIn("AWS_ACCESS_KEY_ID", json.loads(body)["error"]["message"])
        self.assertEqual(len(gateway.fakellm.requests), 0)

    def test_withoutBotocore(self) -> None:
        """
        Without botocore, a Bedrock backend says which extra to install.
        """
        import sys

        saved = {name: module for name, module in sys.modules.items()
                 if name == "botocore" or name.startswith("botocore.")}
        for name in saved:
            sys.modules[name] = None  # type: ignore[assignment]
        try:
            gateway = MemoryGateway(CONFIG, key=KEY, environ=AWS)
        finally:
            sys.modules.update(saved)
        response, body = gateway.post(self, "/bedrock/v1/chat/completions", _chat("claude"))
        self.assertEqual(response.code, 503, body)
        self.assertIn("aigateway[bedrock]", json.loads(body)["error"]["message"])


class ResponsesTests(SynchronousTestCase):
    """
    The Responses API passes through to OpenAI-style backends, its usage
    read from plain answers and from streams' C{response.completed}.
    """

    def test_streamUsageCharged(self) -> None:
        """
        A streamed Responses answer's usage is charged to a token budget.
        """
        config = CONFIG.replace(
            "match: {pathPrefix: /openai}, backend:",
            "rateLimits: [{key: route.name, tokens: {limit: 30, per: 1m}}], "
            "match: {pathPrefix: /openai}, backend:")
        gateway = MemoryGateway(config, key=KEY, environ=AWS)
        request = {"model": "gpt-4o-mini", "input": "Say a line of a sonnet.", "stream": True}
        response, body = gateway.post(self, "/openai/v1/responses", request, {"x-fakellm-chunks": "25"})
        self.assertEqual(response.code, 200, body)
        self.assertIn(b"response.completed", body)
        response, body = gateway.post(self, "/openai/v1/responses", request)
        self.assertEqual(response.code, 429, body)

    def test_otherProviders(self) -> None:
        """
        To other providers the Responses API is a 400 naming the provider.
        """
        gateway = _gateway()
        for prefix, kind in (("/claude", "anthropic"), ("/gemini", "gemini"), ("/bedrock", "bedrock")):
            response, body = gateway.post(self, prefix + "/v1/responses", {"model": "m", "input": "x"})
            self.assertEqual(response.code, 400, body)
            self.assertIn(kind, json.loads(body)["error"]["message"])
