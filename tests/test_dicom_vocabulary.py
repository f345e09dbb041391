"""The rule for each tag value that may be shown: defined terms, known makers and kernels, numbers; nothing else."""

import json
import warnings

import numpy as np
import pytest
from pydicom.dataelem import DataElement
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from modeling.ct_dicom import technical_metadata
from modeling.dicom_vocabulary import UNLISTED, shown_text, shown_value
from training.dicom_writer import ct_dataset

NAME_LIKE = ("DOE^JANE", "DOE JANE 1961", "Jane Doe", "OT^DOE^JANE", "J DOE")
TEXT_TAGS = ("Modality", "PhotometricInterpretation", "BodyPartExamined", "Manufacturer", "ConvolutionKernel")
NUMBER_TAGS = ("Rows", "Columns", "BitsStored", "PixelSpacing", "SliceThickness", "KVP", "RescaleSlope",
               "RescaleIntercept")


@pytest.mark.parametrize("keyword", TEXT_TAGS)
@pytest.mark.parametrize("value", NAME_LIKE)
def test_a_name_in_a_text_tag_is_unlisted(keyword, value):
    assert shown_value(keyword, value) == UNLISTED
    assert shown_value(keyword, ["B30f", value]) == UNLISTED  # one bad value spoils a multi-valued tag


@pytest.mark.parametrize("keyword", ["ManufacturerModelName", "SeriesDescription", "ImageType", "PatientName"])
def test_free_text_without_a_rule_is_never_shown(keyword):
    for value in NAME_LIKE + ("Revolution CT", "ORIGINAL"):
        assert shown_value(keyword, value) is None
        assert shown_text(keyword, value) == UNLISTED


@pytest.mark.parametrize(("keyword", "value", "shown"), [
    ("Modality", "CT", "CT"),
    ("Modality", "RTSTRUCT", "RTSTRUCT"),
    ("Modality", "ct", UNLISTED),  # DICOM code strings are upper case; not guessed at
    ("PhotometricInterpretation", "PALETTE COLOR", "PALETTE COLOR"),
    ("BodyPartExamined", "CHESTABDPELVIS", "CHESTABDPELVIS"),
    ("BodyPartExamined", "ABDOMEN JANE", UNLISTED),
    ("Manufacturer", "siemens", "SIEMENS"),  # matched ignoring case and spacing, shown as the list spells it
    ("Manufacturer", "GE  Healthcare", "GE Healthcare"),
    ("Manufacturer", "SIEMENS DOE", UNLISTED),
    ("ConvolutionKernel", "STANDARD", "STANDARD"),
    ("ConvolutionKernel", ["Br40d", "3"], ["Br40d", "3"]),
    ("ConvolutionKernel", "FC13", "FC13"),
    ("ConvolutionKernel", "YB", "YB"),
    ("ConvolutionKernel", "DOE", UNLISTED),
    ("ConvolutionKernel", "1961", UNLISTED),
    ("ConvolutionKernel", "Doe61", UNLISTED),
])
def test_listed_values_are_shown_and_others_are_not(keyword, value, shown):
    assert shown_value(keyword, value) == shown


@pytest.mark.parametrize("keyword", NUMBER_TAGS)
def test_a_number_tag_shows_only_finite_numbers(keyword):
    for value in NAME_LIKE + ("120",):
        assert shown_value(keyword, value) is None
    assert shown_value(keyword, float("nan")) is None
    assert shown_value(keyword, [0.8, "DOE"]) is None
    integer = keyword in ("Rows", "Columns", "BitsStored")
    assert shown_value(keyword, 512) == 512 and type(shown_value(keyword, 512)) is (int if integer else float)
    assert shown_value(keyword, 0.5) == (None if integer else 0.5)
    assert shown_value(keyword, [0.7, 0.8]) == (None if integer else [0.7, 0.8])


def test_only_known_transfer_syntaxes_are_named():
    assert shown_value("TransferSyntaxUID", ExplicitVRLittleEndian) == "Explicit VR Little Endian (1.2.840.10008.1.2.1)"
    assert shown_text("TransferSyntaxUID", JPEG2000Lossless).startswith("JPEG 2000 Image Compression (Lossless Only)")
    for value in ("1.2.840.99999.1961", "DOE^JANE", "1.2.840.10008.5.1.4.1.1.2"):  # the last: CT Image Storage
        assert shown_value("TransferSyntaxUID", value) == UNLISTED


def test_technical_metadata_shows_no_name_from_any_tag():
    """A file with a name in every technical tag: text tags read "an unlisted value", numbers that are
    text are dropped, the model name (free text) never appears."""
    ds = ct_dataset(np.zeros((8, 8)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom quotes invalid values when they are set
        for keyword in TEXT_TAGS:
            setattr(ds, keyword, "DOE JANE 1961")
        ds.ManufacturerModelName = "Jane Doe"
    for keyword in ("KVP", "SliceThickness", "RescaleIntercept"):  # as a damaged file can hold them
        ds[keyword] = DataElement(ds[keyword].tag, "LO", "DOE^JANE")
    ds["PixelSpacing"] = DataElement(ds["PixelSpacing"].tag, "LO", ["0.8", "1961"])
    metadata = technical_metadata(ds)
    text = json.dumps(metadata)
    for part in ("DOE", "JANE", "Jane", "Doe", "1961"):
        assert part not in text, metadata
    assert {metadata[name] for name in ("modality", "photometric_interpretation", "body_part", "manufacturer",
                                        "convolution_kernel")} == {UNLISTED}
    assert not {"kvp", "slice_thickness_mm", "rescale_intercept", "pixel_spacing_mm", "manufacturer_model"} & set(
        metadata)
    assert metadata["rows"] == 8 and metadata["rescale_slope"] == 1.0  # the sound tags are still shown
