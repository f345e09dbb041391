"""DICOM files -> CT series: grouped by SeriesInstanceUID, ordered along the slice normal, decoded to HU.

Slices are ordered by ImagePositionPatient projected on the slice normal (the cross product of the
ImageOrientationPatient cosines), as dicom-numpy and MONAI do, never by file name or InstanceNumber.
What is set aside (localizers, other orientations or sizes, duplicates, non-CT or unreadable files)
is named with the reason. A series is named by `series_key`, a salted hash, never by its UID.
"""

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .ct_dicom import ct_header_refusal, pixel_spacing_of, read_ct_hu, read_dicom, technical_metadata
from .orientation import display_orientation
from .volume import CTVolume, skip_warnings

POSITION_TOLERANCE_MM = 0.01  # two slices closer than this along the normal are duplicates
GAP_TOLERANCE = 0.05  # slice gaps differing by more than 5 % (and GAP_FLOOR_MM) are reported as uneven
GAP_FLOOR_MM = 0.05
ORIENTATION_DECIMALS = 3  # orientations are grouped to this many decimals...
ORIENTATION_TOLERANCE = 2e-3  # ...and a slice within this of the majority (per cosine) belongs to it
KEY_DIGITS = 10  # hex digits of a series key: collisions need about a million series
_KEY_SALT = b"pdac-ln-attention series key v1\0"


@dataclass
class DicomSeries:
    """The files of one DICOM series, ordered along the slice normal, read as headers only.

    `positions_mm` are along the normal; `skipped` holds `(name, reason)` of the files set aside.
    """

    key: str
    paths: List[str]
    names: List[str]
    headers: list
    orientation: np.ndarray  # (6,) ImageOrientationPatient
    positions_mm: np.ndarray  # (slices,) along the normal
    origins_mm: np.ndarray  # (slices, 3) ImagePositionPatient
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)


def series_key(uid: str) -> str:
    """A short, stable id for a series: a salted hash of its UID (the UID itself is never shown)."""
    return "s" + hashlib.sha256(_KEY_SALT + str(uid).encode("utf-8")).hexdigest()[:KEY_DIGITS]


def _majority(values: list):
    """The most common value (the first seen among equals)."""
    return Counter(values).most_common(1)[0][0]


@dataclass
class _Slice:
    """What grouping needs from one file's header, read once and checked."""

    path: str
    name: str
    header: object
    orientation: Optional[np.ndarray]  # (6,) or None
    position: Optional[np.ndarray]  # (3,) LPS or None
    size: tuple  # rows, columns, pixel spacing


def _examine(path: str, name: str, header) -> Tuple[str, _Slice]:
    """`(series UID, geometry)` of a CT header; one-line `ValueError` for a refusal or malformed tags."""
    try:
        refusal = ct_header_refusal(header)  # the single-slice reader's rule, header part
        if refusal is None:
            uid = str(header.get("SeriesInstanceUID", "") or f"no SeriesInstanceUID: {path}")
            orientation = header.get("ImageOrientationPatient")
            position = header.get("ImagePositionPatient")
            orientation = np.asarray(orientation, dtype=np.float64) if orientation else None
            position = np.asarray(position, dtype=np.float64) if position else None
            size = (int(header.Rows), int(header.Columns), pixel_spacing_of(header))
    except Exception as error:  # noqa: BLE001 - damaged tags raise many types in pydicom's lazy conversions
        raise ValueError(f"malformed DICOM header tags ({type(error).__name__})") from None
    if refusal is not None:
        raise ValueError(refusal)
    if orientation is not None and (orientation.shape != (6,) or not np.all(np.isfinite(orientation))):
        orientation = None
    if orientation is not None and np.linalg.norm(np.cross(orientation[:3], orientation[3:])) < 0.5:
        orientation = None  # not two perpendicular directions
    if position is not None and (position.shape != (3,) or not np.all(np.isfinite(position))):
        position = None
    return uid, _Slice(path, name, header, orientation, position, size)


def group_dicom_series(
    paths: Sequence[str], names: Optional[Sequence[str]] = None
) -> Tuple[List[DicomSeries], List[Tuple[str, str]]]:
    """Read the headers of `paths` and group the CT slices into series, each ordered along its normal.

    `names` are how files are referred to in warnings (default: the paths). Returns `(series,
    skipped)`: series in order of their first file; `skipped` holds `(name, reason)` for files that
    belong to no CT series (not DICOM, not CT, localizers, multi-frame). Files set aside inside a series
    (another orientation or size, no position, duplicate position: the lower InstanceNumber is kept)
    are in that series' `skipped`.
    """
    names = list(paths) if names is None else list(names)
    skipped: List[Tuple[str, str]] = []
    groups: Dict[str, List[_Slice]] = {}
    for path, name in zip(paths, names, strict=True):
        try:
            uid, item = _examine(path, name, read_dicom(path, stop_before_pixels=True))
        except ValueError as error:
            skipped.append((name, str(error)))
            continue
        groups.setdefault(uid, []).append(item)
    return [_order_series(uid, members) for uid, members in groups.items()], skipped


