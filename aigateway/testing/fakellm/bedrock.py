"""
Amazon Bedrock's Converse API: C{/model/<modelId>/converse} (JSON) and
C{/model/<modelId>/converse-stream} (AWS event stream frames), with the
SigV4 C{Authorization} check (the signature verified with botocore when the
fake knows the secret) and Bedrock's C{x-amzn-ErrorType} errors.
"""

from __future__ import annotations

import hmac
import json
import re
from functools import partial
from typing import Any, Callable
from urllib.parse import unquote

from twisted.web.server import Request

from aigateway.testing.eventstream import event, exception
from aigateway.testing.fakellm.core import (
    Answer,
    Exchange,
    Refusal,
    Steering,
    StreamPlan,
    answerText,
    document,
    encode,
    splitInTwo,
    textWords,
    toolArguments,
)

__all__ = ["Bedrock", "ERROR_TYPES", "bedrockError"]

ERROR_TYPES: dict[int, str] = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
"""
The C{x-amzn-ErrorType} Bedrock answers each status with.
"""

_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<id>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/,\s]+)/"
    r"(?P<service>[^/,\s]+)/aws4_request,\s*SignedHeaders=(?P<signed>[a-z0-9;._-]+),"
    r"\s*Signature=(?P<signature>[0-9a-f]{64})$"
)

_MISMATCH = ("The request signature we calculated does not match the signature you provided. "
             "Check your AWS Secret Access Key and signing method. Consult the service "
             "documentation for details.")


def bedrockError(refusal: Refusal) -> tuple[bytes, tuple[tuple[bytes, bytes], ...]]:
    """
    A refusal as Bedrock answers: C{{"message": ...}} and the error type
    in C{x-amzn-ErrorType}.  A refusal's code is the type when it names an
    exception.
    """
    status = refusal.status
    code = refusal.code
    if code is None or not code.endswith("Exception"):
        code = ERROR_TYPES.get(status, "InternalServerException" if status >= 500
                               else "ValidationException")
    headers = refusal.headers + ((b"x-amzn-ErrorType", code.encode("ascii")),)
    return encode({"message": refusal.message}), headers


def _promptTokens(doc: dict[str, Any]) -> int:
    count = textWords(doc.get("system"))
    messages = doc.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                count += textWords(message.get("content"))
    return count


def _tools(doc: dict[str, Any]) -> list[str]:
    config = doc.get("toolConfig")
    tools = config.get("tools") if isinstance(config, dict) else None
    names = []
    if isinstance(tools, list):
        for tool in tools:
            spec = tool.get("toolSpec") if isinstance(tool, dict) else None
            if isinstance(spec, dict) and isinstance(spec.get("name"), str):
                names.append(spec["name"])
    return names


