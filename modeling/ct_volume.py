"""Whole CT series and volumes: a DICOM folder, a list of files, a zip or a NIfTI file -> `CTVolume`s.

Every volume comes out in one orientation, the one a radiologist reads axial CT in: `hu[k, i, j]` with
k from inferior to superior, row i from anterior to posterior and column j from the patient's right to
left. Files are put there by their geometry alone (DICOM ImagePositionPatient/ImageOrientationPatient,
the NIfTI affine), never by file names, InstanceNumbers or the array's shape. DICOM patient
coordinates are LPS (x to the left, y to the back, z up) and NIfTI's are RAS; both are brought to LPS
and reoriented by one rule, so the same volume read from either gives the same array.

DICOM files are grouped by SeriesInstanceUID and ordered by ImagePositionPatient projected on the slice
normal, as dicom-numpy and MONAI do. What is set aside (localizers, other orientations or sizes,
duplicates, non-CT or unreadable files) is named, with the reason, in the volume's `warnings`.

This file finds the files and reads a source; the parts live beside it: `volume.py` (`CTVolume`),
`dicom_series.py` (grouping and ordering DICOM), `nifti_volume.py`, `zip_archive.py` (safe
extraction) and `orientation.py` (the display orientation and the LPS affine every volume carries).

Files are named by their path inside the given folder or zip (the base name for files given in a
list), never by anything read from the file, which may identify the patient; the same goes for
`CTVolume.key`.
"""

import os
from typing import List, Sequence

from .dicom_series import DicomSeries, group_dicom_series, load_dicom_series, series_key
from .nifti_volume import NIFTI_SUFFIXES, nifti_key_digest, read_nifti
from .orientation import display_orientation
from .volume import CTVolume, skip_warning, skip_warnings
from .zip_archive import ZIP_MAX_BYTES, ZIP_MAX_MEMBERS, extracted_zip

SKIPPED_NAMES = ("DICOMDIR",)  # DICOM media indexes, not images


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
        volume.warnings.extend(skip_warnings(skipped))
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
    "NIFTI_SUFFIXES",
    "ZIP_MAX_BYTES",
    "ZIP_MAX_MEMBERS",
    "CTVolume",
    "DicomSeries",
    "display_orientation",
    "extracted_zip",
    "find_files",
    "group_dicom_series",
    "is_volume_file",
    "load_dicom_series",
    "nifti_key_digest",
    "read_ct_volumes",
    "read_nifti",
    "series_key",
    "skip_warning",
]
