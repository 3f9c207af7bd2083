"""Versioned JSON codec shared by every message family.

Every payload is treated as hostile: :func:`load_object` bounds its size and JSON nesting depth
with a byte-level scan *before* parsing, requires UTF-8, refuses NaN/Infinity, over-long integers
and duplicate object keys (two parsers could otherwise read two different messages from one signed
text), and turns every decoding failure into a :class:`ProtocolError`.

Each message is a frozen dataclass deriving from :class:`Message`. Its fields are typed with a
small vocabulary (str, int, float, bool, optional, tuple of str, dict, Literal) and may carry
constraints in ``dataclasses.field(metadata=...)``: ``min``/``max`` for numbers, ``max_len`` and
``pattern`` for strings, ``description`` for the schema. The same declarations drive strict
decoding (a clear error naming the bad field) and the published JSON Schemas. Each message type's
declarations are compiled once, on first use, into a plan per field (nullable or not, a type test
and coercion, the constraints with their pattern compiled), so that constructing, decoding and
encoding a message do no typing introspection.
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, NamedTuple, Self, get_args, get_origin

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
        plan = _PLANS.get(type(self)) or _plan(type(self))
        for check, value in zip(plan.checks, plan.values(self), strict=True):
            check(value)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready mapping, including ``type`` and ``v``."""
        plan = _PLANS.get(type(self)) or _plan(type(self))
        out: dict[str, Any] = {"type": self.TYPE, "v": SCHEMA_VERSION}
        out.update(zip(plan.names, plan.values(self), strict=True))
        for name in plan.listed:
            value = out[name]
            if isinstance(value, tuple):
                out[name] = list(value)
        return out

    def to_json(self) -> bytes:
        """Encode as compact UTF-8 JSON."""
        return _ENCODER.encode(self.to_dict()).encode()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Decode and validate a mapping; raise ProtocolError naming the bad field.

        Every field's type is checked (and ints widened to floats, lists made tuples) before any
        constraint: the constructor's :meth:`check` then applies the constraints, once.
        """
        if data.get("type") != cls.TYPE:
            raise ProtocolError(f"expected {cls.TYPE!r}, got {data.get('type')!r}", field="type")
        version = data.get("v")
        if type(version) is not int or version != SCHEMA_VERSION:
            raise ProtocolError(f"unsupported schema version {version!r} (want {SCHEMA_VERSION})", field="v")
        plan = _PLANS.get(cls) or _plan(cls)
        if not plan.known.issuperset(data):
            unknown = sorted(set(data) - plan.known)
            raise ProtocolError(f"unknown field(s) {', '.join(unknown)}", field=unknown[0])
        kwargs: dict[str, Any] = {}
        for name, required, optional, exact, coerce, _check in plan.fields:
            value = data.get(name, _MISSING)
            if value is _MISSING:
                if required:
                    raise ProtocolError("is required", field=name)
            elif value is None:
                if not optional:
                    raise ProtocolError("must not be null", field=name)
                kwargs[name] = None
            elif type(value) is exact:
                kwargs[name] = value
            else:
                kwargs[name] = coerce(value)
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
        if text.startswith("\ufeff"):  # as json.loads says it, which _DECODER.decode does not
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        data = _DECODER.decode(text)
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


# One decoder for every payload, shared as json's own default decoder is (json.loads with hooks builds one per call).
_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_keys,
    parse_constant=_refuse_constant,
    parse_int=_bounded_int,
    parse_float=_finite_float,
)


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


class _FieldPlan(NamedTuple):
    """How one field is decoded and checked, worked out once from its type hint and metadata.

    Attributes:
        name: the field's name.
        required: it has no default.
        optional: ``None`` is a valid value.
        exact: the type a decoded JSON value may have to be taken as it is (a ``str`` for a str
            field); ``None`` when every value goes through ``coerce``.
        coerce: the type test of any other non-null decoded value, returning the field's value
            (an int made a float, a list a tuple); raises ProtocolError.
        check: the constructor's test of the field's value: null, type, then constraints (range,
            length, pattern, finiteness, size); raises ProtocolError.
    """

    name: str
    required: bool
    optional: bool
    exact: type | None
    coerce: Callable[[Any], Any]
    check: Callable[[Any], None]


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    """The compiled plans of one message type's fields, in declaration order."""

    fields: tuple[_FieldPlan, ...]
    checks: tuple[Callable[[Any], None], ...]
    names: tuple[str, ...]
    known: frozenset[str]
    values: Callable[[Message], tuple[Any, ...]]
    listed: tuple[str, ...]  # fields whose value may be a tuple, sent as a JSON list


_PLANS: dict[type[Message], _Plan] = {}
_MISSING: Any = object()
_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True)


def _plan(cls: type[Message]) -> _Plan:
    """The plan of ``cls``, compiled on first use (its type hints are resolvable only once the module is loaded)."""
    plan = _PLANS.get(cls)
    if plan is None:
        fields = tuple(_compile_field(f, hint) for f, hint in _hints(cls))
        names = tuple(spec.name for spec in fields)
        values: Callable[[Message], tuple[Any, ...]]
        if len(names) > 1:
            values = operator.attrgetter(*names)
        else:  # attrgetter of one name returns the bare value, of none is an error
            values = lambda message: tuple(getattr(message, name) for name in names)  # noqa: E731
        listed = tuple(spec.name for spec in fields if spec.exact is None)
        checks = tuple(spec.check for spec in fields)
        plan = _PLANS[cls] = _Plan(fields, checks, names, frozenset(names) | {"type", "v"}, values, listed)
    return plan


