"""
Tests for L{aigateway.observe.report}: spans, metrics and access log events for
requests through the gateway, in memory.
"""

from __future__ import annotations

import json

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import generate_latest
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from aigateway.config import TracingConfig, loadConfig
from aigateway.testing.fakellm import FakeLLM
from aigateway.build import buildGateway
from aigateway.observe.report import Exchange, Metrics, Telemetry
from tests.memory import MemoryGateway

CONFIG = """
backends:
  local: {provider: openai, url: 'http://127.0.0.1:9000'}
  keyless: {provider: openai, authToken: {env: NOT_SET_ANYWHERE}}
routes:
  - {name: local, match: {pathPrefix: /local}, backend: local}
  - {name: keyless, match: {pathPrefix: /keyless}, backend: keyless}
tracing:
  captureContent: %(capture)s
  legacyAttributes: true
"""
CHAT = {
    "model": "gpt-4o-mini",
    "temperature": 0.5,
    "max_tokens": 50,
    "messages": [{"role": "user", "content": "Whats your favorite poem?"}],
}


class _Traced(MemoryGateway):
    """
    The gateway in memory, its spans kept in memory and its access log
    events collected.
    """

    def __init__(self, capture: bool = False, more: str = "", reportDelay: float | None = None) -> None:
        self.spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.tracerProvider = provider
        super().__init__(CONFIG % {"capture": "true" if capture else "false"} + more, tracerProvider=provider,
                         reportDelay=reportDelay)
        self.events: list[dict] = []

    def observe(self, case: SynchronousTestCase) -> None:
        def observer(event: dict) -> None:
            if event.get("log_namespace") == "aigateway.access":
                self.events.append(event)

        globalLogPublisher.addObserver(observer)
        case.addCleanup(globalLogPublisher.removeObserver, observer)

    def send(self, case: SynchronousTestCase, path: str, body: dict, headers: dict | None = None) -> bytes:
        return self.post(case, path, body, headers)[1]

    def byKind(self) -> dict:
        return {span.kind: span for span in self.spans.get_finished_spans()}


