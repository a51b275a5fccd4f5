"""Bounds on what one request may carry, checked before any text reaches the model.

Too many texts or too large a body: 413. Bad shape, a text that is empty, not a string or
too long: 422. A body that is not UTF-8 or not JSON: 400. A body not declared
``application/json``, or compressed: 415. Error messages name the limit and its server
option, never the text. A client that disconnects while its body is read raises
:class:`ClientGone` (no answer is sent).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import ClientDisconnect, Request

from secure_ft.serving.settings import ServeSettings


class RequestRejected(Exception):
    """A request the server refuses; answered with `status_code` and ``{"error": message}``."""

    def __init__(self, status_code: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status_code, self.message, self.headers = status_code, message, headers or {}


class ClientGone(Exception):
    """The client disconnected before the answer; nothing is sent back."""


def require_json(request: Request) -> None:
    """415 unless the request declares ``Content-Type: application/json`` (any charset parameter)."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        shown = media_type or "none"
        raise RequestRejected(415, f"Content-Type {shown!r} is not accepted; send the body as application/json "
                                   "(tritonclient in JSON mode: headers={'Content-Type': 'application/json'})")
    require_identity_encoding(request)


def require_identity_encoding(request: Request) -> None:
    """415 for a compressed body: its size after decompression could not be bounded before reading."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise RequestRejected(415, f"Content-Encoding {encoding!r} is not accepted; send the body uncompressed")


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request's body, read no further than `max_bytes` (413 past it; ClientGone on a disconnect)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestRejected(400, "Content-Length is not a number")
        if int(declared) > max_bytes:
            raise RequestRejected(413, f"request body of {declared} bytes exceeds the limit of {max_bytes} bytes "
                                       "(server option --max-body-bytes)")
    body = bytearray()
    try:
        async for chunk in request.stream():  # also bounds chunked uploads that declare no length
            body += chunk
            if len(body) > max_bytes:
                raise RequestRejected(413, f"request body exceeds the limit of {max_bytes} bytes "
                                           "(server option --max-body-bytes)")
    except ClientDisconnect:
        raise ClientGone() from None
    return bytes(body)


def parse_json(body: bytes) -> Any:
    """`body` as JSON (400 when it is not UTF-8 or not JSON)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestRejected(400, f"request body is not valid UTF-8 (byte {error.start})") from None
    try:
        return json.loads(text)
    except ValueError as error:
        raise RequestRejected(400, f"request body is not valid JSON ({error.msg} at line {error.lineno}, "
                                   f"column {error.colno})") from None
    except RecursionError:  # e.g. a megabyte of '['
        raise RequestRejected(400, "request body nests JSON too deeply") from None


async def read_json_body(request: Request, max_bytes: int) -> Any:
    """The request's JSON body, read no further than `max_bytes`."""
    return parse_json(await read_body(request, max_bytes))


def checked_texts(texts: list[Any], settings: ServeSettings) -> list[str]:
    """`texts` when every one is a non-empty string within the limits; raises RequestRejected otherwise."""
    if not texts:
        raise RequestRejected(422, "no texts in the request; send at least one")
    if len(texts) > settings.max_texts:
        raise RequestRejected(413, f"{len(texts)} texts in one request exceed the limit of {settings.max_texts} "
                                   "(server option --max-texts); split the request")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestRejected(422, f"text {index} is a {type(text).__name__}, not a string")
        if not text.strip():
            raise RequestRejected(422, f"text {index} is empty")
        if len(text) > settings.max_chars:
            raise RequestRejected(422, f"text {index} has {len(text)} characters, more than the limit of "
                                       f"{settings.max_chars} (server option --max-chars)")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escaped in the JSON (\ud800)
            raise RequestRejected(400, f"text {index} is not valid Unicode (unpaired surrogate)") from None
    return texts
