"""Optional abstractive window summaries with a local Hugging Face seq2seq model.

`--summarizer-model DIR` points at a directory written by `save_pretrained` (a T5/BART-style
model and its tokenizer). It is loaded with transformers from that directory only: the hub is
switched off and `local_files_only` is set, so a missing or incomplete directory is a clear error
and never a download. Weights must be safetensors (no pickle is ever loaded).

The model rewrites the extractive summary (counts, frequent and new templates, highlights) into
prose; the extractive text is its whole input, so the numbers it can mention are the ones we
computed.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from detector.errors import UserError


class AbstractiveSummarizer:
    """Callable text -> text; loads the model on first use, once."""

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        max_input_tokens: int = 512,
        max_new_tokens: int = 80,
        num_beams: int = 2,
    ) -> None:
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise UserError(f"summarizer model not found: {self.model_dir} has no config.json")
        self.device = device
        self.max_input_tokens = max_input_tokens
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self._model = None
        self._tokenizer = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        if self._model is not None:
            return
        with self._lock:
            if self._model is not None:
                return
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
                model = AutoModelForSeq2SeqLM.from_pretrained(
                    self.model_dir, local_files_only=True, use_safetensors=True
                )
            except (OSError, ValueError, KeyError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UserError(f"cannot load summarizer model {self.model_dir}: {first}") from exc
            model.eval()
            self._model = model.to(self.device)
            self._tokenizer = tokenizer

    def __call__(self, text: str) -> str:
        self._load()
        import torch

        assert self._tokenizer is not None and self._model is not None
        inputs = self._tokenizer(
            "summarize: " + text,
            return_tensors="pt",
            truncation=True,
            max_length=self.max_input_tokens,
        ).to(self.device)
        with torch.inference_mode():
            output = self._model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                num_beams=self.num_beams,
                do_sample=False,
            )
        return self._tokenizer.decode(output[0], skip_special_tokens=True).strip()
