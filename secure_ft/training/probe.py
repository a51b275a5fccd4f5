"""The frozen-encoder probe: sentence embeddings computed once, a linear head trained on them.

With ``model.transfer: probe`` the encoder never trains. Every text is read through it once
(`embed_texts`): the mean of its token states, scaled to unit length (the ``mean_normalized``
pooling of `secure_ft.text.pooling`), which is the sentence embedding the default
sentence-transformers encoder was trained to produce. Only the classifier's output layer
trains, on those vectors, through the one loop (`secure_ft.training.training_loop.fit`) and — under
DP — the one `secure_ft.privacy.engine.PrivateEngine`: Poisson sampling, per-sample clipping
and accounting are exactly those of any other run, over a few thousand parameters instead
of millions, so a small dataset's budget buys far less noise per useful direction.

`ProbeHead` is a view of the full model's ``classifier`` (the same parameters), so after
training the full model — encoder, mean-normalised pooler, trained head — is saved as an
ordinary ``save_pretrained`` folder that `secure_ft.text.models.load_trained_model`, the audits,
export and serving read like any other. Its predictions on raw text equal the head's on the
cached embeddings, because the embeddings were computed by the same pooler.

Embeddings are cached inside the run directory (`secure_ft.text.embedding_cache`), keyed by the
encoder's hash (and, on ONNX Runtime, the quantization and exporter), the maximum length and the
pooling, and looked up by each text's hash.

The encoder runs on the backend ``model.encoder_backend`` resolves to (`frozen_encoder`): by
default the exported ONNX graph (`secure_ft.text.onnx_encoder`), which `save_trained_model` then
stores in the model folder so that audits and serving run the very graph the head was trained on.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from secure_ft.errors import ModelError
from secure_ft.records.config import ModelConfig
from secure_ft.records.model_identity import model_digest
from secure_ft.text.embedding_cache import EmbeddingCache, cache_key, text_sha256
from secure_ft.text.models import probe_pooling, resolve_model_source

log = logging.getLogger(__name__)


class ProbeHead(nn.Module):
    """The trainable part of a probe: the full model's output layer, reading sentence embeddings.

    Holds the model's own ``classifier`` (not a copy): training it trains the model. The
    parameter names (``classifier.weight``, ``classifier.bias``) are the full model's, so
    checkpoints and federated updates fit either.
    """

    def __init__(self, classifier: nn.Linear):
        super().__init__()
        self.classifier = classifier

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # BERT's dropout before the classifier is left out: under DP-SGD it only adds noise
        return self.classifier(features)


@contextlib.contextmanager
def head_training_threads(num_threads: int | None) -> Iterator[None]:
    """Train a probe's head on one CPU thread, unless ``training.num_threads`` (`num_threads`) is set.

    A head's products are tiny (a batch of a few thousand 384-wide rows times a few classes):
    splitting them over threads only adds synchronisation, and on a busy machine a thread that
    waits for a descheduled sibling makes every operation many times slower — measured on 2
    shared cores at load 6–7, 1.3 ms per forward, loss and backward pass of a 1,280-row batch on
    one thread against 16–22 ms on two. The encoder's embedding pass, before, keeps every
    thread; the previous count is restored after.
    """
    if num_threads is not None:  # the config decides (`fit` applies it)
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def probe_head(model: nn.Module) -> ProbeHead:
    """The `ProbeHead` of a model built with ``transfer: probe``."""
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Linear):
        raise ModelError(f"transfer: probe needs a classifier that is one linear layer; {type(model).__name__} has "
                         f"{type(classifier).__name__}; use transfer: lora or full")
    return ProbeHead(classifier)


def encoder_sha256(model_config: ModelConfig) -> str:
    """Identity of the base encoder: the hash of a local folder's weights and config, else name@revision."""
    source = resolve_model_source(model_config.name_or_path)
    if Path(source).is_dir():
        return model_digest(Path(source))
    return f"{source}@{model_config.revision or 'unpinned'}"


def encoder_identity(model_config: ModelConfig) -> str:
    """What the embeddings depend on: the base encoder, and for ONNX the quantization and exporter."""
    base = encoder_sha256(model_config)
    if model_config.resolved_encoder_backend() == "torch":
        return base
    return f"{base}|onnx|{model_config.quantize}|torch {torch.__version__.split('+')[0]}"


