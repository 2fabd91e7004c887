"""Topic label set on loghub: hand-labelled ground truth, a keyword baseline, leave one system out.

The keyword baseline was written and committed before any topic measurement (see the guide in
`benchmarks/data/log_topics_guide.md`): the first pattern that matches the message content names
its topic, in the order below (specific words first); no match is `application`.
"""

from __future__ import annotations

import re

TOPICS = ("network", "storage", "security", "resources", "hardware", "application")

_W = r"(?<![A-Za-z])"
TOPIC_KEYWORDS: tuple[tuple[str, str], ...] = (
    (
        "security",
        r"auth|login|logon|logoff|logout|password|passwd|permission|denied|\bdeny\b|sshd?\b|"
        r"credential|certificate|privilege|sudo|pam_|kerberos|token|security|sandbox|"
        r"break-in|intrusion|invalid user|\buser\b|\bsession\b",
    ),
    (
        "hardware",
        r"hardware|device|sensor|temperature|thermal|power|battery|\bfan\b|driver|firmware|"
        r"\busb\b|voltage|\bpci|acpi|\birq\b|interrupt|bios|display|screen|keyboard|mouse|"
        r"\bbluetooth\b",
    ),
    (
        "resources",
        r"memory|\bmem\b|\bcpu\b|thread|quota|container|heap|resource|\bload\b|capacity|"
        r"alloc|\bgc\b|garbage|\boom\b|\bpool\b|\bcores?\b|\blimit",
    ),
    (
        "storage",
        r"disk|file|filesystem|\bblock|blk_|volume|mount|database|\bdb\b|replica|storage|"
        r"director(?:y|ies)|\bpath\b|cache|partition|spill|checkpoint|\bwrit(?:e|ing|ten)\b|"
        r"\bread\b|namenode|datanode",
    ),
    (
        "network",
        r"network|connect|socket|\bhost|\bport\b|\bdns\b|proxy|https?\b|\btcp\b|\budp\b|"
        r"\bip\b|address|route|packet|interface|\beth\d|wi-?fi|wlan|\bpeer\b|remote|"
        r"\bclient\b|\bserver\b|\burl\b|\d+\.\d+\.\d+\.\d+",
    ),
)
_TOPIC_RES = tuple((topic, re.compile(p, re.IGNORECASE)) for topic, p in TOPIC_KEYWORDS)


def topic_keyword_label(message: str) -> str:
    """The keyword baseline: the first topic whose pattern matches, else application."""
    for topic, rx in _TOPIC_RES:
        if rx.search(message):
            return topic
    return "application"
