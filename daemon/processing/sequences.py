"""Calibration sequences from the catalog's frames, and what a job of one records (its spec and key).

A sequence is the frames of one (instrument, detector, IMGTYPE, GROUPID, and FILTER for flats); it is
complete when CURINDEX 1..MAXINDEX are all there. A job's spec names its inputs with their checksums,
the masters it applies, its parameters and the code version; its key is the hash of all of that, so
the same inputs, parameters and code always give the same key (and the same product id).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from daemon.journal.jobs import CalibFrame
from processors.calib import CalibParams

Kind = Literal["bias", "dark", "flat"]
KINDS: dict[str, Kind] = {"BIAS": "bias", "DARK": "dark", "FLAT": "flat"}
STEPS: dict[Kind, str] = {"bias": "master_bias", "dark": "master_dark", "flat": "master_flat"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Sequence:
    """The frames of one calibration sequence of one detector, in CURINDEX order."""

    kind: Kind
    instrument: str
    detector: str
    groupid: str
    filter: str | None
    frames: tuple[CalibFrame, ...]

    @property
    def name(self) -> str:
        """The sequence's key among its step's jobs: GROUPID (with the filter for flats)."""
        return f"{self.groupid}/{self.filter}" if self.kind == "flat" else self.groupid

    @property
    def step(self) -> str:
        """The step that builds its master."""
        return STEPS[self.kind]

    @property
    def expected(self) -> int:
        """MAXINDEX (the number of frames written, when no header says)."""
        return max([f.maxindex or 0 for f in self.frames] + [len(self.frames)])

    @property
    def missing(self) -> tuple[int, ...]:
        """CURINDEX values 1..MAXINDEX not (yet) archived."""
        present = {f.curindex for f in self.frames}
        return tuple(i for i in range(1, self.expected + 1) if i not in present)

    @property
    def complete(self) -> bool:
        """Every frame 1..MAXINDEX is archived."""
        return not self.missing

    @property
    def last_arrival(self) -> float:
        """When its newest frame was archived (Unix seconds)."""
        return max(f.arrived_at for f in self.frames)


def group_sequences(frames: Iterable[CalibFrame]) -> list[Sequence]:
    """Group archived calibration frames into sequences (a repeated CURINDEX keeps the first frame)."""
    groups: dict[tuple[str, str, str, str, str | None], dict[int | str, CalibFrame]] = {}
    for frame in frames:
        found = KINDS.get(frame.imgtype)
        if found is None:
            continue
        key = (found, frame.instrument, frame.detector, frame.groupid, frame.filter if found == "flat" else None)
        slot: int | str = frame.curindex if frame.curindex is not None else frame.name
        groups.setdefault(key, {}).setdefault(slot, frame)
    out = []
    for (kind, instrument, detector, groupid, filter_), members in groups.items():
        ordered = sorted(members.values(), key=lambda f: (f.curindex if f.curindex is not None else 1 << 30, f.name))
        out.append(
            Sequence(
                kind=kind,  # type: ignore[arg-type]
                instrument=instrument,
                detector=detector,
                groupid=groupid,
                filter=filter_,
                frames=tuple(ordered),
            )
        )
    return out


@cache
def code_version() -> str:
    """The package version and a hash of the calibration processors' source: changes when their code does."""
    try:
        version = importlib.metadata.version("skyrelay")
    except importlib.metadata.PackageNotFoundError:
        version = "0+unknown"
    import processors.calib as calib

    digest = hashlib.sha256()
    for path in sorted(Path(calib.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"{version}+{digest.hexdigest()[:12]}"


def params_dict(params: CalibParams) -> dict[str, Any]:
    """Parameters as JSON."""
    return json.loads(json.dumps(dataclasses.asdict(params)))  # type: ignore[no-any-return]


def params_from(data: dict[str, Any]) -> CalibParams:
    """Parameters from their JSON."""
    values = dict(data)
    values["gains_e_per_adu"] = tuple(tuple(pair) for pair in values.get("gains_e_per_adu", ()))
    return CalibParams(**values)


def master_ref(product: Any) -> dict[str, str] | None:
    """How a job names a master it applies (a :class:`~daemon.journal.products.ProductRow` or None)."""
    if product is None:
        return None
    return {"product_id": product.product_id, "archive_path": product.archive_path, "checksum": product.checksum}


def job_spec(
    sequence: Sequence,
    *,
    params: CalibParams,
    bias: dict[str, str] | None,
    dark: dict[str, str] | None,
    notes: list[str],
) -> dict[str, Any]:
    """What a job records before it runs: everything needed to build (and rebuild) its master."""
    return {
        "step": sequence.step,
        "kind": sequence.kind,
        "instrument": sequence.instrument,
        "detector": sequence.detector,
        "groupid": sequence.groupid,
        "filter": sequence.filter,
        "inputs": [{"name": f.name, "archive_path": f.archive_path, "checksum": f.checksum} for f in sequence.frames],
        "expected": sequence.expected,
        "missing": list(sequence.missing),
        "bias": bias,
        "dark": dark,
        "params": params_dict(params),
        "code_version": code_version(),
        "notes": notes,
    }


def job_key(spec: dict[str, Any]) -> str:
    """The hash of a job's step, input checksums, masters applied, parameters and code version."""
    identity = {
        "step": spec["step"],
        "inputs": [item["checksum"] for item in spec["inputs"]],
        "bias": spec["bias"]["checksum"] if spec.get("bias") else None,
        "dark": spec["dark"]["checksum"] if spec.get("dark") else None,
        "params": spec["params"],
        "code_version": spec["code_version"],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def product_id(spec: dict[str, Any], key: str) -> str:
    """The product's id: kind, detector and the job key's first 16 hex digits."""
    return f"{spec['kind']}-{spec['detector']}-{key[:16]}"


def product_path(spec: dict[str, Any], pid: str) -> str:
    """Where the product goes, relative to the archive root."""
    return f"products/{spec['kind']}/{spec['instrument']}/{spec['detector']}/{pid}.fits"
