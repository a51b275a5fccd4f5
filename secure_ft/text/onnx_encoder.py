"""The frozen encoder on ONNX Runtime: one exported graph for training, audits and serving.

Under ``model.transfer: probe`` the encoder never trains, so its forward pass — every
training text and augmentation copy, every query of the robustness audit, every served
request — can run on an inference engine instead of torch. The encoder and its pooler
(`secure_ft.text.pooling`: the masked mean, scaled to unit length) are exported once from the base
model with torch's TorchScript exporter (offline, no extra package) and, with
``model.quantize: int8``, quantized dynamically (int8 weights, per-tensor, ONNX Runtime's
``quantize_dynamic``). The graph is cached per user, keyed by the base model's digest and the
export settings (`encoder_graph`), and written atomically.

The graph is part of the trained model: `secure_ft.text.models.save_trained_model` copies the
folder `encoder_onnx/` (``encoder.onnx`` and ``settings.json``, which records quantization,
opset and exporter) into the model folder, so the model digest — and with it the gate, the
signed export and serving — covers it. Whoever loads a model folder holding it
(`secure_ft.text.text_classifier.TextClassifier`, `secure_ft.text.snapshot_model`) runs the same graph
(`GraphSequenceClassifier`): the audited model is the served model. Serving builds the session
from the verified snapshot's bytes, never from the bundle folder.

Threads: one session uses as many intra-op threads as torch does in the process
(``torch.get_num_threads()``, i.e. the cores, or what an attack worker was given), and one
inter-op thread, so parallel attack workers do not oversubscribe the cores; idle threads sleep
rather than spin-wait.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from secure_ft.errors import ModelError

log = logging.getLogger(__name__)

#: the folder a model folder holds its encoder graph in, and its two files
GRAPH_FOLDER = "encoder_onnx"
GRAPH_FILE = "encoder.onnx"
SETTINGS_FILE = "settings.json"
GRAPH_FORMAT = "secure-ft/onnx-encoder/v1"
OPSET = 17
QUANTIZATIONS = ("none", "int8")
OUTPUT_NAME = "sentence_embedding"


def cache_root() -> Path:
    """The per-user folder exported graphs are cached in (``$SECURE_FT_CACHE`` or the XDG cache folder)."""
    configured = os.environ.get("SECURE_FT_CACHE")
    if configured:
        return Path(configured) / "onnx-encoders"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "secure-ft" / "onnx-encoders"


def graph_settings(base_sha256: str, pooling: str, quantize: str, input_names: list[str]) -> dict[str, Any]:
    """What an exported graph is: the base encoder, the pooling, the exporter and the quantization."""
    if quantize not in QUANTIZATIONS:
        raise ModelError(f"model.quantize: {quantize!r} is not one of {', '.join(QUANTIZATIONS)}")
    settings: dict[str, Any] = {
        "format": GRAPH_FORMAT, "base_encoder_sha256": base_sha256, "pooling": pooling,
        "inputs": list(input_names), "output": OUTPUT_NAME, "opset": OPSET,
        "exporter": f"torch {torch.__version__.split('+')[0]} torch.onnx.export(dynamo=False)",
        "quantize": quantize,
    }
    if quantize == "int8":
        import onnxruntime

        settings["quantization"] = {"method": "onnxruntime.quantization.quantize_dynamic",
                                    "onnxruntime": onnxruntime.__version__, "weight_type": "QInt8",
                                    "per_channel": False, "reduce_range": False}
    return settings


def settings_key(settings: dict[str, Any]) -> str:
    """The cache key of a graph: SHA-256 of its canonical settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


class _PooledEncoder(nn.Module):
    """The base encoder and its (mean) pooler as one module: token ids in, sentence embedding out."""

    def __init__(self, encoder: nn.Module, input_names: list[str]):
        super().__init__()
        self.encoder = encoder
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.encoder(**dict(zip(self.input_names, inputs))).pooler_output


