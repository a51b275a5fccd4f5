"""The MLflow pyfunc flavour of a signed bundle: verified on load, predicted by the serving classifier.

A registered secure-ft model is an MLflow model whose one artifact is the signed bundle,
unchanged. ``mlflow.pyfunc.load_model("models:/NAME/1")`` calls :meth:`BundleModel.load_context`,
which reads the downloaded bundle once, verifies those bytes as ``secure-ft verify`` does
(`secure_ft.serving.bundle_loader.load_verified_bundle`: the OpenSSF signature by a trusted key
over every file, then the gate's signed verdict) and builds the classifier ``secure-ft serve``
uses (`secure_ft.serving.classifier.BundleClassifier`) from the verified bytes: same spelling
front end, same tokenizer and sequence length, same probabilities. A tampered or self-signed
bundle is refused with `secure_ft.errors.BundleError` and nothing is loaded.

``predict`` takes texts (a list of strings, a pandas Series, or a DataFrame whose first or
``text`` column holds them) and returns a DataFrame with ``label`` (the most probable class)
and ``probabilities`` (one float per class, in the order of ``labels`` in the model metadata).

The signer's key comes from the loading machine's trust list (`secure_ft.release.keys`), or from
``model_config={"public_key": "signer.pub"}``; ``model_config={"device": "cuda"}`` picks the device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc

#: the artifact key (and folder name) of the bundle inside the MLflow model
BUNDLE_ARTIFACT = "bundle"


def input_texts(model_input: Any) -> list[str]:
    """The texts of a pyfunc input: list of str, numpy array, Series, or DataFrame (``text`` or its first column)."""
    import numpy as np
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        column = model_input["text"] if "text" in model_input.columns else model_input.iloc[:, 0]
        values = column.tolist()
    elif isinstance(model_input, (pd.Series, np.ndarray)):
        values = list(np.asarray(model_input).reshape(-1))
    elif isinstance(model_input, str):
        values = [model_input]
    else:
        values = list(model_input)
    bad = [index for index, value in enumerate(values) if not isinstance(value, str)]
    if bad:
        raise TypeError(f"predict takes texts; input {bad[0]} is a {type(values[bad[0]]).__name__}")
    return values


# MLflow warns (once, in a filter of its own) that predict has no type hints: the signature is stated
# at registration instead (texts in, label and probabilities out), which also accepts a DataFrame or Series
class BundleModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of one signed bundle (see the module docstring)."""

    def load_context(self, context) -> None:
        from secure_ft.serving.bundle_loader import load_verified_bundle
        from secure_ft.serving.classifier import BundleClassifier

        settings = dict(context.model_config or {})
        verified = load_verified_bundle(Path(context.artifacts[BUNDLE_ARTIFACT]), settings.get("public_key"))
        self.classifier = BundleClassifier.from_bundle(verified, device=settings.get("device", "cpu"))
        self.model_sha256 = verified.model_sha256

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        import pandas as pd

        texts = input_texts(model_input)
        probabilities = self.classifier.probabilities(texts)
        return pd.DataFrame({"label": self.classifier.label_names(probabilities),
                             "probabilities": [row.tolist() for row in probabilities]})
