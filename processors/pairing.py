"""Which differences to make now: the pairing of a field's quad of visits, lost visits and the chunk's end.

The contract. The visits of one field in one night share GROUPID; MAXINDEX is 4; CURINDEX is the visit
number 1-4. Each visit is in one of four states:

- absent from ``visits`` — not arrived (yet);
- ``OK`` — arrived and passed the quality cut;
- ``BAD`` — arrived and failed the quality cut (bad seeing, too few stars): it is never differenced;
- ``LOST`` — it will never arrive: the caller knows it (the camera's later sequence numbers arrived and
  this one is overdue beyond the late-arrival limit, or the exposure log says it was not taken).

A visit is **missing** when it is ``BAD`` or ``LOST``, or — once the chunk has ended — absent. Pairing
never guesses a visit is lost from the order of arrivals alone (files arrive out of order); that
decision is the caller's, or the chunk's end.

Pairs (science = later visit, reference = earlier visit):

1. the regular pairs 2-1 and 4-3, as soon as both visits are ``OK``;
2. the lost-visit mapping, so that a triple of visits still gives two differences sharing a visit:
   v1 missing → 3-2; v2 missing → 3-1; v3 missing → 4-2; v4 missing → 3-2 (made as soon as the
   missing visit is known missing and both visits of the pair are ``OK``);
3. at the end of the chunk, a "desperate" pair for every ``OK`` visit still in no pair: with the
   nearest ``OK`` visit in time (the earlier one on a tie), so two surviving visits always give one
   difference;
4. against a template, when one exists for the field and band: one pair per ``OK`` visit.

A pair already made (passed in ``done``) is never returned again, and no pair is returned twice.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "LOST_VISIT_MAPPING",
    "MAX_INDEX",
    "TEMPLATE",
    "Pair",
    "PairingError",
    "QuadPosition",
    "VisitState",
    "pairs_to_make",
    "quad_position",
]

MAX_INDEX: Final = 4
"""Visits in a quad (MAXINDEX)."""

TEMPLATE: Final = 0
"""The reference index that stands for the field's template."""

LOST_VISIT_MAPPING: Final[Mapping[int, tuple[int, int]]] = {1: (3, 2), 2: (3, 1), 3: (4, 2), 4: (3, 2)}
"""Missing visit → (science, reference) of the pair that keeps a triple differenced."""


class PairingError(ValueError):
    """The visits given are not a quad (an index outside 1..MAXINDEX, or MAXINDEX is not 4)."""


class VisitState(enum.Enum):
    """What is known of one visit of the quad."""

    OK = "ok"
    BAD = "bad"
    LOST = "lost"


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class Pair:
    """A difference to make: science - reference (``reference == TEMPLATE`` for the template).

    Attributes:
        science: the science visit's CURINDEX.
        reference: the reference visit's CURINDEX, or ``TEMPLATE`` (0).
        reason: ``regular``, ``lost_v<k>`` (the lost-visit mapping for missing visit k), ``desperate``
            or ``template``.
    """

    science: int
    reference: int
    reason: str = "regular"

    @property
    def key(self) -> tuple[int, int]:
        """(science, reference): a pair's identity, whatever the reason it was made for."""
        return (self.science, self.reference)


@dataclass(frozen=True, slots=True, kw_only=True)
class QuadPosition:
    """Where an exposure sits in its field's quad: GROUPID, CURINDEX and MAXINDEX from its header."""

    group_id: str
    index: int
    max_index: int


def quad_position(header: Mapping[str, object]) -> QuadPosition:
    """Read GROUPID, CURINDEX and MAXINDEX from a primary header (any mapping of keywords).

    Raises:
        PairingError: a keyword is missing or not of the right type.
    """
    group_id, index, max_index = header.get("GROUPID"), header.get("CURINDEX"), header.get("MAXINDEX")
    if not isinstance(group_id, str) or not group_id:
        raise PairingError(f"GROUPID must be a non-empty string, not {group_id!r}")
    if not isinstance(index, int) or isinstance(index, bool) or not isinstance(max_index, int):
        raise PairingError(f"CURINDEX/MAXINDEX must be integers, not {index!r}/{max_index!r}")
    return QuadPosition(group_id=group_id, index=index, max_index=max_index)


def _check(visits: Mapping[int, VisitState], max_index: int) -> None:
    if max_index != MAX_INDEX:
        raise PairingError(f"MAXINDEX is {max_index}, pairing handles quads (MAXINDEX {MAX_INDEX})")
    bad = [i for i in visits if not 1 <= i <= MAX_INDEX]
    if bad:
        raise PairingError(f"CURINDEX {bad} outside 1..{MAX_INDEX}")


def pairs_to_make(
    visits: Mapping[int, VisitState],
    *,
    chunk_ended: bool,
    done: Collection[tuple[int, int]] = (),
    template_available: bool = False,
    max_index: int = MAX_INDEX,
) -> list[Pair]:
    """The differences to make now for one field's quad.

    Args:
        visits: CURINDEX → state of every visit known so far (absent = not arrived).
        chunk_ended: the observing chunk is over: every absent visit is missing for good.
        done: (science, reference) of the pairs already made (``TEMPLATE`` as reference for template
            pairs); they are not returned again.
        template_available: a template exists for the field and band.
        max_index: the group's MAXINDEX (must be 4).

    Returns:
        New pairs, regular and lost-visit pairs first, then desperate, then template; sorted within
        each kind. Empty when there is nothing new to do.

    Raises:
        PairingError: not a quad.
    """
    _check(visits, max_index)
    ok = {i for i, s in visits.items() if s is VisitState.OK}
    missing = {i for i, s in visits.items() if s is not VisitState.OK}
    if chunk_ended:
        missing |= set(range(1, MAX_INDEX + 1)) - set(visits)
    made: set[tuple[int, int]] = set(done)
    out: list[Pair] = []

    def add(science: int, reference: int, reason: str) -> None:
        if (science, reference) in made:
            return
        made.add((science, reference))
        out.append(Pair(science=science, reference=reference, reason=reason))

    candidates: list[tuple[int, int, str]] = [(2, 1, "regular"), (4, 3, "regular")]
    candidates += [(*LOST_VISIT_MAPPING[m], f"lost_v{m}") for m in sorted(missing)]
    for science, reference, reason in sorted(candidates):
        if science in ok and reference in ok:
            add(science, reference, reason)
    if chunk_ended:
        paired = {v for s, r in made if r != TEMPLATE for v in (s, r)}
        for visit in sorted(ok - paired):
            others = sorted(ok - {visit}, key=lambda o: (abs(o - visit), o))
            if others:
                other = others[0]
                add(max(visit, other), min(visit, other), "desperate")
    if template_available:
        for visit in sorted(ok):
            add(visit, TEMPLATE, "template")
    return out
