"""Reading a verification LM's free text as a verdict, defensively.

The verification prompt asks for a label on the first line (SUPPORTED, REFUTED or NOT ENOUGH
INFO) and a reason after it. A small model does not always comply: it writes "True." or
"The claim is false", puts the label later, repeats the prompt, or writes nothing useful.
The first label-like word of the first non-blank line decides; failing that, an explicit
label anywhere in the text; failing that the verdict is "unverifiable" with `parsed` false,
so a reader can tell "the model said so" from "the model's output could not be read".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SUPPORTED, REFUTED, UNVERIFIABLE = "supported", "refuted", "unverifiable"

# Earliest match wins; multi-word labels are listed so that "NOT SUPPORTED" is not read as
# "SUPPORTED" and "NOT ENOUGH INFO" not as "NO".
_FIRST_LINE = [
    (
        re.compile(r"\bNOT\s+(?:ENOUGH|SURE)\b|\bUNVERIFIABLE\b|\bUNKNOWN\b|\bUNCLEAR\b"),
        UNVERIFIABLE,
    ),
    (re.compile(r"\bNOT\s+SUPPORTED\b|\bREFUTE[DS]?\b|\bFALSE\b|\bINCORRECT\b|\bNO\b"), REFUTED),
    (re.compile(r"\bSUPPORT(?:ED|S)?\b|\bTRUE\b|\bCORRECT\b|\bYES\b"), SUPPORTED),
]
_ANYWHERE = [
    (re.compile(r"\bNOT\s+ENOUGH\s+INFO"), UNVERIFIABLE),
    (re.compile(r"\bREFUTED\b"), REFUTED),
    (re.compile(r"\bSUPPORTED\b"), SUPPORTED),
]
MAX_REASON_CHARS = 400


@dataclass(frozen=True, slots=True)
class Verdict:
    verdict: str
    parsed: bool
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"verdict": self.verdict, "parsed": self.parsed, "reason": self.reason}


def _earliest(patterns: list[tuple[re.Pattern[str], str]], text: str) -> tuple[int, str] | None:
    hits = [(m.start(), label) for p, label in patterns if (m := p.search(text))]
    return min(hits) if hits else None


def parse_verdict(text: object) -> Verdict:
    """A verdict from whatever the model wrote (any value: garbage in, "unverifiable" out)."""
    if not isinstance(text, str) or not text.strip():
        return Verdict(UNVERIFIABLE, False, "")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first, rest = lines[0], " ".join(lines[1:])
    hit = _earliest(_FIRST_LINE, first.upper())
    if hit is not None:
        reason = rest or first
    else:
        hit = _earliest(_ANYWHERE, text.upper())
        reason = " ".join(lines)
    if hit is None:
        return Verdict(UNVERIFIABLE, False, " ".join(lines)[:MAX_REASON_CHARS])
    return Verdict(hit[1], True, reason[:MAX_REASON_CHARS])
