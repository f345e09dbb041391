"""CTImageProcessor against hand-computed HU windows: arrays, synthetic DICOMs, pydicom's real CT files, PNGs."""

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from pydicom.uid import JPEG2000Lossless, RLELossless

from modeling import CTImageProcessor, apply_window
from modeling.ct_dicom import read_ct_hu
from training.dicom_writer import ct_dataset, write_ct_dicom

# Window 60 / 400 is [-140, 260] HU.
HU_AND_WINDOW = [(-1000, 0.0), (-140, 0.0), (-40, 0.25), (60, 0.5), (160, 0.75), (260, 1.0), (1000, 1.0)]


def _unit(processor_output):
    """Channel 0 of a single-image batch; the three channels must be identical."""
    pixels = processor_output["pixel_values"]
    assert pixels.shape[:2] == (1, 3)
    torch.testing.assert_close(pixels[0, 1], pixels[0, 0], rtol=0, atol=0)
    torch.testing.assert_close(pixels[0, 2], pixels[0, 0], rtol=0, atol=0)
    return pixels[0, 0].numpy()


def _window(hu, center=60.0, width=400.0):
    """The closed form, written out in float64: clip((HU - (c - w/2)) / w, 0, 1)."""
    return np.clip((np.asarray(hu, dtype=np.float64) - (center - width / 2)) / width, 0, 1)


def _hu_ramp(rows=16, cols=16, low=-1024, step=7):
    return (low + step * np.arange(rows * cols)).reshape(rows, cols).astype(np.float64)


UNIT = CTImageProcessor(do_resize=False, do_normalize=False)


def test_apply_window_at_hand_picked_hounsfield_units():
    hu, expected = zip(*HU_AND_WINDOW)
    np.testing.assert_allclose(apply_window(np.array(hu), 60, 400), expected, atol=1e-7)
    np.testing.assert_allclose(apply_window(np.array([-160.0, 40.0]), center=40, width=80), [0.0, 0.5])


def test_hu_array_windowed_normalised_and_repeated_to_three_channels():
    hu = np.array([[h for h, _ in HU_AND_WINDOW]], dtype=np.float32)
    expected = np.array([[w for _, w in HU_AND_WINDOW]])
    np.testing.assert_allclose(_unit(UNIT(hu)), expected, atol=1e-7)

    mean, std = [0.3, 0.3, 0.3], [0.2, 0.2, 0.2]
    normalised = CTImageProcessor(do_resize=False, image_mean=mean, image_std=std)(hu)["pixel_values"]
    np.testing.assert_allclose(normalised[0].numpy(), np.repeat((expected[None] - 0.3) / 0.2, 3, axis=0), atol=1e-6)

    custom = CTImageProcessor(window_center=40, window_width=80, do_resize=False, do_normalize=False)
    np.testing.assert_allclose(_unit(custom(hu)), _window(hu, 40, 80), atol=1e-7)


