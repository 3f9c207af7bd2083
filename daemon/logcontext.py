"""What a log line says about the file it concerns: ``file`` and ``obsid``, bound for a block of code.

Rubin file names start with the observation id (``CC_O_20261120_000042_R22_S11.fits``), so every
site can name a file's exposure from its name alone, before (or without) reading its header; the
archive, which reads the header, binds the header's ``OBSID`` over it. A name that does not follow
the convention binds no ``obsid``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog

OBSID_PATTERN = re.compile(r"(?:^|/)([A-Z][A-Z0-9]_[A-Z]_\d{8}_\d{6})(?=[_./]|$)")
"""``<camera code>_<controller>_<dayobs>_<seqnum>``, e.g. ``AT_O_20200217_000238``, at the start of a name."""


def obsid_of(name: str | None) -> str | None:
    """The observation id a file's name starts with (its base name, or any folder of it), or None."""
    if not name:
        return None
    found = OBSID_PATTERN.findall(name)
    return found[-1] if found else None


@contextmanager
def bound_file(name: str | None, **values: Any) -> Iterator[None]:
    """Bind ``file`` (when given) and its ``obsid`` (when its name tells it) and ``values`` (not None) for the block."""
    binding = {"file": name, "obsid": obsid_of(name), **values}
    with structlog.contextvars.bound_contextvars(**{k: v for k, v in binding.items() if v is not None}):
        yield


@contextmanager
def bound_obsid(obsid: object) -> Iterator[None]:
    """Bind ``obsid`` (a header's OBSID, when it is a string) for the block."""
    if isinstance(obsid, str) and obsid:
        with structlog.contextvars.bound_contextvars(obsid=obsid):
            yield
    else:
        yield
