"""A cache of sentence embeddings, kept inside one run directory.

The frozen-encoder probe (`secure_ft.training.probe`) reads every text through the encoder once; a
resumed run, a federated site's next round or a benchmark's next setting finds the vectors
here instead of paying for the encoding pass again. The cache never leaves the folder it is
given (a run directory's ``cache/``, `secure_ft.records.run_directory.RunDirectory.cache_dir`): the
embeddings are derived from the training texts and are as private as they are.

One file per encoder setting, named by its key — the SHA-256 of the encoder's weights and
config, the maximum sequence length and the pooling — holding the SHA-256 of each text and
its embedding. Texts are looked up by hash, so splits, subsamples and reorderings share rows.
Files are written to a temporary name and renamed: an interrupted write leaves the old file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from secure_ft.records.atomic_files import atomic_write_bytes

log = logging.getLogger(__name__)

CACHE_FORMAT = "1"
_HASHES, _EMBEDDINGS = "text_sha256", "embeddings"


def text_sha256(text: str) -> bytes:
    """The 32-byte digest a text is cached under."""
    return hashlib.sha256(text.encode("utf-8")).digest()


def cache_key(encoder_sha256: str, max_length: int, pooling: str) -> str:
    """The key of one encoder setting: embeddings differ whenever any of these differ."""
    setting = {"format": CACHE_FORMAT, "encoder_sha256": encoder_sha256, "max_length": int(max_length),
               "pooling": pooling}
    return hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()


class EmbeddingCache:
    """Embeddings of one encoder setting (`cache_key`) in ``folder/embeddings-KEY.safetensors``.

    Parameters
    ----------
    folder
        Where the file lives: a run directory's ``cache/`` folder.
    key
        `cache_key` of the encoder setting.
    """

    def __init__(self, folder: str | Path, key: str):
        self.folder = Path(folder)
        self.key = key
        self.path = self.folder / f"embeddings-{key[:32]}.safetensors"
        self._rows: dict[bytes, torch.Tensor] | None = None

    def _load(self) -> dict[bytes, torch.Tensor]:
        if self._rows is not None:
            return self._rows
        self._rows = {}
        if not self.path.is_file():
            return self._rows
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt") as stream:
                if (stream.metadata() or {}).get("key") != self.key:
                    raise ValueError("written for another encoder setting")
                hashes, embeddings = stream.get_tensor(_HASHES), stream.get_tensor(_EMBEDDINGS)
            if hashes.shape[0] != embeddings.shape[0] or hashes.shape[1:] != (32,):
                raise ValueError("hash and embedding counts differ")
        except Exception as error:  # a derived file: recompute rather than fail the run
            log.warning("%s: ignoring the embedding cache (%s); the texts are encoded again and the file rewritten",
                        self.path, error)
            return self._rows
        self._rows = {bytes(digest.tolist()): row for digest, row in zip(hashes, embeddings)}
        return self._rows

    def get(self, digests: list[bytes]) -> dict[bytes, torch.Tensor]:
        """The cached embeddings among `digests` (`text_sha256` values), by digest."""
        rows = self._load()
        return {digest: rows[digest] for digest in digests if digest in rows}

    def add(self, digests: list[bytes], embeddings: torch.Tensor) -> None:
        """Add embeddings (one row per digest) and rewrite the file atomically."""
        if not digests:
            return
        from safetensors.torch import save

        rows = self._load()
        for digest, row in zip(digests, embeddings.detach().cpu().float()):
            rows[digest] = row.clone()
        order = list(rows)
        payload = save({_HASHES: torch.tensor([list(digest) for digest in order], dtype=torch.uint8),
                        _EMBEDDINGS: torch.stack([rows[digest] for digest in order]).contiguous()},
                       metadata={"key": self.key, "format": CACHE_FORMAT})
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, payload)

    def __len__(self) -> int:
        return len(self._load())