def encoder_graph(model: nn.Module, tokenizer, base_sha256: str, pooling: str, quantize: str = "none",
                  cache: Path | None = None) -> Path:
    """The folder holding the exported graph of `model`'s encoder and pooler (exported on first use).

    Parameters
    ----------
    model
        The transformers classifier whose base encoder has its pooling installed
        (`secure_ft.text.models.load_base_model` with ``transfer: probe``).
    tokenizer
        Its tokenizer: names the inputs the graph takes.
    base_sha256
        The base model folder's digest (`secure_ft.training.probe.encoder_sha256`): the cache key.
    pooling, quantize
        Recorded in the settings; ``quantize`` ``"int8"`` quantizes the weights dynamically.
    cache
        Cache folder (default `cache_root`).
    """
    input_names = [name for name in ("input_ids", "attention_mask", "token_type_ids")
                   if name in tokenizer.model_input_names]
    settings = graph_settings(base_sha256, pooling, quantize, input_names)
    folder = (cache or cache_root()) / settings_key(settings)[:32]
    if (folder / GRAPH_FILE).is_file() and (folder / SETTINGS_FILE).is_file():
        try:
            if json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8")) == settings:
                return folder
        except ValueError:
            pass  # a damaged cache entry: export again below
    log.info("exporting the frozen encoder to ONNX (%s) into %s, once per base model", quantize, folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        _export(model, tokenizer, input_names, temp / "fp32.onnx")
        if quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(temp / "fp32.onnx", temp / GRAPH_FILE, weight_type=QuantType.QInt8,
                             per_channel=False, reduce_range=False)
            (temp / "fp32.onnx").unlink()
        else:
            os.replace(temp / "fp32.onnx", temp / GRAPH_FILE)
        (temp / SETTINGS_FILE).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        temp.chmod(0o755)
        if folder.exists():  # a damaged entry; another process may have just written a good one
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(temp, folder)
    except OSError as error:
        shutil.rmtree(temp, ignore_errors=True)
        if (folder / GRAPH_FILE).is_file():  # a concurrent export won the rename
            return folder
        raise ModelError(f"{folder}: cannot write the exported encoder ({error}); set SECURE_FT_CACHE to a "
                         "writable folder") from None
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return folder


def _export(model: nn.Module, tokenizer, input_names: list[str], target: Path) -> None:
    import warnings

    encoder = getattr(model, model.base_model_prefix)
    module = _PooledEncoder(encoder, input_names).eval()
    sample = tokenizer(["a short text", "a somewhat longer text to trace the graph with"], padding=True,
                       return_tensors="pt")
    args = tuple(sample[name] for name in input_names)
    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks of the pooler
        torch.onnx.export(module, args, str(target), dynamo=False, input_names=input_names,
                          output_names=[OUTPUT_NAME], dynamic_axes={**axes, OUTPUT_NAME: {0: "batch"}},
                          opset_version=OPSET, do_constant_folding=True)


def read_settings(data: bytes, where: str | Path) -> dict[str, Any]:
    """A graph's ``settings.json``, checked (ModelError naming `where` otherwise)."""
    try:
        settings = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ModelError(f"{where}: not valid JSON ({error}); export the model again") from None
    if not isinstance(settings, dict) or settings.get("format") != GRAPH_FORMAT or not settings.get("inputs"):
        raise ModelError(f"{where}: not a {GRAPH_FORMAT} settings file; export the model again")
    return settings


def providers(device: str = "auto") -> list[str]:
    """ONNX Runtime execution providers: CUDA when present (and not refused by `device`), then CPU."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if device != "cpu" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxEncoder:
    """An ONNX Runtime session of an exported encoder graph: token tensors in, sentence embeddings out.

    Parameters
    ----------
    graph
        The graph's bytes (from a verified snapshot) or its file.
    settings
        Its ``settings.json`` (`read_settings`).
    device
        ``"cpu"`` for the CPU provider only; anything else takes CUDA when ONNX Runtime has it.
    threads
        Intra-op threads; default torch's (the cores, or what an attack worker was given).
    """

    def __init__(self, graph: bytes | Path, settings: dict[str, Any], *, device: str = "auto",
                 threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # idle threads sleep instead of spin-waiting: on shared cores (attack workers, other jobs) spinning
        # threads take the cores the working ones need (serving saw ≈30× slower passes so with torch's OpenMP)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = graph if isinstance(graph, bytes) else str(graph)
        try:
            self.session = onnxruntime.InferenceSession(source, sess_options=options, providers=providers(device))
        except Exception as error:
            raise ModelError(f"cannot load the encoder graph ({error}); the model's {GRAPH_FOLDER}/{GRAPH_FILE} is "
                             "damaged — train or export the model again") from None
        self.settings = settings
        self.input_names = list(settings["inputs"])
        self.quantize = settings.get("quantize", "none")

    @classmethod
    def from_folder(cls, folder: str | Path, **options) -> "OnnxEncoder":
        """The encoder of a graph folder (a model folder's ``encoder_onnx/`` or a cache entry)."""
        folder = Path(folder)
        settings = read_settings((folder / SETTINGS_FILE).read_bytes(), folder / SETTINGS_FILE)
        return cls((folder / GRAPH_FILE).read_bytes(), settings, **options)

    def __call__(self, **inputs: torch.Tensor) -> torch.Tensor:
        """Sentence embeddings (batch, hidden) of tokenizer outputs (other keys are ignored)."""
        feeds = {name: np.ascontiguousarray(inputs[name].detach().cpu().numpy(), dtype=np.int64)
                 for name in self.input_names}
        return torch.from_numpy(self.session.run([OUTPUT_NAME], feeds)[0])


class _Output:
    """What ``model(**batch)`` returns for `predict` and the attack wrapper: ``.logits``."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits


class GraphSequenceClassifier(nn.Module):
    """A saved probe as it runs: the exported encoder graph, then the trained output layer.

    Called like a transformers sequence classifier (``model(**tokenizer_batch).logits``), so
    `secure_ft.text.models.predict`, the attack wrapper and serving use it unchanged. Only the output
    layer and the (frozen, unchanged) input word embeddings are torch modules — the embedding-swap
    attack reads the latter; the rest of the torch encoder is not kept.
    """

    def __init__(self, encoder: OnnxEncoder, classifier: nn.Linear, config, input_embeddings: nn.Module | None = None):
        super().__init__()
        self.encoder = encoder
        self.classifier = classifier
        self.config = config
        self.input_embeddings = input_embeddings

    def get_input_embeddings(self) -> nn.Module:
        """The base encoder's word embeddings (the graph holds the same frozen weights)."""
        if self.input_embeddings is None:
            raise ModelError("this graph classifier was built without the encoder's input embeddings")
        return self.input_embeddings

    @property
    def device(self) -> torch.device:
        return self.classifier.weight.device

    def forward(self, **inputs: torch.Tensor) -> _Output:
        pooled = self.encoder(**inputs).to(self.classifier.weight.device, self.classifier.weight.dtype)
        return _Output(self.classifier(pooled))


def graph_classifier(model: nn.Module, encoder: OnnxEncoder) -> GraphSequenceClassifier:
    """`model`'s output layer behind `encoder` (ModelError when the model is not a probe)."""
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Linear):
        raise ModelError(f"the model folder holds an {GRAPH_FOLDER}/ graph but its classifier is "
                         f"{type(classifier).__name__}, not one linear layer; only transfer: probe models carry one")
    return GraphSequenceClassifier(encoder, classifier, model.config, model.get_input_embeddings()).eval()


def with_folder_graph(model: nn.Module, model_dir: str | Path, device: str = "cpu") -> nn.Module:
    """`model` as it runs: behind its folder's encoder graph when the folder holds one, else unchanged."""
    folder = Path(model_dir) / GRAPH_FOLDER
    if not folder.is_dir():
        return model
    return graph_classifier(model, OnnxEncoder.from_folder(folder, device=device))


def describe_backend(model_dir: str | Path) -> dict[str, Any]:
    """``{"encoder_backend": "onnx"|"torch", "quantize": ...}`` of a model folder, for cards and reports."""
    settings_file = Path(model_dir) / GRAPH_FOLDER / SETTINGS_FILE
    if not settings_file.is_file():
        return {"encoder_backend": "torch", "quantize": "none"}
    settings = read_settings(settings_file.read_bytes(), settings_file)
    return {"encoder_backend": "onnx", "quantize": settings.get("quantize", "none"),
            "exporter": settings.get("exporter"), "opset": settings.get("opset")}
