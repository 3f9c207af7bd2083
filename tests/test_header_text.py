"""processors.headers.text.HeaderText answers every key as astropy's Header.get does, on ordinary and strange cards."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import pytest
from astropy.io import fits

from ops.camera import write_exposure
from processors.headers import header_summary, repair_header, verify_header
from processors.headers.text import HeaderText, as_astropy

# Value fields (columns 11-80) a camera writes, and ones only a hostile or broken writer would.
FIELDS = [
    "",
    "/ only a comment",
    "'LSSTCam '           / instrument",
    "'it''s'              / a doubled quote",
    "''                   / empty string",
    "'  '",
    "'a'' / b'",
    "''  / comment 'x' ",
    "'''",
    "''''",
    "'unterminated",
    "'trailing'garbage",
    "'x'/c",
    "T",
    "F / false",
    "TRUE",
    "T garbage",
    "42",
    "-007 / leading zeros",
    "+3",
    "1.5",
    "-2.",
    ".25",
    "1E5",
    "1.5D-3 / D exponent",
    "1.5e-3 / lower-case exponent",
    "1 . 5",
    "12E",
    "(1.0, 2.0) / complex",
    "'DP1.AXIS.1: 1'",
    "'AXIS: 2' / looks record-valued",
    "'2026-12-03T12:00:00.123' / a date with colons",
    "nonsense",
    "123456789012345678901234567890",
]


def header_text(fields: list[str]) -> str:
    return "".join(f"{f'KEY{index}':<8}= {field}"[:80].ljust(80) for index, field in enumerate(fields))


def outcome(read: object, key: str) -> tuple[object, ...]:
    try:
        value = read.get(key)  # type: ignore[attr-defined]
    except Exception as exc:
        return ("raised", type(exc))
    return ("value", type(value), value)


def assert_same_values(text: str, keys: list[str]) -> None:
    ours = HeaderText.parse(text)
    assert ours is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = fits.Header.fromstring(text)
        for key in keys:
            assert outcome(ours, key) == outcome(theirs, key), key


def test_known_fields_read_as_astropy_reads_them() -> None:
    text = header_text([f for f in FIELDS if ":" not in f or "T12" in f])
    keys = [f"KEY{index}" for index in range(len(FIELDS))] + ["key1", "MISSING", "COMMENT", "HIERARCH X"]
    assert_same_values(text, keys)


def test_random_fields_read_as_astropy_reads_them() -> None:
    """Fields made of the characters astropy's value pattern turns on, 4,000 of them, seeded."""
    pieces = ["'", "''", " ", "/", "T", "F", "1", "0", ".", "E", "D", "e", "d", "+", "-", "a", "(", ",", ")", "  "]
    rng = random.Random(20261203)
    fields = ["".join(rng.choice(pieces) for _ in range(rng.randrange(0, 14))) for _ in range(4000)]
    for start in range(0, len(fields), 200):
        chunk = fields[start : start + 200]
        text = header_text(chunk)
        if HeaderText.parse(text) is None:
            continue
        assert_same_values(text, [f"KEY{index}" for index in range(len(chunk))])


def test_camera_header_reads_as_astropy_and_checks_the_same(tmp_path: Path) -> None:
    (path,) = write_exposure(
        tmp_path / "inbox", "LSSTCam", dayobs="20261203", seqnum=7, size_bytes=100_000, detectors=["R22_S11"]
    )
    with fits.open(path) as hdul:
        theirs = hdul[0].header.copy()
    ours = HeaderText.parse(theirs.tostring()[: len(theirs) * 80])
    assert ours is not None
    for key in [*theirs.keys(), "MISSING"]:
        assert outcome(ours, key) == outcome(theirs, key), key
    assert verify_header(ours) == verify_header(theirs)
    assert header_summary(ours) == header_summary(theirs)
    assert ours.astropy().tostring() == theirs.tostring()
    del theirs["TIMESYS"]
    broken = HeaderText.parse(theirs.tostring()[: len(theirs) * 80])
    assert broken is not None
    fixed, expected = repair_header(broken), repair_header(theirs)
    assert fixed.fixes == expected.fixes and fixed.findings == expected.findings
    assert as_astropy(fixed.header).tostring() == expected.header.tostring()
    assert as_astropy(broken).get("TIMESYS") is None  # the input is never changed


@pytest.mark.parametrize(
    "card",
    [
        "CONTINUE  'more'",
        "HIERARCH ESO DET 1",
        "lower   = 1",
        "DP1     = 'AXIS.1: 1'",
        "BAD     = 'caf\u00e9'",
        "TAB     = '\t'",
    ],
)
def test_headers_astropy_reads_its_own_way_are_left_to_it(card: str) -> None:
    assert HeaderText.parse(card.ljust(80)[:80]) is None
    assert HeaderText.parse("SIMPLE  =                    T".ljust(79)) is None  # not whole cards
