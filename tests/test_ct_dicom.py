"""Every input that is not one greyscale CT slice is refused with a one-line reason a user can act on."""

import re
import warnings

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import JPEG2000Lossless, SecondaryCaptureImageStorage

from modeling import CTImageProcessor
from modeling.ct_dicom import read_ct_hu, read_dicom, technical_metadata
from training.dicom_writer import ct_dataset, write_ct_dicom

HU = (np.arange(64, dtype=np.float64).reshape(8, 8) * 10) - 200


def _refusal(source, **kwargs):
    """The ValueError message for `source`, checked to be one line; the processor refuses it the same way."""
    with pytest.raises(ValueError) as info:
        read_ct_hu(source, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        CTImageProcessor()(source, **kwargs)
    return message


def test_a_text_file_is_not_dicom(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("patient notes, not an image\n" * 20)
    assert _refusal(path) == "not a DICOM file (no DICM header)"


def test_an_empty_file(tmp_path):
    (tmp_path / "empty.dcm").write_bytes(b"")
    assert _refusal(tmp_path / "empty.dcm") == "empty file (0 bytes)"


def test_a_missing_file(tmp_path):
    assert _refusal(tmp_path / "nowhere.dcm") == f"no such file: {tmp_path / 'nowhere.dcm'}"


@pytest.mark.parametrize(
    ("cut_from_end", "expected"),
    [
        # pydicom reads a header cut short without complaint; what is lost is the pixel data.
        (64 * 64 * 2 + 100, "the DICOM file has no pixel data (not an image, or truncated before them)"),
        (64 * 64 * 2 + 3, "unreadable DICOM file, truncated or corrupt (error)"),
        (1000, "pixel data is truncated or corrupt (ValueError)"),
    ],
    ids=["cut-in-header", "cut-in-pixel-data-tag", "cut-in-pixels"],
)
def test_a_truncated_file(tmp_path, cut_from_end, expected):
    data = open(write_ct_dicom(tmp_path / "full.dcm", np.zeros((64, 64))), "rb").read()
    (tmp_path / "cut.dcm").write_bytes(data[:-cut_from_end])
    assert _refusal(tmp_path / "cut.dcm") == expected


def test_mr_modality_is_named():
    path = get_testdata_file("MR_small.dcm", download=False)  # bundled with pydicom: a real MR slice
    assert pydicom.dcmread(path).Modality == "MR"
    assert _refusal(path) == "modality is MR, not CT"


def test_missing_modality():
    ds = ct_dataset(HU)
    del ds.Modality
    assert _refusal(ds) == "no Modality tag; expected a CT image"


def test_no_pixel_data():
    ds = ct_dataset(HU)
    del ds.PixelData
    assert _refusal(ds) == "the DICOM file has no pixel data (not an image, or truncated before them)"


def test_rgb_secondary_capture_is_refused_as_colour():
    ds = ct_dataset(HU)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.zeros((8, 8, 3), dtype=np.uint8).tobytes()
    assert _refusal(ds) == "colour image (RGB, 3 samples per pixel); expected greyscale CT"


def _two_frames():
    ds = ct_dataset(HU)
    ds.NumberOfFrames = 2
    second = HU + 100
    ds.PixelData = np.concatenate([HU + 1024, second + 1024]).astype(np.uint16).tobytes()
    return ds, second


def test_multi_frame_needs_a_chosen_frame():
    ds, second = _two_frames()
    assert _refusal(ds) == "multi-frame image (2 frames); choose one with frame=N"
    assert _refusal(ds, frame=2) == "frame 2 out of range; the image has 2 frame(s)"
    np.testing.assert_array_equal(read_ct_hu(ds, frame=1), second)


def test_one_frame_is_decoded_without_decoding_the_others(monkeypatch):
    """An enhanced CT holds hundreds of frames: `ds.pixel_array` decodes them all, so it must not be used."""
    ds, second = _two_frames()

    def every_frame(self):
        raise AssertionError("ds.pixel_array decodes every frame")

    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(every_frame))
    np.testing.assert_array_equal(read_ct_hu(ds, frame=1), second)
    np.testing.assert_array_equal(read_ct_hu(ds, frame=0), HU)


def test_missing_decoder_names_the_transfer_syntax_and_the_package(tmp_path, monkeypatch):
    hu = np.tile(HU, (8, 8))  # OpenJPEG refuses images too small for its resolution levels
    ds = ct_dataset(hu, rescale_intercept=0.0, signed=True)
    ds.compress(JPEG2000Lossless)
    path = tmp_path / "j2k.dcm"
    ds.save_as(path, enforce_file_format=True)
    np.testing.assert_array_equal(read_ct_hu(path), hu)

    # As on a machine without pylibjpeg-openjpeg or Pillow's JPEG 2000 support: no plugin left.
    monkeypatch.setattr(get_decoder(JPEG2000Lossless), "_available", {})
    assert _refusal(path) == (
        "no decoder installed for transfer syntax JPEG 2000 Image Compression (Lossless Only) "
        "(1.2.840.10008.1.2.4.90): pip install pylibjpeg pylibjpeg-openjpeg"
    )


def test_unreadable_png_files_get_one_line_reasons(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:500])  # noise does not compress: cut in the data
    processor = CTImageProcessor()
    for name in ("text.png", "cut.png"):
        with pytest.raises(ValueError, match=r"^unreadable image file, truncated or not an image \(\w+\)$"):
            processor(tmp_path / name)
    with pytest.raises(ValueError, match="^no such file: .*missing.png$"):
        processor(str(tmp_path / "missing.png"))


