"""Versioned JSON codec shared by every message family.

Every payload is treated as hostile: :func:`load_object` bounds its size and JSON nesting depth
with a byte-level scan *before* parsing, requires UTF-8, refuses NaN/Infinity, over-long integers
and duplicate object keys (two parsers could otherwise read two different messages from one signed
text), and turns every decoding failure into a :class:`ProtocolError`.

Each message is a frozen dataclass deriving from :class:`Message`. Its fields are typed with a
small vocabulary (str, int, float, bool, optional, tuple of str, dict, Literal) and may carry
constraints in ``dataclasses.field(metadata=...)``: ``min``/``max`` for numbers, ``max_len`` and
``pattern`` for strings, ``description`` for the schema. The same declarations drive strict
decoding (a clear error naming the bad field) and the published JSON Schemas.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Self, get_args, get_origin

from protocol.errors import ProtocolError

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
MAX_DEPTH = 32
MAX_INT_DIGITS = 64
DEFAULT_MAX_STR = 4096

_REGISTRY: dict[str, type[Message]] = {}
_JSON_NAMES: dict[Any, str] = {str: "string", dict: "object", int: "integer", float: "number"}


def meta(
    *,
    description: str = "",
    min: float | None = None,
    max: float | None = None,
    max_len: int | None = None,
    pattern: str | None = None,
) -> dict[str, Any]:
    """Build field metadata: constraints and a description for the schema."""
    out: dict[str, Any] = {"description": description}
    if min is not None:
        out["min"] = min
    if max is not None:
        out["max"] = max
    if max_len is not None:
        out["max_len"] = max_len
    if pattern is not None:
        out["pattern"] = pattern
    return out


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """Base of every wire message: a ``type`` tag and a schema version ``v``."""

    TYPE: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # No zero-argument super() here: slots=True dataclasses replace the class object.
        if cls.TYPE:
            _REGISTRY[cls.TYPE] = cls

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Semantic checks beyond types; subclasses extend and raise ProtocolError."""
        for f, hint in _hints(type(self)):
            _check_value(getattr(self, f.name), hint, f.metadata, f.name)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready mapping, including ``type`` and ``v``."""
        out: dict[str, Any] = {"type": self.TYPE, "v": SCHEMA_VERSION}
        for f, _hint in _hints(type(self)):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def to_json(self) -> bytes:
        """Encode as compact UTF-8 JSON."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Decode and validate a mapping; raise ProtocolError naming the bad field."""
        if data.get("type") != cls.TYPE:
            raise ProtocolError(f"expected {cls.TYPE!r}, got {data.get('type')!r}", field="type")
        version = data.get("v")
        if type(version) is not int or version != SCHEMA_VERSION:
            raise ProtocolError(f"unsupported schema version {version!r} (want {SCHEMA_VERSION})", field="v")
        hints = _hints(cls)
        known = {f.name for f, _ in hints} | {"type", "v"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ProtocolError(f"unknown field(s) {', '.join(unknown)}", field=unknown[0])
        kwargs: dict[str, Any] = {}
        for f, hint in hints:
            if f.name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise ProtocolError("is required", field=f.name)
                continue
            kwargs[f.name] = _coerce(data[f.name], hint, f.name)
        return cls(**kwargs)

    @classmethod
    def from_json(cls, payload: bytes | str) -> Self:
        """Decode JSON bytes of this message type."""
        data = load_object(payload)
        try:
            return cls.from_dict(data)
        except ProtocolError:
            raise
        except (TypeError, ValueError, RecursionError) as exc:
            raise ProtocolError(f"cannot decode {cls.TYPE!r}: {exc}") from exc

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """Return the JSON Schema (draft 2020-12) of this message type."""
        props: dict[str, Any] = {
            "type": {"const": cls.TYPE},
            "v": {"const": SCHEMA_VERSION, "description": "schema version"},
        }
        required = ["type", "v"]
        for f, hint in _hints(cls):
            props[f.name] = _schema_of(hint, f.metadata)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(f.name)
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"skyrelay/v{SCHEMA_VERSION}/{cls.TYPE}.json",
            "title": cls.__name__,
            "description": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
            "type": "object",
            "properties": props,
            "required": required,
            "additionalProperties": False,
        }