class Bedrock:
    """
    Bedrock's Converse API.
    """

    def __init__(self, accessKeyId: str | None, secretAccessKey: str | None,
                 nextNumber: Callable[[], int]) -> None:
        """
        @param accessKeyId: with C{secretAccessKey}, verify every signature
            as made with these credentials.
        @param secretAccessKey: the secret that goes with C{accessKeyId}.
        @param nextNumber: numbers answers, for their ids.
        """
        self._accessKeyId = accessKeyId
        self._secret = secretAccessKey
        self._nextNumber = nextNumber

    def checkKey(self, request: Request, body: bytes) -> None:
        """
        Refuse a request without a SigV4 C{Authorization} and C{x-amz-date},
        or, when the fake knows the credentials, with a wrong signature.
        """
        raw = request.getHeader(b"authorization")
        if raw is None:
            raise Refusal(403, "Missing Authentication Token",
                          "MissingAuthenticationTokenException")
        match = _AUTHORIZATION.match(raw.decode("latin-1"))
        date = request.getHeader(b"x-amz-date")
        if match is None or date is None or match["service"] != "bedrock":
            raise Refusal(403, "Authorization header requires 'Credential', 'SignedHeaders' and "
                               "'Signature' parameters, and the request an X-Amz-Date header, "
                               "for the bedrock service.", "IncompleteSignatureException")
        if self._accessKeyId is None or self._secret is None:
            return
        if match["id"] != self._accessKeyId:
            raise Refusal(403, "The security token included in the request is invalid.",
                          "UnrecognizedClientException")
        expected = self._signature(request, body, match, date.decode("latin-1"))
        if not hmac.compare_digest(expected, match["signature"]):
            raise Refusal(403, _MISMATCH, "InvalidSignatureException")

    def _signature(self, request: Request, body: bytes, match: re.Match[str], date: str) -> str:
        """
        The signature botocore makes for the request as received.
        """
        from botocore.auth import SigV4Auth  # type: ignore[import-untyped]
        from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
        from botocore.credentials import Credentials  # type: ignore[import-untyped]

        headers = {}
        for name in match["signed"].split(";"):
            values = request.requestHeaders.getRawHeaders(name)
            if values is not None:
                headers[name] = ",".join(v.strip() for v in values)
        host = headers.get("host") or "localhost"
        signed = AWSRequest(method=request.method.decode("ascii"),
                            url="https://" + host + request.uri.decode("latin-1"),
                            headers=headers, data=body)
        signed.context["timestamp"] = date
        auth = SigV4Auth(Credentials(self._accessKeyId, self._secret), "bedrock",
                         match["region"])
        canonical = auth.canonical_request(signed)
        result: str = auth.signature(auth.string_to_sign(signed, canonical), signed)
        return result

    errorAnswer = staticmethod(bedrockError)

    def answer(self, request: Request, body: bytes) -> Answer:
        """
        Converse and ConverseStream; a 404 for the rest.
        """
        segments = request.path.split(b"/")
        if (len(segments) == 4 and segments[1] == b"model" and segments[2]
                and request.method == b"POST" and segments[3] in (b"converse",
                                                                   b"converse-stream")):
            model = unquote(segments[2].decode("latin-1"))
            return self._converse(request, body, model, segments[3] == b"converse-stream")
        raise Refusal(404, "The requested operation is not recognized by the service.",
                      "UnknownOperationException")

    def _converse(self, request: Request, body: bytes, model: str, stream: bool) -> Answer:
        doc = document(body)
        if not isinstance(doc.get("messages"), list):
            raise Refusal(400, "The model requires 'messages'.", "ValidationException")
        steering = Steering.fromRequest(request)
        tool = steering.checkTool(_tools(doc))
        config = doc.get("inferenceConfig")
        count, cut = steering.cut(config.get("maxTokens") if isinstance(config, dict) else None)
        stop = "tool_use" if tool is not None else "max_tokens" if cut else "end_turn"
        inputTokens = _promptTokens(doc)
        outputTokens = count + steering.reasoning
        usage: dict[str, Any] = {
            "inputTokens": inputTokens,
            "outputTokens": outputTokens,
            "totalTokens": inputTokens + outputTokens + steering.cached,
        }
        if steering.cached:
            usage["cacheReadInputTokens"] = steering.cached
            usage["cacheWriteInputTokens"] = 0
        number = self._nextNumber()
        toolId = f"tooluse_fake_{number}"
        headers = ((b"x-amzn-RequestId", f"fake-{number}".encode("ascii")),)
        metrics = {"latencyMs": 0}
        arguments = toolArguments(count)
        if not stream:
            content: dict[str, Any]
            if tool is not None:
                content = {"toolUse": {"toolUseId": toolId, "name": tool, "input": arguments}}
            else:
                content = {"text": answerText(count)}
            answer = encode({
                "output": {"message": {"role": "assistant", "content": [content]}},
                "stopReason": stop, "usage": usage, "metrics": metrics,
            })
            return partial(Exchange.respond, status=200, body=answer, headers=headers)

        head = [event("messageStart", encode({"role": "assistant"}))]
        if tool is not None:
            head.append(event("contentBlockStart", encode({
                "start": {"toolUse": {"toolUseId": toolId, "name": tool}},
                "contentBlockIndex": 0})))
            deltas: list[dict[str, Any]] = [{"toolUse": {"input": part}} for part in splitInTwo(json.dumps(arguments))]
        else:
            words = answerText(count).split(" ") if count else []
            deltas = [{"text": word + (" " if i < count - 1 else "")}
                      for i, word in enumerate(words)]
        pieces = tuple(event("contentBlockDelta", encode({"delta": delta, "contentBlockIndex": 0}))
                       for delta in deltas)
        failure = None
        if steering.streamError is not None:
            failure = exception(steering.streamError, encode(
                {"message": "The fake LLM was asked to fail the stream."}))
        plan = StreamPlan(
            head=tuple(head), piece=pieces.__getitem__, count=len(pieces),
            tail=(
                event("contentBlockStop", encode({"contentBlockIndex": 0})),
                event("messageStop", encode({"stopReason": stop})),
                event("metadata", encode({"usage": usage, "metrics": metrics})),
            ),
            gap=steering.gap, dropAfter=steering.dropAfter, failure=failure,
            contentType=b"application/vnd.amazon.eventstream", headers=headers,
        )
        return partial(Exchange.stream, plan=plan)
