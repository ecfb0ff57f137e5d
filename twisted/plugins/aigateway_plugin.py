"""
twistd plugins for aigateway: C{twistd aigateway} runs the gateway and
C{twistd fakellm} runs the bundled OpenAI-compatible fake LLM.

Both are lazy: nothing from aigateway is imported until one is chosen.
"""

from twisted.application.service import ServiceMaker

aigateway = ServiceMaker(
    "aigateway",
    "aigateway.app.tap",
    "An AI gateway: routes, provider keys, JWT, streaming, telemetry.",
    "aigateway",
)

fakellm = ServiceMaker(
    "fakellm",
    "aigateway.testing.fakellm",
    "An OpenAI-compatible fake LLM for demos, tests and benchmarks.",
    "fakellm",
)