def decode(payload: bytes | str, *expected: type[Message]) -> Message:
    """Decode any registered message, optionally restricted to ``expected`` types."""
    data = load_object(payload)
    tag = data.get("type")
    cls = _REGISTRY.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {_preview(tag)}", field="type")
    if expected and cls not in expected:
        names = ", ".join(c.TYPE for c in expected)
        raise ProtocolError(f"{tag!r} not accepted here (want {names})", field="type")
    try:
        return cls.from_dict(data)
    except ProtocolError:
        raise
    except (TypeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"cannot decode {tag!r}: {exc}") from exc


def all_schemas() -> dict[str, dict[str, Any]]:
    """Return every registered message's JSON Schema, by type tag."""
    return {tag: cls.json_schema() for tag, cls in sorted(_REGISTRY.items())}


_ESCAPE_RE = re.compile(rb"\\.", re.DOTALL)
_STRING_RE = re.compile(rb'"[^"]*"')
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_OPENERS = frozenset(b"[{")


def json_depth_exceeds(payload: bytes, max_depth: int) -> bool:
    """Whether ``payload`` nests arrays/objects deeper than ``max_depth``, by a scan that parses nothing.

    Escapes (a backslash and the byte after it) are dropped first, then everything but quotes and
    brackets, then the (now escape-free) strings; what remains is the bracket structure. Linear time
    on any input. Brackets after a stray backslash outside a string may be missed, but no JSON parser
    gets past that backslash, so they are never parsed either.
    """
    if payload.count(b"[") + payload.count(b"{") <= max_depth:
        return False
    skeleton = _STRING_RE.sub(b"", _ESCAPE_RE.sub(b"", payload).translate(None, _NOT_STRUCTURE))
    depth = 0
    for byte in skeleton:
        if byte in _OPENERS:
            depth += 1
            if depth > max_depth:
                return True
        elif byte != 0x22:  # a closing bracket; a lone quote opens a string that never ends
            depth -= 1
    return False


def load_object(
    payload: bytes | str, *, max_bytes: int = MAX_MESSAGE_BYTES, max_depth: int = MAX_DEPTH
) -> dict[str, Any]:
    """Parse hostile bytes into a JSON object, bounded before parsing.

    Args:
        payload: UTF-8 JSON text (``str`` is encoded to UTF-8 first).
        max_bytes: the largest payload accepted, in bytes.
        max_depth: the deepest nesting of arrays and objects accepted (the top object is depth 1).

    Returns:
        The decoded object.

    Raises:
        ProtocolError: too large, too deep, not UTF-8, not JSON, not an object, a NaN or Infinity,
            an integer longer than ``MAX_INT_DIGITS`` digits, or a key repeated within one object.
    """
    if isinstance(payload, str):
        try:
            payload = payload.encode()
        except UnicodeEncodeError as exc:
            raise ProtocolError(f"not encodable as UTF-8: {exc.reason}") from exc
    elif not isinstance(payload, bytes | bytearray | memoryview):
        raise ProtocolError(f"payload must be bytes, not {type(payload).__name__}")
    else:
        payload = bytes(payload)
    if len(payload) > max_bytes:
        raise ProtocolError(f"message larger than {max_bytes} bytes")
    if json_depth_exceeds(payload, max_depth):
        raise ProtocolError(f"nested deeper than {max_depth} levels")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"not UTF-8: invalid byte at offset {exc.start}") from exc
    try:
        data = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_refuse_constant,
            parse_int=_bounded_int,
            parse_float=_finite_float,
        )
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not valid JSON: {exc}") from exc
    except ProtocolError:
        raise
    except (ValueError, RecursionError, TypeError) as exc:  # belt and braces: the bounds above prevent these
        raise ProtocolError(f"not decodable JSON: {type(exc).__name__}") from exc
    if not isinstance(data, dict):
        raise ProtocolError("must be a JSON object")
    return data


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ProtocolError(f"duplicate key {_preview(dup)} in one object")
    return out


def _refuse_constant(name: str) -> Any:
    raise ProtocolError(f"{name} is not a JSON number")


def _bounded_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise ProtocolError(f"integer longer than {MAX_INT_DIGITS} digits")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError(f"number {_preview(text)} is out of range")
    return value


