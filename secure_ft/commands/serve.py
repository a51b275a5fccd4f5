"""CLI: ``serve`` — answer predictions from a verified bundle over HTTP (Open Inference Protocol).

Exit codes: 4 the bundle failed verification or the release policy refuses it (nothing listens);
2 bad options; 0 stopped.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import re
import time
from pathlib import Path

from secure_ft.errors import ConfigError

log = logging.getLogger("secure_ft.serving")


def cmd_serve(args: argparse.Namespace) -> int:
    from secure_ft.records.policy import describe_policy
    from secure_ft.serving.auth import read_token
    from secure_ft.serving.bundle_loader import load_verified_bundle
    from secure_ft.serving.settings import ServeSettings

    _check_tls(args.ssl_certfile, args.ssl_keyfile)
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"serve: --threads must be at least 1, got {args.threads}")
    settings = ServeSettings(
        model_name=args.model_name or _default_model_name(args.bundle), max_texts=args.max_texts,
        max_chars=args.max_chars, max_body_bytes=args.max_body_bytes, max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms, token=read_token(args.token_file), log_texts=args.log_texts,
        max_queued_texts=args.max_queued_texts, max_connections=args.max_connections,
        header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout, keep_alive_s=args.keep_alive,
        model_version=args.model_version,
    )
    from secure_ft.serving.connection_guard import check_open_file_limit

    check_open_file_limit(settings)
    started = time.perf_counter()
    # first read the bundle once and verify those bytes, before torch is even imported: a refused bundle exits 4
    # within a second and never listens; everything served is built from the verified bytes, never the folder
    bundle = load_verified_bundle(args.bundle, args.public_key, args.release_policy, args.org_root_pub)
    verified = time.perf_counter()
    for line in bundle.release_lines:  # the release policy applied, or that none was
        log.info("%s", line)

    from secure_ft.serving.runtime import import_model_runtime

    import_model_runtime(args.threads)
    from secure_ft.serving.app import create_app
    from secure_ft.serving.classifier import BundleClassifier

    imported = time.perf_counter()
    classifier = BundleClassifier.from_bundle(bundle, args.device)
    app = create_app(classifier, bundle, settings)
    log.info("bundle %s verified in %.2f s (policy %s, key SHA-256 %s…); torch and transformers imported in %.2f s; "
             "model loaded on %s in %.2f s", bundle.bundle_dir, verified - started,
             describe_policy(bundle.policy_name, bundle.policy_sha256),
             bundle.public_key_sha256[:16], imported - verified, classifier.device, time.perf_counter() - imported)
    _warn_about_exposure(args, settings.token is not None)

    import uvicorn

    from secure_ft.serving.connection_guard import guarded_protocol

    config = uvicorn.Config(app, host=args.host, port=args.port, ssl_certfile=args.ssl_certfile,
                            ssl_keyfile=args.ssl_keyfile, log_config=None, access_log=False, server_header=False,
                            timeout_graceful_shutdown=10, timeout_keep_alive=settings.keep_alive_s,
                            http=guarded_protocol(settings, app.state.metrics), ws="none", lifespan="on")
    uvicorn.Server(config).run()
    return 0


def _default_model_name(bundle: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", Path(bundle).resolve().name) or "model"


def _check_tls(certfile: str | None, keyfile: str | None) -> None:
    if bool(certfile) != bool(keyfile):
        raise ConfigError("serve: TLS needs both --ssl-certfile and --ssl-keyfile")
    for path in (certfile, keyfile):
        if path and not Path(path).is_file():
            raise ConfigError(f"{path}: TLS file not found")


def _warn_about_exposure(args: argparse.Namespace, has_token: bool) -> None:
    if args.log_texts:
        log.warning("--log-texts: request texts are written to the log; they may be sensitive")
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback and not (args.ssl_certfile and has_token):
        log.warning("listening on %s without %s: put the server behind TLS and a bearer token", args.host,
                    " and ".join(name for name, on in (("TLS", args.ssl_certfile), ("a token", has_token)) if not on))


def register(subparsers) -> None:
    """Add ``serve`` to the ``secure-ft`` command."""
    from secure_ft.commands.release import add_release_policy_arguments
    from secure_ft.serving.settings import TOKEN_ENV, ServeSettings

    defaults = ServeSettings(model_name="model")
    serve = subparsers.add_parser(
        "serve", help="serve a verified bundle over HTTP (Open Inference Protocol / KServe v2)",
        description="Verify BUNDLE as `secure-ft verify` does, then serve its model. A bundle that fails "
                    "verification exits with code 4 before any port is opened.")
    serve.add_argument("bundle", metavar="BUNDLE", help="export bundle folder")
    serve.add_argument("--public-key", metavar="KEY",
                       help="signer's public key PEM, or a folder of them (default: your trust list, "
                            "`secure-ft trust add`); never the copy inside the bundle")
    add_release_policy_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    serve.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda or mps")
    serve.add_argument("--threads", type=int, metavar="N",
                       help="torch threads per forward pass (default: torch's choice, one per core); set it below "
                            "the free cores when other processes share the machine")
    serve.add_argument("--model-name", help="name in /v2/models/NAME (default: the bundle folder's name)")
    serve.add_argument("--max-texts", type=int, default=defaults.max_texts,
                       help=f"most texts per request; more: 413 (default: {defaults.max_texts})")
    serve.add_argument("--max-chars", type=int, default=defaults.max_chars,
                       help=f"most characters per text; more: 422 (default: {defaults.max_chars})")
    serve.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes,
                       help=f"largest request body; larger: 413 (default: {defaults.max_body_bytes})")
    serve.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size,
                       help=f"most texts per forward pass; 1 turns batching off (default: {defaults.max_batch_size})")
    serve.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms,
                       help=f"how long a batch waits for more requests (default: {defaults.max_wait_ms})")
    serve.add_argument("--max-queued-texts", type=int, default=defaults.max_queued_texts,
                       help=f"most texts waiting or running; past it: 503 with Retry-After "
                            f"(default: {defaults.max_queued_texts})")
    serve.add_argument("--max-connections", type=int, default=defaults.max_connections,
                       help=f"most open client connections; one more is answered 503 and closed "
                            f"(default: {defaults.max_connections})")
    serve.add_argument("--header-timeout", type=float, default=defaults.header_timeout_s, metavar="SECONDS",
                       help=f"close a connection whose request headers take longer (default: {defaults.header_timeout_s})")
    serve.add_argument("--body-timeout", type=float, default=defaults.body_timeout_s, metavar="SECONDS",
                       help=f"close a connection whose request body takes longer (default: {defaults.body_timeout_s})")
    serve.add_argument("--keep-alive", type=float, default=defaults.keep_alive_s, metavar="SECONDS",
                       help=f"close an idle kept-alive connection after this long (default: {defaults.keep_alive_s})")
    serve.add_argument("--model-version", help="version in /v2/models/NAME/versions/VERSION (default: the first 12 "
                                               "hex digits of the model digest)")
    serve.add_argument("--token-file", metavar="FILE",
                       help=f"require `Authorization: Bearer TOKEN` (token on the file's first line; "
                            f"default: ${TOKEN_ENV} when set); health endpoints stay open")
    serve.add_argument("--ssl-certfile", metavar="PEM", help="serve HTTPS with this certificate (chain)")
    serve.add_argument("--ssl-keyfile", metavar="PEM", help="private key of --ssl-certfile")
    serve.add_argument("--log-texts", action="store_true", help="log request texts (off: texts are never logged)")
    serve.set_defaults(handler=cmd_serve, interrupted_hint="serve: stopped")
