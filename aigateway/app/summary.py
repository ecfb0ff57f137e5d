"""
What the gateway tells at its start, and when tracing changes on a reload:
where it listens, which routes it serves and where its spans go, in a few
lines, with no secret (no credential, no collector header, no user or
password in a URL).
"""

from __future__ import annotations

from typing import Sequence
from urllib.parse import urlsplit, urlunsplit

from aigateway.config import Config, TracingConfig

__all__ = ["describeRoutes", "describeStart", "describeTracing", "safeURL"]


def safeURL(url: str) -> str:
    """
    C{url} without a user, password, query or fragment: fit for a log.
    """
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def describeTracing(tracing: TracingConfig, url: str | None) -> str:
    """
    One line: whether tracing is on and, if so, where spans go and what
    they hold.

    @param url: where spans are sent, or L{None} when no span is made.
    """
    if url is None:
        return "tracing: off (no tracing.otlp endpoint)"
    details = [f"service {tracing.serviceName}", f"sampling {tracing.sampleRatio:g}"]
    if tracing.captureContent:
        details.append("content captured")
    if tracing.legacyAttributes:
        details.append("legacy attributes")
    return f"tracing: spans to {safeURL(url)} ({', '.join(details)})"


def describeRoutes(config: Config) -> list[str]:
    """
    One line per route: its name, what it matches, its backend and the
    backend's provider and URL.
    """
    lines = []
    for route in config.routes:
        match = route.match
        where = f"path {match.path}" if match.path is not None else f"pathPrefix {match.pathPrefix}"
        if match.methods:
            where += f" {','.join(sorted(match.methods))}"
        backend = route.backend
        lines.append(f"route {route.name}: {where} -> backend {backend.name} "
                     f"({backend.provider}, {safeURL(backend.url)})")
    return lines or ["no routes: every request is answered 404"]


def describeStart(config: Config, listen: Sequence[str], admin: Sequence[str],
                  tracesURL: str | None, version: str, workers: int = 1) -> list[str]:
    """
    The lines the gateway logs once it listens.

    @param listen: the gateway's endpoint strings.
    @param admin: the admin site's endpoint strings (none: no admin).
    @param tracesURL: where spans are sent, or L{None}.
    @param workers: how many processes serve.
    """
    processes = f" in {workers} workers" if workers > 1 else ""
    lines = [f"aigateway {version} serving on {', '.join(listen) or 'nothing'}{processes}; "
             f"admin on {', '.join(admin) if admin else 'nothing (no admin.listen)'}"]
    lines += describeRoutes(config)
    if config.state.redis is not None:
        lines.append(f"rate limits in Redis at {config.state.redis.url} "
                     f"(keys under {config.state.redis.keyPrefix!r}; while it does not answer: "
                     f"{config.state.onError})")
    lines.append(describeTracing(config.tracing, tracesURL))
    return lines
