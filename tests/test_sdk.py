"""
The official OpenAI and Anthropic Python SDKs against a real gateway, in
front of a real fake LLM, for every provider: what a user's code sees.

One fake LLM and one gateway serve every test of this module: they start
with the first test that needs them and stop when the test run ends.  The
bedrock route signs with the AWS keys of the gateway's environment, and the
fake LLM checks each signature with the same keys.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.processes import Twistd

__all__ = [
    "AnthropicSDKAnthropicTests",
    "AnthropicSDKOpenAITests",
    "OpenAISDKAnthropicTests",
    "OpenAISDKAzureTests",
    "OpenAISDKBedrockTests",
    "OpenAISDKGeminiTests",
    "OpenAISDKOpenAITests",
]

KEY = "sk-fakellm-sdk"
AWS = {
    "AWS_ACCESS_KEY_ID": "AKIDSDKTESTS",
    "AWS_SECRET_ACCESS_KEY": "sdk/tests/secret/access/key/EXAMPLE",
}
BEDROCK_MODEL = "anthropic.claude-3-haiku-20240307-v1:0"

CONFIG = """
listen: tcp:0:interface=127.0.0.1
backends:
  openai:
    provider: openai
    url: http://127.0.0.1:{port}/v1
    authToken: {{value: {key}}}
  azure:
    provider: azure-openai
    url: http://127.0.0.1:{port}
    deployment: gpt-4o-mini-prod
    authToken: {{value: {key}}}
  gemini:
    provider: gemini
    url: http://127.0.0.1:{port}
    authToken: {{value: {key}}}
  anthropic:
    provider: anthropic
    url: http://127.0.0.1:{port}
    authToken: {{value: {key}}}
  bedrock:
    provider: bedrock
    region: us-east-1
    url: http://127.0.0.1:{port}
    model: {model}
routes:
  - {{name: openai, match: {{pathPrefix: /openai}}, backend: openai, timeout: 10s}}
  - {{name: azure, match: {{pathPrefix: /azure}}, backend: azure, timeout: 10s}}
  - {{name: gemini, match: {{pathPrefix: /gemini}}, backend: gemini, timeout: 10s}}
  - {{name: anthropic, match: {{pathPrefix: /anthropic}}, backend: anthropic, timeout: 10s}}
  - {{name: bedrock, match: {{pathPrefix: /bedrock}}, backend: bedrock, timeout: 10s}}