def _order_series(uid: str, members: List[_Slice]) -> DicomSeries:
    skipped, warnings = [], []
    key = series_key(uid)
    placed = [m for m in members if m.orientation is not None and m.position is not None]
    if len(members) == 1 and not placed:  # a lone slice without geometry: the standard axial one
        lone = members[0]
        warnings.append(f"{lone.name}: no usable ImagePositionPatient/ImageOrientationPatient; assumed axial")
        axial = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
        return DicomSeries(
            key, [lone.path], [lone.name], [lone.header], axial, np.zeros(1), np.zeros((1, 3)), skipped, warnings
        )
    unplaced = "no usable ImagePositionPatient/ImageOrientationPatient: cannot be placed in the series"
    skipped += [(m.name, unplaced) for m in members if m not in placed]

    if placed:  # the majority orientation, then everything close to it
        majority = np.asarray(_majority([tuple(np.round(m.orientation, ORIENTATION_DECIMALS)) for m in placed]))
        differs = [m for m in placed if not np.allclose(m.orientation, majority, atol=ORIENTATION_TOLERANCE)]
        reason = "orientation differs from the rest of the series (a localizer or reformat?)"
        skipped += [(m.name, reason) for m in differs]
        placed = [m for m in placed if m not in differs]
    if placed:
        size = _majority([m.size for m in placed])
        skipped += [(m.name, f"size or pixel spacing {m.size} differs from the series' {size}")
                    for m in placed if m.size != size]
        placed = [m for m in placed if m.size == size]
    if not placed:
        return DicomSeries(key, [], [], [], np.zeros(6), np.zeros(0), np.zeros((0, 3)), skipped, warnings)

    orientation = placed[0].orientation
    normal = np.cross(orientation[:3], orientation[3:])
    normal /= np.linalg.norm(normal)
    position = {id(m): float(m.position @ normal) for m in placed}

    def instance_number(member: _Slice) -> int:
        try:
            return int(member.header.get("InstanceNumber", 0) or 0)
        except Exception:  # noqa: BLE001 - a damaged InstanceNumber only loses its tie-break
            return 0

    placed.sort(key=lambda m: (position[id(m)], instance_number(m), m.name))
    kept = []
    for member in placed:
        if kept and abs(position[id(member)] - position[id(kept[-1])]) < POSITION_TOLERANCE_MM:
            same = member.header.get("SOPInstanceUID") == kept[-1].header.get("SOPInstanceUID")
            relation = "a copy of" if same else "same position as"
            skipped.append((member.name, f"{relation} {kept[-1].name} (duplicate slice)"))
            continue
        kept.append(member)
    return DicomSeries(
        key=key,
        paths=[m.path for m in kept],
        names=[m.name for m in kept],
        headers=[m.header for m in kept],
        orientation=orientation,
        positions_mm=np.array([position[id(m)] for m in kept]),
        origins_mm=np.array([m.position for m in kept]),
        skipped=skipped,
        warnings=warnings,
    )


def load_dicom_series(series: DicomSeries) -> CTVolume:
    """Decode the slices of `series` to HU and reorient them; one-line `ValueError` if none is readable."""
    skipped = list(series.skipped)
    slices, kept = [], []
    for index, (path, name, header) in enumerate(zip(series.paths, series.names, series.headers, strict=True)):
        try:
            hu = read_ct_hu(path)
            if hu.shape != (int(header.Rows), int(header.Columns)):
                raise ValueError(f"pixel data of shape {hu.shape} do not match Rows x Columns")
        except ValueError as error:
            skipped.append((name, str(error)))
            continue
        slices.append(hu)
        kept.append(index)
    if not slices:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in skipped[:3])
        raise ValueError(f"series {series.key}: no readable CT slice ({reasons})")
    positions = series.positions_mm[kept]
    warnings = list(series.warnings)
    first = series.headers[kept[0]]
    pixel_spacing = pixel_spacing_of(first)
    if pixel_spacing is None:
        pixel_spacing = (1.0, 1.0)
        warnings.append("no usable PixelSpacing: 1 mm assumed")
    gaps = np.diff(positions)
    if gaps.size:
        slice_spacing = float(np.median(gaps))
        if np.ptp(gaps) > max(GAP_FLOOR_MM, GAP_TOLERANCE * slice_spacing):
            warnings.append(f"uneven slice gaps from {gaps.min():.2f} to {gaps.max():.2f} mm (missing slices?)")
    else:
        slice_spacing = _single_slice_spacing(first)

    row_cosine, column_cosine = series.orientation[:3], series.orientation[3:]
    axes_lps = np.stack([np.cross(row_cosine, column_cosine), column_cosine, row_cosine])
    axes_lps /= np.linalg.norm(axes_lps, axis=1, keepdims=True)
    shown = display_orientation(np.stack(slices), axes_lps, (slice_spacing, *pixel_spacing), series.origins_mm[kept])
    if _is_axial(axes_lps):
        names = [series.names[index] for index in kept]
        names = names[::-1] if axes_lps[0, 2] < 0 else names  # stored superior->inferior
    else:
        names = [""] * shown.hu.shape[0]  # display slices cut across the stored ones
    technical = technical_metadata(first)
    return CTVolume(
        hu=shown.hu,
        spacing_mm=shown.spacing_mm,
        positions_mm=shown.positions_mm,
        key=series.key,
        warnings=warnings + shown.warnings + skip_warnings(skipped),
        technical=technical,
        slice_names=names,
        skipped=skipped,
        affine_lps=shown.affine_lps,
    )


def _single_slice_spacing(header) -> float:
    """A lone slice has no neighbour: its thickness stands in for the slice spacing (1 mm if unknown)."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            value = float(header.get(keyword) or 0)
        except (TypeError, ValueError):
            continue
        if value > 0:
            return value
    return 1.0


def _is_axial(axes_lps: np.ndarray) -> bool:
    """Whether the stored slice axis is the patient's z axis (so stored slices are display slices)."""
    return int(np.argmax(np.abs(axes_lps[0]))) == 2