class SpanTests(SynchronousTestCase):
    """
    One SERVER span per request and one CLIENT span per upstream call, with
    the GenAI attributes.
    """

    def test_chat(self) -> None:
        """
        A chat completion: route, status, model, parameters, usage, and the
        legacy names.
        """
        traced = _Traced()
        traced.send(self, "/local", CHAT, {"user-agent": "lab/1"})
        spans = traced.byKind()
        server, client = spans[SpanKind.SERVER], spans[SpanKind.CLIENT]
        self.assertEqual(server.name, "POST local")
        self.assertEqual(client.name, "chat gpt-4o-mini")
        self.assertEqual(client.parent.span_id, server.context.span_id)
        self.assertEqual(server.attributes["http.route"], "local")
        self.assertEqual(server.attributes["http.response.status_code"], 200)
        self.assertEqual(server.attributes["user_agent.original"], "lab/1")
        a = client.attributes
        self.assertEqual(a["gen_ai.operation.name"], "chat")
        self.assertEqual(a["gen_ai.provider.name"], "openai")
        self.assertEqual(a["gen_ai.request.model"], "gpt-4o-mini")
        self.assertEqual(a["gen_ai.response.model"], "gpt-4o-mini")
        self.assertEqual(a["gen_ai.request.temperature"], 0.5)
        self.assertEqual(a["gen_ai.request.max_tokens"], 50)
        self.assertEqual(a["gen_ai.usage.input_tokens"], 4)
        self.assertEqual(a["gen_ai.usage.output_tokens"], 8)
        self.assertEqual(tuple(a["gen_ai.response.finish_reasons"]), ("stop",))
        self.assertTrue(a["gen_ai.response.id"].startswith("chatcmpl-fake-"))
        self.assertEqual((a["server.address"], a["server.port"]), ("127.0.0.1", 9000))
        self.assertEqual(a["llm.request.model"], "gpt-4o-mini")
        self.assertEqual(a["llm.request.tokens"], 4)
        self.assertEqual(a["llm.response.tokens"], 8)
        self.assertNotIn("gen_ai.input.messages", a)
        self.assertNotIn("gen_ai.prompt", a)

    def test_streamUsage(self) -> None:
        """
        A stream that did not ask for usage still reports it, because the
        gateway asked for it; with content capture, the assembled text.
        """
        traced = _Traced(capture=True)
        text = traced.send(self, "/local", dict(CHAT, stream=True), {"x-fakellm-chunks": "5"})
        self.assertIn(b"[DONE]", text)
        sent = json.loads(traced.fakellm.requests[-1].body)
        self.assertEqual(sent["stream_options"], {"include_usage": True})
        client = traced.byKind()[SpanKind.CLIENT]
        self.assertEqual(client.attributes["gen_ai.usage.output_tokens"], 5)
        self.assertEqual(client.attributes["gen_ai.completion"], "Shall I compare thee to")
        output = json.loads(client.attributes["gen_ai.output.messages"])
        self.assertEqual(output[0]["parts"][0]["content"], "Shall I compare thee to")
        self.assertEqual(json.loads(client.attributes["gen_ai.input.messages"]), CHAT["messages"])
        self.assertIn("gen_ai.response.time_to_first_chunk", client.attributes)

    def test_traceparentContinued(self) -> None:
        """
        A caller's C{traceparent} continues its trace, and the upstream
        request carries the gateway's CLIENT span as its parent.
        """
        traced = _Traced()
        traceId = "4bf92f3577b34da6a3ce929d0e0e4736"
        traced.send(self, "/local", CHAT, {"traceparent": f"00-{traceId}-00f067aa0ba902b7-01"})
        server = traced.byKind()[SpanKind.SERVER]
        client = traced.byKind()[SpanKind.CLIENT]
        self.assertEqual(format(server.context.trace_id, "032x"), traceId)
        upstream = traced.fakellm.requests[-1].headers["traceparent"]
        self.assertEqual(upstream, f"00-{traceId}-{client.context.span_id:016x}-01")
        self.assertNotIn("tracestate", traced.fakellm.requests[-1].headers)

    def test_tracestateCarried(self) -> None:
        """
        The caller's C{tracestate} travels on with the trace.
        """
        traced = _Traced()
        traceId = "4bf92f3577b34da6a3ce929d0e0e4736"
        traced.send(self, "/local", CHAT, {"traceparent": f"00-{traceId}-00f067aa0ba902b7-01",
                                           "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"})
        headers = traced.fakellm.requests[-1].headers
        self.assertEqual(headers["tracestate"], "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        self.assertTrue(headers["traceparent"].startswith(f"00-{traceId}-"))

    def test_refusal(self) -> None:
        """
        A request the gateway refuses has the status, C{error.type} and the
        reason in C{error}, and no CLIENT span.
        """
        traced = _Traced()
        traced.send(self, "/keyless", CHAT)
        spans = traced.spans.get_finished_spans()
        self.assertEqual([s.kind for s in spans], [SpanKind.SERVER])
        a = spans[0].attributes
        self.assertEqual(a["http.response.status_code"], 503)
        self.assertEqual(a["error.type"], "backend_credential_missing")
        self.assertIn("NOT_SET_ANYWHERE is not set", a["error"])

    def test_legacyHttpStatus(self) -> None:
        """
        With C{legacyAttributes}, the SERVER span also has C{http.status},
        the status as an int, as the lab's trace shows it; without, not.
        """
        traced = _Traced()
        traced.send(self, "/local", CHAT)
        traced.send(self, "/keyless", CHAT)
        servers = [s for s in traced.spans.get_finished_spans() if s.kind == SpanKind.SERVER]
        self.assertEqual([s.attributes["http.status"] for s in servers], [200, 503])
        plain = MemoryGateway(CONFIG.replace("legacyAttributes: true", "legacyAttributes: false")
                              % {"capture": "false"}, tracerProvider=traced.tracerProvider)
        before = len(traced.spans.get_finished_spans())
        plain.post(self, "/local", CHAT)
        server = [s for s in traced.spans.get_finished_spans()[before:] if s.kind == SpanKind.SERVER][0]
        self.assertNotIn("http.status", server.attributes)

    def test_noRoute(self) -> None:
        """
        A 404 is a span named by its method only.
        """
        traced = _Traced()
        traced.send(self, "/nowhere", CHAT)
        span = traced.spans.get_finished_spans()[0]
        self.assertEqual((span.name, span.attributes["error.type"]), ("POST", "route_not_found"))

    def test_contentBounded(self) -> None:
        """
        With content capture, a long prompt's attributes are cut at 8 KiB
        in the spans the gateway's tracer provider sends.
        """
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        from aigateway.observe.report import buildTracerProvider
        from tests.test_otlp import _Agent

        agent = _Agent()
        config = TracingConfig(otlpEndpoint="http://collector/v1/traces", captureContent=True)
        provider = buildTracerProvider(config, Clock(), agent, {})
        gateway = MemoryGateway(CONFIG % {"capture": "true"}, tracerProvider=provider)
        prompt = "Whats your favorite poem? " * 1000
        gateway.post(self, "/local", dict(CHAT, messages=[{"role": "user", "content": prompt}]))
        provider.flush()
        [(_, _, body, _)] = agent.posts
        [client, _] = ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans
        values = {a.key: a.value.string_value for a in client.attributes}
        self.assertEqual(len(values["gen_ai.input.messages"]), 8192)
        self.assertEqual(len(values["gen_ai.prompt"]), 8192)
        self.assertTrue(values["gen_ai.input.messages"].startswith('[{"role":"user","content":"Whats'))


BOTH = "  conventions: [genai, openinference]\n"
OPENINFERENCE_ONLY = "  conventions: [openinference]\n"


class OpenInferenceTests(SynchronousTestCase):
    """
    C{tracing.conventions} with C{openinference} adds OpenInference's
    attributes, which Arize Phoenix reads; the default is the GenAI
    convention alone.
    """

    def test_absentByDefault(self) -> None:
        """
        Without C{openinference} in the conventions, no span carries an
        OpenInference attribute, and the GenAI ones are there.
        """
        traced = _Traced(capture=True)
        traced.send(self, "/local", CHAT)
        for span in traced.spans.get_finished_spans():
            found = [key for key in span.attributes
                     if key.split(".")[0] in ("openinference", "input", "output")
                     or key.startswith(("llm.model_name", "llm.provider", "llm.system", "llm.token_count",
                                        "llm.input_messages", "llm.output_messages", "llm.invocation"))]
            self.assertEqual(found, [], span.name)
        self.assertEqual(traced.byKind()[SpanKind.CLIENT].attributes["gen_ai.request.model"], "gpt-4o-mini")

    def test_bothConventions(self) -> None:
        """
        With both conventions the CLIENT span is an LLM span with the
        model, provider, system, parameters and token counts beside the
        GenAI attributes, and the SERVER span a CHAIN span; without content
        capture no input, output or message attribute is written on either.
        """
        traced = _Traced(more=BOTH)
        traced.send(self, "/local", CHAT)
        spans = traced.byKind()
        a = spans[SpanKind.CLIENT].attributes
        self.assertEqual(
            {key: a[key] for key in ("openinference.span.kind", "llm.model_name", "llm.provider", "llm.system",
                                     "llm.token_count.prompt", "llm.token_count.completion",
                                     "llm.token_count.total")},
            {"openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini", "llm.provider": "openai",
             "llm.system": "openai", "llm.token_count.prompt": 4, "llm.token_count.completion": 8,
             "llm.token_count.total": 12},
        )
        self.assertEqual(json.loads(a["llm.invocation_parameters"]), {"temperature": 0.5, "max_tokens": 50})
        self.assertEqual(a["gen_ai.usage.input_tokens"], 4)
        self.assertEqual(spans[SpanKind.SERVER].attributes["openinference.span.kind"], "CHAIN")
        content = [key for key in a if key.startswith(("input.", "output.", "llm.input_messages",
                                                       "llm.output_messages", "gen_ai.input", "gen_ai.output"))]
        self.assertEqual(content, [])
        self.assertEqual([key for key in spans[SpanKind.SERVER].attributes if key.startswith(("input.", "output."))],
                         [])

    def test_captured(self) -> None:
        """
        With content capture, C{input.value} is the request's JSON as the
        gateway forwards it (a stream asks for usage), the
        messages are OpenInference's flattened lists, and the answer is
        C{output.value} and the first output message, for a stream too;
        the SERVER span, the trace's root, has the same input and output.
        """
        messages = [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": [{"type": "text", "text": "Whats your "},
                                                 {"type": "text", "text": "favorite poem?"}]}]
        for stream in (False, True):
            traced = _Traced(capture=True, more=BOTH)
            body = dict(CHAT, messages=messages, stream=stream)
            traced.send(self, "/local", body, {"x-fakellm-chunks": "5"})
            a = traced.byKind()[SpanKind.CLIENT].attributes
            forwarded = dict(body, stream_options={"include_usage": True}) if stream else body
            self.assertEqual((json.loads(a["input.value"]), a["input.mime_type"]), (forwarded, "application/json"))
            self.assertEqual(
                {key: value for key, value in a.items() if key.startswith("llm.input_messages.")},
                {"llm.input_messages.0.message.role": "system",
                 "llm.input_messages.0.message.content": "Be brief.",
                 "llm.input_messages.1.message.role": "user",
                 "llm.input_messages.1.message.content": "Whats your favorite poem?"},
            )
            self.assertEqual((a["output.value"], a["output.mime_type"]), ("Shall I compare thee to", "text/plain"))
            self.assertEqual((a["llm.output_messages.0.message.role"], a["llm.output_messages.0.message.content"]),
                             ("assistant", "Shall I compare thee to"))
            self.assertEqual(a["llm.token_count.completion"], 5, stream)
            server = traced.byKind()[SpanKind.SERVER].attributes
            self.assertEqual({key: server[key] for key in server if key.startswith(("input.", "output."))},
                             {key: a[key] for key in a if key.startswith(("input.", "output."))})

    def test_openInferenceAlone(self) -> None:
        """
        C{conventions: [openinference]} writes OpenInference's attributes
        and none of the GenAI convention's C{gen_ai.*} ones, on either
        span.
        """
        traced = _Traced(more=OPENINFERENCE_ONLY)
        traced.send(self, "/local", CHAT)
        spans = traced.byKind()
        self.assertEqual(spans[SpanKind.CLIENT].attributes["llm.model_name"], "gpt-4o-mini")
        self.assertEqual(spans[SpanKind.CLIENT].name, "chat gpt-4o-mini")
        for span in spans.values():
            self.assertEqual([key for key in span.attributes if key.startswith("gen_ai.")], [], span.name)

    def test_toolCalls(self) -> None:
        """
        An assistant message's tool calls and a tool message's call id are
        flattened as OpenInference names them.
        """
        from aigateway.observe.openinference import messageAttributes

        attributes: dict = {}
        messageAttributes("llm.input_messages", [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ], attributes)
        self.assertEqual(attributes, {
            "llm.input_messages.0.message.role": "assistant",
            "llm.input_messages.0.message.tool_calls.0.tool_call.id": "call_1",
            "llm.input_messages.0.message.tool_calls.0.tool_call.function.name": "weather",
            "llm.input_messages.0.message.tool_calls.0.tool_call.function.arguments": "{}",
            "llm.input_messages.1.message.role": "tool",
            "llm.input_messages.1.message.content": "sunny",
            "llm.input_messages.1.message.tool_call_id": "call_1",
        })
        attributes = {}
        messageAttributes("llm.input_messages", "just a string", attributes)
        self.assertEqual(attributes, {"llm.input_messages.0.message.role": "user",
                                      "llm.input_messages.0.message.content": "just a string"})

    def test_providers(self) -> None:
        """
        Every provider maps to OpenInference's C{llm.provider} and
        C{llm.system} values; Bedrock's system is read from the model id.
        """
        from aigateway.observe.openinference import provider, system

        self.assertEqual(
            [(provider(name), system(name, model)) for name, model in [
                ("openai", "gpt-4o"), ("anthropic", "claude"), ("gcp.gemini", "gemini-2.0-flash"),
                ("azure.ai.openai", "gpt-4o"), ("aws.bedrock", "anthropic.claude-3-haiku"),
                ("aws.bedrock", "us.anthropic.claude-3-haiku"), ("aws.bedrock", "mistral.large"),
                ("aws.bedrock", "amazon.nova-lite-v1:0"), ("elsewhere", "m")]],
            [("openai", "openai"), ("anthropic", "anthropic"), ("google", "vertexai"), ("azure", "openai"),
             ("aws", "anthropic"), ("aws", "anthropic"), ("aws", "mistralai"), ("aws", None), (None, None)],
        )

    def test_conventionsConfig(self) -> None:
        """
        C{tracing.conventions} defaults to C{[genai]}; an unknown or
        repeated value, an empty list and a bare string are errors naming
        the field.
        """
        from aigateway.config import ConfigError

        base = CONFIG % {"capture": "false"}
        self.assertEqual(loadConfig(base).tracing.conventions, ("genai",))
        self.assertEqual(loadConfig(base + BOTH).tracing.conventions, ("genai", "openinference"))
        for bad, where in [("[genai, openinferense]", "tracing.conventions[1]: must be one of genai, openinference"),
                           ("[genai, genai]", "tracing.conventions[1]: 'genai' is listed twice"),
                           ("[]", "tracing.conventions: must name at least one of"),
                           ("genai", "tracing.conventions: must be a list of")]:
            with self.assertRaises(ConfigError) as caught:
                loadConfig(base + f"  conventions: {bad}\n")
            self.assertTrue(str(caught.exception).startswith(where), str(caught.exception))