def embedding_cache(folder: str | Path, model_config: ModelConfig) -> EmbeddingCache:
    """The cache of this encoder setting in `folder` (a run directory's ``cache/``)."""
    key = cache_key(encoder_identity(model_config), model_config.max_length, probe_pooling(model_config))
    return EmbeddingCache(folder, key)


def encoder_graph_folder(model: nn.Module, tokenizer, model_config: ModelConfig) -> Path | None:
    """The exported graph (`secure_ft.text.onnx_encoder.encoder_graph`) a probe runs on, or None on torch.

    Exported on first use and cached per user by the base model's digest; `save_trained_model`
    copies it into the model folder.
    """
    if model_config.resolved_encoder_backend() != "onnx":
        return None
    from secure_ft.text.onnx_encoder import encoder_graph

    return encoder_graph(model, tokenizer, encoder_sha256(model_config), probe_pooling(model_config),
                         model_config.quantize)


def frozen_encoder(model: nn.Module, tokenizer, model_config: ModelConfig, device: str | torch.device = "cpu"
                   ) -> Callable[..., torch.Tensor]:
    """The function from a tokenizer batch to sentence embeddings that the config's backend runs."""
    graph = encoder_graph_folder(model, tokenizer, model_config)
    if graph is None:
        return torch_encoder(model)
    from secure_ft.text.onnx_encoder import OnnxEncoder

    return OnnxEncoder.from_folder(graph, device=str(device))


def torch_encoder(model: nn.Module) -> Callable[..., torch.Tensor]:
    """The model's own base encoder and pooler, as a batch → embeddings function."""
    encoder = getattr(model, model.base_model_prefix)
    return lambda **batch: encoder(**batch).pooler_output


def embedding_summary(texts: int, distinct: int, encoded: int, seconds: float | None = None) -> str:
    """What one `embed_texts` call did: repeated texts (augmentation copies that came out unchanged,
    duplicate rows) are encoded once, and only texts stored by an earlier call come from the cache;
    with `seconds`, how long the encoding took and its rate."""
    repeats = texts - distinct
    cached = distinct - encoded
    took = f" in {_duration(seconds)} ({encoded / seconds:.1f} texts/s)" if seconds and encoded else ""
    return (f"embeddings: {texts} texts ({distinct} distinct{f', {repeats} repeats' if repeats else ''}): "
            f"{encoded} encoded now{took}, {cached} from the cache")


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped shortest first into batches of `batch_size`: each batch pads to lengths close to its own."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def estimated_seconds(batches: list[list[int]], lengths: list[int], warmup: list[int], warmup_seconds: float) -> float:
    """Time to embed `batches`, scaled from one timed batch by padded tokens (a pass costs about its tokens)."""
    warmup_tokens = len(warmup) * max(lengths[i] for i in warmup)
    padded = sum(len(batch) * lengths[batch[-1]] for batch in batches)  # sorted: the last is the longest
    return warmup_seconds * padded / max(warmup_tokens, 1)


