"""The results of header processing: findings, fixes, the report, a loaded correction and the errors.

Plain frozen values, picklable, with no I/O: a :class:`Fix` knows how to describe itself on FITS
HISTORY cards, nothing more.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from astropy.io import fits

__all__ = ["HISTORY_WIDTH", "Correction", "CorrectionFileError", "Finding", "Fix", "HeaderError", "HeaderReport"]

HISTORY_WIDTH: Final = 72
"""Characters of text a FITS HISTORY card holds."""


class HeaderError(Exception):
    """Base class of header processing errors."""


class CorrectionFileError(HeaderError):
    """A correction file exists but cannot be read or is not a flat mapping of cards.

    Raised by the readers of correction files (:mod:`daemon.corrections`); the processors never read files.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class Correction:
    """The cards of one observation's correction file, already read.

    Attributes:
        cards: Card name (upper case) -> value to overwrite with; values are str, int, float, bool or None.
        path: The file they were read from; it names the fixes (``"file:<path>"``).
    """

    cards: Mapping[str, object]
    path: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One thing wrong with a header.

    Attributes:
        rule: Stable rule id, e.g. ``"time.mjd_mismatch"``.
        keyword: The keyword at fault, when there is one.
        message: What is wrong, for people.
    """

    rule: str
    keyword: str | None
    message: str

    def to_dict(self) -> dict[str, str | None]:
        """Return the finding as a JSON-able mapping."""
        return {"rule": self.rule, "keyword": self.keyword, "message": self.message}


@dataclass(frozen=True, slots=True, kw_only=True)
class Fix:
    """One change made to a header, with its justification.

    Attributes:
        keyword: The card changed.
        old: Its value before (None when absent or null).
        new: Its value after.
        source: ``"rule:<id>"`` or ``"file:<path of the correction file>"``.
    """

    keyword: str
    old: object
    new: object
    source: str

    def to_dict(self) -> dict[str, object]:
        """Return the fix as a JSON-able mapping."""
        return {"keyword": self.keyword, "old": self.old, "new": self.new, "source": self.source}

    def history_card(self) -> str:
        """Return a one-card summary of the fix, at most 72 characters.

        The form is ``skyrelay fix <KEY>: <old> -> <new> (<source>)``. When that is too long, a
        correction file is named without its directory, "fix" is dropped, floats lose digits (down to 6
        significant) and finally values are cut short; :meth:`history_cards` keeps the complete record.
        """
        source = self.source
        if source.startswith("file:"):
            source = "file:" + Path(source[5:]).name
        old, new = _history_value(self.old), _history_value(self.new)
        for digits in (None, 10, 9, 8, 7, 6):
            if digits is not None:
                old = f"{self.old:.{digits}g}" if isinstance(self.old, float) else old
                new = f"{self.new:.{digits}g}" if isinstance(self.new, float) else new
            for compact in (False, True):
                line = _history_line(self.keyword, old, new, source, compact=compact)
                if len(line) <= HISTORY_WIDTH:
                    return line
        budget = max(4, (HISTORY_WIDTH - len(_history_line(self.keyword, "", "", source, compact=True))) // 2)
        line = _history_line(self.keyword, _shorten(old, budget), _shorten(new, budget), source, compact=True)
        return line[:HISTORY_WIDTH]

    def history_cards(self) -> tuple[str, ...]:
        """Return the complete record of the fix as HISTORY card texts of at most 72 characters.

        The record is one line when it fits and is wrapped onto indented continuation cards otherwise.
        """
        line = _history_line(self.keyword, _history_value(self.old), _history_value(self.new), self.source)
        if len(line) <= HISTORY_WIDTH:
            return (line,)
        return tuple(
            textwrap.wrap(
                line,
                width=HISTORY_WIDTH,
                subsequent_indent="  ",
                break_long_words=True,
                break_on_hyphens=False,
            )
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderReport:
    """The outcome of :func:`repair_header`.

    Attributes:
        header: The repaired copy of the header, with one HISTORY record per fix; when nothing was fixed,
            the header given to :func:`repair_header` itself (not a copy: change neither).
        fixes: Every change made, in the order applied.
        findings: What is still wrong after the fixes.
        correction_file: The correction file applied, if any.
    """

    header: fits.Header
    fixes: tuple[Fix, ...]
    findings: tuple[Finding, ...]
    correction_file: Path | None = None

    @property
    def ok(self) -> bool:
        """True when nothing is left wrong."""
        return not self.findings

    def history_cards(self) -> list[str]:
        """Return the HISTORY card texts recording every fix (each at most 72 characters)."""
        return [card for fix in self.fixes for card in fix.history_cards()]


def _history_value(value: object) -> str:
    if value is None:
        return "null"
    text = repr(value) if isinstance(value, str) else str(value)
    return _ascii(text)


def _ascii(text: str) -> str:
    return "".join(ch if " " <= ch <= "~" else "?" for ch in text)


def _history_line(keyword: str, old: str, new: str, source: str, *, compact: bool = False) -> str:
    prefix = "skyrelay" if compact else "skyrelay fix"
    return _ascii(f"{prefix} {keyword}: {old} -> {new} ({source})")


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(1, width - 3)] + "..."
