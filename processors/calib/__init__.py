"""Calibration: ISR building blocks, MEANCLIP combination and master bias, dark and flat.

Public surface:

- :func:`make_master` (:class:`MasterSpec` → :class:`MasterOutcome`): the executor's job entry point;
- :func:`isr_exposure` (raw → :class:`IsrResult`): ISR of a science exposure with masters;
- :func:`meanclip_stack`: cp_pipe's MEANCLIP across frames, per pixel;
- :func:`parse_section`, :func:`amp_geometry`: amplifier layout from DATASEC/BIASSEC/DETSEC/DETSIZE;
- :data:`MASK_BITS`: the mask plane's bits. The master file's layout is described in
  :mod:`processors.calib.product`.
"""

from processors.calib.combine import ClipResult, clipped_mean_std, meanclip_stack
from processors.calib.grouping import FlatGrouping, FlatMeasure, group_flats
from processors.calib.isr import (
    MASK_BAD,
    MASK_BITS,
    MASK_HOT,
    MASK_NO_DATA,
    MASK_SAT,
    AmpStats,
    CalibError,
    CalibParams,
    IsrResult,
    MasterFrame,
    RawExposure,
    isr_exposure,
)
from processors.calib.layout import AmpGeometry, LayoutError, Section, amp_geometry, parse_section
from processors.calib.masters import MasterInput, MasterOutcome, MasterSpec, MasterStats, make_master

__all__ = [
    "MASK_BAD",
    "MASK_BITS",
    "MASK_HOT",
    "MASK_NO_DATA",
    "MASK_SAT",
    "AmpGeometry",
    "AmpStats",
    "CalibError",
    "CalibParams",
    "ClipResult",
    "FlatGrouping",
    "FlatMeasure",
    "IsrResult",
    "LayoutError",
    "MasterFrame",
    "MasterInput",
    "MasterOutcome",
    "MasterSpec",
    "MasterStats",
    "RawExposure",
    "Section",
    "amp_geometry",
    "clipped_mean_std",
    "group_flats",
    "isr_exposure",
    "make_master",
    "meanclip_stack",
    "parse_section",
]
