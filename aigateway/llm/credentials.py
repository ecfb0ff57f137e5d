"""
Backend credentials: turning a L{SecretRef} into the C{Authorization}
header a provider expects, once per configuration load.

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
    What a backend sends upstream as C{Authorization}.

    @ivar header: the header value (C{Bearer ...}), or L{None}.
    @ivar problem: why there is no header although one was configured.
    @ivar passthrough: forward the caller's own C{Authorization} instead.
    """

    header: bytes | None = attrs.field(default=None, repr=False)
    problem: str | None = None
    passthrough: bool = False


def _bearer(secret: str, where: str) -> Credential:
    secret = secret.strip()
    if secret.lower().startswith("bearer "):
        secret = secret[7:].strip()
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in secret):
        return Credential(problem=f"{where} has characters a header cannot carry")
    return Credential(header=b"Bearer " + secret.encode("ascii"))


def resolveCredential(
    ref: SecretRef | None,
    environ: Mapping[str, str],
    readFile: Callable[[str], bytes],
) -> Credential:
    """
    Look up the secret C{ref} describes.

    @param environ: the process environment (or a test's stand-in).
    @param readFile: reads a file's bytes, raising L{OSError}.
    """
    if ref is None:
        return Credential()
    if ref.kind == "passthrough":
        return Credential(passthrough=True)
    if ref.kind == "value":
        return _bearer(ref.ref, "the inline value")
    if ref.kind == "env":
        value = environ.get(ref.ref, "").strip()
        if not value:
            return Credential(problem=f"environment variable {ref.ref} is not set")
        return _bearer(value, f"environment variable {ref.ref}")
    try:
        text = readFile(ref.ref).decode("utf-8").strip()
    except OSError as e:
        return Credential(problem=f"cannot read {ref.ref}: {e.strerror or e}")
    except UnicodeDecodeError:
        return Credential(problem=f"{ref.ref} is not UTF-8 text")
    if not text:
        return Credential(problem=f"{ref.ref} is empty")
    return _bearer(text, ref.ref)
