"""Reading one CT slice from DICOM into Hounsfield units, refusing what is not one.

Every refusal is a `ValueError` whose message is one line a user can act on; batch jobs print it
next to the file's path and go on.
"""

import logging
import os
import threading
import warnings
from contextlib import contextmanager
from typing import List, Optional, Tuple

import numpy as np

try:  # optional so that remote-code loading works without pydicom; reading DICOM needs it
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, get_decoder, pixel_array
except ImportError:  # pragma: no cover - exercised only where pydicom is missing
    pydicom = None

from .dicom_vocabulary import UNLISTED, shown_text, shown_value


class _DropQuotedValues(logging.Filter):
    """pydicom logs the value of a malformed element ("Invalid value for VR PN: 'DOE^JANE'"). In a damaged
    file that value can run into the tags after it, a patient's name and ID among them, so such records
    never reach a log while this module reads a file."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Invalid value for VR" not in record.getMessage()


_QUOTED_VALUES = _DropQuotedValues()
_readers_lock = threading.Lock()
_readers = 0  # reads under way, in all threads: the filter is on pydicom's logger while there is one


@contextmanager
def _values_kept_out_of_logs():
    """While a read is under way, pydicom's logger drops records that quote a value; after the last one
    ends, the logger is as the process had it (importing this module changes nothing). A filter on the
    logger rather than a change to pydicom's settings: it holds for every thread reading at once."""
    global _readers
    with _readers_lock:
        if _readers == 0:
            logging.getLogger("pydicom").addFilter(_QUOTED_VALUES)
        _readers += 1
    try:
        yield
    finally:
        with _readers_lock:
            _readers -= 1
            if _readers == 0:
                logging.getLogger("pydicom").removeFilter(_QUOTED_VALUES)


# Decoder packages for compressed transfer syntaxes, by UID prefix, for the error message.
_DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.5": "pylibjpeg pylibjpeg-libjpeg",  # JPEG baseline / extended
    "1.2.840.10008.1.2.4.7": "pylibjpeg pylibjpeg-libjpeg",  # JPEG lossless
    "1.2.840.10008.1.2.4.8": "pylibjpeg pylibjpeg-libjpeg",  # JPEG-LS
    "1.2.840.10008.1.2.4.9": "pylibjpeg pylibjpeg-openjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.20": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K
}
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")

# The only DICOM attributes ever shown (demo) or kept with a volume: acquisition and encoding, nothing
# about the patient, the institution, the operators or the dates. Each value is shown only as far as
# `dicom_vocabulary.shown_value` allows (ManufacturerModelName, free text, is not among them).
TECHNICAL_TAGS = {
    "Modality": "modality",
    "Rows": "rows",
    "Columns": "columns",
    "PixelSpacing": "pixel_spacing_mm",
    "SliceThickness": "slice_thickness_mm",
    "KVP": "kvp",
    "ConvolutionKernel": "convolution_kernel",
    "Manufacturer": "manufacturer",
    "BodyPartExamined": "body_part",
    "PhotometricInterpretation": "photometric_interpretation",
    "BitsStored": "bits_stored",
    "RescaleSlope": "rescale_slope",
    "RescaleIntercept": "rescale_intercept",
}


def _require_pydicom():
    if pydicom is None:
        raise ImportError("Reading DICOM needs pydicom: pip install 'pydicom>=3'.")


@_values_kept_out_of_logs()
def read_dicom(source, stop_before_pixels: bool = False) -> "pydicom.Dataset":
    """A path (any extension or none) or an open `pydicom.Dataset` -> `pydicom.Dataset`.

    `stop_before_pixels` reads the header only (grouping a folder into series without its pixels).
    """
    _require_pydicom()
    if isinstance(source, pydicom.Dataset):
        return source
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise ValueError(f"no such file: {path}")
    if os.path.getsize(path) == 0:
        raise ValueError("empty file (0 bytes)")
    with warnings.catch_warnings():
        # pydicom's warnings about malformed values quote the values, which may be a patient's name
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
        except InvalidDicomError:
            raise ValueError("not a DICOM file (no DICM header)") from None
        except Exception as error:  # noqa: BLE001 - pydicom raises many types on damaged files
            raise ValueError(f"unreadable DICOM file, truncated or corrupt ({type(error).__name__})") from None
        try:
            # pydicom converts values on first access: a damaged one must be refused here, not fail a caller
            # later. Private tags are left alone: readers never need them, and scanners write odd ones.
            # The file meta too: converting a damaged TransferSyntaxUID warns, quoting it.
            for elements in (ds, getattr(ds, "file_meta", None) or {}):
                for tag in [tag for tag in elements.keys() if not tag.is_private]:
                    elements[tag]
        except Exception as error:  # noqa: BLE001 - as above, for the conversion of one element
            raise ValueError(f"malformed DICOM header tags ({type(error).__name__})") from None
    return ds