class LabRefusalTests(SynchronousTestCase):
    """
    The lab's trace of the request without a token, reproduced with
    C{jwt.failureStatus: 403} and C{legacyAttributes}.
    """

    def refused(self, legacy: bool) -> dict:
        """
        The SERVER span's attributes of the lab's chat request sent
        without a token to a route under the lab's JWT policy, answered
        403.
        """
        from tests.lab import CHAT as LAB_CHAT, LAB_POLICY

        spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        config = (CONFIG % {"capture": "true"}).replace("legacyAttributes: true", f"legacyAttributes: {str(legacy).lower()}")
        config = config.replace("routes:\n  - {name: local, match: {pathPrefix: /local}",
                                "routes:\n  - {name: openai, match: {pathPrefix: /openai}")
        config += LAB_POLICY.replace("jwt:\n", "jwt:\n  failureStatus: 403\n", 1)
        gateway = MemoryGateway(config, tracerProvider=provider)
        response, _ = gateway.post(self, "/openai", LAB_CHAT)
        self.assertEqual(response.code, 403)
        [server] = spans.get_finished_spans()
        self.assertEqual((server.kind, server.name), (SpanKind.SERVER, "POST openai"))
        return dict(server.attributes)

    def test_labWords(self) -> None:
        """
        The refused request's SERVER span has C{http.status} 403 and an
        C{error} with the words C{authorization failed}, as the lab's
        Jaeger shows, followed by the gateway's own reason.
        """
        a = self.refused(legacy=True)
        self.assertEqual((a["http.status"], a["http.response.status_code"]), (403, 403))
        self.assertEqual(a["error"], "authorization failed: authentication failure: no bearer token found")
        self.assertEqual(a["error.type"], "missing_token")

    def test_withoutLegacy(self) -> None:
        """
        Without C{legacyAttributes} the span keeps the standard names and
        the gateway's reason as it is.
        """
        a = self.refused(legacy=False)
        self.assertNotIn("http.status", a)
        self.assertEqual(a["error"], "authentication failure: no bearer token found")


