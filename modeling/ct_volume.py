"""Whole CT series and volumes: a DICOM folder, a list of files, a zip or a NIfTI file -> `CTVolume`s.

Every volume comes out in one orientation, the one a radiologist reads axial CT in: `hu[k, i, j]` with
k from inferior to superior, row i from anterior to posterior and column j from the patient's right to
left. Files are put there by their geometry alone (DICOM ImagePositionPatient/ImageOrientationPatient,
the NIfTI affine), never by file names, InstanceNumbers or the array's shape. DICOM patient
coordinates are LPS (x to the left, y to the back, z up) and NIfTI's are RAS; both are brought to LPS
and reoriented by one rule, so the same volume read from either gives the same array.

DICOM files are grouped by SeriesInstanceUID and ordered by ImagePositionPatient projected on the slice
normal (the cross product of the ImageOrientationPatient cosines), as dicom-numpy and MONAI do. What is
set aside (localizers, other orientations or sizes, duplicates, non-CT or unreadable files) is named,
with the reason, in the volume's `warnings`. Files are named by their path inside the given folder or
zip (the base name for files given in a list), never by anything read from the file, which may
identify the patient; the same goes for `CTVolume.key`.
"""

import hashlib
import os
import tempfile
import zipfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .ct_dicom import ct_header_refusal, pixel_spacing_of, read_ct_hu, read_dicom, technical_metadata

try:  # optional, like pydicom: only reading NIfTI needs it
    import nibabel
except ImportError:  # pragma: no cover - exercised only where nibabel is missing
    nibabel = None

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SKIPPED_NAMES = ("DICOMDIR",)  # DICOM media indexes, not images
# A zip is extracted into a private temporary folder, within these limits (a zip bomb stops at them).
ZIP_MAX_MEMBERS = 20_000
ZIP_MAX_BYTES = 8 * 1024**3
POSITION_TOLERANCE_MM = 0.01  # two slices closer than this along the normal are duplicates
GAP_TOLERANCE = 0.05  # slice gaps differing by more than 5 % (and 0.05 mm) are reported as uneven
OBLIQUE_TOLERANCE_DEGREES = 1.0
_KEY_SALT = b"pdac-ln-attention series key v1\0"


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
    return "s" + hashlib.sha256(_KEY_SALT + str(uid).encode("utf-8")).hexdigest()[:10]


def find_files(paths: Sequence[str]) -> List[str]:
    """Files named in `paths` plus every non-hidden file below the folders among them, in a stable order."""
    files = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            for folder, subfolders, names in os.walk(path):
                subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
                files.extend(
                    os.path.join(folder, name)
                    for name in sorted(names)
                    if not name.startswith(".") and name not in SKIPPED_NAMES
                )
        else:
            files.append(path)
    return files


def is_volume_file(path: str) -> bool:
    """A file read as a whole volume (NIfTI) or as a folder (zip) rather than as one DICOM file."""
    return os.fspath(path).lower().endswith(NIFTI_SUFFIXES + (".zip",))


# ---------------------------------------------------------------------------------------------------
# Orientation


