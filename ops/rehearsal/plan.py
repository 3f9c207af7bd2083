"""The rehearsal's plan: which afternoons of calibrations and which nights of science, with what goes wrong.

Modelled on an observatory's published operations rehearsal (four days): day 1 bias, dark and flat; day 2
the calibration sequence with the illumination changed; day 3 bias, a flat sequence interrupted part-way,
a good flat sequence, then darks; day 4 a network change to test fail-over routing, then verification of
arrival and archiving. Each day has a night of science quads after its afternoon. The night's troubles are
spread over the nights there are: a lost visit, a visit in bad seeing, a file whose header needs a
correction file, an exposure missing one detector; the last night always carries the network drill
(link cut, broker SIGKILLed, link restored). ``--days 1`` is a single day with everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Literal

from processors.detectors import expected_detectors

Scale = Literal["small", "full"]

INSTRUMENT = "ComCam"
FIRST_DAY = date(2026, 11, 28)
FIELDS = ("F01", "F05", "F08", "F07", "F03", "F06")
"""The fields observed, in order: those of the night simulator's whose small (256 px) star field always gives
enough isolated stars for a PSF (F02 and F04 are marginal: a good visit would fail the quality cut by chance)."""
SNR_LADDER = (5.0, 6.0, 7.0, 8.0, 10.0, 12.0, 15.0, 20.0, 30.0)
"""Difference SNR of the transient injected on each detector (sorted detector order)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibStep:
    """One calibration sequence of every detector."""

    kind: Literal["bias", "dark", "flat"]
    n: int
    lamp_change_at: int | None = None
    lamp_factor: float = 1.0
    interrupt_at: int | None = None
    note: str = ""

    @property
    def written(self) -> int:
        """Frames the camera takes (an interrupted sequence stops early; the next one numbers on from there)."""
        return self.n if self.interrupt_at is None else min(self.n, self.interrupt_at - 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameRef:
    """One detector of one visit: field name, CURINDEX, detector."""

    field: str
    visit: int
    detector: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NightPlan:
    """A night of quads on ``fields`` fields."""

    fields: int
    lose: tuple[str, ...] = ()
    """Visits never taken (``F01:v3``)."""
    bad_seeing: tuple[str, ...] = ()
    """Visits in 2.4 arcsec seeing (fail the quality cut)."""
    correction: FrameRef | None = None
    """A frame written with a header beyond repair (IMGTYPE BOGUS); a correction file fixes it, then release."""
    missing_detector: FrameRef | None = None
    """A frame the camera never writes (its exposure lacks one detector)."""
    drill: bool = False
    """The network drill: summit-base cut mid-night, the base broker SIGKILLed, the link restored."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DayPlan:
    """One observing day: an afternoon of calibrations, then a night."""

    number: int
    dayobs: str
    title: str
    calibs: tuple[CalibStep, ...]
    night: NightPlan

    @property
    def science_seq_start(self) -> int:
        """SEQNUM of the night's first visit: right after the afternoon's last frame (no gap for verify)."""
        return 1 + sum(step.written for step in self.calibs)


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """The whole rehearsal."""

    days: tuple[DayPlan, ...]
    scale: Scale
    seed: int
    instrument: str = INSTRUMENT
    detectors: tuple[str, ...] = field(default_factory=lambda: tuple(sorted(expected_detectors(INSTRUMENT))))
    exposure_cadence_s: float = 0.25
    """Seconds between calibration exposures (time compressed: an afternoon in well under a minute)."""
    visit_cadence_s: float = 1.0
    """Seconds between visits at night."""
    quiet_s: float = 8.0
    """The archive's quiet time before an incomplete sequence is built."""
    chunk_end_s: float = 30.0
    """The archive's chunk end after a quad's last visit."""
    late_after_s: float = 12.0

    def snr_of(self, detector: str) -> float:
        """The transient's difference SNR on ``detector``."""
        return SNR_LADDER[self.detectors.index(detector) % len(SNR_LADDER)]


def _calibs(number: int, scale: Scale) -> tuple[tuple[CalibStep, ...], str]:
    n = 5 if scale == "small" else 10
    if number == 1:
        return (CalibStep(kind="bias", n=n), CalibStep(kind="dark", n=n), CalibStep(kind="flat", n=n)), (
            "bias, dark, flat; masters on arrival"
        )
    if number == 2:
        return (
            CalibStep(kind="bias", n=n),
            CalibStep(kind="dark", n=3),
            CalibStep(
                kind="flat", n=n + 2, lamp_change_at=n, lamp_factor=0.7, note="illumination changed at frame " + str(n)
            ),
        ), "calibrations with the illumination source changed"
    if number == 3:
        return (
            CalibStep(kind="bias", n=n),
            CalibStep(kind="flat", n=n + 1, interrupt_at=n, note=f"interrupted before frame {n}"),
            CalibStep(kind="flat", n=n, note="the good flat sequence"),
            CalibStep(kind="dark", n=n),
        ), "bias, an interrupted flat sequence, a good one, darks"
    return (CalibStep(kind="bias", n=n),), "bias; a network change to test fail-over routing, then verification"


def make_plan(*, days: int = 4, scale: Scale = "small", seed: int = 0, fields: int | None = None) -> Plan:
    """The rehearsal of ``days`` days (1-4); the last day's night always has the network drill.

    Raises:
        ValueError: ``days`` outside 1..4 or ``fields`` below 1.
    """
    if not 1 <= days <= 4:
        raise ValueError(f"--days must be 1..4 (the rehearsal plan has four days), not {days}")
    n_fields = fields if fields is not None else (2 if scale == "small" else 4)
    if not 1 <= n_fields < len(FIELDS):
        raise ValueError(f"--fields must be 1..{len(FIELDS) - 1}, not {n_fields}")
    detectors = tuple(sorted(expected_detectors(INSTRUMENT)))
    last = n_fields  # the last field of a night takes the troubles a second field would
    troubles: list[dict[str, object]] = [
        {"lose": (f"{FIELDS[0]}:v3",)},
        {"bad_seeing": (f"{FIELDS[min(2, last) - 1]}:v2",)},
        {
            "correction": FrameRef(field=FIELDS[0], visit=1, detector=detectors[0]),
            "missing_detector": FrameRef(field=FIELDS[last - 1], visit=4, detector=detectors[-1]),
        },
    ]
    plans: list[DayPlan] = []
    for number in range(1, days + 1):
        calibs, title = _calibs(number, scale)
        night: dict[str, object] = {}
        for index, trouble in enumerate(troubles):
            if min(index, days - 1) == number - 1:
                for key, value in trouble.items():
                    if key in night and isinstance(value, tuple):
                        night[key] = (*night[key], *value)  # type: ignore[misc]
                    else:
                        night[key] = value
        night_plan = NightPlan(
            fields=n_fields + (1 if number == days else 0),  # the drill night is longer: traffic across the cut
            drill=number == days,
            **night,  # type: ignore[arg-type]
        )
        dayobs = (FIRST_DAY + timedelta(days=number - 1)).strftime("%Y%m%d")
        plans.append(DayPlan(number=number, dayobs=dayobs, title=title, calibs=calibs, night=night_plan))
    return Plan(days=tuple(plans), scale=scale, seed=seed, detectors=detectors)