class NoTracingTests(SynchronousTestCase):
    """
    Without a tracer, nothing is traced and the trace context is passed on
    as the caller sent it.
    """

    def test_noSpans(self) -> None:
        """
        The upstream gets the caller's own C{traceparent}.
        """
        clock = Clock()
        fakellm = FakeLLM(clock)
        upstream = RequestTraversalAgent(fakellm)
        config = loadConfig(CONFIG % {"capture": "false"})
        telemetry = Telemetry(config.tracing, Metrics(), clock)
        self.assertIsNone(telemetry.tracer)
        client = StubTreq(buildGateway(config, upstream, clock, {}, telemetry=telemetry).root)
        parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        d = client.post("http://gw/local", json.dumps(CHAT).encode(),
                        headers={"traceparent": parent, "content-type": "application/json"})
        upstream.flush()
        client.flush()
        self.assertEqual(self.successResultOf(d).code, 200)
        self.assertEqual(fakellm.requests[-1].headers["traceparent"], parent)


class MetricsTests(SynchronousTestCase):
    """
    The Prometheus metrics after some traffic.
    """

    def test_afterTraffic(self) -> None:
        """
        Token usage, durations, requests by status, and a bounded model label.
        """
        traced = _Traced()
        traced.send(self, "/local", CHAT)
        traced.send(self, "/local", dict(CHAT, stream=True))
        traced.send(self, "/keyless", CHAT)
        text = generate_latest(traced.metrics.registry).decode()
        self.assertIn(
            'gen_ai_client_token_usage_count{gen_ai_provider_name="openai",'
            'gen_ai_request_model="gpt-4o-mini",gen_ai_response_model="gpt-4o-mini",'
            'gen_ai_token_type="output",route="local"} 2.0', text
        )
        self.assertIn('aigateway_requests_total{route="local",status="200"} 2.0', text)
        self.assertIn('aigateway_requests_total{route="keyless",status="503"} 1.0', text)
        self.assertIn("gen_ai_client_operation_duration_seconds_bucket", text)
        self.assertIn("gen_ai_client_operation_time_to_first_chunk_seconds_bucket", text)
        self.assertIn("aigateway_requests_in_flight 0.0", text)
        traced.telemetry.inFlight.started()
        self.assertIn("aigateway_requests_in_flight 1.0", generate_latest(traced.metrics.registry).decode())

    def test_modelLabelsBounded(self) -> None:
        """
        Past the limit, new model names are counted as C{other}.
        """
        metrics = Metrics(maxModels=2)
        self.assertEqual([metrics.model(m) for m in ("a", "b", "c", "a")], ["a", "b", "other", "a"])


