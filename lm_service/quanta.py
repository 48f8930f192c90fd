"""Splitting a streamed LM output into quanta the moment each one is complete.

An engine yields text a few tokens at a time (or raw bytes, where a multi-byte UTF-8
character may be split across tokens). A `Splitter` is fed those pieces and returns every
quantum that became complete; `finish()` returns what is left when the stream ends (an
output need not end with a newline). Rules:

- ``token``: every non-empty piece as it arrives (the engine's own granularity);
- ``word``: whitespace-delimited words (what streaming BM25 consumes);
- ``line``: non-blank lines, stripped;
- ``item``: list items: non-blank lines with their bullet or number ("1.", "2)", "-", "*") removed;
- ``sentence``: sentences ending in . ! ? (or at a line break), list bullets dropped; a
  period after an initialism ("B.E.R.S.", "U.S.", "John F. Kennedy") or a common
  abbreviation ("Dr.", "Mt.", "approx.") does not end a sentence;
- ``whole``: the entire output, once, at the end.
"""

from __future__ import annotations

import codecs
import re
from typing import Literal

QuantumRule = Literal["token", "word", "line", "item", "sentence", "whole"]
RULES: tuple[QuantumRule, ...] = ("token", "word", "line", "item", "sentence", "whole")

_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\(?\d{1,3}[.)]|[a-zA-Z][.)])\s+")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s)|\n")
# The word before a period that does not end a sentence: an initialism (letters each followed
# by a period, the last one's being this one) or a title or abbreviation written before a
# name or number. "etc." is left out: it ends sentences as often as not.
_INITIALISM = re.compile(r"(?:[A-Za-z]\.)*[A-Za-z]")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr mt ft vs approx ca cf fig inc ltd co corp dept gen col lt "
    "sgt capt rev est jan feb mar apr jun jul aug sep sept oct nov dec".split()
)


class Splitter:
    """Incremental splitter for one output stream."""

    def __init__(self, rule: QuantumRule) -> None:
        if rule not in RULES:
            raise ValueError(f"unknown quantum rule {rule!r}; one of {RULES}")
        self.rule = rule
        self._buf = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.emitted = 0

    def feed(self, piece: str | bytes) -> list[str]:
        """Add a piece of output; returns the quanta it completed, in order."""
        text = self._decoder.decode(piece) if isinstance(piece, bytes) else piece
        if not text:
            return []
        if self.rule == "token":
            return self._out([text] if text.strip() else [])
        self._buf += text
        if self.rule == "whole":
            return []
        return self._out(self._complete())

    def finish(self) -> list[str]:
        """End of stream: the last, unterminated quantum (if any)."""
        tail = self._decoder.decode(b"", final=True)
        self._buf += tail
        rest, self._buf = self._buf, ""
        if self.rule == "token":
            return self._out([tail] if tail.strip() else [])
        if self.rule == "whole":
            return self._out([rest.strip()] if rest.strip() else [])
        return self._out(self._clean(rest))

    def _complete(self) -> list[str]:
        done: list[str] = []
        if self.rule == "word":
            # A word is complete once whitespace follows it.
            parts = re.split(r"(\s+)", self._buf)
            if len(parts) > 1:
                complete, self._buf = "".join(parts[:-1]), parts[-1]
                done = complete.split()
        elif self.rule in ("line", "item"):
            if "\n" in self._buf:
                complete, _, self._buf = self._buf.rpartition("\n")
                for line in complete.split("\n"):
                    done += self._clean(line)
        else:  # sentence
            start = 0
            while (m := _SENTENCE_END.search(self._buf, start)) is not None:
                if _abbreviated(self._buf, m.start()):
                    start = m.end()  # not an end: look further on
                    continue
                sentence, self._buf = self._buf[: m.end()], self._buf[m.end() :]
                done += self._clean(sentence)
                start = 0
        return done

    def _clean(self, text: str) -> list[str]:
        if self.rule == "word":
            return text.split()
        if self.rule in ("line", "item"):
            out = []
            for line in text.split("\n"):
                line = line.strip()
                if self.rule == "item":
                    line = _BULLET.sub("", line).strip()
                if line:
                    out.append(line)
            return out
        text = " ".join(text.split())
        if self.rule == "sentence" and _BULLET.fullmatch(text + " "):
            return []  # a list's "1." is not a sentence
        return [text] if text else []

    def _out(self, quanta: list[str]) -> list[str]:
        self.emitted += len(quanta)
        return quanta


