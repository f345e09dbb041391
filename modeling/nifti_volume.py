"""NIfTI CT volumes (`.nii`, `.nii.gz`, in HU) -> `CTVolume`, reoriented by their affine (RAS, brought to LPS)."""

import hashlib
import os
from typing import Sequence

import numpy as np

from .orientation import display_orientation
from .volume import CTVolume

try:  # optional, like pydicom: only reading NIfTI needs it
    import nibabel
except ImportError:  # pragma: no cover - exercised only where nibabel is missing
    nibabel = None

NIFTI_SUFFIXES = (".nii", ".nii.gz")
KEY_DIGITS = 10  # hex digits of a NIfTI volume's key, as for a DICOM series'
RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])


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
    columns = affine[:3, :3] * RAS_TO_LPS[:, None]  # column a: LPS step along stored axis a
    spacing = np.linalg.norm(columns, axis=0)
    if not np.all(spacing > 0):
        raise ValueError("the NIfTI affine is degenerate (a zero voxel size)")
    axes_lps = (columns / spacing).T
    origin = affine[:3, 3] * RAS_TO_LPS
    origins = origin + np.arange(data.shape[0])[:, None] * spacing[0] * axes_lps[0]
    shown = display_orientation(data, axes_lps, spacing, origins)
    hu, spacing_mm, warnings = shown.hu, shown.spacing_mm, list(shown.warnings)
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
    return CTVolume(hu, spacing_mm, shown.positions_mm, "n" + digest, warnings, technical, [""] * hu.shape[0],
                    affine_lps=shown.affine_lps)


def nifti_key_digest(hu: np.ndarray, spacing_mm: Sequence[float]) -> str:
    """A NIfTI volume has no UID: its key hashes its voxels and spacing, read in place (a volume of
    several hundred MB is not copied to be hashed)."""
    digest = hashlib.sha256(memoryview(np.ascontiguousarray(hu)).cast("B"))
    digest.update(np.asarray(spacing_mm, dtype=np.float64).tobytes())
    return digest.hexdigest()[:KEY_DIGITS]