class AccessLogTests(SynchronousTestCase):
    """
    One access log event per request, without secrets or prompts.
    """

    def test_event(self) -> None:
        """
        The event has the route, status, models, tokens and sizes, and no
        prompt or key.
        """
        traced = _Traced()
        traced.observe(self)
        traced.send(self, "/local", CHAT, {"authorization": "Bearer sk-caller-secret"})
        [event] = traced.events
        self.assertEqual(
            (event["route"], event["method"], event["path"], event["status"], event["upstreamStatus"]),
            ("local", "POST", "/local", 200, 200),
        )
        self.assertEqual((event["inputTokens"], event["outputTokens"]), (4, 8))
        self.assertEqual(event["requestModel"], "gpt-4o-mini")
        self.assertGreater(event["bytesIn"], 0)
        self.assertGreater(event["bytesOut"], 0)
        flattened = json.dumps(event, default=str)
        self.assertNotIn("sk-caller-secret", flattened)
        self.assertNotIn("favorite poem", flattened)

    def test_text(self) -> None:
        """
        The event's text, as the log file shows it, says what the request
        was and how it ended.
        """
        traced = _Traced()
        traced.observe(self)
        traced.send(self, "/local/v1/chat/completions", CHAT)
        [event] = traced.events
        self.assertRegex(
            formatEvent(event),
            r"^POST /local/v1/chat/completions local -> 200 in \d+\.\d ms model=gpt-4o-mini tokens=4/8 sub=-"
            r" backend=local attempts=1$",
        )
        # The event carries that text, for every observer to write as it is.
        self.assertEqual(event["log_format"], formatEvent(event))

    def test_off(self) -> None:
        """
        C{accessLog: false} turns the events off; the request is served and
        still counted.
        """
        traced = _Traced(more="accessLog: false\n")
        traced.observe(self)
        self.assertIn(b"chat.completion", traced.send(self, "/local", CHAT))
        self.assertEqual(traced.events, [])
        self.assertIn(b'route="local",status="200"', generate_latest(traced.metrics.registry))