def _count(ds: "pydicom.Dataset", keyword: str) -> int:
    try:
        return int(ds.get(keyword, 1) or 1)
    except (TypeError, ValueError):
        raise ValueError(f"unreadable {keyword}") from None


def image_type(ds: "pydicom.Dataset") -> List[str]:
    """The values of ImageType, upper case (a damaged file may hold them as one backslash-separated str)."""
    value = ds.get("ImageType") or []
    return [str(item).upper() for item in (value if not isinstance(value, str) else value.split("\\"))]


def ct_header_refusal(ds: "pydicom.Dataset", frame: Optional[int] = None) -> Optional[str]:
    """Why `ds` cannot be one CT slice (`frame` of it, if given), from its header alone; None when it can.

    The one rule for both readers: single slices (`check_ct_slice`) and series (`ct_volume`), which
    read headers without pixels. A localizer (scout) is a projection, not an axial slice: never scored.
    """
    modality = ds.get("Modality")
    if not modality:
        return "no Modality tag; expected a CT image"
    if modality != "CT":
        return f"modality is {shown_text('Modality', modality)}, not CT"
    if "LOCALIZER" in image_type(ds):
        return "localizer (scout) image"
    frames = _count(ds, "NumberOfFrames")
    if frames > 1 and frame is None:
        return f"multi-frame image ({frames} frames); choose one with frame=N"
    if frame is not None and not 0 <= frame < frames:
        return f"frame {frame} out of range; the image has {frames} frame(s)"
    return None


def check_ct_slice(ds: "pydicom.Dataset", frame: Optional[int] = None) -> None:
    """Raise a one-line `ValueError` unless `ds` is a single greyscale CT image with pixels."""
    refusal = ct_header_refusal(ds, frame)
    if refusal is not None:
        raise ValueError(refusal)
    if "PixelData" not in ds:
        raise ValueError("the DICOM file has no pixel data (not an image, or truncated before them)")
    samples = _count(ds, "SamplesPerPixel")
    photometric = ds.get("PhotometricInterpretation", "MONOCHROME2")
    if samples != 1 or photometric not in _MONOCHROME:
        shown = shown_text("PhotometricInterpretation", photometric)
        raise ValueError(f"colour image ({shown}, {samples} samples per pixel); expected greyscale CT")


def _decoder_available(transfer_syntax) -> bool:
    try:
        return get_decoder(transfer_syntax).is_available
    except NotImplementedError:  # a transfer syntax pydicom has no decoder for at all
        return False


def _decode_pixels(ds: "pydicom.Dataset", frame: Optional[int]) -> np.ndarray:
    transfer_syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        with warnings.catch_warnings():
            # decoding converts the TransferSyntaxUID again, and pydicom's warning quotes a damaged one
            warnings.filterwarnings("ignore", message="Invalid value for VR")
            # `index` decodes that frame alone; `ds.pixel_array[frame]` would decode every frame first
            return pixel_array(ds, index=frame)
    except (RuntimeError, NotImplementedError) as error:
        raise ValueError(_decode_failure(transfer_syntax, error)) from None
    except Exception as error:  # noqa: BLE001 - short or damaged pixel data
        raise ValueError(f"pixel data is truncated or corrupt ({type(error).__name__})") from None


def _decode_failure(transfer_syntax, error: Exception) -> str:
    """Why the pixel data could not be decoded. pydicom's own message is not quoted: it holds tag values
    ("a (0002,0010) 'Transfer Syntax UID' value of '...' is not supported")."""
    if transfer_syntax is None:  # a dataset built in memory, without file meta
        return f"cannot decode pixel data ({type(error).__name__})"
    named = shown_text("TransferSyntaxUID", transfer_syntax)
    if named == UNLISTED:
        return f"cannot decode pixel data: the transfer syntax is {UNLISTED}"
    if transfer_syntax.is_compressed and not _decoder_available(transfer_syntax):
        package = next((pkg for prefix, pkg in _DECODER_PACKAGES.items() if transfer_syntax.startswith(prefix)), None)
        return f"no decoder installed for transfer syntax {named}" + (f": pip install {package}" if package else "")
    return f"cannot decode pixel data in transfer syntax {named} ({type(error).__name__})"


