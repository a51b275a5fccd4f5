"""What an operator can set on a server: limits, batching, access, logging."""

from __future__ import annotations

import re
from dataclasses import dataclass

from secure_ft.errors import ConfigError

TOKEN_ENV = "SECURE_FT_SERVE_TOKEN"
_VERSION = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class ServeSettings:
    """Settings of one server; every limit is enforced per request.

    Attributes
    ----------
    model_name
        Name the model is served under (``/v2/models/{model_name}``).
    max_texts
        Most texts in one request (more: 413).
    max_chars
        Most characters in one text (more: 422).
    max_body_bytes
        Largest request body read (more: 413, before parsing).
    max_batch_size
        Most texts in one forward pass; 1 disables batching across requests.
    max_wait_ms
        Longest a batch waits for more requests once the worker is free; it stops earlier once
        it holds as many requests as the previous batch (a lone client is not delayed).
    token
        Bearer token every non-health endpoint requires; None: no check.
    log_texts
        Log request texts (off by default: texts are sensitive).
    max_queued_texts
        Most texts waiting or running at once; a request past it gets 503 with ``Retry-After``.
    max_connections
        Most open client connections; one more is answered 503 and closed at once, so a flood of
        idle connections cannot exhaust the process's open files.
    header_timeout_s
        Longest a client may take to send a request's headers (from connecting, or from the first
        byte of the next request on a kept-alive connection); then the connection is closed.
    body_timeout_s
        Longest a client may take to send a request's body once its headers arrived.
    keep_alive_s
        How long an idle kept-alive connection stays open.
    model_version
        The version served under ``/v2/models/{name}/versions/{version}`` (default: the
        first 12 hex digits of the model digest).
    """

    model_name: str
    max_texts: int = 64
    max_chars: int = 5000
    max_body_bytes: int = 2 * 1024 * 1024
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    token: str | None = None
    log_texts: bool = False
    max_queued_texts: int = 1024
    max_connections: int = 1000
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 5.0
    model_version: str | None = None

    def __post_init__(self) -> None:
        for field in ("max_texts", "max_chars", "max_body_bytes", "max_batch_size", "max_queued_texts",
                      "max_connections"):
            if getattr(self, field) < 1:
                raise ConfigError(f"serve: --{field.replace('_', '-')} must be at least 1, got {getattr(self, field)}")
        for field in ("header_timeout_s", "body_timeout_s", "keep_alive_s"):
            if not getattr(self, field) > 0:
                raise ConfigError(f"serve: --{field[:-2].replace('_', '-')} must be more than 0 seconds, "
                                  f"got {getattr(self, field)}")
        if self.max_queued_texts < self.max_texts:
            raise ConfigError(f"serve: --max-queued-texts ({self.max_queued_texts}) must be at least --max-texts "
                              f"({self.max_texts}), or no full request could ever be admitted")
        if self.model_version is not None and not _VERSION.fullmatch(self.model_version):
            raise ConfigError(f"serve: --model-version {self.model_version!r} must be 1-64 letters, digits, '.', "
                              "'_' or '-'")
        if self.max_wait_ms < 0:
            raise ConfigError(f"serve: --max-wait-ms must be 0 or more, got {self.max_wait_ms}")
        if self.token is not None and len(self.token) < 16:
            raise ConfigError("serve: the bearer token is shorter than 16 characters; use a long random one "
                              "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
        if not self.model_name or "/" in self.model_name:
            raise ConfigError(f"serve: model name {self.model_name!r} must be non-empty and contain no '/'")
