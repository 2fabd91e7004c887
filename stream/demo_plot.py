"""The picture `tsguard demo` draws at its end: one row per series, in series time, with its
injections shaded (by what the demo expected of them), the rules' mute hatched, the anomaly
episodes published marked, and incidents (tsguard.incidents), when there were any, outlined."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

# What an injection was for -> its shade and legend entry.
ROLES = {
    "catch": ("tab:orange", "injected anomaly"),
    "judge": ("tab:purple", "judged a false positive"),
    "repeat": ("tab:pink", "the same surprise after the verdict"),
    "mute": ("tab:gray", "injected inside the mute"),
}


@dataclass(frozen=True)
class Span:
    """[start, end) in series time (epoch seconds) on one series; `end` None: still open."""

    series: str
    start: float
    end: float | None
    role: str = ""
    note: str = ""  # written beside it in the picture


@dataclass
class Picture:
    """What the demo saw, in series time."""

    ts: np.ndarray  # epoch seconds of every point index
    values: dict[str, np.ndarray]  # series -> its values, index-aligned with ts
    injections: list[Span] = field(default_factory=list)
    mutes: list[Span] = field(default_factory=list)
    episodes: list[Span] = field(default_factory=list)
    incidents: list[tuple[str, list[str], float, float | None]] = field(default_factory=list)
    first: int = 0  # the first point index to draw


def draw(picture: Picture, path: str | Path) -> Path:
    """Write the PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = list(picture.values)
    fig, axes = plt.subplots(len(names), 1, figsize=(13, 1.5 * len(names) + 1), sharex=True,
                             squeeze=False)  # fmt: skip
    step = float(np.median(np.diff(picture.ts))) if len(picture.ts) > 1 else 60.0
    last = picture.ts[-1] + step
    wide = max(3 * step, (last - picture.ts[picture.first]) / 150)  # a spike stays visible

    def when(t: float):
        return datetime.fromtimestamp(t, UTC)

    x = [when(t) for t in picture.ts[picture.first :]]
    for ax, name in zip(axes[:, 0], names, strict=True):
        ax.plot(x, picture.values[name][picture.first :], lw=0.7, color="tab:blue")
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
        ax.tick_params(labelsize=7)
        for m in (s for s in picture.mutes if s.series == name):
            ax.axvspan(when(m.start), when(m.end or last), facecolor="none", edgecolor="gray",
                       hatch="//", lw=0.0)  # fmt: skip
        for inj in (s for s in picture.injections if s.series == name):
            start = inj.start - wide / 3
            end = max(inj.end or last, start + wide)
            ax.axvspan(when(start), when(end), color=ROLES[inj.role][0], alpha=0.4, lw=0)
            if inj.note:
                ax.text(when(end), 0.75, f" {inj.note}", fontsize=7,
                        color=ROLES[inj.role][0], transform=ax.get_xaxis_transform())  # fmt: skip
        for ep in (s for s in picture.episodes if s.series == name):
            end = ep.end if ep.end is not None else last
            ax.axvline(when(ep.start), color="red", lw=0.6, alpha=0.7)
            ax.axvspan(when(ep.start), when(end), ymin=0.92, ymax=1.0, color="red", lw=0)
        for incident_id, members, start, end in picture.incidents:
            if name in members:
                ax.axvspan(when(start), when(end or last), facecolor="none", edgecolor="green",
                           ls="--", lw=1.0)  # fmt: skip
                ax.text(when(start), 0.02, f"incident {incident_id[:8]}", color="green",
                        fontsize=6, transform=ax.get_xaxis_transform())  # fmt: skip
    legend = [Patch(color=c, alpha=0.4, label=label) for c, label in ROLES.values()]
    legend += [Patch(facecolor="none", edgecolor="gray", hatch="//", label="muted (rules file)"),
               Patch(color="red", label="anomaly episode (start .. end)")]  # fmt: skip
    if picture.incidents:
        legend.append(Patch(facecolor="none", edgecolor="green", ls="--", label="incident"))
    fig.legend(handles=legend, loc="upper center", ncol=4, fontsize=7, frameon=False)
    axes[-1, 0].set_xlabel("series time (UTC)")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
