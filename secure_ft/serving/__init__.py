"""Serving: answer predictions over HTTP from a verified bundle, and nothing else.

A server is started from an export bundle (see :mod:`secure_ft.release.export`). Before it opens a
port it reads every file of the bundle once and verifies those bytes exactly as ``secure-ft
verify`` does (:func:`~secure_ft.serving.bundle_loader.load_verified_bundle`, the one place
that decides whether a bundle may be served); only then does it import torch and
transformers (:mod:`.runtime`) and build the model from the verified bytes
(:mod:`secure_ft.text.snapshot_model`: weights from memory, never a map of the bundle's file) with
the same preprocessing the audits saw: the trained pooling, the trained sequence length and
the typo-correcting text front end. Nothing under the bundle folder is opened again.

It speaks the Open Inference Protocol (KServe v2 / Triton REST, :mod:`.protocol`) plus a
plain ``POST /predict``, gathers concurrent requests into fair forward passes
(:mod:`.batching`), bounds every request (:mod:`.limits`) and connection
(:mod:`.connection_guard`), checks an optional bearer token,
exports Prometheus metrics (:mod:`.metrics`) and writes an access log that never holds the
texts (:mod:`.access`). :func:`~secure_ft.serving.app.create_app` assembles the FastAPI
application; ``secure-ft serve`` runs it under uvicorn.

:mod:`.mlflow_pyfunc` is the MLflow pyfunc flavour of a bundle (verified on load, predicted by
:class:`~secure_ft.serving.classifier.BundleClassifier`); `secure_ft.pipeline.mlflow_registry`
logs it.

May import `secure_ft.records`, `secure_ft.text` and `secure_ft.release` (the bundle's checks);
only the pipeline, the commands and the entry points import it (``tests/test_architecture.py``).
Exports the loader and settings eagerly, the app and the classifier on first use.
"""

from secure_ft.serving.bundle_loader import VerifiedBundle, load_verified_bundle
from secure_ft.serving.settings import ServeSettings

__all__ = ["VerifiedBundle", "load_verified_bundle", "ServeSettings", "create_app", "BundleClassifier"]


def __getattr__(name):  # the app and the classifier pull in FastAPI / torch: import them on use
    if name == "create_app":
        from secure_ft.serving.app import create_app

        return create_app
    if name == "BundleClassifier":
        from secure_ft.serving.classifier import BundleClassifier

        return BundleClassifier
    raise AttributeError(name)