def _abbreviated(text: str, end: int) -> bool:
    """Whether the sentence-ending candidate at `text[end]` is an abbreviation's period."""
    if text[end] != ".":
        return False
    line_start = text.rfind("\n", 0, end) + 1  # the buffer starts after the last sentence
    before = text[line_start:end]
    word = before.rsplit(None, 1)[-1] if before.strip() else ""
    if not word:
        return False
    if len(word) == 1 and not before[:-1].strip():
        return False  # "a." starting a line or sentence is a list bullet, which ends here
    if word == "I":
        return False  # "... and so do I." ends a sentence far more often than an initial
    return bool(_INITIALISM.fullmatch(word)) or word.lower() in _ABBREVIATIONS


class LineWords:
    """The words of each line of a stream, the moment each is complete, for rule ``line`` or
    ``item`` (see `Pipeline.lm_words`).

    `feed` returns events in stream order: ``(line, word)`` for a word of line number `line`
    (counting only the lines the `Splitter` of the same rule emits) and ``(line, None)`` when
    that line is complete. The words of a line are exactly ``quantum.split()`` of the
    quantum `Splitter` makes of it: a word is complete once whitespace follows it, and under
    ``item`` a leading bullet is held back until a second word shows it is one.
    """

    def __init__(self, rule: QuantumRule) -> None:
        if rule not in ("line", "item"):
            raise ValueError(f"words of lines need rule 'line' or 'item', not {rule!r}")
        self.rule = rule
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._line = ""  # the current line so far
        self._sent = 0  # words of the current line already returned
        self.lines = 0  # complete (non-blank) lines so far

    def feed(self, piece: str | bytes) -> list[tuple[int, str | None]]:
        text = self._decoder.decode(piece) if isinstance(piece, bytes) else piece
        out: list[tuple[int, str | None]] = []
        while "\n" in text:
            head, _, text = text.partition("\n")
            self._line += head
            out += self._end_line()
        self._line += text
        words = self._line.split()
        if words and not self._line[-1].isspace():
            words = words[:-1]  # the last word may go on
        out += self._send(self._strip_bullet(words, final=False))
        return out

    def finish(self) -> list[tuple[int, str | None]]:
        self._line += self._decoder.decode(b"", final=True)
        return self._end_line()

    def _end_line(self) -> list[tuple[int, str | None]]:
        words = self._strip_bullet(self._line.split(), final=True)
        out = self._send(words)
        if words:
            out.append((self.lines, None))
            self.lines += 1
        self._line, self._sent = "", 0
        return out

    def _strip_bullet(self, words: list[str], *, final: bool) -> list[str]:
        if self.rule != "item" or not words or not _BULLET.fullmatch(words[0] + " "):
            return words
        if len(self._line.split()) > 1:
            return words[1:]  # a second word follows: the first is a bullet
        return words if final else []  # alone on its line it is the item itself

    def _send(self, words: list[str]) -> list[tuple[int, str | None]]:
        new = words[self._sent :]
        self._sent = len(words)
        return [(self.lines, w) for w in new]


def split_all(pieces: list[str | bytes], rule: QuantumRule) -> list[str]:
    """Split a whole stream (a convenience for tests and offline use)."""
    splitter = Splitter(rule)
    out: list[str] = []
    for piece in pieces:
        out += splitter.feed(piece)
    return out + splitter.finish()
