"""
The user's lab, as test fixtures: its public key, Alice's token (RS256, no
kid, no exp, issuer C{solo.io}) and its chat request.
"""

LAB_PEM = """-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAskFAGESgB22iOsGk/UgX
BXTmMtd8R0vphvZ4RkXySOIra/vsg1UKay6aESBoZzeLX3MbBp5laQenjaYJ3U8P
QLCcellbaiyUuE6+obPQVIa9GEJl37GQmZIMQj4y68KHZ4m2WbQVlZVIw/Uw52cw
eGtitLMztiTnsve0xtgdUzV0TaynaQrRW7REF+PtLWitnvp9evweOrzHhQiPLcdm
fxfxCbEJHa0LRyyYatCZETOeZgkOHlYSU0ziyMhHBqpDH1vzXrM573MQ5MtrKkWR
T4ZQKuEe0Acyd2GhRg9ZAxNqs/gbb8bukDPXv4JnFLtWZ/7EooKbUC/QBKhQYAsK
bQIDAQAB
-----END PUBLIC KEY-----
"""
ALICE_TOKEN = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyAiaXNzIjogInNvbG8uaW8iLCAib3JnIjogInNvbG8uaW8iLCAic3ViIjogImFsaWNlIiwgInRlYW0iOiAiZGV2IiwgImxsbXMiOiB7ICJvcGVuYWkiOiBbICJncHQtMy41LXR1cmJvIiBdIH0gfQ."
    "I7whTti0aDKxlILc5uLK9oo6TljGS6JUrjPVd6z1PxzucUa_cnuKkY0qj_wrkzyVN5djy4t2ggE1uBO8Llpwi-Ygru9hM84-1m53aO07JYFya1VTDsI25tCRG8rYhShDdAP5L935SIARta2QtHhrVcd1Ae7yfTDZ8G1DXLtjR2QelszCd2R8PioCQmqJ8PeKg4sURhu05GlBCZoXES9-rtPVbe6j3YLBTodJAvLHhyy3LgV_QbN7IiZ5qEywdKHoEF4D4aCUf_LqPp4NoqHXnGT4jLzWJEtZXHQ4sgRy_5T93NOLzWLdIjgMjGO_F0aVLwBzU-phykOVfcBPaMvetg"
)
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Whats your favorite poem?"}]}


def indented(text: str, spaces: int) -> str:
    """
    C{text} indented for a YAML block scalar.
    """
    return "\n".join(" " * spaces + line for line in text.splitlines())


# The lab's JWT policy, as it reads in a gateway configuration.
LAB_POLICY = (
    "jwt:\n  providers:\n    selfminted:\n      issuer: solo.io\n"
    "      jwks:\n        local:\n          key: |\n" + indented(LAB_PEM, 12) + "\n"
)


# The key the in-memory gateways of the tests send their fake LLM, and the
# two backends they route to: the fake LLM as it is, and the same with a
# model override.
UPSTREAM_KEY = "sk-upstream-secret"
FAKE_BACKENDS = f"""
backends:
  local:
    provider: openai
    url: http://127.0.0.1:9000
    authToken: {{value: {UPSTREAM_KEY}}}
  pinned:
    provider: openai
    url: http://127.0.0.1:9000
    model: gpt-pinned
    authToken: {{value: {UPSTREAM_KEY}}}
"""
