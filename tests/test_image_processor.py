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
from modeling.ct_volume import read_ct_volumes
from modeling.image_processing_ct import resize_slice
from training.dicom_writer import ct_dataset, write_ct_dicom, write_ct_series

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
    hu, expected = zip(*HU_AND_WINDOW, strict=True)
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
    stored = pixel_array(ds, decoding_plugin="pillow").astype(np.float64)
    hu = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
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


def test_size_is_a_square_side_as_int_or_dict_and_anything_else_a_one_line_error():
    """transformers' `get_size_dict` would accept every one of the refused sizes (or the dict as is)."""
    assert CTImageProcessor(size=96).size == 96
    assert CTImageProcessor(size={"height": 96, "width": 96}).size == 96
    assert CTImageProcessor(size=96).to_dict()["size"] == {"height": 96, "width": 96}
    refused = [0, -1, True, 2.5, "224", None, (96, 96), [96, 96, 3], {"height": 96, "width": 64},
               {"shortest_edge": 96}, {"height": 96}]
    for size in refused:
        with pytest.raises(ValueError, match=r"^`size` must be a positive integer or .*, got ") as error:
            CTImageProcessor(size=size)
        assert "\n" not in str(error.value), size
    with pytest.raises(ValueError, match="must be a positive integer"):
        CTImageProcessor(size=96)(np.zeros((8, 8)), size={"height": 8, "width": 4})


def test_processor_json_round_trip(tmp_path):
    processor = CTImageProcessor(
        window_center=40, window_width=350, size=96, image_mean=[0.2] * 3, image_std=[0.3] * 3, pixel_spacing_mm=0.9
    )
    processor.save_pretrained(tmp_path)
    loaded = CTImageProcessor.from_pretrained(tmp_path)
    fields = ("window_center", "window_width", "size", "do_resize", "do_normalize", "image_mean", "image_std")
    assert loaded.pixel_spacing_mm == 0.9
    for field in fields:
        assert getattr(loaded, field) == getattr(processor, field), field


def test_resize_slice_bilinear_at_hand_computed_values():
    # enlarging 1 x 2 -> 1 x 4 (align_corners=False): samples at x = -0.25, 0.25, 0.75, 1.25, clamped at the edges
    np.testing.assert_allclose(resize_slice(np.array([[0.0, 1.0]]), (1, 4)), [[0.0, 0.25, 0.75, 1.0]])
    # shrinking 1 x 4 -> 1 x 2 (antialiased): a triangle of half-width 2 around x = 0.5 and 2.5 weighs the
    # pixels 0.75, 0.75, 0.25 (the edge cuts the rest), i.e. (0 * 0.75 + 1 * 0.75 + 2 * 0.25) / 1.75 = 5 / 7
    np.testing.assert_allclose(resize_slice(np.array([[0.0, 1.0, 2.0, 3.0]]), (1, 2)), [[5 / 7, 16 / 7]], atol=1e-6)
    batch = torch.zeros(2, 3, 5, 7)
    assert resize_slice(batch, (4, 4)).shape == (2, 3, 4, 4)


def _scan(field_of_view_mm: float, pixels: int) -> np.ndarray:
    """The same smooth anatomy (a body and an off-centre node) sampled at a given field of view, in HU."""
    centres = (np.arange(pixels) + 0.5) * field_of_view_mm / pixels - field_of_view_mm / 2
    y, x = np.meshgrid(centres, centres, indexing="ij")
    body = 1040.0 * np.exp(-(x**2 + y**2) / (2 * 70.0**2))
    node = 250.0 * np.exp(-((x - 25.0) ** 2 + (y + 30.0) ** 2) / (2 * 8.0**2))
    return -1000.0 + body + node


def test_same_anatomy_at_two_fields_of_view_gives_the_same_pixels_once_resampled():
    """240 and 360 mm fields of view on 400 px (0.6 and 0.9 mm): at 1.2 mm per pixel the model sees the
    same millimetres, while the paper's whole-slice resize shows the anatomy at two sizes."""
    small, large = _scan(240.0, 400), _scan(360.0, 400)
    processor = CTImageProcessor(size=160, do_normalize=False, pixel_spacing_mm=1.2)
    first = processor(small, pixel_spacing=(0.6, 0.6))["pixel_values"][0, 0]
    second = processor(large, pixel_spacing=(0.9, 0.9))["pixel_values"][0, 0]
    assert first.shape == (160, 160)
    assert (first - second).abs().max() < 0.02
    whole = CTImageProcessor(size=160, do_normalize=False)
    assert (whole(small)["pixel_values"][0, 0] - whole(large)["pixel_values"][0, 0]).abs().max() > 0.2


def test_resampling_pads_with_air_and_needs_a_spacing(tmp_path):
    hu = np.full((10, 10), 260.0)  # 10 mm at 1 mm per pixel
    processor = CTImageProcessor(size=32, do_normalize=False, pixel_spacing_mm=0.5)
    unit = processor(hu, pixel_spacing=(1.0, 1.0))["pixel_values"][0, 0].numpy()
    expected = np.zeros((32, 32))
    expected[6:26, 6:26] = 1.0  # 20 px of window top in the middle, air (window bottom) around
    np.testing.assert_allclose(unit, expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"^pixel_spacing_mm=0.5 needs the image's pixel spacing: .*"):
        processor(hu)
    path = write_ct_dicom(tmp_path / "slice.dcm", hu, pixel_spacing=(1.0, 1.0))
    np.testing.assert_allclose(processor(path)["pixel_values"][0, 0].numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="must be positive or None"):
        CTImageProcessor(pixel_spacing_mm=0)


def test_a_volume_gives_all_its_slices_in_order_like_slice_by_slice(tmp_path):
    hu = np.random.default_rng(0).normal(0.0, 200.0, (4, 30, 40))
    write_ct_series(tmp_path, hu, (2.0, 0.75, 0.75), scramble=0)
    [volume] = read_ct_volumes(tmp_path)
    for spacing in (None, 1.0):
        processor = CTImageProcessor(size=32, pixel_spacing_mm=spacing)
        pixels = processor(volume, return_tensors="np")["pixel_values"]
        assert isinstance(pixels, np.ndarray) and pixels.shape == (4, 3, 32, 32)
        # the written slices, in display order, one call each
        one_by_one = [processor(s, pixel_spacing=(0.75, 0.75))["pixel_values"][0].numpy() for s in np.round(hu)]
        np.testing.assert_allclose(pixels, np.stack(one_by_one), atol=1e-6)
