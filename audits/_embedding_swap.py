"""The `embedding-swap` recipe: TextFooler-style word swaps built from local resources only.

TextFooler (Jin et al., 2019) swaps the most important words for their nearest neighbours in
counter-fitted GloVe vectors, keeps swaps of the same part of speech, and keeps the sentence
close to the original under the Universal Sentence Encoder; both resources are downloads.
This recipe keeps the algorithm (greedy search over words ranked by deletion importance,
untargeted goal) and replaces the resources with ones already on the machine:

* word vectors: the whole-word rows of a transformer's input embedding matrix (by default the
  audited model's own), nearest neighbours by cosine precomputed once and cached on disk;
* antonyms: these vectors are not counter-fitted, so neighbours include antonyms
  (good → bad); WordNet's direct and indirect antonyms are rejected (it misses pairs WordNet
  does not link, such as excellent → terrible);
* part of speech: a swap must share a WordNet part of speech with the word it replaces
  (TextFooler uses a POS tagger that would be a download);
* meaning: the window of words around each swap must stay within a cosine similarity of the
  original window under a local sentence-transformers encoder (the packaged MiniLM).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from textattack import Attack
from textattack.constraints import Constraint
from textattack.constraints.pre_transformation import RepeatModification, StopwordModification
from textattack.constraints.semantics import WordEmbeddingDistance
from textattack.constraints.semantics.sentence_encoders import SentenceEncoder
from textattack.goal_functions import UntargetedClassification
from textattack.search_methods import GreedyWordSwapWIR
from textattack.shared import WordEmbedding
from textattack.shared.validators import transformation_consists_of_word_swaps
from textattack.transformations import WordSwapEmbedding

from secure_ft.errors import AuditError
from secure_ft.records.config import EmbeddingSwapConfig

log = logging.getLogger(__name__)

_WORD = re.compile(r"[a-z]{2,}")
_PREFIXES = ("Ġ", "▁")  # BPE / SentencePiece word-start markers


def whole_word_vocabulary(tokenizer) -> tuple[list[str], list[int]]:
    """Lower-case alphabetic tokens that stand for a whole word, and their token ids."""
    words, ids = [], []
    seen = set()
    for token, token_id in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        if token.startswith("##"):
            continue
        word = token[1:] if token.startswith(_PREFIXES) else token
        if _WORD.fullmatch(word) and word not in seen:
            seen.add(word)
            words.append(word)
            ids.append(token_id)
    return words, ids


def nearest_neighbours(vectors: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """Row i: i itself, then the k rows most cosine-similar to row i (N × (k+1), int32)."""
    matrix = torch.from_numpy(vectors)
    matrix = matrix / matrix.norm(dim=1, keepdim=True).clamp_min(1e-12)
    k = min(k, len(matrix) - 1)
    out = np.empty((len(matrix), k + 1), dtype=np.int32)
    with torch.inference_mode():
        for start in range(0, len(matrix), chunk):
            sims = matrix[start:start + chunk] @ matrix.T
            rows = torch.arange(sims.shape[0])
            sims[rows, rows + start] = float("inf")  # each word is its own first neighbour
            out[start:start + chunk] = sims.topk(k + 1, dim=1).indices.numpy()
    return out


def local_word_embedding(embedding_model, tokenizer, k: int, cache_dir: Path) -> WordEmbedding:
    """A TextAttack ``WordEmbedding`` of the model's whole-word input embeddings, neighbours cached."""
    words, ids = whole_word_vocabulary(tokenizer)
    if len(words) < k + 1:
        raise AuditError(
            f"embedding-swap: the tokenizer has only {len(words)} whole-word tokens, too few for "
            f"{k} neighbours; lower audits.robustness.embedding_swap.max_candidates or set embedding: default"
        )
    weight = embedding_model.get_input_embeddings().weight.detach().float().cpu().numpy()
    vectors = np.ascontiguousarray(weight[ids])
    digest = hashlib.sha256(vectors.tobytes())
    digest.update("\n".join(words).encode())
    digest.update(str(k).encode())
    path = Path(cache_dir) / "embedding-neighbours" / f"{digest.hexdigest()[:32]}.npy"
    neighbours = _load_neighbours(path, len(words), k)
    if neighbours is None:
        log.info("embedding-swap: computing %d nearest neighbours for %d words (cached in %s)", k, len(words), path)
        neighbours = nearest_neighbours(vectors, k)
        _save_neighbours(path, neighbours)
    return WordEmbedding(vectors, {w: i for i, w in enumerate(words)}, dict(enumerate(words)), neighbours)


def _load_neighbours(path: Path, rows: int, k: int) -> np.ndarray | None:
    try:
        neighbours = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return neighbours if neighbours.shape == (rows, k + 1) else None


