"""Per-source tumbling-window summaries of log lines: counts, new templates, highlights, text.

For each source, lines fall into tumbling windows aligned to the epoch (start = floor(ts / W) * W).
A window closes when a line of the same source arrives at or after its end (event time), when
`advance(watermark)` passes its end, or on `flush()`. Lines that arrive late (before the open
window's start) are counted in the open window: windows already published are never reopened.

Windows can be kept per scope as well as per source: the Kafka head passes each line's partition
as its scope and its offset as its position, so a partition's windows hold only that partition's
lines, are rebuilt from that partition alone after a restart, and `holds()` tells the lowest
position of a line in a window still open (the offset a commit must not pass). Without a scope
(the CLI) there is one window per source.

A summary leads with what matters, not with the most frequent routine lines: its templates are
listed flagged ones first, where a template is flagged when it is new (first seen in this window
for this source), rising (its count is at least RISE_FACTOR times its average count per window
before, plus RISE_MIN; the average is an exponential moving average over the source's windows) or
error-class (lines the severity head or the line's own header calls error). `leads` names the
flagged templates with why, the text starts with them, and the highlights are their lines first.

Highlights: maximal marginal relevance (Carbonell & Goldstein, SIGIR 1998) over the window's
distinct templates, on their sentence embeddings. Relevance mixes centrality (cosine to the
count-weighted centroid of the window: what the window is mostly about) and novelty (one minus the
best cosine to the source's earlier templates: what it has not said before). MMR then trades
relevance against redundancy with the highlights already picked, so three highlights say three
different things. Each highlight is the first raw line of its template in the window.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from detector.logs.templates import embedding_text
from detector.messages import Lead, LogSummary, SummaryWindow, TemplateCount


@dataclass(frozen=True)
class SummaryConfig:
    window_s: float = 300.0
    highlights: int = 3
    mmr_lambda: float = 0.7  # relevance vs. redundancy in MMR (1 = relevance only)
    centrality_weight: float = 0.5  # relevance = w * centrality + (1 - w) * novelty
    max_summary_templates: int = 50  # templates listed per summary (the text counts them all)
    most_frequent: int = 3  # templates named in the text
    leads: int = 5  # flagged templates named in `leads` and the text
    rate_alpha: float = 0.3  # weight of the last window in a template's average count


@dataclass
class _Window:
    start: float
    end: float
    lines: int = 0
    counts: dict[int, int] = field(default_factory=dict)  # template id -> lines
    example: dict[int, str] = field(default_factory=dict)  # template id -> first raw line
    new: set[int] = field(default_factory=set)
    errors: dict[int, int] = field(default_factory=dict)  # template id -> error-class lines
    first: int | None = None  # position of its first line (the Kafka offset), if given


@dataclass
class _SourceState:
    windows: dict[Hashable, _Window] = field(default_factory=dict)  # scope -> open window
    seen: set[int] = field(default_factory=set)  # template ids from earlier windows
    rate: dict[int, float] = field(default_factory=dict)  # template id -> average count/window


RISE_FACTOR = 3.0  # a count this many times the template's usual count per window is rising
RISE_MIN = 5  # ... plus this many lines, so that 0 -> 2 is not a rise
TemplateLookup = Callable[[str, int], str | None]
Encode = Callable[[Sequence[str]], np.ndarray]


def _fmt_window(start: float, end: float) -> str:
    """ "2008-11-09 20:35-20:40 UTC"; seconds only when the bounds have them; both dates when the
    window crosses midnight."""
    a = datetime.fromtimestamp(start, UTC)
    b = datetime.fromtimestamp(end, UTC)
    clock = "%H:%M:%S" if a.second or b.second else "%H:%M"
    same_day = (b - a) <= timedelta(days=1) and a.date() == (b - timedelta(microseconds=1)).date()
    if same_day:
        return f"{a:%Y-%m-%d} {a.strftime(clock)}-{b.strftime(clock)} UTC"
    return f"{a:%Y-%m-%d} {a.strftime(clock)} - {b:%Y-%m-%d} {b.strftime(clock)} UTC"


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def mmr_select(vectors: np.ndarray, relevance: np.ndarray, k: int, lam: float) -> list[int]:
    """Indices of k items by maximal marginal relevance (vectors L2-normalised, rows = items)."""
    chosen: list[int] = []
    if len(vectors) == 0:
        return chosen
    sims = vectors @ vectors.T
    candidates = list(range(len(vectors)))
    while candidates and len(chosen) < k:
        if chosen:
            redundancy = sims[np.ix_(candidates, chosen)].max(axis=1)
        else:
            redundancy = np.zeros(len(candidates))
        scores = lam * relevance[candidates] - (1.0 - lam) * redundancy
        best = candidates[int(np.argmax(scores))]
        chosen.append(best)
        candidates.remove(best)
    return chosen


class WindowSummarizer:
    """Tumbling windows per source over mined lines (see module docstring).

    `template_of(source, template_id)` gives a template's current text (templates generalise as
    lines arrive, so the text is read when the window closes); `encode` embeds texts (the LogAnalyzer
    passes its cached encoder, so a template is embedded once).
    """

    def __init__(
        self,
        config: SummaryConfig,
        template_of: TemplateLookup,
        encode: Encode,
        abstractive: Callable[[str], str] | None = None,
    ) -> None:
        if config.window_s <= 0:
            raise ValueError("window_s must be positive")
        self.config = config
        self.template_of = template_of
        self.encode = encode
        self.abstractive = abstractive
        self._sources: dict[str, _SourceState] = {}

    def add(
        self,
        source: str,
        ts: float,
        template_id: int,
        message: str,
        scope: Hashable = None,
        position: int | None = None,
        error: bool = False,
    ) -> list[LogSummary]:
        """Count one mined line; returns the summary of the window it closed, if any.

        `scope` keeps separate windows for the same source (the Kafka partition); `position`
        (the offset) of a window's first line is what `holds()` reports while it is open;
        `error`: the line is error-class."""
        state = self._sources.get(source)
        if state is None:
            state = self._sources[source] = _SourceState()
        out: list[LogSummary] = []
        window = state.windows.get(scope)
        if window is not None and ts >= window.end:
            out.append(self._close(source, state, scope))
            window = None
        if window is None:
            start = (ts // self.config.window_s) * self.config.window_s
            window = _Window(start=start, end=start + self.config.window_s, first=position)
            state.windows[scope] = window
        window.lines += 1
        if template_id in window.counts:
            window.counts[template_id] += 1
        else:
            window.counts[template_id] = 1
            window.example[template_id] = message
            if template_id not in state.seen:
                window.new.add(template_id)
        if error:
            window.errors[template_id] = window.errors.get(template_id, 0) + 1
        return out

    def advance(self, watermark: float) -> list[LogSummary]:
        """Close every open window that ends at or before `watermark` (e.g. wall clock - grace)."""
        out = []
        for source, state in self._sources.items():
            for scope in [k for k, w in state.windows.items() if w.end <= watermark]:
                out.append(self._close(source, state, scope))
        return out

    def flush(self) -> list[LogSummary]:
        """Close all open windows (end of input, shutdown)."""
        out = []
        for source, state in self._sources.items():
            for scope in list(state.windows):
                out.append(self._close(source, state, scope))
        return out

    def holds(self) -> dict[Hashable, int]:
        """Per scope, the lowest position of a first line among its open windows (windows
        added without a position are left out)."""
        low: dict[Hashable, int] = {}
        for state in self._sources.values():
            for scope, window in state.windows.items():
                if window.first is not None and window.first < low.get(scope, window.first + 1):
                    low[scope] = window.first
        return low

    def drop(self, scopes: Collection[Hashable]) -> None:
        """Forget the open windows of these scopes unpublished (their lines are read again
        elsewhere: a partition given away, or re-consumed from the last commit)."""
        if not scopes:
            return
        for state in self._sources.values():
            for scope in [k for k in state.windows if k in scopes]:
                del state.windows[scope]

    def forget(self, keep: Callable[[str, int], bool], max_sources: int) -> None:
        """Drop history of templates the miner evicted, and of sources beyond max_sources."""
        for source, state in list(self._sources.items()):
            state.seen = {t for t in state.seen if keep(source, t)}
            state.rate = {t: r for t, r in state.rate.items() if t in state.seen}
        idle = [s for s, st in self._sources.items() if not st.windows]
        while len(self._sources) > max_sources and idle:
            del self._sources[idle.pop(0)]

    # ------------------------------------------------------------------------------------------

    def _close(self, source: str, state: _SourceState, scope: Hashable) -> LogSummary:
        window = state.windows.pop(scope)
        rising = {
            t
            for t, n in window.counts.items()
            if t not in window.new and n >= RISE_FACTOR * state.rate.get(t, 0.0) + RISE_MIN
        }
        flagged = window.new | rising | set(window.errors)
        ids = sorted(
            window.counts,
            key=lambda t: (t not in flagged, -window.errors.get(t, 0), -window.counts[t], t),
        )
        texts = {}
        for t in ids:
            text = self.template_of(source, t)
            texts[t] = text if text is not None else window.example[t]
        leads = []
        for t in [t for t in ids if t in flagged][: self.config.leads]:
            why = [w for w, on in (("error", t in window.errors), ("new", t in window.new),
                                   ("rising", t in rising)) if on]  # fmt: skip
            usual = round(state.rate.get(t, 0.0), 2) if t in rising else None
            leads.append(Lead(texts[t], window.counts[t], why, usual))
        highlights = self._highlights(source, state, window, ids, texts, flagged)
        state.seen.update(window.counts)
        a = self.config.rate_alpha
        for t in set(state.rate) | set(window.counts):
            state.rate[t] = (1.0 - a) * state.rate.get(t, 0.0) + a * window.counts.get(t, 0)
        listed = ids[: self.config.max_summary_templates]
        templates = [
            TemplateCount(texts[t], window.counts[t], t in window.new, t in rising,
                          window.errors.get(t, 0))
            for t in listed
        ]  # fmt: skip
        summary = self._text(source, window, ids, texts, leads)
        if self.abstractive is not None:
            summary = self.abstractive(
                summary + " Highlights: " + " | ".join(highlights) if highlights else summary
            )
        return LogSummary(
            source=source,
            window=SummaryWindow(window.start, window.end),
            lines=window.lines,
            templates=templates,
            leads=leads,
            highlights=highlights,
            summary=summary,
        )

    def _highlights(
        self,
        source: str,
        state: _SourceState,
        window: _Window,
        ids: list[int],
        texts: dict[int, str],
        flagged: set[int],
    ) -> list[str]:
        """The flagged templates' lines first (in `ids` order), then MMR over the rest."""
        k = self.config.highlights
        if k <= 0 or not ids:
            return []
        first = [t for t in ids if t in flagged][:k]
        rest = [t for t in ids if t not in flagged]
        if len(first) == k or not rest:
            return [window.example[t] for t in first]
        return [window.example[t] for t in first] + self._mmr(
            source, state, window, rest, texts, k - len(first)
        )

    def _mmr(
        self,
        source: str,
        state: _SourceState,
        window: _Window,
        ids: list[int],
        texts: dict[int, str],
        k: int,
    ) -> list[str]:
        if len(ids) <= 1:
            return [window.example[ids[0]]]
        words = [embedding_text(texts[t]) or texts[t] for t in ids]
        vecs = self.encode(words)
        counts = np.asarray([window.counts[t] for t in ids], dtype=np.float64)
        centroid = (vecs * counts[:, None]).sum(axis=0)
        centroid /= np.linalg.norm(centroid) or 1.0
        centrality = vecs @ centroid
        history = [t for t in state.seen if self.template_of(source, t) is not None]
        if history:
            hist_texts = [embedding_text(self.template_of(source, t) or "") for t in history]
            hist_vecs = self.encode([h or "-" for h in hist_texts])
            novelty = 1.0 - (vecs @ hist_vecs.T).max(axis=1)
        else:
            novelty = np.ones(len(ids))
        w = self.config.centrality_weight
        relevance = w * centrality + (1.0 - w) * novelty
        chosen = mmr_select(vecs, relevance, k, self.config.mmr_lambda)
        return [window.example[ids[i]] for i in chosen]

    def _text(
        self,
        source: str,
        window: _Window,
        ids: list[int],
        texts: dict[int, str],
        leads: list[Lead],
    ) -> str:
        n_new = len(window.new)
        parts = [
            f"{source}, {_fmt_window(window.start, window.end)}: {window.lines:,} "
            f"line{'s' if window.lines != 1 else ''}"
        ]
        for lead in leads[:3]:
            what = " and ".join(lead.why)
            usual = "" if lead.usual is None else f", usually {lead.usual:g}"
            parts.append(f'{what}: "{_short(lead.template)}" ({lead.count:,}{usual})')
        parts += [
            f"{len(ids):,} template{'s' if len(ids) != 1 else ''}",
            f"{n_new:,} new template{'s' if n_new != 1 else ''}",
        ]
        top = sorted(ids, key=lambda t: (-window.counts[t], t))[: self.config.most_frequent]
        if top:
            parts.append(
                "most frequent: "
                + ", ".join(f'"{_short(texts[t])}" ({window.counts[t]:,})' for t in top)
            )
        return "; ".join(parts) + "."
