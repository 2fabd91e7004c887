"""Small in-memory fakes of our own interfaces, shared by the unit tests."""

from __future__ import annotations

import hashlib

import numpy as np


class HashEncoder:
    """Unit vectors from a hash of each text: a stand-in for MiniLM where meaning is not tested.
    Counts the texts it embeds."""

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim
        self.texts = 0

    def encode(self, texts):
        self.texts += len(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "little")
            v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            out[i] = v / np.linalg.norm(v)
        return out
