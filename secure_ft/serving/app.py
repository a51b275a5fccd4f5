"""The FastAPI application: Open Inference Protocol routes, ``/predict``, model card, metrics.

:func:`create_app` takes an already verified and loaded model; it never reads the bundle
itself. Every error is answered as ``{"error": message}`` (the protocol's error shape), and
no message, log line or metric holds a request's texts unless ``log_texts`` is set.

Prediction requests must say ``Content-Type: application/json`` (415 otherwise), so a web
page cannot make a browser post a form or ``text/plain`` to an unprotected server; the
binary tensor extension is the exception (its ``Inference-Header-Content-Length`` header
already makes a browser ask first). A request that would queue more texts than the limit
gets 503 with ``Retry-After``. A client that goes away is answered nothing, counted in
``secure_ft_client_disconnects`` and logged in its one access-log line (status 499), and
its queued texts are dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from secure_ft import __version__
from secure_ft.serving import protocol
from secure_ft.serving.access import CLIENT_CLOSED_REQUEST, TEXTS_KEY, AccessLog, request_id
from secure_ft.serving.auth import require_bearer
from secure_ft.serving.batching import BatcherOverloaded, BatcherStopped, DynamicBatcher
from secure_ft.serving.bundle_loader import VerifiedBundle
from secure_ft.serving.card import read_model_card
from secure_ft.serving.classifier import BundleClassifier
from secure_ft.serving.limits import (ClientGone, RequestRejected, checked_texts, parse_json, read_body,
                                      read_json_body, require_identity_encoding, require_json)
from secure_ft.serving.metrics import ServerMetrics
from secure_ft.serving.settings import ServeSettings

log = logging.getLogger(__name__)
text_log = logging.getLogger("secure_ft.serving.texts")


def create_app(classifier: BundleClassifier, bundle: VerifiedBundle, settings: ServeSettings) -> FastAPI:
    """The server application for one verified, loaded bundle.

    Parameters
    ----------
    classifier
        The bundle's model (see :meth:`BundleClassifier.from_bundle`).
    bundle
        What verification established (see :func:`~secure_ft.serving.load_verified_bundle`).
    settings
        Limits, batching, token and logging.
    """
    metrics = ServerMetrics()
    batcher = DynamicBatcher(classifier.probabilities, settings.max_batch_size, settings.max_wait_ms,
                             on_batch=metrics.batch_size.observe, max_queued_texts=settings.max_queued_texts,
                             cost=classifier.estimated_tokens, max_batch_cost=classifier.batch_token_budget())
    card = read_model_card(bundle, classifier.labels)
    version = settings.model_version or bundle.model_sha256[:12]
    metadata = protocol.model_metadata(settings.model_name, len(classifier.labels), version).model_dump()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    # no /docs or /openapi.json: the server describes itself only through the protocol
    app = FastAPI(title="secure-ft", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.metrics, app.state.batcher = metrics, batcher

    def guard(request: Request) -> None:
        require_bearer(request, settings.token)

    def known_model(name: str, model_version: str | None = None) -> None:
        if name != settings.model_name:
            raise RequestRejected(404, f"model {name!r} is not served here")
        if model_version is not None and model_version != version:
            raise RequestRejected(404, f"model {name!r} has no version {model_version!r}; this server has {version!r}")

    async def classify(request: Request, texts: list[Any]) -> tuple[list[str], list[list[float]]]:
        texts = checked_texts(texts, settings)
        request.scope[TEXTS_KEY] = len(texts)
        metrics.request_texts.observe(len(texts))
        if settings.log_texts:
            text_log.info("request_id=%s texts=%s", request_id(request.scope), json.dumps(texts, ensure_ascii=False))
        try:
            rows = await until_disconnected(request, batcher.submit(texts))
        except BatcherStopped:
            raise RequestRejected(503, "the server is shutting down; retry on another replica") from None
        except BatcherOverloaded:
            metrics.overloaded.inc()
            raise RequestRejected(503, f"the server has {settings.max_queued_texts} texts queued already (server "
                                       "option --max-queued-texts); retry shortly", headers={"Retry-After": "1"}) from None
        except ClientGone:
            raise
        except Exception as error:  # the forward pass failed: log the kind, never the texts
            rid = request_id(request.scope)
            log.error("request_id=%s forward pass failed: %s", rid, type(error).__name__, exc_info=error)
            raise RequestRejected(500, f"internal error (request id {rid})") from None
        return classifier.label_names(rows), rows.tolist()

    # -- health and metadata (Open Inference Protocol) ------------------------------------

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        if not batcher.running:
            return JSONResponse({"ready": False}, status_code=503)
        return {"ready": True}

    @app.get("/v2")
    async def server_metadata(request: Request):
        guard(request)
        return protocol.ServerMetadata(name="secure-ft", version=__version__,
                                       extensions=["binary_tensor_data"]).model_dump()

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{model_version}")
    async def model_metadata(name: str, request: Request, model_version: str | None = None):
        guard(request)
        known_model(name, model_version)
        return metadata

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{model_version}/ready")
    async def model_ready(name: str, request: Request, model_version: str | None = None):
        guard(request)
        known_model(name, model_version)
        if not batcher.running:
            return JSONResponse({"name": name, "ready": False}, status_code=503)
        return {"name": name, "ready": True}

    # -- inference ------------------------------------------------------------------------

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{model_version}/infer")
    async def infer(name: str, request: Request, model_version: str | None = None):
        guard(request)
        known_model(name, model_version)
        header_length = request.headers.get("inference-header-content-length")
        binary = b""
        try:
            if header_length is None:
                require_json(request)
                body = await read_json_body(request, settings.max_body_bytes)
            else:  # the binary tensor data extension: a JSON header, then the raw tensors
                require_identity_encoding(request)
                header, binary = protocol.split_binary_body(await read_body(request, settings.max_body_bytes),
                                                            header_length)
                body = parse_json(header)
            message = protocol.InferenceRequest.model_validate(body)
            texts = protocol.texts_of(message, binary)
        except ValidationError as error:
            raise RequestRejected(422, f"not an inference request: {_describe(error)}") from None
        except protocol.ProtocolError as error:
            raise RequestRejected(422, str(error)) from None
        labels, probabilities = await classify(request, texts)
        response, raw = protocol.inference_response(settings.model_name, version, message, labels, probabilities)
        document = json.dumps(response.model_dump(exclude_none=True), separators=(",", ":")).encode()
        if not raw:
            return Response(document, media_type="application/json")
        return Response(document + raw, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(len(document))})

    @app.post("/predict")
    async def predict(request: Request):
        guard(request)
        require_json(request)
        body = await read_json_body(request, settings.max_body_bytes)
        if not isinstance(body, dict) or set(body) != {"texts"} or not isinstance(body["texts"], list):
            raise RequestRejected(422, 'expected a JSON object {"texts": ["...", ...]}')
        labels, probabilities = await classify(request, body["texts"])
        return {"labels": labels, "probabilities": probabilities, "classes": classifier.labels}

    # -- evidence and operations ----------------------------------------------------------

    @app.get("/model-card")
    async def model_card(request: Request):
        guard(request)
        return {"model_name": settings.model_name, **card}

    @app.get("/metrics")
    async def prometheus_metrics(request: Request):
        guard(request)
        metrics.queued_texts.set(batcher.queued_texts)
        return Response(metrics.render(), media_type=metrics.content_type)

    # -- errors: always {"error": message} ------------------------------------------------

    @app.exception_handler(RequestRejected)
    async def rejected(request: Request, error: RequestRejected):
        return JSONResponse({"error": error.message}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, error: ClientGone):
        # nobody is listening: the access log line (status 499) and the metric record it, no traceback
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code,
                            headers=getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        return JSONResponse({"error": "invalid request"}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception):
        rid = request_id(request.scope)
        log.error("request_id=%s failed: %s", rid, type(error).__name__, exc_info=error)
        return JSONResponse({"error": f"internal error (request id {rid})"}, status_code=500)

    app.add_middleware(AccessLog, metrics=metrics)
    return app


async def until_disconnected(request: Request, work):
    """Await `work` unless the client goes away first; then cancel it (its queued texts are dropped).

    Raises ClientGone when the client disconnected. Called once the body has been read, so the
    next ASGI message can only be the disconnect.
    """
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(request.receive())
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        if watch.result().get("type") == "http.disconnect":
            task.cancel()
            raise ClientGone()
        return await task
    finally:
        for pending in (task, watch):
            if not pending.done():
                pending.cancel()


def _describe(error: ValidationError) -> str:
    """Where and what, without echoing the submitted values (they may be texts)."""
    first = error.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"