class ReportDelayTests(SynchronousTestCase):
    """
    Reports that wait until the gateway has a moment.
    """

    def test_afterDelay(self) -> None:
        """
        A request that ends is reported once the delay has passed, all
        those due at once, with the times of their end, not of the report.
        """
        clock = Clock()
        events: list = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        telemetry = Telemetry(TracingConfig(), Metrics(), clock, reportDelay=5.0)
        for path in ("/a", "/b"):
            exchange = Exchange(started=clock.seconds(), method="POST", path=path)
            telemetry.inFlight.started()
            clock.advance(0.25)
            telemetry.finish(exchange, 200, True)
        self.assertEqual(telemetry.inFlight.count, 0)
        access = [e for e in events if e.get("log_namespace") == "aigateway.access"]
        self.assertEqual(access, [])
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(5.0)
        access = [e for e in events if e.get("log_namespace") == "aigateway.access"]
        self.assertEqual([(e["path"], e["durationMs"]) for e in access], [("/a", 250.0), ("/b", 250.0)])

    def test_flush(self) -> None:
        """
        A flush reports what waits at once.
        """
        traced = _Traced(reportDelay=5.0)
        traced.observe(self)
        traced.send(self, "/local", CHAT)
        traced.clock.advance(1.0)
        traced.telemetry.flushReports()
        self.assertEqual([e["durationMs"] for e in traced.events], [0.0])
        self.assertEqual(traced.clock.getDelayedCalls(), [])