def display_orientation(
    array: np.ndarray, axes_lps: np.ndarray, spacing_mm: Sequence[float], slice_origins_mm: np.ndarray
) -> Tuple[np.ndarray, Tuple[float, float, float], np.ndarray, List[str]]:
    """Reorient a volume to display order (inferior->superior, anterior->posterior, right->left).

    Args:
        array `(n0, n1, n2)`: the volume as stored.
        axes_lps `(3, 3)`: row a is the LPS unit vector along which stored axis a increases.
        spacing_mm `(3,)`: spacing along each stored axis.
        slice_origins_mm `(n0, 3)`: LPS position of voxel `(k, 0, 0)` for each k (real DICOM positions,
            so uneven gaps are kept).

    Returns `(array, spacing_mm, positions_mm, warnings)`. Each stored axis is assigned to the patient
    axis it is closest to (largest cosine first, like nibabel's `io_orientation`) and flipped when it
    runs the other way; an oblique volume is shown on the nearest axes, not resampled, and said so.
    """
    axes_lps = np.asarray(axes_lps, dtype=np.float64)
    cosines = np.abs(axes_lps).copy()
    patient_axis = np.empty(3, dtype=int)  # for each stored axis: 0 x (L), 1 y (P), 2 z (S)
    for _ in range(3):
        stored, world = np.unravel_index(np.argmax(cosines), cosines.shape)
        patient_axis[stored] = world
        cosines[stored, :] = -1.0
        cosines[:, world] = -1.0
    # display axis 0 is z, 1 is y, 2 is x: take the stored axis on each
    order = [int(np.flatnonzero(patient_axis == world)[0]) for world in (2, 1, 0)]
    flips = [bool(axes_lps[stored, patient_axis[stored]] < 0) for stored in order]
    warnings = []
    worst = np.degrees(np.arccos(np.clip(np.abs(axes_lps[np.arange(3), patient_axis]).min(), 0.0, 1.0)))
    if worst > OBLIQUE_TOLERANCE_DEGREES:
        warnings.append(f"oblique volume ({worst:.1f} degrees off the patient axes): shown on the nearest axes")

    display = np.transpose(array, order)
    for axis, flip in enumerate(flips):
        if flip:
            display = np.flip(display, axis)
    spacing = tuple(float(spacing_mm[stored]) for stored in order)

    # patient z of display voxel (i, 0, 0): its stored index along each axis, then the stored geometry
    shape = np.asarray(array.shape)
    count = display.shape[0]
    stored_index = np.zeros((count, 3), dtype=np.int64)
    for display_axis, stored in enumerate(order):
        first = shape[stored] - 1 if flips[display_axis] else 0
        if display_axis == 0:
            stored_index[:, stored] = np.arange(count)[::-1] if flips[0] else np.arange(count)
        else:
            stored_index[:, stored] = first
    slice_origins_mm = np.asarray(slice_origins_mm, dtype=np.float64)
    world = (
        slice_origins_mm[stored_index[:, 0]]
        + stored_index[:, 1:2] * spacing_mm[1] * axes_lps[1]
        + stored_index[:, 2:3] * spacing_mm[2] * axes_lps[2]
    )
    return np.ascontiguousarray(display, dtype=np.float32), spacing, world[:, 2], warnings


# ---------------------------------------------------------------------------------------------------
# DICOM


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

    if placed:  # the majority orientation (to 3 decimals), then everything within 1e-3 of it
        majority = np.asarray(_majority([tuple(np.round(m.orientation, 3)) for m in placed]))
        differs = [m for m in placed if not np.allclose(m.orientation, majority, atol=2e-3)]
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


def skip_warning(name: str, reason: str) -> str:
    """The warning that says a file was set aside, and why."""
    return f"skipped {name}: {reason}"