"""

# What the SDKs are given as their key: the gateway must not pass it on.
CALLER_KEY = "caller-key-not-for-upstream"

SYSTEM = "Be brief."
PROMPT = "Say a line of a sonnet."
# The fake LLM counts words: the system text and the prompt.
PROMPT_WORDS = len(SYSTEM.split()) + len(PROMPT.split())

TOOLS = [{"type": "function", "function": {
    "name": "count", "description": "Count words.",
    "parameters": {"type": "object", "properties": {"words": {"type": "integer"}}}}}]
ANTHROPIC_TOOLS = [{"name": "count", "description": "Count words.",
                    "input_schema": {"type": "object", "properties": {"words": {"type": "integer"}}}}]


class _Servers:
    """
    The fake LLM and the gateway shared by this module's tests.
    """

    _started: "_Servers | None" = None

    def __init__(self) -> None:
        self.fakellm = Twistd(["fakellm", "--listen", "tcp:0:interface=127.0.0.1", "--key", KEY,
                               "--aws-access-key-id", AWS["AWS_ACCESS_KEY_ID"],
                               "--aws-secret-access-key", AWS["AWS_SECRET_ACCESS_KEY"]])
        directory = tempfile.mkdtemp(prefix="aigateway-sdk-")
        self.configPath = os.path.join(directory, "gateway.yaml")
        with open(self.configPath, "w") as f:
            f.write(CONFIG.format(port=self.fakellm.ports[0], key=KEY, model=BEDROCK_MODEL))
        # Only the keys given here: no session token or profile of the
        # machine running the tests.
        environ = dict(AWS, AWS_SESSION_TOKEN="", AWS_PROFILE="aigateway-sdk-tests",
                       AWS_SHARED_CREDENTIALS_FILE=os.path.join(directory, "none"),
                       AWS_CONFIG_FILE=os.path.join(directory, "none"))
        try:
            self.gateway = Twistd(["aigateway", "-c", self.configPath], env=environ)
        except BaseException:
            self.fakellm.stop()
            raise
        finally:
            shutil.rmtree(directory, True)
        self.port = self.gateway.ports[0]

    @classmethod
    def get(cls) -> "_Servers":
        if cls._started is None:
            cls._started = cls()
        return cls._started


def _sdk(name: str) -> Any:
    """
    The SDK module C{name} (a test extra), or a skip when it is missing.
    """
    try:
        return __import__(name)
    except ImportError:
        raise SkipTest(f"the {name} SDK is not installed") from None


class _OpenAIClient:
    """
    The OpenAI SDK at one route: the tests every provider passes.

    @ivar prefix: the route's path prefix.
    @ivar model: the model the client asks for.
    @ivar listed: a model the route's C{/v1/models} lists.
    @ivar reasoning: whether the provider reports reasoning tokens apart.
    """

    prefix: str
    model: str
    listed: str
    reasoning = True

    def setUp(self) -> None:
        openai = _sdk("openai")
        self.openai = openai
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{_Servers.get().port}{self.prefix}/v1",
                                    api_key=CALLER_KEY, max_retries=0, timeout=10)

    def tearDown(self) -> None:
        self.client.close()

    def chat(self, **fields: Any) -> dict[str, Any]:
        return dict({"model": self.model, "messages": [
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]}, **fields)

    def test_chat(self) -> None:
        """
        A chat gets the answer's text, a stop finish and usage in OpenAI's
        terms.
        """
        completion = self.client.chat.completions.create(
            extra_headers={"x-fakellm-chunks": "4"}, **self.chat())
        choice = completion.choices[0]
        self.assertEqual(choice.message.role, "assistant")
        self.assertEqual(choice.message.content.split(), ["Shall", "I", "compare", "thee"])
        self.assertEqual(choice.finish_reason, "stop")
        self.assertEqual((completion.usage.prompt_tokens, completion.usage.completion_tokens,
                          completion.usage.total_tokens), (PROMPT_WORDS, 4, PROMPT_WORDS + 4))

    def test_usageDetails(self) -> None:
        """
        Cached input tokens count in C{prompt_tokens} and are named in its
        details; reasoning tokens count in C{completion_tokens}, and are
        named where the provider reports them apart.
        """
        completion = self.client.chat.completions.create(
            extra_headers={"x-fakellm-chunks": "4", "x-fakellm-cached-tokens": "5",
                           "x-fakellm-reasoning-tokens": "3"}, **self.chat())
        usage = completion.usage
        self.assertEqual(usage.prompt_tokens, PROMPT_WORDS + 5)
        self.assertEqual(usage.prompt_tokens_details.cached_tokens, 5)
        self.assertEqual(usage.completion_tokens, 4 + 3)
        self.assertEqual(usage.total_tokens, PROMPT_WORDS + 5 + 4 + 3)
        if self.reasoning:
            self.assertEqual(usage.completion_tokens_details.reasoning_tokens, 3)

    def test_stream(self) -> None:
        """
        A streamed chat, read by iterating the SDK's stream: the role
        first, the words, a stop finish, and no usage chunk unasked.
        """
        stream = self.client.chat.completions.create(
            stream=True, extra_headers={"x-fakellm-chunks": "3"}, **self.chat())
        chunks = list(stream)
        self.assertTrue(all(chunk.choices for chunk in chunks), "a usage chunk nobody asked for")
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
        self.assertEqual(text.split(), ["Shall", "I", "compare"])
        self.assertGreater(len([c for c in chunks if c.choices[0].delta.content]), 1,
                           "the words did not come one chunk each")
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
        self.assertEqual(finishes, ["stop"])

    def test_streamUsage(self) -> None:
        """
        A stream that asks for usage ends with it, after the finish.
        """
        stream = self.client.chat.completions.create(
            stream=True, stream_options={"include_usage": True},
            extra_headers={"x-fakellm-chunks": "3"}, **self.chat())
        chunks = list(stream)
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual((chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens),
                         (PROMPT_WORDS, 3))
        self.assertEqual(chunks[-2].choices[0].finish_reason, "stop")

    def test_toolCall(self) -> None:
        """
        A tool call comes back as OpenAI C{tool_calls} with JSON arguments
        and a C{tool_calls} finish.
        """
        completion = self.client.chat.completions.create(
            tools=TOOLS, extra_headers={"x-fakellm-tool-call": "count"}, **self.chat())
        choice = completion.choices[0]
        self.assertEqual(choice.finish_reason, "tool_calls")
        [call] = choice.message.tool_calls
        self.assertEqual((call.type, call.function.name), ("function", "count"))
        self.assertEqual(json.loads(call.function.arguments), {"words": 8})
        self.assertTrue(call.id)

    def test_streamedToolCall(self) -> None:
        """
        A streamed tool call is assembled by the SDK's stream helper: one
        call, its id and name, arguments that parse, a C{tool_calls} finish.
        """
        with self.client.chat.completions.stream(
                tools=TOOLS, extra_headers={"x-fakellm-tool-call": "count", "x-fakellm-chunks": "6"},
                **self.chat()) as stream:
            final = stream.get_final_completion()
        choice = final.choices[0]
        self.assertEqual(choice.finish_reason, "tool_calls")
        [call] = choice.message.tool_calls
        self.assertEqual(call.function.name, "count")
        self.assertEqual(json.loads(call.function.arguments), {"words": 6})
        self.assertTrue(call.id)

    def test_models(self) -> None:
        """
        C{client.models.list()} lists the route's models in OpenAI's shape.
        """
        models = list(self.client.models.list())
        self.assertIn(self.listed, [model.id for model in models])
        self.assertTrue(all(model.object == "model" for model in models))

    def test_rateLimited(self) -> None:
        """
        A provider's 429 is the SDK's C{RateLimitError} with that status,
        and C{Retry-After} reaches the client.
        """
        with self.assertRaises(self.openai.RateLimitError) as caught:
            self.client.chat.completions.create(extra_headers={"x-fakellm-status": "429"},
                                                **self.chat())
        self.assertEqual(caught.exception.status_code, 429)
        self.assertEqual(caught.exception.response.headers.get("retry-after"), "1")
        self.assertEqual(caught.exception.type, "rate_limit_error")

    def test_brokenStream(self) -> None:
        """
        A stream the provider breaks off raises in the SDK's iteration,
        after the words that came before: it never looks complete.
        """
        words: list[str] = []
        with self.assertRaises(self.openai.APIError):
            for chunk in self.client.chat.completions.create(
                    stream=True, extra_headers={"x-fakellm-chunks": "4", "x-fakellm-drop-after": "2"},
                    **self.chat()):
                if chunk.choices and chunk.choices[0].delta.content:
                    words.append(chunk.choices[0].delta.content)
        self.assertEqual("".join(words).split(), ["Shall", "I"])


class _Translated:
    """
    The OpenAI SDK at a route whose provider speaks another API.
    """

    def test_refusedField(self) -> None:
        """
        A field the provider cannot take is the SDK's C{BadRequestError}
        naming the field, not an answer that silently ignores it.
        """
        for field, value in [("n", 2), ("logprobs", True), ("logit_bias", {"1": 5})]:
            with self.subTest(field=field):
                with self.assertRaises(self.openai.BadRequestError) as caught:
                    self.client.chat.completions.create(**self.chat(**{field: value}))
                self.assertEqual(caught.exception.status_code, 400)
                self.assertIn(field, caught.exception.message)

    def test_otherEndpoints(self) -> None:
        """
        Endpoints the provider has no counterpart for are a 400 that names
        the backend.
        """
        with self.assertRaises(self.openai.BadRequestError) as caught:
            self.client.embeddings.create(model=self.model, input=["a"])
        self.assertIn(self.prefix.strip("/"), caught.exception.message)
        with self.assertRaises(self.openai.BadRequestError):
            self.client.responses.create(model=self.model, input="hi")


class OpenAISDKOpenAITests(_OpenAIClient, SynchronousTestCase):
    """
    The OpenAI SDK at a route to an OpenAI backend.
    """

    prefix = "/openai"
    model = "gpt-4o-mini"
    listed = "gpt-4o-mini"

    def test_embeddings(self) -> None:
        """
        Embeddings, in the SDK's default base64 encoding.
        """
        result = self.client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        self.assertEqual(len(result.data), 2)
        self.assertEqual(len(result.data[0].embedding), 8)

    def test_responses(self) -> None:
        """
        The Responses API, plain and streamed, reaches an OpenAI backend.
        """
        response = self.client.responses.create(model=self.model, input=PROMPT,
                                                extra_headers={"x-fakellm-chunks": "3"})
        self.assertEqual(response.output_text.split(), ["Shall", "I", "compare"])
        with self.client.responses.stream(model=self.model, input=PROMPT,
                                          extra_headers={"x-fakellm-chunks": "3"}) as stream:
            deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
            final = stream.get_final_response()
        self.assertEqual("".join(deltas).split(), ["Shall", "I", "compare"])
        self.assertEqual(final.status, "completed")


class OpenAISDKAzureTests(_OpenAIClient, SynchronousTestCase):
    """
    The OpenAI SDK at a route to an Azure OpenAI deployment.
    """

    prefix = "/azure"
    model = "gpt-4o-mini"
    listed = "gpt-4o-mini-prod"


class OpenAISDKGeminiTests(_Translated, _OpenAIClient, SynchronousTestCase):
    """
    The OpenAI SDK at a route to Gemini.
    """

    prefix = "/gemini"
    model = "gemini-2.5-flash"
    listed = "gemini-2.5-flash"


class OpenAISDKAnthropicTests(_Translated, _OpenAIClient, SynchronousTestCase):
    """
    The OpenAI SDK at a route to Anthropic.
    """

    prefix = "/anthropic"
    model = "claude-sonnet-4-5"
    listed = "claude-sonnet-4-5"
    reasoning = False


class OpenAISDKBedrockTests(_Translated, _OpenAIClient, SynchronousTestCase):
    """
    The OpenAI SDK at a route to Bedrock, every request signed with SigV4
    and the signature checked by the fake LLM.
    """

    prefix = "/bedrock"
    model = "claude"
    listed = BEDROCK_MODEL
    reasoning = False


class _AnthropicClient:
    """
    The Anthropic SDK at a route's C{/v1/messages} door.

    @ivar prefix: the route's path prefix.
    @ivar model: the model the client asks for.
    """

    prefix: str
    model: str

    def setUp(self) -> None:
        anthropic = _sdk("anthropic")
        self.anthropic = anthropic
        self.client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{_Servers.get().port}{self.prefix}",
                                          api_key=CALLER_KEY, max_retries=0, timeout=10)

    def tearDown(self) -> None:
        self.client.close()

    def request(self, **fields: Any) -> dict[str, Any]:
        return dict({"model": self.model, "max_tokens": 100, "system": SYSTEM,
                     "messages": [{"role": "user", "content": PROMPT}]}, **fields)

    def test_create(self) -> None:
        """
        C{messages.create} gets a message: text, C{end_turn}, input and
        output tokens.
        """
        message = self.client.messages.create(extra_headers={"x-fakellm-chunks": "4"},
                                              **self.request())
        self.assertEqual((message.type, message.role), ("message", "assistant"))
        self.assertTrue(message.id.startswith("msg_"))
        self.assertEqual("".join(b.text for b in message.content).split(),
                         ["Shall", "I", "compare", "thee"])
        self.assertEqual(message.stop_reason, "end_turn")
        self.assertEqual((message.usage.input_tokens, message.usage.output_tokens), (PROMPT_WORDS, 4))

    def test_stream(self) -> None:
        """
        C{messages.stream}: C{text_stream} gives the words as they come,
        and C{get_final_message()} the whole message with its stop reason
        and usage.
        """
        with self.client.messages.stream(extra_headers={"x-fakellm-chunks": "3"},
                                         **self.request()) as stream:
            pieces = list(stream.text_stream)
            message = stream.get_final_message()
        self.assertEqual(len(pieces), 3)
        self.assertEqual("".join(pieces).split(), ["Shall", "I", "compare"])
        self.assertEqual(message.stop_reason, "end_turn")
        self.assertEqual((message.usage.input_tokens, message.usage.output_tokens), (PROMPT_WORDS, 3))

    def test_maxTokens(self) -> None:
        """
        An answer cut by C{max_tokens} says so, plain and streamed.
        """
        message = self.client.messages.create(**self.request(max_tokens=2))
        self.assertEqual(message.stop_reason, "max_tokens")
        with self.client.messages.stream(**self.request(max_tokens=2)) as stream:
            self.assertEqual(stream.get_final_message().stop_reason, "max_tokens")

    def test_cachedTokens(self) -> None:
        """
        Tokens read from a cache are C{cache_read_input_tokens}, apart from
        C{input_tokens}, as Anthropic counts them.
        """
        message = self.client.messages.create(extra_headers={"x-fakellm-cached-tokens": "5"},
                                              **self.request())
        self.assertEqual(message.usage.input_tokens, PROMPT_WORDS)
        self.assertEqual(message.usage.cache_read_input_tokens, 5)

    def test_toolUse(self) -> None:
        """
        A tool call is a C{tool_use} block with its input, plain and
        streamed, and the stop reason C{tool_use}.
        """
        headers = {"x-fakellm-tool-call": "count", "x-fakellm-chunks": "5"}
        message = self.client.messages.create(extra_headers=headers,
                                              **self.request(tools=ANTHROPIC_TOOLS))
        with self.client.messages.stream(extra_headers=headers,
                                         **self.request(tools=ANTHROPIC_TOOLS)) as stream:
            streamed = stream.get_final_message()
        for answer in (message, streamed):
            self.assertEqual(answer.stop_reason, "tool_use")
            [block] = [b for b in answer.content if b.type == "tool_use"]
            self.assertEqual((block.name, block.input), ("count", {"words": 5}))
            self.assertTrue(block.id)

    def test_errors(self) -> None:
        """
        A provider's error is the SDK's exception of its kind, with the
        status.
        """
        anthropic = self.anthropic
        for status, kind in [("429", anthropic.RateLimitError), ("400", anthropic.BadRequestError),
                             ("529", anthropic.OverloadedError)]:
            with self.subTest(status=status):
                with self.assertRaises(kind) as caught:
                    self.client.messages.create(extra_headers={"x-fakellm-status": status},
                                                **self.request())
                self.assertEqual(caught.exception.status_code, int(status))

    def test_streamError(self) -> None:
        """
        An error inside the provider's stream raises in the SDK's
        iteration, after the words that came before it.
        """
        pieces: list[str] = []
        with self.assertRaises(self.anthropic.APIStatusError) as caught:
            with self.client.messages.stream(
                    extra_headers={"x-fakellm-chunks": "2", "x-fakellm-stream-error": "overloaded_error"},
                    **self.request()) as stream:
                for piece in stream.text_stream:
                    pieces.append(piece)
        self.assertEqual("".join(pieces).split(), ["Shall", "I"])
        self.assertEqual(caught.exception.body["type"], "error")


class AnthropicSDKAnthropicTests(_AnthropicClient, SynchronousTestCase):
    """
    The Anthropic SDK at the door of an Anthropic route: passed through.
    """

    prefix = "/anthropic"
    model = "claude-sonnet-4-5"

    def test_countTokens(self) -> None:
        """
        C{messages.count_tokens} reaches Anthropic.
        """
        count = self.client.messages.count_tokens(
            model=self.model, system=SYSTEM, messages=[{"role": "user", "content": PROMPT}])
        self.assertEqual(count.input_tokens, PROMPT_WORDS)


class AnthropicSDKOpenAITests(_AnthropicClient, SynchronousTestCase):
    """
    The Anthropic SDK at the door of an OpenAI route: translated both
    ways.
    """

    prefix = "/openai"
    model = "gpt-4o-mini"

    def test_countTokens(self) -> None:
        """
        C{messages.count_tokens} is refused with the SDK's
        C{BadRequestError}: only Anthropic counts tokens.
        """
        with self.assertRaises(self.anthropic.BadRequestError) as caught:
            self.client.messages.count_tokens(
                model=self.model, messages=[{"role": "user", "content": PROMPT}])
        self.assertIn("anthropic", caught.exception.message)
