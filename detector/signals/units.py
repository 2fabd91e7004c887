"""One rule for signals that see several dimensions: each dimension's raw value in units of its
own running mean, the root mean square of those, converted back by the geometric mean of the
units. One dimension gives its raw value unchanged; a dimension in large units does not drown
the others; the units learn a point only after it was used (no lookahead)."""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True)
def combine_dims(dims, values, n, scale, learned, s, long_window):
    """values[:n] are the answering dimensions' raw values, dims[:n] their indices; scale [D]
    is the series' running mean per dimension, learned[s] the points that updated it."""
    if n == 0:
        return math.nan
    if scale.shape[0] == 0:  # one dimension: no units to learn
        return values[0]
    learned[s] += 1.0
    a = 1.0 / min(learned[s], long_window)
    sq, log_unit = 0.0, 0.0
    for m in range(n):
        d, r = dims[m], values[m]
        sd = scale[d] if scale[d] > 0 else r
        if sd > 0:
            sq += (r / sd) ** 2
            log_unit += math.log(sd)
        scale[d] = sd + a * (r - sd)
    return math.sqrt(sq / n) * math.exp(log_unit / n)


@njit(cache=True)
def combine_rows(slots, values, long_window, scale, learned, out):
    """out[i, j] <- values[i, j, :] (NaN or inf: that dimension has no answer) combined by
    `combine_dims`, point by point in time order, for the rows whose slot is not -1."""
    dims = values.shape[2]
    answered = np.empty(dims, dtype=np.int64)
    found = np.empty(dims, dtype=np.float64)
    for i in range(values.shape[0]):
        s = slots[i]
        if s < 0:
            continue
        for j in range(values.shape[1]):
            n = 0
            for d in range(dims):
                v = values[i, j, d]
                if math.isfinite(v):
                    answered[n] = d
                    found[n] = v
                    n += 1
            out[i, j] = combine_dims(answered, found, n, scale[s], learned, s, long_window)