@pytest.mark.parametrize("slope, intercept", [(1.0, -1024.0), (0.7371, -1023.4), (2.5, -3000.0)])
def test_hu_agree_with_pydicoms_modality_lut(slope, intercept):
    """Our float32 rescale against pydicom's float64 one, on awkward slopes and the full uint16 range."""
    from pydicom.pixels import apply_modality_lut, pixel_array

    ds = ct_dataset(np.zeros((8, 8)), rescale_slope=slope, rescale_intercept=intercept)
    stored = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    ds.PixelData = stored.tobytes()
    hu = read_ct_hu(ds)
    assert hu.dtype == np.float32
    np.testing.assert_allclose(hu, apply_modality_lut(pixel_array(ds), ds), rtol=1e-6, atol=1e-3)


def test_a_modality_lut_sequence_is_applied_as_pydicom_does():
    ds = ct_dataset(np.zeros((8, 8)))
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.PixelData = (np.arange(64, dtype=np.uint16) * 4).reshape(8, 8).tobytes()
    lut = pydicom.Dataset()
    lut.LUTDescriptor = [256, 0, 16]
    lut.LUTData = [3 * k + 7 for k in range(256)]
    lut["LUTData"].VR = "US"
    ds.ModalityLUTSequence = [lut]
    np.testing.assert_array_equal(read_ct_hu(ds), 3.0 * (np.arange(64) * 4).reshape(8, 8) + 7)


@pytest.mark.parametrize("name", [
    "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_padded.dcm",
])
def test_every_encoding_of_one_image_gives_the_same_values(name):
    """Scanners and PACS write the same pixels in other transfer syntaxes: implicit VR, big endian, RLE,
    JPEG-LS, JPEG 2000. pydicom ships one 64 x 64 image in each; read as CT, each must equal the plain one."""
    plain = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    encoded = pydicom.dcmread(get_testdata_file(name))
    assert encoded.file_meta.TransferSyntaxUID != plain.file_meta.TransferSyntaxUID or name.endswith("padded.dcm")
    for ds in (plain, encoded):
        ds.Modality = "CT"  # the images are MR; the encodings are what is tested
    np.testing.assert_array_equal(read_ct_hu(encoded), read_ct_hu(plain))


def test_a_localizer_is_refused():
    """A scout (ImageType LOCALIZER) is a projection, not an axial slice: never scored, on any path."""
    assert _refusal(_with("ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"])) == "localizer (scout) image"
    # a damaged file: one backslash-separated value, in lower case
    assert _refusal(_with("ImageType", "ORIGINAL\\PRIMARY\\localizer")) == "localizer (scout) image"


def _with(keyword, value):
    """`ct_dataset(HU)` with one tag set to `value`; pydicom's warning that quotes an invalid value is silenced."""
    ds = ct_dataset(HU)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize("value", ["OT^DOE^JANE", "DOE JANE 1961", "Jane Doe", "DOE"])
def test_a_name_in_modality_or_photometric_interpretation_is_not_echoed(value):
    assert _refusal(_with("Modality", value)) == "modality is an unlisted value, not CT"
    assert _refusal(_with("PhotometricInterpretation", value)) == (
        "colour image (an unlisted value, 1 samples per pixel); expected greyscale CT"
    )


def test_defined_terms_are_still_named():
    ds = ct_dataset(HU)
    ds.Modality = "SEG"
    assert _refusal(ds) == "modality is SEG, not CT"
    ds = ct_dataset(HU)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "YBR_FULL_422"
    assert _refusal(ds) == "colour image (YBR_FULL_422, 3 samples per pixel); expected greyscale CT"


@pytest.mark.parametrize("uid", ["1.2.840.99999.1961", "DOE^JANE"])
def test_an_unknown_transfer_syntax_is_not_echoed(tmp_path, uid):
    """pydicom's own message quotes the UID, and an unknown UID's pydicom name is the UID itself."""
    ds = ct_dataset(HU)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that "DOE^JANE" is no UID
        ds.file_meta.TransferSyntaxUID = uid
        ds.save_as(tmp_path / "unknown.dcm", enforce_file_format=True)
    assert _refusal(tmp_path / "unknown.dcm") == "cannot decode pixel data: the transfer syntax is an unlisted value"
    assert technical_metadata(read_dicom(tmp_path / "unknown.dcm"))["transfer_syntax"] == "an unlisted value"


def test_importing_the_reader_leaves_pydicoms_logging_as_it_was():
    """The filter that keeps quoted values out of logs is on pydicom's logger only while a file is read."""
    import logging

    from modeling import ct_dicom

    assert ct_dicom._QUOTED_VALUES not in logging.getLogger("pydicom").filters
    seen = []
    real_dcmread = ct_dicom.pydicom.dcmread

    def dcmread(*args, **kwargs):
        seen.append(ct_dicom._QUOTED_VALUES in logging.getLogger("pydicom").filters)
        return real_dcmread(*args, **kwargs)

    ct_dicom.pydicom.dcmread = dcmread
    try:
        ct_dicom.read_ct_hu(get_testdata_file("CT_small.dcm"))
    finally:
        ct_dicom.pydicom.dcmread = real_dcmread
    assert seen == [True] and ct_dicom._QUOTED_VALUES not in logging.getLogger("pydicom").filters