@torch.no_grad()  # not inference_mode: the vectors become autograd inputs of the head
def embed_texts(model: nn.Module, tokenizer, texts: list[str], *, max_length: int, cache: EmbeddingCache | None = None,
                batch_size: int = 64, device: str | torch.device = "cpu", progress: bool = True,
                encoder: Callable[..., torch.Tensor] | None = None, stats: dict | None = None) -> torch.Tensor:
    """Pooled sentence embeddings (n, hidden) of `texts`, from the cache where present.

    Runs `encoder` (a tokenizer batch → embeddings function: `frozen_encoder`; default the
    model's own base encoder and pooler, its ``pooler_output``), so the vectors are exactly what
    the saved model's classifier reads. Texts are encoded shortest first, so a batch pads to
    lengths close to its own; each distinct text is encoded once. Before a long pass, the number
    of texts and the time it will take (measured on a warm-up batch) are logged.

    `stats`, when given, receives what the call did: ``texts``, ``distinct``, ``encoded`` (not
    from the cache) and ``seconds`` spent encoding them (warm-up included).
    """
    started = time.perf_counter()
    digests = [text_sha256(text) for text in texts]
    found = cache.get(digests) if cache is not None else {}
    missing = list(dict.fromkeys(d for d in digests if d not in found))
    if missing:
        first_text = dict(zip(digests, texts))
        todo = [first_text[digest] for digest in missing]
        lengths = [len(ids) for ids in tokenizer(todo, truncation=True, max_length=max_length)["input_ids"]]
        batches = length_sorted_batches(lengths, batch_size)
        was_training = model.training
        model.eval().to(device)
        run = encoder or torch_encoder(model)

        def pooled(chunk: list[int]) -> torch.Tensor:
            batch = tokenizer([todo[i] for i in chunk], truncation=True, max_length=max_length, padding=True,
                              return_tensors="pt").to(device)
            return run(**batch).float().cpu()

        if len(batches) > 2:  # the guard: say how long before a long pass starts
            warmup = batches[len(batches) // 2]  # median lengths
            pooled(warmup)  # first call: allocations, kernel choice
            started = time.perf_counter()
            pooled(warmup)
            seconds = estimated_seconds(batches, lengths, warmup, time.perf_counter() - started)
            log.info("embedding %d texts (at most %d tokens each, batches of %d): about %s, measured on a warm-up "
                     "batch", len(todo), max_length, batch_size, _duration(seconds))
        vectors: list[torch.Tensor | None] = [None] * len(todo)
        bar = tqdm(total=len(todo), desc="embedding texts", unit="text", disable=not progress, dynamic_ncols=True)
        for chunk in batches:
            for index, vector in zip(chunk, pooled(chunk)):
                vectors[index] = vector
            bar.update(len(chunk))
        bar.close()
        model.train(was_training)
        computed = torch.stack(vectors)
        found.update(zip(missing, computed))
        if cache is not None:
            cache.add(missing, computed)
    seconds = time.perf_counter() - started
    log.info(embedding_summary(len(texts), len(set(digests)), len(missing), seconds))
    if stats is not None:
        stats.update(texts=len(texts), distinct=len(set(digests)), encoded=len(missing), seconds=seconds)
    if not texts:
        return torch.zeros((0, model.config.hidden_size))
    return torch.stack([found[digest] for digest in digests])


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def feature_dataset(embeddings: torch.Tensor, labels: list[int]) -> TensorDataset:
    """``(features, labels)``: the batch shape `secure_ft.training.training_loop.fit` trains a probe head on."""
    return TensorDataset(embeddings.float().contiguous(), torch.as_tensor(labels, dtype=torch.long))


def trainee_and_datasets(model: nn.Module, tokenizer, model_config: ModelConfig, frames: list, *,
                         cache_dir: str | Path, device: str | torch.device = "cpu", batch_size: int = 64,
                         progress: bool = True, embedding_stats: dict | None = None,
                         ) -> tuple[nn.Module, list[TensorDataset]]:
    """What `fit` / `evaluate` run and on what, for each of `frames` (``text`` and ``label`` columns).

    The model on token datasets (`secure_ft.training.training_loop.encode`), or — with ``transfer:
    probe`` — its `ProbeHead` on sentence embeddings cached in `cache_dir` (a run directory's
    ``cache/``). Central runs, federated sites and the federated server all call this.
    `embedding_stats` receives `embed_texts`'s counts and seconds (probe only).
    """
    from secure_ft.training.training_loop import encode

    texts = [frame["text"].tolist() for frame in frames]
    labels = [frame["label"].astype(int).tolist() for frame in frames]
    if model_config.transfer != "probe":
        return model, [encode(tokenizer, t, y, model_config.max_length) for t, y in zip(texts, labels)]
    cache = embedding_cache(cache_dir, model_config)
    all_texts = [text for part in texts for text in part]
    digests = [text_sha256(text) for text in all_texts]
    # the encoder (an ONNX export on first use) is built only when some text is not cached yet
    encoder = frozen_encoder(model, tokenizer, model_config, device) if len(cache.get(digests)) < len(set(digests)) else None
    vectors = embed_texts(model, tokenizer, all_texts, max_length=model_config.max_length,
                          cache=cache, batch_size=batch_size, device=device, progress=progress, encoder=encoder,
                          stats=embedding_stats)
    datasets, start = [], 0
    for part, targets in zip(texts, labels):
        datasets.append(feature_dataset(vectors[start:start + len(part)], targets))
        start += len(part)
    return probe_head(model), datasets
