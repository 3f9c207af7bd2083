"""A primary header kept as its text, each card read when first asked for: astropy's values, a fraction of its cost.

Parsing a whole header with :meth:`astropy.io.fits.Header.fromstring` builds an object for every card (a
hundred in a camera header) and reads astropy's configuration for each; verifying and summarizing a file
then asks for some thirty of them. :class:`HeaderText` indexes the card images by keyword and turns a
card into a value only when asked, by astropy's own rules: strings, logicals, integers, reals and
undefined values in their ordinary forms are read here (:func:`_fast_value`), anything else by astropy's
:class:`~astropy.io.fits.Card` from the same image. A header with anything astropy reads in its own way
(CONTINUE or record-valued cards, keywords that are not plain upper case, bytes that are not printable
ASCII) is not taken (:meth:`HeaderText.parse` returns None) and is read by astropy whole; a HIERARCH card
is left to astropy whenever its name is asked for.

The full astropy header is built (once) only for what needs it: a repair, iteration, commentary cards.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

from astropy.io import fits
from astropy.io.fits.card import UNDEFINED

__all__ = ["HeaderText", "as_astropy"]

_CARD: Final = 80
_COMMENTARY: Final = frozenset({"", "COMMENT", "HISTORY"})
# A keyword as astropy reads it as written: 1-8 standard characters, upper case, left-justified, or blank.
_PLAIN_KEYWORD_RE: Final = re.compile(r"[A-Z0-9_-]{0,8} *")
_LOOKUP_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,8}")
# A string value that could be a record-valued keyword card ('field.spec: number'): astropy's business.
_RVKC_LIKE_RE: Final = re.compile(r"= *' *[a-zA-Z_][\w.]*:")
# Numbers in their ordinary forms; astropy's _str_to_num turns the text into int, else float.
_NUMBER_RE: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[ED][+-]?\d+)?(?= *(?:/|$))")


class _Unknown:
    """A card whose value is left to astropy."""


_ASTROPY: Final = _Unknown()
_MISSING: Final = ""


def _fast_value(field: str) -> object:
    """The value astropy reads from a card's value and comment (``image[10:]``, stripped), or _ASTROPY.

    astropy matches the field with ``Card._value_NFSC_RE``; this reads the forms of it that cameras
    write exactly as that match and astropy's conversion do, and leaves the rest to astropy.
    """
    if not field or field[0] == "/":
        return UNDEFINED
    first = field[0]
    if first == "'":
        return _fast_string(field)
    if first in "TF":
        rest = field[1:].lstrip(" ")
        return first == "T" if not rest or rest[0] == "/" else _ASTROPY
    match = _NUMBER_RE.match(field)
    if match is None:
        return _ASTROPY
    text = match.group().replace("D", "E")
    try:
        return int(text)
    except ValueError:
        return float(text)


def _fast_string(field: str) -> object:
    """A quoted value as astropy's lazy string pattern reads it: the first closing quote after at least one
    character (then an empty string) that only spaces and a comment follow; doubled quotes become one."""
    for close in _closing_quotes(field):
        rest = field[close + 1 :]
        if not rest or (rest[0] in " /" and rest.lstrip(" ")[:1] in ("", "/")):
            return field[1:close].replace("''", "'").rstrip()
    return _ASTROPY


def _closing_quotes(field: str) -> Iterator[int]:
    position = field.find("'", 2)
    while position >= 0:
        yield position
        position = field.find("'", position + 1)
    if field[1:2] == "'":
        yield 1


class HeaderText(Mapping[str, object]):
    """A primary header read card by card on demand; ``get`` answers as :meth:`astropy.io.fits.Header.get`
    (an undefined value is None there too)."""

    __slots__ = ("_header", "_images", "_text", "_values")

    def __init__(self, text: str, images: dict[str, str | None]) -> None:
        self._text = text
        self._images = images
        self._values: dict[str, object] = {}
        self._header: fits.Header | None = None

    @classmethod
    def parse(cls, text: str) -> HeaderText | None:
        """The header of ``text`` (its cards before END), or None when astropy must read it whole."""
        if len(text) % _CARD or not text.isascii() or not text.isprintable():
            return None
        images: dict[str, str | None] = {}
        for start in range(0, len(text), _CARD):
            image = text[start : start + _CARD]
            keyword = image[:8]
            if not _PLAIN_KEYWORD_RE.fullmatch(keyword):
                return None
            keyword = keyword.rstrip(" ")
            if keyword == "HIERARCH":
                name, equals, _ = image[9:].partition("=")
                if image[8] != " " or not equals:
                    return None
                images.setdefault(name.strip().upper(), None)  # asked for by this name: astropy answers
                continue
            if keyword in ("CONTINUE", "END") or _RVKC_LIKE_RE.match(image, 8):
                return None
            images.setdefault(keyword, image)
        if not fits.conf.strip_header_whitespace or not fits.conf.enable_record_valued_keyword_cards:
            return None  # the values read here are those of astropy's default configuration
        return cls(text, images)

    def astropy(self) -> fits.Header:
        """The whole header as astropy reads it (parsed once; a caller that changes it must copy it)."""
        if self._header is None:
            self._header = fits.Header.fromstring(self._text)
        return self._header

    def get(self, key: str, default: object = None) -> Any:
        """The value of the first card named ``key`` (astropy's :meth:`~astropy.io.fits.Header.get`, and
        typed as loosely: what a card holds is known once it is read)."""
        if not _LOOKUP_KEY_RE.fullmatch(key):
            return self.astropy().get(key, default)
        keyword = key.upper()
        if keyword in _COMMENTARY:
            return self.astropy().get(key, default)
        value = self._values.get(keyword, _ASTROPY)
        if value is _ASTROPY:
            image = self._images.get(keyword, _MISSING)
            if image is _MISSING:
                return default
            if image is None:  # a HIERARCH card of this name comes first
                return self.astropy().get(key, default)
            value = _fast_value(image[10:].strip()) if image[8:10] == "= " else _ASTROPY
            if value is _ASTROPY:
                value = fits.Card.fromstring(image).value
            if value is UNDEFINED:
                value = None  # as Header.__getitem__ answers
            self._values[keyword] = value
        return value

    def __getitem__(self, key: str) -> object:
        value = self.get(key, _ASTROPY)
        if value is _ASTROPY:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return key in self.astropy()

    def __iter__(self) -> Iterator[str]:
        return iter(self.astropy().keys())

    def __len__(self) -> int:
        return len(self.astropy())

    def tostring(self) -> str:
        """The header's text, as :meth:`astropy.io.fits.Header.tostring` writes it."""
        return str(self.astropy().tostring())


def as_astropy(header: fits.Header | HeaderText) -> fits.Header:
    """An astropy header for either kind (the same object for an astropy one)."""
    return header.astropy() if isinstance(header, HeaderText) else header
