"""
Backend credentials: turning a L{SecretRef} into the field a provider
expects (C{Authorization: Bearer ...} for OpenAI, C{x-api-key} for
Anthropic, C{x-goog-api-key} for Gemini, C{api-key} for Azure OpenAI), once
per configuration load.

A credential that cannot be found is not a configuration error: the gateway
still starts, and requests to that backend get a 503 that names what is
missing (never the secret).
"""

from __future__ import annotations

from typing import Callable, Mapping

import attrs

from aigateway.config import SecretRef

__all__ = ["Credential", "resolveCredential"]


@attrs.frozen
class Credential:
    """
    What a backend sends upstream to say who it is.

    @ivar name: the request field that carries it, in lower case.
    @ivar header: the field's value (C{Bearer ...} for C{authorization}),
        or L{None}.
    @ivar problem: why there is no header although one was configured.
    @ivar passthrough: forward the caller's own C{Authorization} instead.
    """

    header: bytes | None = attrs.field(default=None, repr=False)
    name: bytes = b"authorization"
    problem: str | None = None
    passthrough: bool = False


def _credential(secret: str, where: str, name: bytes) -> Credential:
    secret = secret.strip()
    if name == b"authorization" and secret.lower().startswith("bearer "):
        secret = secret[7:].strip()
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in secret):
        return Credential(problem=f"{where} has characters a header cannot carry")
    value = secret.encode("ascii")
    if name == b"authorization":
        value = b"Bearer " + value
    return Credential(header=value, name=name)


def resolveCredential(
    ref: SecretRef | None,
    environ: Mapping[str, str],
    readFile: Callable[[str], bytes],
    name: bytes = b"authorization",
) -> Credential:
    """
    Look up the secret C{ref} describes.

    @param name: the field the provider reads it from: C{authorization}
        takes a bearer token, any other field the secret as it is.
    @param environ: the process environment (or a test's stand-in).
    @param readFile: reads a file's bytes, raising L{OSError}.
    """
    if ref is None:
        return Credential()
    if ref.kind == "passthrough":
        return Credential(passthrough=True, name=name)
    if ref.kind == "value":
        return _credential(ref.ref, "the inline value", name)
    if ref.kind == "env":
        value = environ.get(ref.ref, "").strip()
        if not value:
            return Credential(problem=f"environment variable {ref.ref} is not set")
        return _credential(value, f"environment variable {ref.ref}", name)
    try:
        text = readFile(ref.ref).decode("utf-8").strip()
    except OSError as e:
        return Credential(problem=f"cannot read {ref.ref}: {e.strerror or e}")
    except UnicodeDecodeError:
        return Credential(problem=f"{ref.ref} is not UTF-8 text")
    if not text:
        return Credential(problem=f"{ref.ref} is empty")
    return _credential(text, ref.ref, name)