def _skip_warnings(skipped: Sequence[Tuple[str, str]]) -> List[str]:
    return [skip_warning(name, reason) for name, reason in skipped]


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
        if np.ptp(gaps) > max(0.05, GAP_TOLERANCE * slice_spacing):
            warnings.append(f"uneven slice gaps from {gaps.min():.2f} to {gaps.max():.2f} mm (missing slices?)")
    else:
        slice_spacing = _single_slice_spacing(first)

    row_cosine, column_cosine = series.orientation[:3], series.orientation[3:]
    axes_lps = np.stack([np.cross(row_cosine, column_cosine), column_cosine, row_cosine])
    axes_lps /= np.linalg.norm(axes_lps, axis=1, keepdims=True)
    hu, spacing, z_mm, orientation_warnings = display_orientation(
        np.stack(slices), axes_lps, (slice_spacing, *pixel_spacing), series.origins_mm[kept]
    )
    if _is_axial(axes_lps):
        names = [series.names[index] for index in kept]
        names = names[::-1] if axes_lps[0, 2] < 0 else names  # stored superior->inferior
    else:
        names = [""] * hu.shape[0]  # display slices cut across the stored ones
    technical = technical_metadata(first)
    return CTVolume(
        hu=hu,
        spacing_mm=spacing,
        positions_mm=z_mm,
        key=series.key,
        warnings=warnings + orientation_warnings + _skip_warnings(skipped),
        technical=technical,
        slice_names=names,
        skipped=skipped,
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


# ---------------------------------------------------------------------------------------------------
# NIfTI and zip


def read_nifti(path) -> CTVolume:
    """A NIfTI CT volume in HU (`.nii` / `.nii.gz`) -> `CTVolume`, reoriented by its affine."""
    if nibabel is None:
        raise ImportError("Reading NIfTI needs nibabel: pip install nibabel")
    try:
        image = nibabel.load(os.fspath(path))
        data = np.asarray(image.get_fdata(dtype=np.float32))
    except Exception as error:  # noqa: BLE001 - nibabel raises many types on damaged files
        raise ValueError(f"unreadable NIfTI file, truncated or corrupt ({type(error).__name__})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"a NIfTI CT volume must be 3-D, got shape {data.shape}")
    affine = np.asarray(image.affine, dtype=np.float64)
    ras_to_lps = np.array([-1.0, -1.0, 1.0])
    columns = affine[:3, :3] * ras_to_lps[:, None]  # column a: LPS step along stored axis a
    spacing = np.linalg.norm(columns, axis=0)
    if not np.all(spacing > 0):
        raise ValueError("the NIfTI affine is degenerate (a zero voxel size)")
    axes_lps = (columns / spacing).T
    origin = affine[:3, 3] * ras_to_lps
    origins = origin + np.arange(data.shape[0])[:, None] * spacing[0] * axes_lps[0]
    hu, spacing_mm, z_mm, warnings = display_orientation(data, axes_lps, spacing, origins)
    if hu.min() >= 0:
        warnings.append("no negative values: the NIfTI may not hold Hounsfield units")
    digest = nifti_key_digest(hu, spacing_mm)
    technical = {
        "format": "NIfTI",
        "rows": hu.shape[1],
        "columns": hu.shape[2],
        "pixel_spacing_mm": [spacing_mm[1], spacing_mm[2]],
        "slice_spacing_mm": spacing_mm[0],
    }
    return CTVolume(hu, spacing_mm, z_mm, "n" + digest, warnings, technical, [""] * hu.shape[0])


def nifti_key_digest(hu: np.ndarray, spacing_mm: Sequence[float]) -> str:
    """A NIfTI volume has no UID: its key hashes its voxels and spacing, read in place (a volume of
    several hundred MB is not copied to be hashed)."""
    digest = hashlib.sha256(memoryview(np.ascontiguousarray(hu)).cast("B"))
    digest.update(np.asarray(spacing_mm, dtype=np.float64).tobytes())
    return digest.hexdigest()[:10]


def _member_parts(name: str) -> Tuple[str, ...]:
    """The path of a zip member as parts; one-line `ValueError` if it would leave the extraction folder."""
    normalised = name.replace("\\", "/")
    parts = PurePosixPath(normalised).parts
    if normalised.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
        raise ValueError("the zip holds a path that escapes it (absolute or with '..'); refused")
    return parts


@contextmanager
def extracted_zip(path) -> Iterator[str]:
    """Extract a zip into a private temporary folder, yield the folder, delete it afterwards.

    At most `ZIP_MAX_MEMBERS` files and `ZIP_MAX_BYTES` bytes in all (counted while extracting, so a
    zip that lies about its sizes stops too); member paths may not escape the folder.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"not a readable zip file ({type(error).__name__})") from None
    with archive, tempfile.TemporaryDirectory(prefix="ct-zip-") as folder:
        members = [member for member in archive.infolist() if not member.is_dir()]
        if len(members) > ZIP_MAX_MEMBERS:
            raise ValueError(f"the zip holds {len(members)} files, more than the limit of {ZIP_MAX_MEMBERS}")
        total = 0
        for member in members:
            parts = _member_parts(member.filename)
            target = os.path.join(folder, *parts)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            try:
                with archive.open(member) as source, open(target, "wb") as destination:
                    while chunk := source.read(1 << 20):
                        total += len(chunk)
                        if total > ZIP_MAX_BYTES:
                            raise ValueError(f"the zip expands to more than {ZIP_MAX_BYTES / 1024**3:.1f} GiB; refused")
                        destination.write(chunk)
            except (zipfile.BadZipFile, RuntimeError, OSError, EOFError) as error:  # damaged, encrypted
                raise ValueError(f"cannot extract the zip ({type(error).__name__})") from None
        yield folder


# ---------------------------------------------------------------------------------------------------
# Entry point


def _read_files(paths: Sequence[str], names: Sequence[str]) -> List[CTVolume]:
    """DICOM files (and NIfTI files among them) -> volumes, the source's skipped files noted in each."""
    volumes, skipped = [], []
    dicom = [(path, name) for path, name in zip(paths, names, strict=True) if not is_volume_file(path)]
    for path, name in zip(paths, names, strict=True):
        if path.lower().endswith(NIFTI_SUFFIXES):
            try:
                volumes.append(read_nifti(path))
            except (ValueError, ImportError) as error:  # damaged, or nibabel not installed
                skipped.append((name, str(error)))
        elif path.lower().endswith(".zip"):
            skipped.append((name, "a zip inside a folder or zip is not read; pass it on its own"))
    series, header_skipped = group_dicom_series([p for p, _ in dicom], [n for _, n in dicom])
    skipped += header_skipped
    for group in series:
        try:
            volumes.append(load_dicom_series(group))
        except ValueError as error:
            skipped.append((f"series {group.key}", str(error)))
    if not volumes:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in skipped[:3]) or "no files"
        raise ValueError(f"no CT series found ({len(skipped)} file(s) skipped: {reasons})")
    for volume in volumes:
        volume.warnings.extend(_skip_warnings(skipped))
        volume.skipped.extend(skipped)
        volume.source_skipped.extend(skipped)
    return volumes


def read_ct_volumes(source) -> List[CTVolume]:
    """A folder (searched recursively), a list of file paths, a `.zip` of DICOM files or a NIfTI file
    -> one `CTVolume` per CT series.

    Raises a one-line `ValueError` when `source` does not exist, holds no CT series, or is a zip
    that is damaged, too large or holds paths escaping it. Files that are set aside (and why) are in
    each volume's `warnings`, named by their path inside the folder or zip, or by their base name
    for a list of files.
    """
    if isinstance(source, (list, tuple)):
        paths, names = [], []
        for item in source:
            item = os.fspath(item)
            if not os.path.exists(item):
                raise ValueError(f"no such file or folder: {item}")
            found = find_files([item])
            paths += found
            names += [os.path.relpath(p, item) if os.path.isdir(item) else os.path.basename(p) for p in found]
        return _read_files(paths, names)
    source = os.fspath(source)
    if not os.path.exists(source):
        raise ValueError(f"no such file or folder: {source}")
    if os.path.isdir(source):
        paths = find_files([source])
        return _read_files(paths, [os.path.relpath(path, source) for path in paths])
    if source.lower().endswith(".zip"):
        with extracted_zip(source) as folder:
            paths = find_files([folder])
            if not paths:
                raise ValueError("the zip holds no files")
            return _read_files(paths, [os.path.relpath(path, folder) for path in paths])
    if source.lower().endswith(NIFTI_SUFFIXES):
        return [read_nifti(source)]
    return _read_files([source], [os.path.basename(source)])


__all__ = [
    "CTVolume",
    "DicomSeries",
    "display_orientation",
    "extracted_zip",
    "find_files",
    "group_dicom_series",
    "is_volume_file",
    "load_dicom_series",
    "read_ct_volumes",
    "read_nifti",
    "series_key",
    "skip_warning",
]