def _compile_field(f: dataclasses.Field[Any], hint: Any) -> _FieldPlan:
    """Work out one field's plan: the type test and constraints its declaration implies.

    These are the tests the codec always made, in the same order and with the same reasons,
    specialised once per field so that a call does no typing introspection.
    """
    name = f.name
    optional, inner = _is_optional(hint)
    origin = get_origin(inner)
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    max_len = f.metadata.get("max_len", DEFAULT_MAX_STR)
    pattern = f.metadata.get("pattern")
    match = re.compile(pattern).match if pattern is not None else None
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    isfinite = math.isfinite

    def null() -> None:
        if not optional:
            raise ProtocolError("must not be null", field=name)

    def number_limit(value: Any) -> None:
        if isinstance(value, float) and not isfinite(value):
            raise ProtocolError("must be finite", field=name)
        if lo is not None and value < lo:
            raise ProtocolError(f"must be >= {lo}", field=name)
        if hi is not None and value > hi:
            raise ProtocolError(f"must be <= {hi}", field=name)

    def str_limit(value: Any) -> None:
        if len(value) > max_len:
            raise ProtocolError(f"longer than {max_len} characters", field=name)
        if match is not None and not match(value):
            raise ProtocolError(f"does not match {pattern}", field=name)

    def dict_limit(value: Any) -> None:
        if len(json.dumps(value)) > MAX_MESSAGE_BYTES:
            raise ProtocolError("too large", field=name)

    def any_limit(value: Any) -> None:  # by the value's own type: a Literal's, or an undeclared kind's
        if isinstance(value, int | float) and not isinstance(value, bool):
            number_limit(value)
        if isinstance(value, str):
            str_limit(value)
        if isinstance(value, dict):
            dict_limit(value)

    exact: type | None
    coerce: Callable[[Any], Any]
    check: Callable[[Any], None]
    if inner is bool:

        def coerce_bool(value: Any) -> Any:
            if not isinstance(value, bool):
                raise ProtocolError("must be true or false", field=name)
            return value

        def check_bool(value: Any) -> None:
            if value is None:
                return null()
            coerce_bool(value)

        exact, coerce, check = bool, coerce_bool, check_bool
    elif inner is int:

        def coerce_int(value: Any) -> Any:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ProtocolError("must be an integer", field=name)
            return value

        def check_int(value: Any) -> None:
            if value is None:
                return null()
            if type(value) is not int:
                coerce_int(value)
            if lo is not None and value < lo:
                raise ProtocolError(f"must be >= {lo}", field=name)
            if hi is not None and value > hi:
                raise ProtocolError(f"must be <= {hi}", field=name)

        exact, coerce, check = int, coerce_int, check_int
    elif inner is float:

        def coerce_float(value: Any) -> Any:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ProtocolError("must be a number", field=name)
            return float(value)  # an int too large for a float raises OverflowError, in check() too

        def check_float(value: Any) -> None:
            if value is None:
                return null()
            if type(value) is not float:
                coerce_float(value)
            number_limit(value)

        exact, coerce, check = float, coerce_float, check_float
    elif inner is str:

        def coerce_str(value: Any) -> Any:
            if not isinstance(value, str):
                raise ProtocolError("must be a string", field=name)
            return value

        def check_str(value: Any) -> None:
            if value is None:
                return null()
            if not isinstance(value, str):
                raise ProtocolError("must be a string", field=name)
            if len(value) > max_len:
                raise ProtocolError(f"longer than {max_len} characters", field=name)
            if match is not None and not match(value):
                raise ProtocolError(f"does not match {pattern}", field=name)

        exact, coerce, check = str, coerce_str, check_str
    elif origin is tuple:
        item_type = get_args(inner)[0]
        item_type = dict if get_origin(item_type) is dict else item_type
        of_items = f"must be a list of {_JSON_NAMES.get(item_type, 'items')}"

        def check_items(value: Any) -> None:  # a tuple, or a list (a decoded one is made a tuple)
            if value is None:
                return null()
            if not isinstance(value, tuple | list):
                raise ProtocolError("must be a list", field=name)
            for item in value:
                if not isinstance(item, item_type):
                    raise ProtocolError(of_items, field=name)

        def coerce_tuple(value: Any) -> Any:
            if not isinstance(value, list):
                raise ProtocolError("must be a list", field=name)
            check_items(value)
            return tuple(value)

        exact, coerce, check = None, coerce_tuple, check_items
    elif origin is dict or inner is dict:

        def coerce_dict(value: Any) -> Any:
            if not isinstance(value, dict):
                raise ProtocolError("must be an object", field=name)
            return value

        def check_dict(value: Any) -> None:
            if value is None:
                return null()
            coerce_dict(value)
            dict_limit(value)

        exact, coerce, check = dict, coerce_dict, check_dict
    elif origin is Literal:
        allowed = get_args(inner)
        one_of = "must be one of " + ", ".join(repr(a) for a in allowed)

        def coerce_literal(value: Any) -> Any:
            if value not in allowed:
                raise ProtocolError(one_of, field=name)
            return value

        def check_literal(value: Any) -> None:
            if value is None:
                return null()
            coerce_literal(value)
            any_limit(value)

        exact, coerce, check = None, coerce_literal, check_literal
    else:  # outside the vocabulary (json_schema refuses it): no type test, as before

        def coerce_any(value: Any) -> Any:
            return value

        def check_any(value: Any) -> None:
            if value is None:
                return null()
            any_limit(value)

        exact, coerce, check = None, coerce_any, check_any
    return _FieldPlan(name, required, optional, exact, coerce, check)


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
