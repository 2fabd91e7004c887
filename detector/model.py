"""The tsguard Transformer encoder: a small channel-independent patch forecaster.

Idea (PatchTST, Nie et al., ICLR 2023, "A Time Series is Worth 64 Words"): cut the context of a
univariate series into patches, embed each patch as one token, run a Transformer encoder over the
tokens and forecast the next `horizon` points from all tokens at once. The anomaly error of a new
point is how far it lies from that forecast (detector/scorer.py).

Everything a reader needs is in this file:

- `ModelConfig`: the architecture, a dataclass that round-trips through config.json.
- `normalise` / `impute`: per-window robust normalisation (median / IQR of the context) and
  missing-value handling, so one model serves series of any scale and NaN never reaches it.
- `PatchForecaster`: patch embedding -> pre-norm Transformer blocks -> flatten head that
  predicts, for every future step, a location (the forecast) and a Laplace scale (how sure the
  model is). Trained by the Laplace negative log-likelihood, the scale is large where the series
  is hard to predict (white noise) and small where it is not (a clean cycle). The location is
  the last context value plus the head's output (`anchor` "last"): the network learns a
  correction to the naive forecast (Hyndman & Athanasopoulos, "Forecasting: Principles and
  Practice", 5.2), so a smooth series is forecast to within its step, not a share of its range.

Channel independence: a [B, L, D] window is scored as B*D univariate series with shared weights,
so one model handles any number of dimensions; per-dimension errors give the contributions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from numba import njit

# Normalised values are clipped to this range before they enter the network: one huge outlier in
# the context must not blow up activations (the error of a new point is never clipped).
INPUT_CLIP = 20.0


ANCHORS = ("last", "median")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of `PatchForecaster`. `window` = context + horizon points."""

    window: int = 128  # L: points per window the stream hands over
    horizon: int = 16  # H: points forecast in one pass = the largest n_new supported
    patch: int = 16  # points per token; context must be a multiple of it
    d_model: int = 32
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 128
    dropout: float = 0.1
    # How much of the predicted uncertainty divides the error: error = |x - forecast| / b^power,
    # b the predicted Laplace scale in series units. 0 = plain error in series units (the
    # calibrator learns what is normal per series), 1 = a z-score. Every power above 0 scored
    # lower on NAB (benchmarks/README.md), so the scale head only shapes training (a likelihood
    # instead of a plain regression loss).
    error_power: float = 0.0
    # What the forecast is relative to. "last": the last context value plus the network's
    # output, so persistence is the starting point and the network learns the correction (a
    # smooth series is then forecast to within its step, not to within a share of its range).
    # "median": around the context's median (models trained before "last" existed).
    anchor: str = "last"

    @property
    def context(self) -> int:
        return self.window - self.horizon

    @property
    def n_patches(self) -> int:
        return self.context // self.patch

    def validate(self) -> None:
        if self.horizon < 1 or self.window <= self.horizon:
            raise ValueError(
                f"need 1 <= horizon < window, got horizon={self.horizon} window={self.window}"
            )
        if self.context % self.patch != 0:
            raise ValueError(f"context ({self.context}) must be a multiple of patch ({self.patch})")
        if self.anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {list(ANCHORS)}, got {self.anchor!r}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> ModelConfig:
        names = {f.name for f in fields(ModelConfig)}
        d = {"anchor": "median", **d}  # written before the anchor was a choice
        missing = names - set(d)
        unknown = set(d) - names
        if missing or unknown:
            raise ValueError(
                f"architecture keys: missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        cfg = ModelConfig(**d)
        cfg.validate()
        return cfg


# ----------------------------------------------------------------------------- preprocessing


_QUARTILES = (0.25, 0.5, 0.75)


def nanquartiles(x: torch.Tensor) -> torch.Tensor:
    """torch.nanquantile(x, [0.25, 0.5, 0.75], dim=1) for x [N, C], the same values ([3, N];
    NaN for an all-missing row), with numpy's sort on the CPU, as torch sorts short rows many
    times slower.
    """
    if x.device.type == "cpu":
        srt = torch.from_numpy(np.sort(x.detach().numpy(), axis=1))  # NaNs last, as torch.sort
    else:
        srt = torch.sort(x, dim=1).values
    # Linear interpolation between the ranks around q * (observed - 1), as torch computes it.
    q = torch.tensor(_QUARTILES, dtype=x.dtype, device=x.device)
    ranks = (q * ((~torch.isnan(srt)).sum(dim=1, keepdim=True) - 1)).clamp(min=0)  # [N, 3]
    below = ranks.long()
    weights = ranks - below
    above = ranks.ceil().long()
    return srt.gather(1, below).lerp(srt.gather(1, above), weights).T


def normalise(context: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Robust location and scale of each row of `context` [N, C] (NaN = missing).

    loc = median, scale = IQR / 1.349 (equals the std for Gaussian data, and one spike does not
    move it). Series that sit on one value most of the time have IQR 0; for them the scale falls
    back to the mean absolute deviation from the median (* 1.2533, again the std for Gaussian
    data), and finally to a floor relative to |loc| so a flat line does not divide by zero. All
    terms scale with the data, so scaling/shifting a window leaves normalised values alone.
    Returns (loc [N, 1], scale [N, 1]).
    """
    q25, loc, q75 = nanquartiles(context)
    iqr_scale = (q75 - q25) / 1.349
    mad_scale = 1.2533 * torch.nanmean((context - loc.unsqueeze(1)).abs(), dim=1)
    scale = torch.where(iqr_scale > 0, iqr_scale, mad_scale)
    scale = torch.maximum(scale, eps * loc.abs())
    # All-missing rows: loc NaN -> 0, scale -> 1 (the network then sees zeros and a zero mask).
    loc = torch.nan_to_num(loc, nan=0.0)
    scale = torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))
    return loc.unsqueeze(1), scale.unsqueeze(1)


def impute(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward-fill NaNs along dim 1 of normalised `x` [N, C]; leading NaNs become 0 (the median).

    Returns (filled [N, C], observed mask [N, C] as float 1/0). The mask goes into the network so
    it can tell a real value from a filled one.
    """
    observed = ~torch.isnan(x)
    n, c = x.shape
    idx = torch.arange(c, device=x.device).expand(n, c)
    # Index of the last observed point at or before each position (-1 if none yet).
    last = torch.where(observed, idx, torch.full_like(idx, -1)).cummax(dim=1).values
    filled = torch.gather(torch.nan_to_num(x, nan=0.0), 1, last.clamp(min=0))
    filled = torch.where(last >= 0, filled, torch.zeros_like(filled))
    return filled, observed.to(x.dtype)


def prepare_numpy(context: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`prepare` for float32 rows on the CPU, in numpy: the same values (tested; bit for bit
    except where the scale falls back to the mean absolute deviation, whose float32 sum may end
    an ulp apart, as torch adds in another order).

    The scorer's CPU path. `prepare` is some 25 small torch operators, a fixed cost per call
    that weighs when a live stream scores a few dozen windows per call. Here numpy sorts the
    rows (NaNs last) and one compiled loop does the rest, row by row.
    """
    context = np.ascontiguousarray(context, dtype=np.float32)
    n, c = context.shape
    values = np.empty((n, c), np.float32)
    mask = np.empty((n, c), np.float32)
    loc = np.empty((n, 1), np.float32)
    scale = np.empty((n, 1), np.float32)
    _prepare_rows(
        context, np.sort(context, axis=1), np.float32(INPUT_CLIP), values, mask, loc, scale
    )
    return values, mask, loc, scale


@njit(cache=True)
def _prepare_rows(context, srt_rows, clip, values, mask, loc, scale):  # pragma: no cover - numba
    # Each step is written as torch computes it in float32 (`nanquartiles`, `normalise`,
    # `impute`), so that both give the same bits.
    n, c = context.shape
    q = np.empty(3, np.float32)
    fractions = (np.float32(0.25), np.float32(0.5), np.float32(0.75))
    for i in range(n):
        row, srt = context[i], srt_rows[i]
        observed = 0
        for j in range(c):
            if not math.isnan(row[j]):
                observed += 1
        for k in range(3):
            rank = max(fractions[k] * np.float32(observed - 1), np.float32(0.0))
            below, above = int(rank), int(math.ceil(rank))
            w = rank - np.float32(below)
            a, b = srt[below], srt[above]
            # torch.lerp's two-sided formula
            q[k] = a + w * (b - a) if w < 0.5 else b - (b - a) * (np.float32(1.0) - w)
        med = q[1]  # NaN when the row has no observed value
        s = (q[2] - q[0]) / np.float32(1.349)
        if not s > 0:
            total = np.float32(0.0)
            for j in range(c):
                if not math.isnan(row[j]):
                    total += abs(row[j] - med)
            s = np.float32(1.2533) * (total / np.float32(observed)) if observed else np.nan
        s = max(s, np.float32(1e-6) * abs(med)) if not math.isnan(s) else s
        if math.isnan(med):
            med = np.float32(0.0)
        if not (math.isfinite(s) and s > 0):
            s = np.float32(1.0)
        loc[i, 0], scale[i, 0] = med, s
        last = np.float32(0.0)  # forward fill; leading gaps -> 0 (the median)
        for j in range(c):
            if math.isnan(row[j]):
                values[i, j], mask[i, j] = last, 0.0
            else:
                last = min(max((row[j] - med) / s, -clip), clip)
                values[i, j], mask[i, j] = last, 1.0


# ----------------------------------------------------------------------------- the network


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(n, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        # Bidirectional (encoder) attention: every patch of the context may look at every other.
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(n, t, d))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm Transformer block (as in GPT-2 / nanoGPT): stable to train without LR tricks."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.mlp(self.ln2(x))


# Predicted log-scales are clamped: exp(-7) .. exp(5) normalised units covers every sane case
# and keeps the likelihood finite on a flat line.
LOG_SCALE_MIN, LOG_SCALE_MAX = -7.0, 5.0


class PatchForecaster(nn.Module):
    """Forecast `horizon` normalised points from a normalised, imputed context.

    Input: values [N, C] and observed mask [N, C] (C = cfg.context).
    Output: (location [N, H], log Laplace scale [N, H]), both in normalised units.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        # A patch token sees the patch's values and its mask (2 * patch numbers).
        self.embed = nn.Linear(2 * cfg.patch, cfg.d_model)
        # Learned absolute positions: the number of patches is fixed by the config.
        self.pos = nn.Parameter(torch.zeros(1, cfg.n_patches, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        # Flatten head (PatchTST): every token contributes to every forecast step.
        self.head = nn.Linear(cfg.n_patches * cfg.d_model, 2 * cfg.horizon)
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2 style: N(0, 0.02) for linears, zero biases, and residual projections scaled by
        # 1/sqrt(2 * n_layers) so the residual stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "ln" in name:
                nn.init.ones_(p)
            elif name.endswith("proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * self.cfg.n_layers))
            else:
                nn.init.normal_(p, 0.0, 0.02)
        # The head starts at zero: the first forecast is "the median with scale 1" (one robust
        # standard deviation of the context), a sane baseline.
        nn.init.zeros_(self.head.weight)

    def forward(
        self, values: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, c = values.shape
        p = self.cfg.patch
        x = torch.cat([values.view(n, c // p, p), mask.view(n, c // p, p)], dim=2)
        h = self.drop(self.embed(x) + self.pos)
        for block in self.blocks:
            h = block(h)
        h = self.ln_f(h)
        loc, log_scale = self.head(h.reshape(n, -1)).split(self.cfg.horizon, dim=1)
        if self.cfg.anchor == "last":
            loc = loc + values[:, -1:]
        return loc, log_scale.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)


def laplace_nll(loc: torch.Tensor, log_scale: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of `target` under Laplace(loc, exp(log_scale)), constants dropped.

    The Laplace (rather than Gaussian) likelihood: its location estimate is the median, so the
    routine spikes of real metrics do not drag the forecast, and |x - loc| / scale is exactly the
    error the scorer reports.
    """
    return ((target - loc).abs() * torch.exp(-log_scale) + log_scale).mean()


def prepare(context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw context [N, C] (NaN = missing) -> (values, mask, loc, scale) ready for the network.

    Shared by training and scoring so both see exactly the same preprocessing.
    """
    loc, scale = normalise(context)
    filled, mask = impute((context - loc) / scale)
    return filled.clamp(-INPUT_CLIP, INPUT_CLIP), mask, loc, scale
