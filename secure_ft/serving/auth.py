"""The optional bearer-token check (``--token-file`` or ``$SECURE_FT_SERVE_TOKEN``)."""

from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path

from starlette.requests import Request

from secure_ft.errors import ConfigError
from secure_ft.serving.limits import RequestRejected
from secure_ft.serving.settings import TOKEN_ENV


def read_token(token_file: str | None) -> str | None:
    """The token from `token_file` (first line), else from ``$SECURE_FT_SERVE_TOKEN``, else None."""
    if token_file:
        path = Path(token_file)
        try:
            mode = path.stat().st_mode
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: cannot read the token file ({error}); pass a readable file to --token-file") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{path}: the token file is readable by other users; run `chmod 600 {path}`")
        if not token:
            raise ConfigError(f"{path}: the token file is empty; write the bearer token on its first line")
        return token
    return os.environ.get(TOKEN_ENV) or None


def require_bearer(request: Request, token: str | None) -> None:
    """Raise 401 unless the request carries ``Authorization: Bearer <token>`` (constant-time compare)."""
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # compare_digest takes as long for any wrong token of a given length: no timing oracle
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise RequestRejected(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
