"""What an operator can set on a server: limits, batching, access, logging."""

from __future__ import annotations

from dataclasses import dataclass

from secure_ft.errors import ConfigError

TOKEN_ENV = "SECURE_FT_SERVE_TOKEN"


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
    """

    model_name: str
    max_texts: int = 64
    max_chars: int = 5000
    max_body_bytes: int = 2 * 1024 * 1024
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    token: str | None = None
    log_texts: bool = False

    def __post_init__(self) -> None:
        for field in ("max_texts", "max_chars", "max_body_bytes", "max_batch_size"):
            if getattr(self, field) < 1:
                raise ConfigError(f"serve: --{field.replace('_', '-')} must be at least 1, got {getattr(self, field)}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"serve: --max-wait-ms must be 0 or more, got {self.max_wait_ms}")
        if self.token is not None and len(self.token) < 16:
            raise ConfigError("serve: the bearer token is shorter than 16 characters; use a long random one "
                              "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
        if not self.model_name or "/" in self.model_name:
            raise ConfigError(f"serve: model name {self.model_name!r} must be non-empty and contain no '/'")
