"""Template mining for log lines: variable masking plus Drain3, one bounded miner per source.

Method: Drain (He et al., "Drain: An Online Log Parsing Approach with Fixed Depth Tree", ICWS
2017) as implemented by IBM's `drain3` package. Before a line reaches Drain we mask the parts that
vary between occurrences of the same event (IP addresses, host names, hex, UUIDs, paths, numbers),
so that two lines that differ only in those parts land in the same template. That is what makes the
per-template classification cache work, and what keeps variables from deciding a label.

State is explicit and bounded: each source's Drain tree holds at most `max_templates` clusters
(least recently used are evicted, a Drain3 feature), and at most `max_sources` sources are kept.

Example:
    >>> miner = TemplateMiner(TemplateConfig())
    >>> a = miner.add("hdfs", "Received block blk_123 of size 67108864 from /10.250.19.102")
    >>> b = miner.add("hdfs", "Received block blk_-987 of size 3545 from /10.251.71.16")
    >>> a.template_id == b.template_id, b.template
    (True, 'Received block blk_<NUM> of size <NUM> from /<IP>')
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass

# Host names are variables like IPs (a proxy log names a new host on almost every line), and a host
# at the start of a line would otherwise become a Drain tree key and split one event into hundreds
# of templates. A dotted name (optionally with a port) counts as a host when it ends in a generic
# top-level domain, optionally plus a country code (edu.hk, com.cn), or in a country code with a
# port or with three or more labels and a digit or hyphen (dsl-1-2.isp.nl). Java/Android names
# (org.apache.X, com.android.phone, mapred.task.id) end in neither; the lookahead keeps "java.net"
# out of "java.net.ConnectException". The regex finds dotted names that end in a candidate top-level
# domain; the rest of the test runs in Python on those few candidates. The dotted run is taken
# whole (possessive) and its last label checked by lookbehinds: backtracking label by label to
# find a domain was a third of the masking time.
_GENERIC_TLDS = frozenset(("com", "net", "org", "edu", "gov", "mil", "int", "info", "biz", "io"))
_DOTTED_RE = re.compile(
    r"[A-Za-z0-9](?<![\w.\-][A-Za-z0-9])[A-Za-z0-9\-]*+(?:\.[A-Za-z0-9\-]++)++"
    + "(?:(?<=\\.[a-z]{2})|"
    + "|".join(f"(?<=\\.{tld})" for tld in sorted(_GENERIC_TLDS))
    + r")(?::\d{1,5})?(?![\w\-]|\.[\w\-])"
)
_CC_TLD_RE = re.compile(r"[a-z]{2}")
_DIGIT_OR_HYPHEN_RE = re.compile(r"[\d\-]")


def _host_or_keep(match: re.Match[str]) -> str:
    name = match.group()
    name, port = name.split(":", 1) if ":" in name else (name, "")
    labels = name.split(".")
    if any(not label or label[0] == "-" or label[-1] == "-" for label in labels):
        return match.group()
    last = labels[-1]
    country = _CC_TLD_RE.fullmatch(last) is not None
    if last in _GENERIC_TLDS or (country and len(labels) > 2 and labels[-2] in _GENERIC_TLDS):
        return "<HOST>"
    if country and (port or (len(labels) > 2 and _DIGIT_OR_HYPHEN_RE.search(name))):
        return "<HOST>"
    return match.group()


_ANY_DIGIT_RE = re.compile(r"\d")


# Order matters: the specific shapes (UUID, IP, hex) must be masked before the generic number rule
# eats their digits. Masks carry no digits, so Drain does not re-parametrize the masked tokens and the
# template keeps the readable mask name. Masking is most of a line's cost once its template is
# known, so each pattern begins with the character class its match must start with (the regex
# engine then skips to candidate characters instead of trying every position; the word-boundary
# and "not after a digit" conditions follow as fixed-width lookbehinds), and `mask_variables`
# skips a rule when the line lacks a character the rule cannot match without.
_HEXC = "[0-9a-fA-F]"
_UUID_RE = re.compile(
    rf"{_HEXC}(?<!\w{_HEXC}){_HEXC}{{7}}-{_HEXC}{{4}}-{_HEXC}{{4}}-{_HEXC}{{4}}-{_HEXC}{{12}}\b"
)
_IP_RE = re.compile(r"\d(?<![\w.]\d)\d{0,2}(?:\.\d{1,3}){3}(?::\d{1,5})?(?![\w.])")
_MAC_RE = re.compile(rf"{_HEXC}(?<!\w{_HEXC}){_HEXC}(?:[:-]{_HEXC}{{2}}){{5}}\b")
_HEX_0X_RE = re.compile(r"\b0[xX][0-9a-fA-F]+\b")
# Bare hex of 6+ characters with at least one digit and one letter a-f (object hashes, ids).
_HEX_BARE_RE = re.compile(
    rf"{_HEXC}(?<!\w{_HEXC})(?={_HEXC}{{5}})"
    rf"(?:(?<=\d)(?={_HEXC}*[a-fA-F])|(?<=[a-fA-F])(?={_HEXC}*\d)){_HEXC}{{5,}}+\b"
)
# Unix paths with two or more segments, and Windows drive paths.
_PATH_RE = re.compile(r"(?<![\w/])(?:/[\w.\-@~+]+){2,}/?")
_WIN_PATH_RE = re.compile(r"\b[A-Za-z]:\\[^\s,;\"']*")
# Numbers, including dotted/comma/colon groups (versions, times, 1,204): one mask per run.
# A leading minus belongs to the number unless it follows a digit (dates: 2015-10-18).
_NUM_RE = re.compile(r"[-\d](?:(?<=-)(?<!\d-)(?=\d)|(?<=\d)(?<!\d\d))\d*(?:[.,:]\d+)*")


def mask_variables(line: str) -> str:
    """Replace the variable parts of a log line (ids, numbers, IPs, hex, paths) with named masks."""
    # The skip tests read the line as it came: masks hold none of the characters they count, so a
    # rule the masked line could not match is skipped or finds nothing, the same either way.
    dots, hyphens = line.count("."), line.count("-")
    digit = _ANY_DIGIT_RE.search(line) is not None
    if hyphens >= 4:
        line = _UUID_RE.sub("<UUID>", line)
    if dots:
        line = _DOTTED_RE.sub(_host_or_keep, line)
        if dots >= 3 and digit:
            line = _IP_RE.sub("<IP>", line)
    if hyphens + line.count(":") >= 5:
        line = _MAC_RE.sub("<MAC>", line)
    if "0x" in line or "0X" in line:
        line = _HEX_0X_RE.sub("<HEX>", line)
    if digit:
        line = _HEX_BARE_RE.sub("<HEX>", line)
    if "/" in line:
        line = _PATH_RE.sub("<PATH>", line)
    if ":\\" in line:
        line = _WIN_PATH_RE.sub("<PATH>", line)
    if digit:
        line = _NUM_RE.sub("<NUM>", line)
    return line


# Drain3 logs one INFO line per miner it starts, i.e. per source: noise at our scale.
logging.getLogger("drain3.template_miner").setLevel(logging.WARNING)

MASK_TOKENS: tuple[str, ...] = (
    "<UUID>",
    "<HOST>",
    "<IP>",
    "<MAC>",
    "<HEX>",
    "<PATH>",
    "<NUM>",
    "<*>",
)

_PLACEHOLDER_RE = re.compile("|".join(map(re.escape, MASK_TOKENS)))
_CAMEL_RE = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NON_WORD_RE = re.compile(r"[^A-Za-z'!?]+")


def embedding_text(template: str, max_words: int = 48) -> str:
    """The words of a template as the sentence encoder should see them.

    Masks and punctuation carry no meaning for a sentence encoder and only dilute it, so they are
    dropped; identifiers are split into words ("getRunningAppProcesses" -> "get Running App
    Processes", "NameSystem.addStoredBlock" -> "Name System add Stored Block") because the encoder's
    vocabulary knows the words, not the identifiers. The result depends on the template only, never
    on the variable values of a particular line.
    """
    text = _PLACEHOLDER_RE.sub(" ", template)
    text = _CAMEL_RE.sub(" ", text)
    words = _NON_WORD_RE.sub(" ", text).split()
    return " ".join(words[:max_words])


_PROSE_SPLIT_RE = re.compile(r"[\s,;:()\[\]{}\"=<>|]+")
_PROSE_TOKEN_RE = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")


def prose_words(template: str, min_len: int = 3) -> tuple[str, ...]:
    """The template's plain words, lower-cased: tokens that are words, not identifiers.

    "Failed", "ERROR", "can't" are words; "invalidSet", "mod_jk", "NameSystem.delete" and
    "getTasks" are identifiers (camelCase, underscores, dots) that name things rather than say what
    happened, so they are left out of the word score (the sentence embedding still reads them).
    """
    words: list[str] = []
    for raw in _PROSE_SPLIT_RE.split(_PLACEHOLDER_RE.sub(" ", template)):
        token = raw.strip(".!?*#-+/\\'`~")
        if len(token) < min_len or not _PROSE_TOKEN_RE.fullmatch(token):
            continue
        letters = token.replace("'", "")
        if letters.islower() or letters.isupper() or letters[1:].islower():
            words.append(token.lower())
    return tuple(dict.fromkeys(words))


@dataclass(frozen=True)
class TemplateConfig:
    """Drain settings and the bounds on template state.

    sim_th / depth / max_children are Drain's own parameters (Drain3 defaults). max_templates bounds
    each source's clusters (LRU eviction); max_sources bounds how many sources keep a miner.
    """

    sim_th: float = 0.4
    depth: int = 4
    max_children: int = 100
    max_templates: int = 2000
    max_sources: int = 1000


@dataclass(frozen=True)
class MinedLine:
    """Where one line landed: its source's template id, the current template text, and whether the
    template was created by this line."""

    source: str
    template_id: int
    template: str
    created: bool


class _SourceMiner:
    """One source's Drain3 miner. Drain3 is imported lazily; it is cheap, but the CLI must stay fast."""

    def __init__(self, config: TemplateConfig) -> None:
        from drain3 import TemplateMiner as Drain3Miner
        from drain3.template_miner_config import TemplateMinerConfig

        cfg = (
            TemplateMinerConfig()
        )  # built explicitly: TemplateMiner(config=None) reads ./drain3.ini
        cfg.drain_sim_th = config.sim_th
        cfg.drain_depth = config.depth
        cfg.drain_max_children = config.max_children
        cfg.drain_max_clusters = config.max_templates
        cfg.masking_instructions = []  # we mask before Drain (mask_variables), once per line
        cfg.parametrize_numeric_tokens = True
        self.miner = Drain3Miner(persistence_handler=None, config=cfg)

    def add(self, masked: str) -> tuple[int, str, bool]:
        # Drain.add_log_message directly: TemplateMiner.add_log_message adds a result dict and a
        # profiler call per line that we do not need on the hot path.
        cluster, change_type = self.miner.drain.add_log_message(masked)
        return cluster.cluster_id, cluster.get_template(), change_type == "cluster_created"

    def template(self, template_id: int) -> str | None:
        cluster = self.miner.drain.id_to_cluster.get(template_id)
        return None if cluster is None else cluster.get_template()

    def has(self, template_id: int) -> bool:
        return self.miner.drain.id_to_cluster.get(template_id) is not None


class TemplateMiner:
    """Per-source template mining with bounded state (see module docstring)."""

    def __init__(self, config: TemplateConfig) -> None:
        self.config = config
        self._sources: OrderedDict[str, _SourceMiner] = OrderedDict()
        self.evicted_sources = 0

    def _miner(self, source: str) -> _SourceMiner:
        miner = self._sources.get(source)
        if miner is None:
            miner = _SourceMiner(self.config)
            self._sources[source] = miner
            if len(self._sources) > self.config.max_sources:
                self._sources.popitem(last=False)
                self.evicted_sources += 1
        else:
            self._sources.move_to_end(source)
        return miner

    def add(self, source: str, message: str) -> MinedLine:
        """Mine one line of `source`; returns its template (ids are per source)."""
        masked = mask_variables(message.strip())
        template_id, template, created = self._miner(source).add(masked if masked else "<empty>")
        return MinedLine(source, template_id, template, created)

    def template(self, source: str, template_id: int) -> str | None:
        """The current text of a template (it generalises as lines arrive); None once evicted."""
        miner = self._sources.get(source)
        return None if miner is None else miner.template(template_id)

    def sources(self) -> list[str]:
        return list(self._sources)

    def template_count(self, source: str) -> int:
        miner = self._sources.get(source)
        return 0 if miner is None else len(miner.miner.drain.id_to_cluster)
