"""Verify and fix the primary headers of camera FITS files.

Everything here is pure and synchronous: functions take an :class:`astropy.io.fits.Header` (or the
:class:`~processors.headers.text.HeaderText` of one, which reads its cards on demand) and return
findings, fixes and a repaired header (a new one, or the input itself when nothing needed fixing); nothing
is read from or written to disk and the input header is never mutated. A correction file is read by the
caller (:mod:`daemon.corrections`) and handed to :func:`repair_header` as a :class:`Correction`.

- :mod:`~processors.headers.verify`: :func:`verify_header` and the rule ids it reports.
- :mod:`~processors.headers.repair`: :func:`repair_header` and the fix rules it applies.
- :mod:`~processors.headers.obsid`: :func:`parse_obsid`, :func:`derive_obsid`, :func:`correction_key`.
- :mod:`~processors.headers.summary`: :func:`header_summary` for the catalog.
- :mod:`~processors.headers.text`: :class:`HeaderText`, a header's text read card by card as astropy reads it.
- :mod:`~processors.headers.model`: :class:`Finding`, :class:`Fix`, :class:`HeaderReport`,
  :class:`Correction` and the errors.
"""

from __future__ import annotations

from processors.headers.model import Correction, CorrectionFileError, Finding, Fix, HeaderError, HeaderReport
from processors.headers.obsid import correction_key, derive_obsid, parse_obsid
from processors.headers.repair import repair_header
from processors.headers.summary import header_summary
from processors.headers.text import HeaderText, as_astropy
from processors.headers.verify import IMGTYPES, NO_FILTER_IMGTYPES, verify_header

__all__ = [
    "IMGTYPES",
    "NO_FILTER_IMGTYPES",
    "Correction",
    "CorrectionFileError",
    "Finding",
    "Fix",
    "HeaderError",
    "HeaderReport",
    "HeaderText",
    "as_astropy",
    "correction_key",
    "derive_obsid",
    "header_summary",
    "parse_obsid",
    "repair_header",
    "verify_header",
]
