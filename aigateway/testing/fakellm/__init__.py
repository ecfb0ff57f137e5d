"""
A fake LLM that speaks every provider's native API, for the offline demo,
the test suite and the benchmarks::

    twistd -n fakellm --listen tcp:9000 [--key KEY]
        [--aws-access-key-id ID --aws-secret-access-key SECRET]

It serves, by path:

  - OpenAI (L{aigateway.testing.fakellm.openai}), key as
    C{Authorization: Bearer KEY}, errors C{{"error": {"message", "type",
    "param", "code"}}}:
      - C{POST /v1/chat/completions}, plain and streamed (server-sent
        events, with a usage chunk when C{stream_options.include_usage} is
        true; C{data: [DONE]} last);
      - C{POST /v1/responses}, the Responses API, plain (a C{response}
        object) and streamed (C{event: response.created},
        C{response.in_progress}, C{response.output_item.added},
        C{response.content_part.added}, C{response.output_text.delta} per
        word, C{response.output_text.done}, C{response.content_part.done},
        C{response.output_item.done}, C{response.completed});
      - C{POST /v1/embeddings}, as floats or, as the OpenAI SDK asks by
        default, as base64 of little-endian float32;
      - C{GET /v1/models} and C{GET /v1/models/<id>} (L{MODELS});
      - a 404 for anything else no other API claims.
  - Anthropic Messages (L{aigateway.testing.fakellm.anthropic}), key as
    C{x-api-key: KEY} or, as the Anthropic SDK sends it, C{Authorization:
    Bearer KEY}, C{anthropic-version} required (a 400 without),
    errors C{{"type": "error", "error": {"type", "message"}}} (529 is an
    C{overloaded_error}):
      - C{POST /v1/messages}, plain and streamed (C{message_start},
        C{content_block_start}, C{ping}, C{content_block_delta} per word,
        C{content_block_stop}, C{message_delta} with the stop reason and
        usage, C{message_stop}); C{max_tokens} is required and cuts the
        answer (stop reason C{max_tokens});
      - C{POST /v1/messages/count_tokens}: C{{"input_tokens": N}};
      - C{GET /v1/models} and C{GET /v1/models/<id>} in Anthropic's shape
        when the request carries C{anthropic-version}.
  - Gemini (L{aigateway.testing.fakellm.gemini}), key as
    C{x-goog-api-key: KEY} or C{?key=KEY}, errors C{{"error": {"code",
    "message", "status"}}} with Google's status names:
      - C{POST /v1beta/models/<model>:generateContent};
      - C{POST /v1beta/models/<model>:streamGenerateContent?alt=sse}, each
        event's C{data:} a C{GenerateContentResponse} (events end with
        CRLF pairs, as Google's do), the finish reason and
        C{usageMetadata} on the last; without C{alt=sse}, a JSON array
        written element by element;
      - C{POST /v1beta/models/<model>:countTokens}: C{{"totalTokens": N}};
      - C{GET /v1beta/models} and C{GET /v1beta/models/<model>}.
  - Azure OpenAI (L{aigateway.testing.fakellm.azure}), key as
    C{api-key: KEY}: C{POST /openai/deployments/<deployment>/chat/completions}
    and C{.../embeddings}, each with C{?api-version=...} (without it, a 404
    C{{"error": {"code": "404", "message": "Resource not found"}}}, as
    Azure answers); as OpenAI's, the answer's C{model} being the deployment.
  - Bedrock Converse (L{aigateway.testing.fakellm.bedrock}):
    C{POST /model/<modelId>/converse} (JSON) and
    C{POST /model/<modelId>/converse-stream}
    (C{application/vnd.amazon.eventstream}: C{messageStart},
    C{contentBlockDelta} per word, C{contentBlockStop}, C{messageStop}
    with the stop reason, C{metadata} with usage and metrics).  Every
    request must carry C{Authorization: AWS4-HMAC-SHA256 Credential=<id>/
    <date>/<region>/bedrock/aws4_request, SignedHeaders=..., Signature=...}
    and C{x-amz-date} (a 403 without); with C{--aws-access-key-id} and
    C{--aws-secret-access-key} the signature is recomputed with botocore
    and a wrong one is a 403 C{InvalidSignatureException}.  Errors are
    C{{"message": ...}} with the type in C{x-amzn-ErrorType}
    (C{ValidationException} 400, C{ThrottlingException} 429,
    C{ServiceUnavailableException} 503, ...).  C{--key} does not apply.

The key is checked before anything else (Anthropic's C{anthropic-version}
with it) and the delay header is read next; both answer at once when they
refuse.  Every other answer, errors included, waits for the delay.

Answers are deterministic.  An answer is the first N words of L{POEM}
(starting over at its end), N being 8 unless C{x-fakellm-chunks} says
otherwise, or fewer when the client's output limit (C{max_tokens},
C{max_completion_tokens}, C{max_output_tokens}, C{maxOutputTokens},
C{inferenceConfig.maxTokens}) is lower, which then is the finish reason
(C{length}, C{max_tokens}, C{MAX_TOKENS}, an C{incomplete} response).
Tokens are whitespace-separated words: the prompt counts the words of every
text in the request in its API's shape (system text included; string
contents and the C{text} of content parts), the completion the words of
the answer.  An embedding is eight floats made from the SHA-256 of the
input text.  Ids count up from 1 across every API (C{chatcmpl-fake-1},
C{resp_fake_2}, C{msg_fake_3}, ...).

Request headers steer it; a bad value is a 400, in the API's envelope, that
names the header:

  - C{x-fakellm-delay: MS} (default 0): wait this many milliseconds before
    the response starts, status line included;
  - C{x-fakellm-chunks: N} (default 8, at most 100000): words in the answer,
    one stream event each;
  - C{x-fakellm-gap: MS} (default 0): milliseconds before each word (each
    piece) of a stream.  The events before the first word are written as
    the response starts; the ones after the last word right after it, so a
    stream lasts N times the gap.  With no gap every event is written in the
    same reactor turn, still one C{write} each;
  - C{x-fakellm-status: CODE} (400 to 599): answer with this status and the
    API's error envelope, plus C{retry-after: 1} for 429;
  - C{x-fakellm-drop-after: N} (0 to 100000): close a stream's connection
    right after its N-th piece, before its last events, so the client sees
    a broken stream; an N past the last piece never comes.  The connection
    is closed with C{loseConnection}, not aborted, so the pieces before the
    break do reach the client;
  - C{x-fakellm-stream-error: TYPE}: after its pieces, a stream ends with an
    error of this type instead of its last events, and the response ends
    cleanly: OpenAI chat a C{data: {"error": {..., "type": TYPE}}} event,
    the Responses API an C{event: error} with C{code} TYPE, Anthropic an
    C{event: error} of error type TYPE, Gemini an error object of status
    TYPE, Bedrock an exception frame (C{:message-type exception},
    C{:exception-type} TYPE);
  - C{x-fakellm-tool-call: NAME}: answer with a call to the tool NAME, which
    must be among the request's tools (else a 400), with the arguments
    C{{"words": N}}, in the API's own form: OpenAI C{tool_calls} (streamed
    as the arguments in two pieces) and finish reason C{tool_calls}; a
    Responses C{function_call} item; Anthropic C{tool_use} (two
    C{input_json_delta} pieces), stop reason C{tool_use}; a Gemini
    C{functionCall} part (finish reason C{STOP}, as Gemini has no other);
    Bedrock C{toolUse} (a C{contentBlockStart} and two C{toolUse} input
    deltas), stop reason C{tool_use};
  - C{x-fakellm-cached-tokens: N}: report N input tokens read from a cache,
    on top of the prompt's words: OpenAI C{prompt_tokens_details.
    cached_tokens} (in C{prompt_tokens}; C{input_tokens_details} in the
    Responses API), Anthropic C{cache_read_input_tokens} (not in
    C{input_tokens}), Gemini C{cachedContentTokenCount} (in
    C{promptTokenCount}), Bedrock C{cacheReadInputTokens} (not in
    C{inputTokens}, in C{totalTokens});
  - C{x-fakellm-reasoning-tokens: N}: report N reasoning tokens on top of
    the answer's words: OpenAI C{completion_tokens_details.reasoning_tokens}
    (in C{completion_tokens}; C{output_tokens_details} in the Responses
    API), Gemini C{thoughtsTokenCount} (not in C{candidatesTokenCount}, in
    C{totalTokenCount}); Anthropic and Bedrock have no field of their own
    and count them in their output tokens.

Milliseconds may be fractional.  Every request is recorded
(L{FakeLLM.requests}, a L{SeenRequest} each: method, target, headers,
body), so tests can check what a gateway sent.  The listening site keeps no
access log and closes idle connections without logging them.
"""

from __future__ import annotations

from aigateway.testing.fakellm.core import POEM, SeenRequest
from aigateway.testing.fakellm.openai import MODELS
from aigateway.testing.fakellm.resource import FakeLLM
from aigateway.testing.fakellm.service import Options, makeService

__all__ = ["FakeLLM", "MODELS", "Options", "POEM", "SeenRequest", "makeService"]
