"""Writing synthetic CT slices as real DICOM files (the phantom, test fixtures, demo examples).

Only synthetic data goes through here: patient IDs are pseudonyms such as "PHANTOM-0007".
"""

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

# ImageOrientationPatient of a standard axial slice: rows run to the patient's left, columns to the back.
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_LPS_AXES = {"L": (0, 1.0), "R": (0, -1.0), "P": (1, 1.0), "A": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def deterministic_uid(*parts) -> str:
    """A valid DICOM UID derived from `parts`, so the same phantom seed gives the same files."""
    return generate_uid(entropy_srcs=[str(part) for part in parts])


def ct_dataset(
    hu: np.ndarray,
    *,
    patient_id: str = "PHANTOM-0000",
    study_uid: Optional[str] = None,
    series_uid: Optional[str] = None,
    sop_uid: Optional[str] = None,
    instance_number: int = 1,
    pixel_spacing: Sequence[float] = (0.8, 0.8),
    slice_thickness: float = 5.0,
    slice_location: float = 0.0,
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    signed: bool = False,
) -> FileDataset:
    """A CT Image Storage dataset holding `hu` (`(rows, columns)`, Hounsfield units).

    Stored value = round((HU - intercept) / slope), as uint16 or int16 (`signed`), so that the
    modality LUT of any reader gives back `hu` to within half a slope.
    """
    hu = np.asarray(hu, dtype=np.float64)
    stored = np.round((hu - rescale_intercept) / rescale_slope)
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    if stored.min() < info.min or stored.max() > info.max:
        raise ValueError(f"HU range [{hu.min()}, {hu.max()}] does not fit {dtype.__name__} with this rescale")
    sop_uid = sop_uid or generate_uid()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = "CT"
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.BodyPartExamined = "ABDOMEN"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.Manufacturer = "SYNTHETIC PHANTOM"
    ds.KVP = 120
    ds.ConvolutionKernel = "STANDARD"
    ds.InstanceNumber = instance_number
    ds.SliceThickness = slice_thickness
    ds.SliceLocation = slice_location
    ds.ImagePositionPatient = [0.0, 0.0, float(slice_location)]
    ds.ImageOrientationPatient = list(AXIAL)
    ds.PixelSpacing = [float(pixel_spacing[0]), float(pixel_spacing[1])]
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope = rescale_slope
    ds.RescaleIntercept = rescale_intercept
    ds.RescaleType = "HU"
    ds.WindowCenter = 60
    ds.WindowWidth = 400
    ds.PixelData = stored.astype(dtype).tobytes()
    return ds


def write_ct_dicom(path, hu: np.ndarray, **kwargs) -> str:
    """Write `ct_dataset(hu, **kwargs)` to `path` (a DICOM Part 10 file); returns the path."""
    ct_dataset(hu, **kwargs).save_as(path, enforce_file_format=True)
    return str(path)


def _resample_display_grid(
    hu: np.ndarray, spacing_mm: Sequence[float], origin_mm: Sequence[float], axes_lps: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The display volume stored along other patient axes, computed point by point from patient coordinates.

    `hu` `(slices, rows, columns)` is in display order: index k, i, j at LPS position
    `origin_mm + (j * column spacing, i * row spacing, k * slice spacing)` (x to the patient's left,
    y to the back, z up). `axes_lps` `(3, 3)`: row a is the LPS unit vector along which stored axis `a`
    increases (each a signed patient axis). Returns `(stored array, LPS position of stored voxel 0,
    spacing of each stored axis)`. Deliberately independent of the reader's reorientation code, so
    that tests of the reader are not circular.
    """
    hu = np.asarray(hu)
    display_spacing_xyz = np.array([spacing_mm[2], spacing_mm[1], spacing_mm[0]], dtype=np.float64)
    display_shape_xyz = np.array([hu.shape[2], hu.shape[1], hu.shape[0]])
    origin = np.asarray(origin_mm, dtype=np.float64)
    far = origin + (display_shape_xyz - 1) * display_spacing_xyz
    world_axis = np.abs(axes_lps).argmax(axis=1)  # the patient axis of each stored axis
    corner = np.where(axes_lps.sum(axis=0) < 0, far, origin)  # start at the end each stored axis leaves from
    stored_shape = display_shape_xyz[world_axis]
    stored_spacing = display_spacing_xyz[world_axis]
    grids = np.meshgrid(*[np.arange(n) for n in stored_shape], indexing="ij")
    world = corner.reshape(3, 1, 1, 1) + sum(
        axes_lps[a].reshape(3, 1, 1, 1) * (grids[a] * stored_spacing[a])[None] for a in range(3)
    )
    index_xyz = np.rint((world - origin.reshape(3, 1, 1, 1)) / display_spacing_xyz.reshape(3, 1, 1, 1)).astype(int)
    return hu[index_xyz[2], index_xyz[1], index_xyz[0]], corner, stored_spacing


def write_ct_series(
    folder,
    hu: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    row_axis: str = "L",
    column_axis: str = "P",
    origin_mm: Sequence[float] = (0.0, 0.0, 0.0),
    scramble: Optional[int] = None,
    patient_id: str = "PHANTOM-0000",
    series_uid: Optional[str] = None,
    study_uid: Optional[str] = None,
    **dataset_kwargs,
) -> List[str]:
    """Write a CT volume as one DICOM series (one file per slice); returns the paths in slice order.

    `hu` `(slices, rows, columns)` is in display order (inferior to superior, row 0 anterior, column 0
    the patient's right), `spacing_mm` `(slice, row, column)`, `origin_mm` the LPS position of voxel
    (0, 0, 0). The files store it along other axes when asked: `row_axis` / `column_axis` are the patient
    directions ("L", "R", "P", "A", "S", "I") in which a stored row / column runs, i.e. the two halves of
    ImageOrientationPatient ("L", "P" is the standard axial). ImagePositionPatient follows from the
    geometry. `scramble` (a seed) shuffles the file names and InstanceNumbers so that neither follows
    the anatomy.
    """
    row_direction = np.zeros(3)
    column_direction = np.zeros(3)
    for direction, code in ((row_direction, row_axis), (column_direction, column_axis)):
        axis, sign = _LPS_AXES[code]
        direction[axis] = sign
    normal = np.cross(row_direction, column_direction)
    if not normal.any():
        raise ValueError(f"row_axis {row_axis!r} and column_axis {column_axis!r} must be different patient axes")
    axes_lps = np.stack([normal, column_direction, row_direction])  # stored (slice, row, column)
    stored, corner, stored_spacing = _resample_display_grid(hu, spacing_mm, origin_mm, axes_lps)
    n_slices = stored.shape[0]
    order = np.random.default_rng(scramble).permutation(n_slices) if scramble is not None else np.arange(n_slices)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    os.makedirs(folder, exist_ok=True)
    paths = []
    for k in range(n_slices):
        position = corner + normal * stored_spacing[0] * k
        ds = ct_dataset(
            stored[k],
            patient_id=patient_id,
            study_uid=study_uid,
            series_uid=series_uid,
            instance_number=int(order[k]) + 1,
            sop_uid=deterministic_uid(series_uid, k),  # the same volume gives the same files
            pixel_spacing=(stored_spacing[1], stored_spacing[2]),
            slice_thickness=float(stored_spacing[0]),
            slice_location=float(position[2]),
            **dataset_kwargs,
        )
        ds.ImagePositionPatient = [float(value) for value in position]
        ds.ImageOrientationPatient = [float(value) for value in (*row_direction, *column_direction)]
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        name = f"IM{int(order[k]):05d}" if scramble is not None else f"slice_{k:04d}.dcm"
        path = os.path.join(folder, name)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_ct_nifti(
    path,
    hu: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    axcodes: Sequence[str] = ("R", "A", "S"),
    origin_mm: Sequence[float] = (0.0, 0.0, 0.0),
) -> str:
    """Write a display-order CT volume (as in `write_ct_series`) as NIfTI, int16 HU; returns the path.

    `axcodes`: the RAS-convention direction in which each stored voxel axis increases (nibabel's
    `aff2axcodes`), e.g. ("R", "A", "S") (canonical) or ("L", "P", "I"); the affine records it.
    `origin_mm` is the LPS position of display voxel (0, 0, 0), as for the DICOM series.
    """
    import nibabel as nib

    axes_lps = np.zeros((3, 3))
    for stored_axis, code in enumerate(axcodes):  # a code names where the index goes: "R" = LPS -x
        world_axis, sign = _LPS_AXES[code]
        axes_lps[stored_axis, world_axis] = sign
    stored, corner, stored_spacing = _resample_display_grid(hu, spacing_mm, origin_mm, axes_lps)
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = (axes_lps * stored_spacing[:, None] * lps_to_ras[None]).T
    affine[:3, 3] = corner * lps_to_ras
    image = nib.Nifti1Image(np.rint(stored).astype(np.int16), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, os.fspath(path))
    return str(path)


__all__ = ["AXIAL", "ct_dataset", "deterministic_uid", "write_ct_dicom", "write_ct_nifti", "write_ct_series", "pydicom"]
