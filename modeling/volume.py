"""`CTVolume`: what every reader of series and volumes returns (DICOM series, NIfTI), in display orientation."""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


@dataclass
class CTVolume:
    """One CT volume in display orientation.

    Attributes:
        hu (`np.ndarray` float32 `(slices, rows, columns)`): Hounsfield units, slices from inferior to
            superior, row 0 anterior, column 0 at the patient's right.
        spacing_mm (`(slice, row, column)`): distance between neighbouring slices / rows / columns.
        positions_mm (`np.ndarray` float64 `(slices,)`): the patient z (superior) coordinate of each
            slice's first voxel; increasing.
        key: a short id of the series (a salted hash), never the UID or a patient tag.
        warnings: one-line notes on anything unusual or set aside while reading.
        technical: allow-listed acquisition metadata (`ct_dicom.TECHNICAL_TAGS`), nothing about the patient.
        slice_names: per slice, the file it came from, named inside the source (empty for NIfTI).
        skipped: `(name, reason)` of the files of this series (or source) that were set aside.
        source_skipped: those of `skipped` that belong to no CT series of the source (not DICOM, not
            CT, localizers): they are noted in each of the source's volumes but are none of them.
        affine_lps (`np.ndarray` `(4, 4)`): display index `(k, i, j, 1)` -> patient position in mm (DICOM's
            LPS), so results can be placed on the source's grid; along k the median slice gap (the
            real positions are `positions_mm`).
    """

    hu: np.ndarray
    spacing_mm: Tuple[float, float, float]
    positions_mm: np.ndarray
    key: str
    warnings: List[str] = field(default_factory=list)
    technical: Dict = field(default_factory=dict)
    slice_names: List[str] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    source_skipped: List[Tuple[str, str]] = field(default_factory=list)
    affine_lps: Optional[np.ndarray] = None


def skip_warning(name: str, reason: str) -> str:
    """The warning that says a file was set aside, and why."""
    return f"skipped {name}: {reason}"


def skip_warnings(skipped: Sequence[Tuple[str, str]]) -> List[str]:
    return [skip_warning(name, reason) for name, reason in skipped]
