"""A trained linear classifier over template features: weights, bias, a temperature and a JSON
card.

The one codec for the shipped log classifiers (severity, topic): `<name>.safetensors` holds the
weight (classes, features) and bias (classes) as float32, `<name>.json` the card (classes, feature
layout, temperature, training provenance). Never a pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Self

import numpy as np

from detector.errors import UserError


@dataclass
class LinearClassifier:
    """p = softmax((x @ weight.T + bias) / temperature); `meta` is the card."""

    weight: np.ndarray
    bias: np.ndarray
    temperature: float
    meta: dict

    NAME: ClassVar[str] = "linear"  # file stem and the make target's name: `make <NAME>-model`

    def logits(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.float64) @ self.weight.T.astype(np.float64) + self.bias

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        z = self.logits(x) / self.temperature
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def card(self) -> dict:
        """What `<name>.json` holds: the meta plus the temperature."""
        return dict(self.meta, temperature=self.temperature)

    def check(self, card: Path) -> None:
        """Raise UserError when the loaded card was made for other classes or features."""

    def save(self, directory: Path) -> None:
        from safetensors.numpy import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file(
            {"weight": self.weight.astype(np.float32), "bias": self.bias.astype(np.float32)},
            str(directory / f"{self.NAME}.safetensors"),
        )
        (directory / f"{self.NAME}.json").write_text(json.dumps(self.card(), indent=2) + "\n")

    @classmethod
    def _load(cls, directory: Path) -> Self:
        from safetensors.numpy import load_file

        weights, card = directory / f"{cls.NAME}.safetensors", directory / f"{cls.NAME}.json"
        if not weights.is_file() or not card.is_file():
            raise UserError(
                f"{cls.NAME} model not found in {directory} (run `make {cls.NAME}-model`)"
            )
        try:
            meta = json.loads(card.read_text())
            tensors = load_file(str(weights))
            model = cls(tensors["weight"], tensors["bias"], float(meta["temperature"]), meta)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{directory}: not a readable {cls.NAME} model: {exc}") from None
        model.check(card)
        return model
