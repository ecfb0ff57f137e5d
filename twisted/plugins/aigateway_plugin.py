"""
twistd plugins for aigateway: C{twistd aigateway} runs the gateway and
C{twistd fakellm} runs the bundled fake LLM, which speaks every provider's
native API.

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
    "A fake LLM speaking every provider's API, for demos, tests and benchmarks.",
    "fakellm",
)
