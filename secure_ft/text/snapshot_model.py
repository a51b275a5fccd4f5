"""A trained model built from verified bytes: weights from memory, never a memory map of the bundle.

`secure_ft.text.models.load_trained_model` loads from a folder, and safetensors memory-maps the
weights file: a write to that file then changes a running model. Here the weights come from
the bytes a bundle snapshot verified (``safetensors.torch.load(bytes)``, a copy in memory),
and the parts that transformers only reads from files (config, tokenizer) and the spelling
front end are read from a private copy of the verified bytes (mode 0700, removed at once).
The result is the model `load_trained_model` gives on the same folder: same pooling, same
checks for missing weights; a probe saved with its encoder graph (``encoder_onnx/``) runs on an
ONNX Runtime session built from the graph's verified bytes (never a file), like
`secure_ft.text.text_classifier.TextClassifier` on the folder.
"""

from __future__ import annotations

from pathlib import Path

from secure_ft.errors import ModelError
from secure_ft.records.bundle_snapshot import BundleSnapshot
from secure_ft.text.models import WEIGHTS_FILE, _quiet_transformers, check_loaded_model, load_front_end
from secure_ft.text.onnx_encoder import (GRAPH_FILE, GRAPH_FOLDER, SETTINGS_FILE, OnnxEncoder, graph_classifier,
                                         read_settings)

#: the model folder inside a bundle
MODEL_FOLDER = "model"


def load_model_from_snapshot(snapshot: BundleSnapshot, device: str = "cpu", *, release_weights: bool = False):
    """Model (eval mode, on `device`), tokenizer and text front end (None if none) of a bundle's ``model/``.

    With `release_weights`, the weights' bytes leave the snapshot as soon as their tensors
    exist (a server keeps one copy of the weights, not two).

    Raises
    ------
    ModelError
        The model folder has no single ``model.safetensors``, or its parts do not load.
    """
    import safetensors.torch
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    where = snapshot.root / MODEL_FOLDER
    if f"{MODEL_FOLDER}/{WEIGHTS_FILE}" not in snapshot.files:
        raise ModelError(f"{where}: no {WEIGHTS_FILE}; a secure-ft model folder holds its weights in one safetensors file")
    graph_path = f"{MODEL_FOLDER}/{GRAPH_FOLDER}/{GRAPH_FILE}"
    with snapshot.private_copy(MODEL_FOLDER, exclude=(WEIGHTS_FILE, f"{GRAPH_FOLDER}/{GRAPH_FILE}")) as copy:
        try:
            config = AutoConfig.from_pretrained(copy, trust_remote_code=False)
            tokenizer = AutoTokenizer.from_pretrained(copy, trust_remote_code=False)
            front_end = load_front_end(copy)
        except ModelError as error:  # the front end's own message, naming the bundle's file
            raise ModelError(str(error).replace(str(copy), str(where))) from None
        except Exception as error:
            raise ModelError(f"{where}: cannot load the tokenizer or config: "
                             f"{str(error).replace(str(copy), str(where))}") from None
    try:
        model_class = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)]
        state = safetensors.torch.load(snapshot.files[f"{MODEL_FOLDER}/{WEIGHTS_FILE}"])  # tensors own their memory
        if release_weights:
            snapshot.release(f"{MODEL_FOLDER}/{WEIGHTS_FILE}")
        with _quiet_transformers():  # missing weights are checked below, with a clearer message
            model, loading = model_class.from_pretrained(None, config=config, state_dict=state,
                                                         output_loading_info=True)
    except Exception as error:
        raise ModelError(f"{where}: cannot load the trained model: {error}") from None
    check_loaded_model(model, loading, where)
    model = model.to(device).eval()
    if graph_path in snapshot.files:  # the probe's encoder graph: a session built from the verified bytes
        settings_path = f"{MODEL_FOLDER}/{GRAPH_FOLDER}/{SETTINGS_FILE}"
        settings = read_settings(snapshot.read(settings_path), snapshot.root / settings_path)
        model = graph_classifier(model, OnnxEncoder(snapshot.files[graph_path], settings, device=device))
        if release_weights:
            snapshot.release(graph_path)
    return model, tokenizer, front_end


def snapshot_model_digest(snapshot: BundleSnapshot) -> str:
    """The model identity (`secure_ft.records.model_identity.model_digest`) of the snapshot's ``model/`` bytes."""
    import hashlib

    from secure_ft.records.model_identity import HASH_FILE, manifest_digest

    manifest = [{"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                for path, data in sorted(snapshot.under(MODEL_FOLDER).items()) if path != HASH_FILE]
    return manifest_digest(manifest)
