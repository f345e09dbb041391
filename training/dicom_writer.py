"""Writing synthetic CT slices as real DICOM files (the phantom, test fixtures, demo examples).

Only synthetic data goes through here: patient IDs are pseudonyms such as "PHANTOM-0007".
"""

from typing import Optional, Sequence

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid


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
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
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


__all__ = ["ct_dataset", "deterministic_uid", "write_ct_dicom", "pydicom"]
