"""Pairing of a quad's visits: regular pairs, the lost-visit mapping, bad seeing, the chunk's end, templates."""

from __future__ import annotations

import itertools

import pytest

from processors.pairing import TEMPLATE, Pair, PairingError, QuadPosition, VisitState, pairs_to_make, quad_position

OK, BAD, LOST = VisitState.OK, VisitState.BAD, VisitState.LOST


def keys(pairs: list[Pair]) -> list[tuple[int, int]]:
    return [p.key for p in pairs]


def run_arrivals(events: list[tuple[int, VisitState]], *, end: bool = True) -> list[Pair]:
    """Feed visits one at a time (then the chunk's end), collecting every pair made along the way."""
    visits: dict[int, VisitState] = {}
    made: list[Pair] = []
    for index, state in events:
        visits[index] = state
        made += pairs_to_make(visits, chunk_ended=False, done=keys(made))
    if end:
        made += pairs_to_make(visits, chunk_ended=True, done=keys(made))
    return made


def test_complete_quad_gives_2_1_and_4_3() -> None:
    """Four good visits give 2-1 when visit 2 arrives and 4-3 when visit 4 arrives, nothing at the chunk's end."""
    visits: dict[int, VisitState] = {}
    steps = []
    for i in (1, 2, 3, 4):
        visits[i] = OK
        steps.append(keys(pairs_to_make(visits, chunk_ended=False, done=[(2, 1)] if i > 2 else [])))
    assert steps == [[], [(2, 1)], [], [(4, 3)]]
    assert pairs_to_make(visits, chunk_ended=True, done=[(2, 1), (4, 3)]) == []


@pytest.mark.parametrize(
    ("lost", "expected"),
    [(1, [(3, 2), (4, 3)]), (2, [(3, 1), (4, 3)]), (3, [(2, 1), (4, 2)]), (4, [(2, 1), (3, 2)])],
)
def test_lost_visit_mapping(lost: int, expected: list[tuple[int, int]]) -> None:
    """With one visit declared lost, the three others give exactly the two mapped pairs, each once, whatever
    the order in which the survivors arrive."""
    survivors = [i for i in (1, 2, 3, 4) if i != lost]
    for order in itertools.permutations(survivors):
        made = run_arrivals([(lost, LOST), *((i, OK) for i in order)])
        assert sorted(keys(made)) == expected, order


@pytest.mark.parametrize("lost", [1, 2, 3, 4])
def test_lost_known_only_at_chunk_end(lost: int) -> None:
    """A visit that never arrives and is never declared lost is missing at the chunk's end: the mapped pair
    is made then, and not before."""
    survivors = [(i, OK) for i in (1, 2, 3, 4) if i != lost]
    before = run_arrivals(survivors, end=False)
    after = run_arrivals(survivors, end=True)
    regular = {(2, 1), (4, 3)}
    assert set(keys(before)) <= regular
    assert len(after) == 2 and len(set(keys(after))) == 2
    new = [p for p in after if p.key not in keys(before)]
    assert [p.reason for p in new] == [f"lost_v{lost}"]


def test_v1_lost_is_paired_as_soon_as_v3_arrives() -> None:
    """v1 declared lost: 3-2 is made the moment v3 arrives (not at the end of the chunk)."""
    made = pairs_to_make({1: LOST, 2: OK, 3: OK}, chunk_ended=False)
    assert keys(made) == [(3, 2)] and made[0].reason == "lost_v1"


def test_bad_seeing_visit_is_never_differenced() -> None:
    """A visit failing the quality cut (v2 bad seeing) is treated as missing: 3-1 and 4-3, never with v2."""
    made = run_arrivals([(1, OK), (2, BAD), (3, OK), (4, OK)])
    assert sorted(keys(made)) == [(3, 1), (4, 3)]
    assert all(2 not in p.key for p in made)


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ({1: OK, 4: OK}, [(4, 1, "desperate")]),
        ({1: OK, 2: OK}, [(2, 1, "regular")]),
        ({3: OK, 4: OK}, [(4, 3, "regular")]),
        ({1: OK, 3: OK}, [(3, 1, "lost_v2")]),
        ({2: OK, 4: OK}, [(4, 2, "lost_v3")]),
        ({2: OK, 3: OK}, [(3, 2, "lost_v1")]),
        ({2: OK}, []),
        ({}, []),
    ],
)
def test_two_or_more_missing_at_chunk_end(states: dict[int, VisitState], expected: list[tuple[int, int, str]]) -> None:
    """At the chunk's end, surviving visits in no pair get a desperate difference with the nearest survivor;
    a lone survivor gets none."""
    made = pairs_to_make(states, chunk_ended=True)
    assert [(*p.key, p.reason) for p in made] == expected


def test_desperate_pairs_only_at_chunk_end() -> None:
    """v2 and v3 lost: v1 and v4 are not differenced during the chunk, and 4-1 is made when it ends."""
    assert pairs_to_make({1: OK, 2: LOST, 3: LOST, 4: OK}, chunk_ended=False) == []
    made = pairs_to_make({1: OK, 2: LOST, 3: LOST, 4: OK}, chunk_ended=True)
    assert [(p.key, p.reason) for p in made] == [((4, 1), "desperate")]


def test_template_pairs() -> None:
    """With a template, every good visit is differenced against it once, besides the quad pairs."""
    made = pairs_to_make({1: OK, 2: OK, 3: BAD}, chunk_ended=False, template_available=True)
    assert keys(made) == [(2, 1), (1, TEMPLATE), (2, TEMPLATE)]
    again = pairs_to_make({1: OK, 2: OK, 3: BAD, 4: OK}, chunk_ended=False, template_available=True, done=keys(made))
    assert keys(again) == [(4, 2), (4, TEMPLATE)]


@pytest.mark.parametrize("states", list(itertools.product([None, OK, BAD, LOST], repeat=4)))
def test_never_a_pair_twice(states: tuple[VisitState | None, ...]) -> None:
    """For every combination of visit states, feeding them in order then ending the chunk makes no pair twice,
    every pair has science later than reference, and only good visits are differenced."""
    events = [(i + 1, s) for i, s in enumerate(states) if s is not None]
    made = run_arrivals(events)
    assert len(keys(made)) == len(set(keys(made)))
    good = {i for i, s in events if s is OK}
    for p in made:
        assert p.science > p.reference and {p.science, p.reference} <= good
    # Every good visit is in a pair when at least two are good.
    if len(good) >= 2:
        assert good <= {v for p in made for v in p.key}
    assert pairs_to_make(dict(events), chunk_ended=True, done=keys(made)) == []


def test_not_a_quad() -> None:
    """MAXINDEX other than 4, or a CURINDEX outside 1..4, is refused."""
    with pytest.raises(PairingError):
        pairs_to_make({1: OK}, chunk_ended=False, max_index=2)
    with pytest.raises(PairingError):
        pairs_to_make({5: OK}, chunk_ended=False)


def test_quad_position_from_header() -> None:
    """GROUPID, CURINDEX and MAXINDEX are read from a header; a missing GROUPID is refused."""
    header = {"GROUPID": "20260114_field7", "CURINDEX": 3, "MAXINDEX": 4, "OBSID": "MC_O_20260114_000012"}
    assert quad_position(header) == QuadPosition(group_id="20260114_field7", index=3, max_index=4)
    with pytest.raises(PairingError):
        quad_position({"CURINDEX": 3, "MAXINDEX": 4})
    with pytest.raises(PairingError):
        quad_position({"GROUPID": "g", "CURINDEX": "3", "MAXINDEX": 4})
