"""Difference imaging: PSF, Alard-Lupton matching, subtraction, detection and measurement.

The chain for one detector pair is :func:`difference_pair` (or :func:`difference_pair_from_files`):
a picklable, pure function of two :class:`CalibratedImage` and :class:`DiffParams` returning a
:class:`DiffResult`. The stages are public for tests and tools: :mod:`.background`, :mod:`.psf`,
:mod:`.registration`, :mod:`.matching`, :mod:`.detection`, :mod:`.cutouts`.
"""

from processors.diffim.calexp import (
    MASK_BAD,
    MASK_CR,
    MASK_EDGE,
    MASK_NO_DATA,
    MASK_SAT,
    CalibratedImage,
)
from processors.diffim.detection import DetectionParams, Detections, DiaSource
from processors.diffim.matching import AlardLuptonParams, KernelSolution
from processors.diffim.pair import (
    DiffimError,
    DiffParams,
    DiffResult,
    SourceCutouts,
    difference_pair,
    difference_pair_from_files,
    visit_quality,
)
from processors.diffim.psf import PsfModel, QualityParams, VisitQuality, assess_quality, measure_psf

__all__ = [
    "MASK_BAD",
    "MASK_CR",
    "MASK_EDGE",
    "MASK_NO_DATA",
    "MASK_SAT",
    "AlardLuptonParams",
    "CalibratedImage",
    "DetectionParams",
    "Detections",
    "DiaSource",
    "DiffParams",
    "DiffResult",
    "DiffimError",
    "KernelSolution",
    "PsfModel",
    "QualityParams",
    "SourceCutouts",
    "VisitQuality",
    "assess_quality",
    "difference_pair",
    "difference_pair_from_files",
    "measure_psf",
    "visit_quality",
]