def _preview(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_HINTS: dict[type[Message], tuple[tuple[dataclasses.Field[Any], Any], ...]] = {}


def _hints(cls: type[Message]) -> tuple[tuple[dataclasses.Field[Any], Any], ...]:
    hints = _HINTS.get(cls)
    if hints is None:
        resolved = typing.get_type_hints(cls)
        hints = _HINTS[cls] = tuple((f, resolved[f.name]) for f in dataclasses.fields(cls))
    return hints


def _is_optional(hint: Any) -> tuple[bool, Any]:
    if get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(get_args(hint)) == 2:
            return True, args[0]
    return False, hint


def _coerce(value: Any, hint: Any, name: str) -> Any:
    optional, inner = _is_optional(hint)
    if value is None:
        if optional:
            return None
        raise ProtocolError("must not be null", field=name)
    origin = get_origin(inner)
    if inner is bool:
        if not isinstance(value, bool):
            raise ProtocolError("must be true or false", field=name)
    elif inner is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProtocolError("must be an integer", field=name)
    elif inner is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ProtocolError("must be a number", field=name)
        value = float(value)
    elif inner is str:
        if not isinstance(value, str):
            raise ProtocolError("must be a string", field=name)
    elif origin is tuple:
        if not isinstance(value, list):
            raise ProtocolError("must be a list", field=name)
        item_type = get_args(inner)[0]
        item_type = dict if get_origin(item_type) is dict else item_type
        if any(not isinstance(item, item_type) for item in value):
            raise ProtocolError(f"must be a list of {_JSON_NAMES.get(item_type, 'items')}", field=name)
        value = tuple(value)
    elif origin is dict or inner is dict:
        if not isinstance(value, dict):
            raise ProtocolError("must be an object", field=name)
    elif origin is Literal and value not in get_args(inner):
        allowed = ", ".join(repr(a) for a in get_args(inner))
        raise ProtocolError(f"must be one of {allowed}", field=name)
    return value


def _check_value(value: Any, hint: Any, metadata: Mapping[str, Any], name: str) -> None:
    optional, inner = _is_optional(hint)
    if value is None:
        if not optional:
            raise ProtocolError("must not be null", field=name)
        return
    _coerce(value if not isinstance(value, tuple) else list(value), hint, name)
    if isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError("must be finite", field=name)
    if isinstance(value, int | float) and not isinstance(value, bool):
        lo, hi = metadata.get("min"), metadata.get("max")
        if lo is not None and value < lo:
            raise ProtocolError(f"must be >= {lo}", field=name)
        if hi is not None and value > hi:
            raise ProtocolError(f"must be <= {hi}", field=name)
    if isinstance(value, str):
        max_len = metadata.get("max_len", DEFAULT_MAX_STR)
        if len(value) > max_len:
            raise ProtocolError(f"longer than {max_len} characters", field=name)
        pattern = metadata.get("pattern")
        if pattern is not None and not re.match(pattern, value):
            raise ProtocolError(f"does not match {pattern}", field=name)
    if isinstance(value, dict) and len(json.dumps(value)) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too large", field=name)
    del inner


def _schema_of(hint: Any, metadata: Mapping[str, Any]) -> dict[str, Any]:
    optional, inner = _is_optional(hint)
    origin = get_origin(inner)
    schema: dict[str, Any]
    if inner is bool:
        schema = {"type": "boolean"}
    elif inner is int:
        schema = {"type": "integer"}
    elif inner is float:
        schema = {"type": "number"}
    elif inner is str:
        schema = {"type": "string", "maxLength": metadata.get("max_len", DEFAULT_MAX_STR)}
        if "pattern" in metadata:
            schema["pattern"] = metadata["pattern"]
    elif origin is tuple:
        item_type = get_args(inner)[0]
        item_type = dict if get_origin(item_type) is dict else item_type
        schema = {"type": "array", "items": {"type": _JSON_NAMES[item_type]}}
    elif origin is dict or inner is dict:
        schema = {"type": "object"}
    elif origin is Literal:
        schema = {"enum": list(get_args(inner))}
    else:  # pragma: no cover - a declaration error caught by the schema test
        raise TypeError(f"unsupported field type {inner!r}")
    if "min" in metadata:
        schema["minimum"] = metadata["min"]
    if "max" in metadata:
        schema["maximum"] = metadata["max"]
    if metadata.get("description"):
        schema["description"] = metadata["description"]
    if optional:
        schema = {
            "anyOf": [schema, {"type": "null"}],
            **({"description": schema.pop("description")} if "description" in schema else {}),
        }
    return schema
