"""Each message type's compiled field plans enforce what its published JSON Schema says, on decode and construction."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from test_protocol import SAMPLES

from protocol import Message, ProtocolError, all_schemas, decode

WRONG_TYPE: dict[str, list[object]] = {
    "string": [1, True, [], {}],
    "integer": [True, 1.5, "1", []],
    "number": [True, "1", []],
    "boolean": [1, "true"],
    "array": ["x", {}],
    "object": [[], "x"],
}


def _refused(prop: dict[str, Any]) -> list[object]:
    """Values that one property's schema refuses: null if not nullable, wrong types, and just past each limit."""
    nullable = "anyOf" in prop
    schema = prop["anyOf"][0] if nullable else prop
    values: list[object] = [] if nullable else [None]
    if "enum" in schema:
        values += ["|".join(schema["enum"]), 1]
    values += WRONG_TYPE.get(schema.get("type", ""), [])
    if schema.get("type") == "array":
        values.append([1] if schema["items"]["type"] == "string" else ["x"])
    if "maxLength" in schema:
        values.append("x" * (schema["maxLength"] + 1))
    if "minimum" in schema:
        values.append(schema["minimum"] - 1)
    if "maximum" in schema:
        values.append(schema["maximum"] + 1)
    return values


def _cases(message: Message) -> list[tuple[str, object]]:
    schema = all_schemas()[message.TYPE]
    return [(name, value) for name, prop in schema["properties"].items() if name not in ("type", "v")
            for value in _refused(prop)]  # fmt: skip


def _fields(message: Message) -> dict[str, Any]:
    return {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}


def _error(call: Any) -> tuple[str | None, str] | None:
    try:
        call()
    except ProtocolError as exc:
        return exc.field, exc.reason
    return None


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: f"{m.TYPE}")
def test_what_the_schema_refuses_the_codec_refuses_naming_the_field(message: Message) -> None:
    """Null where not nullable, a wrong type, one past a length or range limit, a value outside an enum: refused."""
    wrong = []
    for name, value in _cases(message):
        error = _error(lambda name=name, value=value: decode(json.dumps({**message.to_dict(), name: value})))
        if error is None or error[0] != name:
            wrong.append((name, value, error))
    assert not wrong


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: f"{m.TYPE}")
def test_the_constructor_refuses_a_bad_field_with_the_reason_decode_gives(message: Message) -> None:
    """Building a message with a bad value fails on the same field, for the same reason, as decoding it."""
    cls, wrong = type(message), []
    for name, value in _cases(message):
        decoded = _error(lambda name=name, value=value: decode(json.dumps({**message.to_dict(), name: value})))
        built = _error(lambda name=name, value=value: cls(**{**_fields(message), name: value}))
        if built != decoded:
            wrong.append((name, value, decoded, built))
    assert not wrong


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: f"{m.TYPE}")
def test_the_codec_requires_what_the_schema_requires_and_takes_null_where_it_allows_it(message: Message) -> None:
    """A required property left out is refused as required; a nullable one may be null (or left out if optional)."""
    schema = all_schemas()[message.TYPE]
    for name, prop in schema["properties"].items():
        if name in ("type", "v"):
            continue
        data = {k: v for k, v in message.to_dict().items() if k != name}
        if name in schema["required"]:
            assert _error(lambda data=data: decode(json.dumps(data))) == (name, "is required"), name
        else:
            assert type(decode(json.dumps(data))) is type(message), name
        if "anyOf" in prop:
            assert getattr(decode(json.dumps({**data, name: None})), name) is None, name


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: f"{m.TYPE}")
def test_an_integer_is_a_number_on_decode_and_construction(message: Message) -> None:
    """A number property given an integer is accepted both ways, and decoding makes it a float."""
    schema = all_schemas()[message.TYPE]
    for name, prop in schema["properties"].items():
        if (prop.get("anyOf") or [prop])[0].get("type") != "number":
            continue
        whole = int(getattr(message, name) or 0)
        decoded = decode(json.dumps({**message.to_dict(), name: whole}))
        assert type(getattr(decoded, name)) is float, name
        assert type(message)(**{**_fields(message), name: whole}) == decoded, name


def test_the_refused_values_are_refused_by_the_schemas_themselves() -> None:
    """The values the tests above derive from each schema are indeed invalid under that schema."""
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not a declared dependency")
    for message in SAMPLES:
        validator = jsonschema.Draft202012Validator(all_schemas()[message.TYPE])
        for name, value in _cases(message):
            assert list(validator.iter_errors({**message.to_dict(), name: value})), (message.TYPE, name, value)


FIRST = {m.TYPE: m for m in reversed(SAMPLES)}
OFFER, ACK, ARRIVAL, PRODUCT, ALERT = FIRST["offer"], FIRST["ack"], FIRST["arrival"], FIRST["product"], FIRST["alert"]


@pytest.mark.parametrize(
    ("message", "field", "value", "reason"),
    [
        (OFFER, "size", None, "must not be null"),
        (ARRIVAL, "complete", 1, "must be true or false"),
        (OFFER, "hop", True, "must be an integer"),
        (OFFER, "sent_at", "1", "must be a number"),
        (OFFER, "route", 5, "must be a string"),
        (OFFER, "route_sites", "summit", "must be a list"),
        (OFFER, "route_sites", ["summit", 3], "must be a list of string"),
        (ARRIVAL, "fixes", ["x"], "must be a list of object"),
        (ALERT, "alert", [], "must be an object"),
        (ACK, "kind", "gift", "must be one of 'offer', 'custody'"),
        (OFFER, "size", -1, "must be >= 0"),
        (OFFER, "hop", 8, "must be <= 7"),
        (OFFER, "sender", "s" * 33, "longer than 32 characters"),
        (OFFER, "sender", "Summit!", "does not match ^[a-z][a-z0-9_-]{0,31}$"),
        (PRODUCT, "stats", {"a": "\u00fc" * 12000}, "too large"),  # 24 kB of UTF-8, 72 kB as json.dumps writes it
    ],
    ids=lambda v: v.TYPE if isinstance(v, Message) else repr(v)[:30],
)
def test_a_bad_field_is_refused_with_the_reason_it_always_had(
    message: Message, field: str, value: object, reason: str
) -> None:
    """Each kind of refusal keeps its wording, decoding and constructing alike."""
    payload = json.dumps({**message.to_dict(), field: value}, ensure_ascii=False).encode()
    decoded = _error(lambda: decode(payload))
    built = _error(lambda: type(message)(**{**_fields(message), field: value}))
    assert decoded == built == (field, reason)


def test_a_non_finite_number_is_refused_on_construction() -> None:
    """JSON cannot carry NaN (load_object refuses it): the constructor refuses it too, naming the field."""
    for value in (float("nan"), float("inf"), -float("inf")):
        assert _error(lambda value=value: type(OFFER)(**{**_fields(OFFER), "sent_at": value})) == (
            "sent_at",
            "must be finite",
        )


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: f"{m.TYPE}")
def test_to_dict_is_the_mapping_to_json_encodes(message: Message) -> None:
    """``to_dict`` is JSON-ready: tuples are lists, exactly what parsing ``to_json`` gives back."""
    assert message.to_dict() == json.loads(message.to_json())
