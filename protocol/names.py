"""File names that travel in messages: relative, normalised, bounded.

A receiver joins these names to its own directories, so a name must never escape them.
"""

from __future__ import annotations

import posixpath
import re

from protocol.errors import ProtocolError

MAX_NAME_BYTES = 255 * 4
MAX_COMPONENT_BYTES = 255
MAX_DEPTH = 8
_COMPONENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=@,-]*$")


def validate_name(name: object, *, field: str = "name") -> str:
    """Check that ``name`` is a safe relative POSIX path and return it.

    Rejects absolute paths, ``..`` and ``.`` components, empty components, NUL and control
    characters, backslashes, hidden components, over-long names and over-deep trees.
    """
    if not isinstance(name, str):
        raise ProtocolError("must be a string", field=field)
    if not name:
        raise ProtocolError("must not be empty", field=field)
    if "\x00" in name:
        raise ProtocolError("must not contain NUL bytes", field=field)
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise ProtocolError(f"longer than {MAX_NAME_BYTES} bytes", field=field)
    if name.startswith("/"):
        raise ProtocolError("must be relative, not absolute", field=field)
    if "\\" in name:
        raise ProtocolError("must not contain backslashes", field=field)
    parts = name.split("/")
    if len(parts) > MAX_DEPTH:
        raise ProtocolError(f"deeper than {MAX_DEPTH} directories", field=field)
    for part in parts:
        if part in ("", ".", ".."):
            raise ProtocolError(f"component {part!r} is not allowed", field=field)
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise ProtocolError(f"a component is longer than {MAX_COMPONENT_BYTES} bytes", field=field)
        if not _COMPONENT_RE.match(part):
            raise ProtocolError(f"component {part!r} has characters outside [A-Za-z0-9_.+=@,-]", field=field)
    if posixpath.normpath(name) != name:
        raise ProtocolError("is not normalised", field=field)
    return name
