"""CT image processor: DICOM -> Hounsfield units -> HU window -> [0, 1] -> resize -> 3 channels -> normalise.

The HU window (center 60, width 400 by default, i.e. [-140, 260] HU) is applied in `apply_window`.
With `pixel_spacing_mm` set, the resize becomes a resampling to that many millimetres per pixel and a
centre crop/pad (with air) to `size`, so that a lymph node has the same size in pixels on every scanner.
"""

import os
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .ct_dicom import pixel_spacing_of, read_ct_hu, read_dicom

try:  # optional: only needed to accept pydicom datasets
    import pydicom
except ImportError:  # pragma: no cover
    pydicom = None

# Files read as already-windowed greyscale images (the paper's PNG export); anything else is DICOM.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
AIR_HU = -1000.0  # what pads a slice resampled to a smaller field of view than `size` covers


def apply_window(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map [center - width/2, center + width/2] HU linearly to [0, 1], clipped (`float32`, same shape)."""
    low = center - width / 2.0
    return np.clip((np.asarray(hu, dtype=np.float32) - low) / float(width), 0.0, 1.0)


def resize_slice(image, size: Tuple[int, int]):
    """Bilinear resize of the last two axes of `image` (`(..., h, w)`, numpy or torch) to `size` = `(height, width)`.

    Antialiased, so that shrinking a 512 px slice does not alias fine structures (and equal to plain
    bilinear, `align_corners=False`, when enlarging). Returns `float32` of the input's kind, `(..., height, width)`.
    """
    is_numpy = not isinstance(image, torch.Tensor)
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)) if is_numpy else image.float()
    height, width = int(size[0]), int(size[1])
    if tuple(tensor.shape[-2:]) != (height, width):
        flat = tensor.reshape(-1, 1, *tensor.shape[-2:])
        flat = torch.nn.functional.interpolate(
            flat, size=(height, width), mode="bilinear", align_corners=False, antialias=True
        )
        tensor = flat.reshape(*tensor.shape[:-2], height, width)
    return tensor.numpy() if is_numpy else tensor


def resample_to_spacing(
    image: torch.Tensor, pixel_spacing: Sequence[float], target_mm: float, size: int, fill: float
) -> torch.Tensor:
    """`(..., h, w)` at `pixel_spacing` (row, column) mm -> `(..., size, size)` at `target_mm` per pixel.

    Resized so each pixel covers `target_mm`, then cropped or padded with `fill` around the centre.
    """
    height, width = image.shape[-2:]
    scaled = (
        max(1, round(height * float(pixel_spacing[0]) / target_mm)),
        max(1, round(width * float(pixel_spacing[1]) / target_mm)),
    )
    image = resize_slice(image, scaled)
    pad_rows, pad_columns = size - scaled[0], size - scaled[1]  # negative: crop
    padding = (pad_columns // 2, pad_columns - pad_columns // 2, pad_rows // 2, pad_rows - pad_rows // 2)
    return torch.nn.functional.pad(image, padding, value=fill)


def _is_volume(image) -> bool:
    """A `ct_volume.CTVolume`, recognised by its fields: the Hub copy of this file and a local `modeling`
    package define different classes, and remote code must not need `ct_volume`'s imports."""
    return hasattr(image, "hu") and hasattr(image, "spacing_mm")


def pil_to_unit(image: Image.Image) -> np.ndarray:
    """An already-windowed greyscale (or grey-as-RGB) image -> `float32` `(h, w)` in [0, 1]."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def read_image_file(path) -> np.ndarray:
    """A PNG/JPEG/TIFF of an already-windowed slice -> `float32` `(h, w)` in [0, 1]; one-line ValueError if not."""
    if not os.path.isfile(path):
        raise ValueError(f"no such file: {os.fspath(path)}")
    try:
        with Image.open(path) as opened:
            return pil_to_unit(opened)
    except (OSError, SyntaxError, ValueError) as error:  # PIL's errors for damaged or non-image files
        raise ValueError(f"unreadable image file, truncated or not an image ({type(error).__name__})") from None


def square_side(size) -> int:
    """`size` as an int or as transformers' `{"height": S, "width": S}` -> S; one-line ValueError otherwise.

    Not `transformers.image_processing_utils.get_size_dict`: it turns an int into that dict, which is
    all of its work here, and accepts what this must refuse (0, True, a non-square or `shortest_edge`
    dict, any sequence read as its first two items).
    """
    if isinstance(size, dict) and set(size) == {"height", "width"} and size["height"] == size["width"]:
        size = size["height"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"`size` must be a positive integer or {{'height': S, 'width': S}}, got {size!r}.")
    return size


class CTImageProcessor(BaseImageProcessor):
    r"""
    Turns CT slices into `pixel_values` for the dual-attention ResNet.

    Accepted images (one, or a list): a `pydicom.Dataset`; a path to a DICOM file (any extension) or
    to a PNG/JPEG/TIFF; a `numpy` array in Hounsfield units `(h, w)`; a `PIL.Image` that is already
    windowed (the paper's PNGs); a `CTVolume` (all its slices, inferior to superior).

    Args:
        window_center (`float`, *optional*, defaults to 60): HU window centre.
        window_width (`float`, *optional*, defaults to 400): HU window width.
        do_resize (`bool`, *optional*, defaults to `True`): resize the whole slice to `size` x `size`
            (the paper's behaviour; used when `pixel_spacing_mm` is None).
        size (`int` or `Dict[str, int]`, *optional*, defaults to 224): output side length; saved as
            `{"height": size, "width": size}` (transformers' convention), read back from either form.
        do_normalize (`bool`, *optional*, defaults to `True`): `(x - image_mean) / image_std`; training
            fills both from the training split. With `False`, values are the window in [0, 1].
        image_mean, image_std (`List[float]` of length 3, *optional*): per-channel statistics.
        pixel_spacing_mm (`float`, *optional*): resample every slice in-plane to this many mm per pixel,
            then crop/pad it around the centre to `size` x `size` with air (-1000 HU); the model then
            sees `size * pixel_spacing_mm` millimetres whatever the scanner's field of view. The
            spacing comes from the DICOM PixelSpacing, the `CTVolume`, or `pixel_spacing=(row, column)`
            passed with HU arrays and PIL images; without one, a one-line `ValueError`.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        window_center: float = 60.0,
        window_width: float = 400.0,
        do_resize: bool = True,
        size: int = 224,
        do_normalize: bool = True,
        image_mean: Optional[List[float]] = None,
        image_std: Optional[List[float]] = None,
        pixel_spacing_mm: Optional[float] = None,
        **kwargs,
    ):
        if float(window_width) <= 0:
            raise ValueError(f"`window_width` must be positive, got {window_width!r}.")
        size = square_side(size)
        if pixel_spacing_mm is not None and not float(pixel_spacing_mm) > 0:
            raise ValueError(f"`pixel_spacing_mm` must be positive or None, got {pixel_spacing_mm!r}.")
        super().__init__(**kwargs)
        self.window_center = float(window_center)
        self.window_width = float(window_width)
        self.do_resize = do_resize
        self.size = size
        self.do_normalize = do_normalize
        self.image_mean = list(image_mean) if image_mean is not None else list(IMAGENET_DEFAULT_MEAN)
        self.image_std = list(image_std) if image_std is not None else list(IMAGENET_DEFAULT_STD)
        self.pixel_spacing_mm = float(pixel_spacing_mm) if pixel_spacing_mm is not None else None

    def to_unit_range(self, image, window_center=None, window_width=None, frame=None) -> np.ndarray:
        """One image of any accepted kind -> the windowed slice, `float32` `(h, w)` in [0, 1]
        (`(slices, h, w)` for a `CTVolume`), at its own resolution."""
        return self._windowed(image, window_center, window_width, frame)[0]

    def _windowed(self, image, window_center=None, window_width=None, frame=None):
        """-> `(windowed image in [0, 1], its (row, column) pixel spacing in mm or None)`."""
        center, width = self._window(window_center, window_width)
        if _is_volume(image):
            return apply_window(image.hu, center, width), tuple(image.spacing_mm[1:])
        if isinstance(image, Image.Image):
            return pil_to_unit(image), None
        if isinstance(image, np.ndarray):
            if image.ndim != 2:
                raise ValueError(f"a numpy image must be a 2-D array in HU, got shape {image.shape}")
            return apply_window(image, center, width), None
        if isinstance(image, (str, os.PathLike)) and os.fspath(image).lower().endswith(IMAGE_SUFFIXES):
            return read_image_file(image), None
        if isinstance(image, (str, os.PathLike)) or (pydicom is not None and isinstance(image, pydicom.Dataset)):
            ds = read_dicom(image)
            return apply_window(read_ct_hu(ds, frame=frame), center, width), pixel_spacing_of(ds, frame)
        raise ValueError(
            "unsupported image type "
            f"{type(image).__name__}; pass a DICOM path or dataset, an HU array, a PIL image or a CTVolume"
        )

    def preprocess(
        self,
        images,
        window_center: Optional[float] = None,
        window_width: Optional[float] = None,
        do_resize: Optional[bool] = None,
        size: Optional[int] = None,
        do_normalize: Optional[bool] = None,
        image_mean: Optional[List[float]] = None,
        image_std: Optional[List[float]] = None,
        frame: Optional[int] = None,
        pixel_spacing_mm: Optional[float] = None,
        pixel_spacing: Optional[Sequence[float]] = None,
        return_tensors: Optional[Union[str, "torch.TensorType"]] = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Returns a `BatchFeature` with `pixel_values` of shape `(n, 3, size, size)`: one per slice
        (a `CTVolume` gives all of its slices). `pixel_spacing` `(row, column)` mm is the spacing of HU
        arrays and PIL images, which carry none; DICOMs and volumes use their own. A torch tensor
        (`return_tensors="pt"`, the default), a numpy array (`"np"`), or with `None` a list of
        `(3, size, size)` numpy arrays."""
        do_resize = self.do_resize if do_resize is None else do_resize
        size = self.size if size is None else square_side(size)
        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        image_mean = self.image_mean if image_mean is None else image_mean
        image_std = self.image_std if image_std is None else image_std
        target_mm = self.pixel_spacing_mm if pixel_spacing_mm is None else pixel_spacing_mm
        if not isinstance(images, (list, tuple)):
            images = [images]
        slices = []
        for image in images:
            unit, spacing = self._windowed(image, window_center, window_width, frame)
            unit = torch.from_numpy(unit)
            unit = unit[None] if unit.ndim == 2 else unit  # (n, h, w)
            spacing = spacing or (tuple(pixel_spacing) if pixel_spacing is not None else None)
            air = float(apply_window(AIR_HU, *self._window(window_center, window_width)))
            unit = self.to_model_grid(unit, spacing, size=size, pixel_spacing_mm=target_mm, do_resize=do_resize,
                                      fill=air)
            slices.extend(unit[:, None].expand(-1, 3, -1, -1))
        if len({tuple(s.shape) for s in slices}) > 1:
            raise ValueError("images differ in size; keep do_resize=True to batch them")
        pixel_values = torch.stack(slices)
        if do_normalize:
            pixel_values = self.normalize_pixel_values(pixel_values, image_mean, image_std)
        else:
            pixel_values = pixel_values.contiguous()
        if return_tensors is None:  # BaseImageProcessor's convention: one (3, size, size) array per image
            return BatchFeature({"pixel_values": list(pixel_values.numpy())})
        return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)

    def to_model_grid(self, unit: torch.Tensor, spacing: Optional[Sequence[float]], size: Optional[int] = None,
                      pixel_spacing_mm: Optional[float] = None, do_resize: Optional[bool] = None,
                      fill: Optional[float] = None) -> torch.Tensor:
        """Windowed slices `(n, h, w)` at `spacing` `(row, column)` mm (or None) -> `(n, size, size)`: resampled
        to `pixel_spacing_mm` and cropped/padded with `fill` (air in the window), or resized whole.

        The one place a slice's geometry becomes the model's: `preprocess` and `training.prepare` (slices
        and their lesion masks, with `fill=0`) both call it. Arguments default to the processor's own.
        """
        size = self.size if size is None else size
        target_mm = self.pixel_spacing_mm if pixel_spacing_mm is None else pixel_spacing_mm
        if target_mm is not None:
            if spacing is None:
                raise ValueError(
                    f"pixel_spacing_mm={target_mm} needs the image's pixel spacing: the DICOM has no "
                    "PixelSpacing; pass pixel_spacing=(row, column) in mm with HU arrays and images"
                )
            if fill is None:
                fill = float(apply_window(AIR_HU, self.window_center, self.window_width))
            return resample_to_spacing(unit, spacing, float(target_mm), size, fill=fill)
        if self.do_resize if do_resize is None else do_resize:
            return resize_slice(unit, (size, size)).clamp_(0.0, 1.0)
        return unit

    def normalize_pixel_values(self, pixel_values: torch.Tensor, image_mean=None, image_std=None) -> torch.Tensor:
        """`(n, 3, S, S)` windowed values in [0, 1] (`do_normalize=False`'s output) -> the model's input,
        `(x - image_mean) / image_std` per channel."""
        mean = torch.tensor(self.image_mean if image_mean is None else image_mean, dtype=torch.float32)
        std = torch.tensor(self.image_std if image_std is None else image_std, dtype=torch.float32)
        return (pixel_values - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)

    def to_dict(self):
        output = super().to_dict()
        output["size"] = {"height": self.size, "width": self.size}
        return output

    def _window(self, window_center=None, window_width=None) -> Tuple[float, float]:
        return (
            self.window_center if window_center is None else window_center,
            self.window_width if window_width is None else window_width,
        )
