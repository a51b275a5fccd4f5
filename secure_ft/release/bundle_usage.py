"""How to load and check a bundle, written from the facts the loader itself reads.

The bundle README's "How to use" and "Verification" sections are rendered here from
`BundleFacts`, which `bundle_facts` reads from the files a loader reads: the model folder's
``config.json`` (pooling, label names), its ``front_end/`` folder (the typo-correcting front
end every audit ran through), the report's ``run.model.max_length`` (what serving reads,
`secure_ft.serving.classifier.trained_max_length`) and the export module's signature file
name. So the README cannot describe a format, a pooling or a preprocessing that the bundle
does not have; a test executes its code block and compares it with ``secure-ft serve``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secure_ft.text.onnx_encoder import GRAPH_FILE, GRAPH_FOLDER
from secure_ft.text.pooling import MEAN_POOLINGS
from secure_ft.text.spelling import FOLDER as FRONT_END_FOLDER

SIGNATURE_FORMAT = "OpenSSF model-signing signature (sigstore bundle format, ECDSA P-256 key)"
# the README's code block is marked with this info string, so tests (and users) can find it
CODE_BLOCK_INFO = "python"
EXAMPLE_TEXT = "Replace this with the text to classify."


@dataclass(frozen=True)
class BundleFacts:
    """What a loader must know to reproduce the audited model's predictions.

    Attributes
    ----------
    signature_file, signer_key_file
        Names inside the bundle (``bundle.sig``, ``signer.pub``).
    pooling
        ``config.json``'s ``pooling`` (``cls``, ``mean`` or ``mean_normalized``), None when unset.
    front_end
        Whether ``model/front_end/`` holds a typo-correcting front end the audits applied.
    max_length
        Tokens read per text, as trained and audited.
    labels
        Class names in output order (``config.json``'s ``id2label``).
    encoder_graph
        Whether ``model/encoder_onnx/`` holds the exported encoder graph the probe was trained,
        audited and is served on (`secure_ft.text.onnx_encoder`).
    """

    signature_file: str
    signer_key_file: str
    pooling: str | None
    front_end: bool
    max_length: int | None
    labels: list[str]
    encoder_graph: bool = False


def bundle_facts(model_dir: Path, report: dict[str, Any], signature_file: str, signer_key_file: str) -> BundleFacts:
    """Read the facts from the model folder being bundled and the report bundled with it."""
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    id2label = config.get("id2label") or {}
    labels = [str(id2label.get(str(index), id2label.get(index, f"LABEL_{index}")))
              for index in range(len(id2label))]
    max_length = ((report.get("run") or {}).get("model") or {}).get("max_length")
    return BundleFacts(signature_file=signature_file, signer_key_file=signer_key_file,
                       pooling=config.get("pooling"), front_end=(Path(model_dir) / FRONT_END_FOLDER).is_dir(),
                       max_length=max_length if isinstance(max_length, int) else None, labels=labels,
                       encoder_graph=(Path(model_dir) / GRAPH_FOLDER / GRAPH_FILE).is_file())


def usage_code(facts: BundleFacts) -> str:
    """The Python a user runs in the bundle folder to get the audited predictions."""
    lines = [
        "from secure_ft.release.export import verify_bundle",
        "from secure_ft.text.models import load_trained_model, predict",
    ]
    if facts.encoder_graph:
        lines.append("from secure_ft.text.onnx_encoder import with_folder_graph")
    if facts.front_end:
        lines.append("from secure_ft.text.text_front_end import load_text_front_end")
    lines += [
        "",
        "verify_bundle(\".\")  # signed by a key you trust (`secure-ft trust add SIGNER.pub`), or refuses",
        "model, tokenizer = load_trained_model(\"model\")  # safetensors only; restores the pooling in config.json",
    ]
    if facts.encoder_graph:
        lines.append("model = with_folder_graph(model, \"model\")  # the encoder runs on model/encoder_onnx/, as audited")
    texts = "texts"
    lines.append(f"texts = [{EXAMPLE_TEXT!r}]")
    if facts.front_end:
        lines.append("front_end = load_text_front_end(\"model\")  # the typo correction every audit ran through")
        texts = "front_end(texts)"
    length = f", max_length={facts.max_length}" if facts.max_length else ""
    lines += [
        f"probabilities = predict(model, tokenizer, {texts}{length}).probabilities",
        "labels = [model.config.id2label[i] for i in probabilities.argmax(-1).tolist()]",
    ]
    return "\n".join(lines)


def usage_section(facts: BundleFacts) -> list[str]:
    """The README's "How to use" section (Markdown lines)."""
    lines = ["## How to use", "",
             "In this bundle's folder, with secure-ft installed, this gives the predictions the audits measured "
             "(and `secure-ft serve` serves):", "",
             f"```{CODE_BLOCK_INFO}", usage_code(facts), "```", ""]
    steps = []
    if facts.front_end:
        steps.append("every text first goes through the typo-correcting front end in `model/front_end/`; the "
                     "audits measured the model behind it, so skipping it runs unaudited behaviour")
    if facts.pooling in MEAN_POOLINGS:
        kind = "scaled to unit length" if facts.pooling == "mean_normalized" else "unscaled"
        steps.append(f"`config.json` says `\"pooling\": \"{facts.pooling}\"`: the classifier reads the mean of the "
                     f"token states, {kind}; plain `transformers` (`AutoModelForSequenceClassification`) reads the "
                     "[CLS] state instead and gives other predictions, so load with `load_trained_model`")
    elif facts.pooling:
        steps.append(f"`config.json` says `\"pooling\": \"{facts.pooling}\"`")
    if facts.encoder_graph:
        steps.append("the frozen encoder runs on ONNX Runtime from `model/encoder_onnx/encoder.onnx` (its "
                     "`settings.json` says whether it is int8-quantized); training, the audits and `secure-ft serve` "
                     "all ran that graph, so `with_folder_graph` puts it in front of the trained output layer")
    if facts.max_length:
        steps.append(f"the model was trained and audited on the first {facts.max_length} tokens of each text")
    if facts.labels:
        steps.append("outputs are in this class order: " + ", ".join(f"`{label}`" for label in facts.labels))
    lines += [f"- {step}" for step in steps]
    return lines


def verification_section(facts: BundleFacts) -> list[str]:
    """The README's "Verification" section (Markdown lines)."""
    return [
        "## Verification", "",
        f"`{facts.signature_file}` is an {SIGNATURE_FORMAT} over every other file in this bundle. "
        f"Check it before use with the signer's public key (`{facts.signer_key_file}` is a copy for reference, "
        "never proof of who signed):", "",
        "```", "secure-ft verify BUNDLE --public-key SIGNER.pub", "```", "",
        "or, without secure-ft:", "",
        "```", f"model_signing verify key BUNDLE --signature BUNDLE/{facts.signature_file} --public_key SIGNER.pub",
        "```",
    ]