def _functional_group(ds: "pydicom.Dataset", frame: Optional[int], keyword: str):
    """Enhanced (multi-frame) CT keeps per-frame attributes in functional groups, per frame or shared:
    the first item of sequence `keyword` for `frame`, or None."""
    per_frame_then_shared = (("PerFrameFunctionalGroupsSequence", frame or 0), ("SharedFunctionalGroupsSequence", 0))
    for groups_keyword, index in per_frame_then_shared:
        groups = ds.get(groups_keyword)
        if groups and index < len(groups) and groups[index].get(keyword):
            return groups[index].get(keyword)[0]
    return None


def _modality_lut_source(ds: "pydicom.Dataset", frame: Optional[int]) -> "pydicom.Dataset":
    """The dataset that holds RescaleSlope / RescaleIntercept (or a Modality LUT) for `frame`: the top
    level, or the Pixel Value Transformation functional group where pydicom's `apply_modality_lut` does not look.
    """
    if "RescaleSlope" in ds or "RescaleIntercept" in ds or "ModalityLUTSequence" in ds:
        return ds
    return _functional_group(ds, frame, "PixelValueTransformationSequence") or ds


def pixel_spacing_of(ds: "pydicom.Dataset", frame: Optional[int] = None) -> Optional[Tuple[float, float]]:
    """`(row, column)` pixel spacing in mm from PixelSpacing (or an enhanced CT's Pixel Measures group), or None."""
    value = ds.get("PixelSpacing")
    if not value:
        measures = _functional_group(ds, frame, "PixelMeasuresSequence")
        value = measures.get("PixelSpacing") if measures is not None else None
    spacing = shown_value("PixelSpacing", value) if value else None  # None for text, one value or NaN
    if not isinstance(spacing, list) or len(spacing) != 2 or not all(v > 0 for v in spacing):
        return None  # float() here would raise a ValueError quoting a damaged value
    return spacing[0], spacing[1]


@_values_kept_out_of_logs()
def read_ct_hu(source, frame: Optional[int] = None) -> np.ndarray:
    """A CT DICOM (path or dataset) -> Hounsfield units, `float32` of shape `(rows, columns)`.

    HU = stored value x RescaleSlope + RescaleIntercept (the modality LUT); signed and unsigned
    storage are handled by pydicom. MONOCHROME1 only inverts the display, not the HU, so it is ignored.
    """
    ds = read_dicom(source)
    try:
        check_ct_slice(ds, frame)
        pixels = _decode_pixels(ds, frame)
        lut_source = _modality_lut_source(ds, frame)
    except ValueError:
        raise
    except Exception as error:  # noqa: BLE001 - damaged tags raise many types in pydicom's lazy conversions
        raise ValueError(f"malformed DICOM header tags ({type(error).__name__})") from None
    try:
        return _stored_to_hu(pixels, lut_source)
    except (TypeError, ValueError) as error:  # a damaged RescaleSlope/RescaleIntercept or Modality LUT
        raise ValueError(f"invalid rescale slope, intercept or modality LUT ({type(error).__name__})") from None


def _stored_to_hu(pixels: np.ndarray, lut_source: "pydicom.Dataset") -> np.ndarray:
    """Stored values -> HU, `float32`, by the modality LUT exactly where pydicom's `apply_modality_lut` applies it.

    The usual linear rescale is done in `float32` in place: pydicom's `float64` route, then a cast, moves
    three times the bytes of the decoded slice, as much time as decoding it (benchmarks/ingest.py).
    Stored values (16 bits at most) are exact in `float32`; a non-integer slope rounds once, < 1e-4 HU.
    """
    if lut_source.get("ModalityLUTSequence") or not ("RescaleSlope" in lut_source and "RescaleIntercept" in lut_source):
        return apply_modality_lut(pixels, lut_source).astype(np.float32)
    slope, intercept = float(lut_source.RescaleSlope), float(lut_source.RescaleIntercept)
    hu = pixels.astype(np.float32)
    if slope != 1.0:
        hu *= np.float32(slope)
    hu += np.float32(intercept)
    return hu


def technical_metadata(ds: "pydicom.Dataset") -> dict:
    """The `TECHNICAL_TAGS` of `ds` (and its transfer syntax) as JSON-friendly values, each as far as
    `dicom_vocabulary.shown_value` allows; absent ones are left out."""
    metadata = {}
    for keyword, name in TECHNICAL_TAGS.items():
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        shown = shown_value(keyword, value)
        if shown is not None:  # a number that is not one is dropped; text outside its vocabulary is UNLISTED
            metadata[name] = shown
    transfer_syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if transfer_syntax is not None:
        metadata["transfer_syntax"] = shown_value("TransferSyntaxUID", transfer_syntax)
    return metadata
