"""Find and read an observation's correction file, for :func:`processors.headers.repair_header`.

Follows astro_metadata_translator's convention: ``<instrument>-<obsid>.yaml`` holds a flat mapping of
cards to overwrite. Reading files is the daemon's business; the processors take the loaded
:class:`~processors.headers.Correction`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Final

import yaml

from processors.detectors import UnknownInstrument, instrument_aliases
from processors.headers import Correction, CorrectionFileError, correction_key

__all__ = ["CorrectionFileError", "correction_for", "load_corrections"]

_SAFE_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def correction_for(
    dirs: Sequence[Path], header: Mapping[str, object], *, exposure_context: Mapping[str, object] | None = None
) -> Correction | None:
    """Read the correction file that applies to a header, if any.

    The observation is named as :func:`~processors.headers.repair_header` names it (the header's OBSID, or
    the one repair derives), see :func:`processors.headers.correction_key`.

    Args:
        dirs: Directories of correction files, most authoritative first.
        header: The primary header as received.
        exposure_context: Keyword -> value agreed by the sibling detectors, as given to ``repair_header``.

    Returns:
        The correction, or None when there are no directories, the observation cannot be named, or no
        directory holds its file.

    Raises:
        CorrectionFileError: The observation's correction file exists but is malformed.
    """
    if not dirs:
        return None
    key = correction_key(header, exposure_context=exposure_context)
    if key is None:
        return None
    instrument, obsid = key
    return load_corrections(dirs, instrument, obsid)


def load_corrections(dirs: Sequence[Path], instrument: str, obsid: str) -> Correction | None:
    """Find and read the correction file of one observation.

    Directories are searched in order and the first file found wins; within a directory every spelling
    of the instrument is tried (``ComCam`` and ``LSSTComCam``).

    Args:
        dirs: Directories to search, most authoritative first.
        instrument: Instrument name as in INSTRUME or any alias.
        obsid: The observation id, e.g. ``"AT_O_20200217_000238"``.

    Returns:
        The correction (its cards and its path), or None when no directory holds a file for the
        observation (or the names are not safe to use in a file name).

    Raises:
        CorrectionFileError: A matching file cannot be read, is not YAML, or is not a flat mapping of
            card names to scalar values.
    """
    if not _SAFE_NAME_RE.fullmatch(obsid) or not _SAFE_NAME_RE.fullmatch(instrument):
        return None
    try:
        names: tuple[str, ...] = (instrument, *instrument_aliases(instrument))
    except UnknownInstrument:
        names = (instrument,)
    names = tuple(dict.fromkeys(names))
    for directory in dirs:
        for name in names:
            path = Path(directory) / f"{name}-{obsid}.yaml"
            if path.is_file():
                return Correction(cards=_read_correction_file(path), path=path)
    return None


def _read_correction_file(path: Path) -> dict[str, object]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CorrectionFileError(path, f"cannot read: {exc}") from exc
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CorrectionFileError(path, f"not valid YAML: {exc}") from exc
    if not isinstance(content, dict):
        raise CorrectionFileError(path, "not a mapping of cards")
    cards: dict[str, object] = {}
    for key, value in content.items():
        if not isinstance(key, str) or not key.strip():
            raise CorrectionFileError(path, f"card name {key!r} is not a string")
        if isinstance(value, datetime):
            value = value.isoformat(timespec="milliseconds")
        elif isinstance(value, date):
            value = value.isoformat()
        if value is not None and not isinstance(value, str | int | float | bool):
            raise CorrectionFileError(path, f"card {key} has a value that is not a scalar: {value!r}")
        cards[key.strip().upper()] = value
    return cards