def _save_neighbours(path: Path, neighbours: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.save(stream, neighbours, allow_pickle=False)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


# --- WordNet constraints -----------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def wordnet_antonyms(word: str) -> frozenset[str]:
    """Direct antonyms of `word` and, for adjectives, indirect ones (antonyms' similar words)."""
    from nltk.corpus import wordnet

    found = set()
    for synset in wordnet.synsets(word):
        heads = [synset, *(synset.similar_tos() if synset.pos() in ("a", "s") else [])]
        for head in heads:
            for lemma in head.lemmas():
                for antonym in lemma.antonyms():
                    found.add(antonym.name().lower())
                    for similar in antonym.synset().similar_tos():
                        found.update(name.lower() for name in similar.lemma_names())
    return frozenset(found)


@functools.lru_cache(maxsize=None)
def wordnet_parts_of_speech(word: str) -> frozenset[str]:
    from nltk.corpus import wordnet

    return frozenset("a" if synset.pos() == "s" else synset.pos() for synset in wordnet.synsets(word))


class _WordPairConstraint(Constraint):
    """A constraint judged on each (original word, new word) pair of a word swap."""

    def __init__(self):
        super().__init__(compare_against_original=True)

    def _check_constraint(self, transformed_text, reference_text):
        indices = transformed_text.attack_attrs.get("newly_modified_indices", set())
        for i in indices:
            if i >= len(reference_text.words) or i >= len(transformed_text.words):
                return False
            if not self._allowed(reference_text.words[i].lower(), transformed_text.words[i].lower()):
                return False
        return True

    def check_compatibility(self, transformation):
        return transformation_consists_of_word_swaps(transformation)

    def _allowed(self, original: str, new: str) -> bool:
        raise NotImplementedError


class WordNetAntonymFilter(_WordPairConstraint):
    """Rejects a swap to a WordNet antonym of the word (either direction, direct or indirect)."""

    def _allowed(self, original, new):
        return new not in wordnet_antonyms(original) and original not in wordnet_antonyms(new)


class WordNetPartOfSpeech(_WordPairConstraint):
    """A swap must share a WordNet part of speech with the word; words WordNet lacks pass."""

    def _allowed(self, original, new):
        before, after = wordnet_parts_of_speech(original), wordnet_parts_of_speech(new)
        return not before or not after or bool(before & after)


# --- sentence similarity -----------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _sentence_model(path: str):
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(path, device="cpu")
    except Exception as error:
        raise AuditError(
            f"embedding-swap: cannot load the sentence encoder {path} ({error}); set "
            "audits.robustness.embedding_swap.sentence_encoder to a sentence-transformers folder or `default`"
        ) from None


class LocalSentenceEncoder(SentenceEncoder):
    """Sentence similarity under a local sentence-transformers model, encodings cached by text."""

    def __init__(self, model_path: str, threshold: float, window_size: int, metric: str = "cosine",
                 compare_against_original: bool = True):
        super().__init__(threshold=threshold, metric=metric, compare_against_original=compare_against_original,
                         window_size=window_size, skip_text_shorter_than_window=False)
        self.model_path = model_path
        self.model = _sentence_model(model_path)
        self._cache: dict[str, torch.Tensor] = {}

    def encode(self, sentences):
        missing = [s for s in dict.fromkeys(sentences) if s not in self._cache]
        if missing:
            with torch.inference_mode():
                vectors = self.model.encode(missing, convert_to_tensor=True, show_progress_bar=False, batch_size=64)
            for sentence, vector in zip(missing, vectors.clone()):
                self._cache[sentence] = vector
            if len(self._cache) > 100_000:
                self._cache.clear()
        return torch.stack([self._cache[s] for s in sentences])

    def extra_repr_keys(self):
        return ["model_path", *super().extra_repr_keys()]


def default_sentence_encoder_path() -> str:
    from secure_ft.text.models import default_model_dir

    return str(default_model_dir())


def _embedding_source(name: str, model_wrapper):
    """(model, tokenizer) whose input embeddings give the word vectors."""
    if name == "trained":
        return model_wrapper.model, model_wrapper.tokenizer
    from transformers import AutoModel, AutoTokenizer

    from secure_ft.text.models import resolve_model_source

    source = resolve_model_source(name)
    try:
        return (AutoModel.from_pretrained(source, use_safetensors=True, trust_remote_code=False),
                AutoTokenizer.from_pretrained(source, trust_remote_code=False))
    except Exception as error:
        raise AuditError(f"embedding-swap: cannot load word embeddings from {source} ({error})") from None


def build_embedding_swap(model_wrapper, settings: EmbeddingSwapConfig, cache_dir: Path) -> Attack:
    """The embedding-swap attack on `model_wrapper` (see the module docstring)."""
    source_model, source_tokenizer = _embedding_source(settings.embedding, model_wrapper)
    embedding = local_word_embedding(source_model, source_tokenizer, settings.max_candidates, cache_dir)
    encoder_path = (default_sentence_encoder_path() if settings.sentence_encoder == "default"
                    else settings.sentence_encoder)
    transformation = WordSwapEmbedding(max_candidates=settings.max_candidates, embedding=embedding)
    constraints = [RepeatModification(), StopwordModification(),
                   WordEmbeddingDistance(embedding=embedding, min_cos_sim=settings.min_word_similarity)]
    if settings.filter_antonyms:
        constraints.append(WordNetAntonymFilter())
    if settings.match_part_of_speech:
        constraints.append(WordNetPartOfSpeech())
    constraints.append(LocalSentenceEncoder(encoder_path, threshold=settings.min_sentence_similarity,
                                            window_size=settings.window_size))
    goal_function = UntargetedClassification(model_wrapper)
    return Attack(goal_function, constraints, transformation, GreedyWordSwapWIR(wir_method="delete"))