def test_resize_to_model_size_keeps_a_constant_slice_constant():
    hu = np.full((100, 130), 160.0)
    pixels = CTImageProcessor(size=64, do_normalize=False)([hu, hu[:50]], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (2, 3, 64, 64)
    np.testing.assert_allclose(pixels.numpy(), 0.75, atol=1e-6)


@pytest.mark.parametrize(
    "writer_kwargs",
    [
        {"rescale_slope": 1.0, "rescale_intercept": -1024.0, "signed": False},
        {"rescale_slope": 2.0, "rescale_intercept": -2048.0, "signed": False},
        {"rescale_slope": 1.0, "rescale_intercept": 0.0, "signed": True},
        {"rescale_slope": 0.5, "rescale_intercept": -100.0, "signed": True},
    ],
    ids=["uint16-intercept", "slope-2", "int16-signed", "int16-slope-0.5"],
)
def test_dicom_modality_lut_gives_back_the_written_hu(tmp_path, writer_kwargs):
    hu = _hu_ramp(step=8)  # multiples of 2 and 0.5, so every slope stores them exactly
    path = write_ct_dicom(tmp_path / "slice", hu, **writer_kwargs)  # no extension: still DICOM
    np.testing.assert_array_equal(read_ct_hu(path), hu)
    np.testing.assert_allclose(_unit(UNIT(path)), _window(hu), atol=1e-6)


def test_dicom_without_rescale_tags_is_read_as_stored_values(tmp_path):
    hu = _hu_ramp()
    ds = ct_dataset(hu, rescale_intercept=0.0, signed=True)
    for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
        delattr(ds, keyword)
    ds.save_as(tmp_path / "plain.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(read_ct_hu(tmp_path / "plain.dcm"), hu)
    np.testing.assert_allclose(_unit(UNIT(ds)), _window(hu), atol=1e-6)


def test_monochrome1_is_a_display_flag_and_leaves_hu_unchanged():
    hu = _hu_ramp()
    ds = ct_dataset(hu)
    ds.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_array_equal(read_ct_hu(ds), hu)
    np.testing.assert_allclose(_unit(UNIT(ds)), _window(hu), atol=1e-6)


def _pixel_value_transformation(slope, intercept):
    group, transform = Dataset(), Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = slope, intercept, "HU"
    group.PixelValueTransformationSequence = [transform]
    return group


def test_enhanced_multi_frame_ct_takes_the_rescale_from_its_functional_groups():
    """Stored values 0..255 in two frames; frame 1 has its own slope 2 / intercept -300."""
    stored = np.arange(256, dtype=np.uint16).reshape(16, 16)
    ds = ct_dataset(np.zeros((16, 16)))
    for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
        delattr(ds, keyword)
    ds.NumberOfFrames = 2
    ds.PixelData = np.concatenate([stored, stored]).tobytes()
    ds.SharedFunctionalGroupsSequence = [_pixel_value_transformation(1, -100)]
    np.testing.assert_array_equal(read_ct_hu(ds, frame=1), stored - 100.0)

    ds.PerFrameFunctionalGroupsSequence = [_pixel_value_transformation(1, -100), _pixel_value_transformation(2, -300)]
    np.testing.assert_array_equal(read_ct_hu(ds, frame=0), stored - 100.0)
    np.testing.assert_array_equal(read_ct_hu(ds, frame=1), stored * 2.0 - 300)
    np.testing.assert_allclose(_unit(UNIT(ds, frame=1)), _window(stored * 2.0 - 300), atol=1e-6)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000"])
def test_lossless_compressed_dicom_decodes_to_the_same_hu(tmp_path, syntax):
    hu = _hu_ramp(32, 32, low=-1024, step=3)
    ds = ct_dataset(hu, rescale_intercept=-1024.0, signed=True)
    ds.compress(syntax)
    ds.save_as(tmp_path / "compressed.dcm", enforce_file_format=True)
    reread = pydicom.dcmread(tmp_path / "compressed.dcm")
    assert reread.file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_ct_hu(tmp_path / "compressed.dcm"), hu)


def _bundled(name):
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not bundled with this pydicom")
    return path


def test_pydicom_ct_small_against_its_raw_little_endian_bytes():
    path = _bundled("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assert (ds.PixelRepresentation, ds.BitsAllocated, ds.RescaleSlope, ds.RescaleIntercept) == (1, 16, 1, -1024)
    stored = np.frombuffer(ds.PixelData, dtype="<i2").reshape(ds.Rows, ds.Columns)
    hu = stored.astype(np.float64) - 1024

    np.testing.assert_array_equal(read_ct_hu(path), hu)
    np.testing.assert_allclose(_unit(UNIT(path)), _window(hu), atol=1e-6)
    resized = CTImageProcessor(size=64, do_normalize=False)(path)["pixel_values"]
    assert resized.shape == (1, 3, 64, 64) and 0 <= resized.min() and resized.max() <= 1


def test_pydicom_jpeg2000_ct_agrees_across_two_decoders():
    """693_J2KI.dcm is lossy JPEG 2000: we read it with pylibjpeg; Pillow's plugin must give the same HU."""
    path = _bundled("693_J2KI.dcm")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID.name == "JPEG 2000 Image Compression"
    hu = pixel_array(ds, decoding_plugin="pillow").astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(read_ct_hu(path), hu)
    np.testing.assert_allclose(_unit(UNIT(path)), _window(hu), atol=1e-6)


def test_png_and_pil_inputs_are_taken_as_already_windowed(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, size=(20, 24), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "slice.PNG")
    Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(tmp_path / "rgb.png")
    deep = (grey.astype(np.uint16) * 257)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    expected = grey / 255.0

    for image in (tmp_path / "slice.PNG", str(tmp_path / "rgb.png"), Image.fromarray(grey), tmp_path / "deep.png"):
        np.testing.assert_allclose(_unit(UNIT(image)), expected, atol=1e-6, err_msg=str(image))
    np.testing.assert_allclose(UNIT.to_unit_range(tmp_path / "slice.PNG"), expected, atol=1e-6)


def test_unsupported_inputs_get_one_line_reasons():
    with pytest.raises(ValueError, match=r"2-D array in HU, got shape \(2, 4, 4\)"):
        UNIT(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="unsupported image type list"):
        UNIT([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="`window_width` must be positive, got 0"):
        CTImageProcessor(window_width=0)


def test_processor_json_round_trip(tmp_path):
    processor = CTImageProcessor(window_center=40, window_width=350, size=96, image_mean=[0.2] * 3, image_std=[0.3] * 3)
    processor.save_pretrained(tmp_path)
    loaded = CTImageProcessor.from_pretrained(tmp_path)
    for field in ("window_center", "window_width", "size", "do_resize", "do_normalize", "image_mean", "image_std"):
        assert getattr(loaded, field) == getattr(processor, field), field
