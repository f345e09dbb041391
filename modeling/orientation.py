"""Volumes in the orientation a radiologist reads axial CT in, by their geometry alone.

Display order: `hu[k, i, j]`, k from inferior to superior, row i from anterior to posterior, column j
from the patient's right to left, i.e. LPS axes (2, 1, 0) all increasing. Each stored axis goes to
the patient axis it is closest to and is flipped when it runs the other way: nibabel's
`io_orientation`, `ornt_transform` and `apply_orientation`. An oblique volume is shown on the nearest
axes (not resampled), and said so. DICOM's patient coordinates are LPS; NIfTI's RAS affine is brought
to LPS by its readers before it comes here, so both take the same path.
"""

from typing import List, NamedTuple, Sequence

import numpy as np

try:  # optional, as in the rest of modeling/: reading volumes needs it, loading the model does not
    from nibabel.orientations import apply_orientation, io_orientation, ornt_transform
except ImportError:  # pragma: no cover - exercised only where nibabel is missing
    io_orientation = None

OBLIQUE_TOLERANCE_DEGREES = 1.0
# nibabel orientation of the display array: axis 0 along LPS z (S), 1 along y (P), 2 along x (L), all +1
DISPLAY_ORIENTATION = np.array([[2, 1], [1, 1], [0, 1]])


class DisplayVolume(NamedTuple):
    """A volume in display order: `hu` float32 `(slices, rows, columns)`, `spacing_mm` `(slice, row,
    column)`, `positions_mm` `(slices,)` the patient z of each slice, `affine_lps` `(4, 4)` from display
    index `(k, i, j, 1)` to LPS mm, `warnings` (an oblique volume)."""

    hu: np.ndarray
    spacing_mm: tuple
    positions_mm: np.ndarray
    affine_lps: np.ndarray
    warnings: List[str]


def stored_affine(axes_lps: np.ndarray, spacing_mm: Sequence[float], origin_mm: Sequence[float]) -> np.ndarray:
    """`(4, 4)` LPS affine of a stored array: row a of `axes_lps` `(3, 3)` is the unit vector along which
    stored axis a increases, `spacing_mm` `(3,)` its step, `origin_mm` `(3,)` the position of voxel 0."""
    affine = np.eye(4)
    affine[:3, :3] = (np.asarray(axes_lps, np.float64) * np.asarray(spacing_mm, np.float64)[:, None]).T
    affine[:3, 3] = origin_mm
    return affine


def display_orientation(array: np.ndarray, axes_lps: np.ndarray, spacing_mm: Sequence[float],
                        slice_origins_mm: np.ndarray) -> DisplayVolume:
    """Reorient a stored volume `(n0, n1, n2)` to display order.

    Args:
        array `(n0, n1, n2)`: the volume as stored.
        axes_lps `(3, 3)`: row a is the LPS unit vector along which stored axis a increases.
        spacing_mm `(3,)`: spacing along each stored axis (the median slice gap along axis 0).
        slice_origins_mm `(n0, 3)`: LPS position of voxel `(k, 0, 0)` for each k: DICOM's real
            positions, so uneven gaps are kept in `positions_mm` (the affine has the median gap).
    """
    if io_orientation is None:
        raise ImportError("Reading CT volumes needs nibabel: pip install nibabel")
    slice_origins_mm = np.asarray(slice_origins_mm, dtype=np.float64)
    affine = stored_affine(axes_lps, spacing_mm, slice_origins_mm[0])
    stored = io_orientation(affine)  # per stored axis: (patient axis, +1 or -1)
    transform = ornt_transform(stored, DISPLAY_ORIENTATION)
    display = np.ascontiguousarray(apply_orientation(array, transform), dtype=np.float32)
    order = [int(np.flatnonzero(stored[:, 0] == world)[0]) for world in (2, 1, 0)]  # stored axis of each
    spacing = tuple(float(spacing_mm[axis]) for axis in order)

    # display voxel (0, 0, 0) is the stored voxel at the far end of every flipped axis
    far_end = np.where(stored[:, 1] < 0, np.asarray(array.shape) - 1, 0).astype(np.int64)
    display_affine = np.eye(4)
    display_affine[:3, :3] = affine[:3, order] * stored[order, 1]
    display_affine[:3, 3] = _stored_positions(far_end[None], slice_origins_mm, affine)[0]
    index = np.tile(far_end, (display.shape[0], 1))
    steps = np.arange(display.shape[0])
    index[:, order[0]] = steps[::-1] if stored[order[0], 1] < 0 else steps
    positions = _stored_positions(index, slice_origins_mm, affine)[:, 2]
    return DisplayVolume(display, spacing, positions, display_affine, _oblique_warnings(axes_lps, stored))


def _stored_positions(index: np.ndarray, slice_origins_mm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """LPS positions `(n, 3)` of stored voxels `index` `(n, 3)`: along stored axis 0 from the slices' own
    origins (DICOM's real positions, uneven gaps kept), along the others by the affine's steps."""
    return slice_origins_mm[index[:, 0]] + index[:, 1:] @ affine[:3, 1:3].T


def _oblique_warnings(axes_lps: np.ndarray, stored: np.ndarray) -> List[str]:
    cosines = np.abs(np.asarray(axes_lps, np.float64)[np.arange(3), stored[:, 0].astype(int)])
    worst = np.degrees(np.arccos(np.clip(cosines.min(), 0.0, 1.0)))
    if worst > OBLIQUE_TOLERANCE_DEGREES:
        return [f"oblique volume ({worst:.1f} degrees off the patient axes): shown on the nearest axes"]
    return []
