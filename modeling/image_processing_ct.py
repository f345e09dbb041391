"""CT image processor: DICOM -> Hounsfield units -> HU window -> [0, 1] -> resize -> 3 channels -> normalise.

The HU window (center 60, width 400 by default, i.e. [-140, 260] HU) is applied in `apply_window`.
"""

import os
from typing import List, Optional, Union

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .ct_dicom import read_ct_hu

try:  # optional: only needed to accept pydicom datasets
    import pydicom
except ImportError:  # pragma: no cover
    pydicom = None

# Files read as already-windowed greyscale images (the paper's PNG export); anything else is DICOM.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def apply_window(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map [center - width/2, center + width/2] HU linearly to [0, 1], clipped (`float32`, same shape)."""
    low = center - width / 2.0
    return np.clip((np.asarray(hu, dtype=np.float32) - low) / float(width), 0.0, 1.0)


def pil_to_unit(image: Image.Image) -> np.ndarray:
    """An already-windowed greyscale (or grey-as-RGB) image -> `float32` `(h, w)` in [0, 1]."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def read_image_file(path) -> np.ndarray:
    """A PNG/JPEG/TIFF of an already-windowed slice -> `float32` `(h, w)` in [0, 1]; one-line ValueError if unreadable."""
    if not os.path.isfile(path):
        raise ValueError(f"no such file: {os.fspath(path)}")
    try:
        with Image.open(path) as opened:
            return pil_to_unit(opened)
    except (OSError, SyntaxError, ValueError) as error:  # PIL's errors for damaged or non-image files
        raise ValueError(f"unreadable image file, truncated or not an image ({type(error).__name__})") from None


def square_side(size) -> int:
    """`size` as an int or as transformers' `{"height": S, "width": S}` -> S; one-line ValueError otherwise."""
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
    windowed (the paper's PNGs).

    Args:
        window_center (`float`, *optional*, defaults to 60): HU window centre.
        window_width (`float`, *optional*, defaults to 400): HU window width.
        do_resize (`bool`, *optional*, defaults to `True`): resize to `size` x `size`.
        size (`int` or `Dict[str, int]`, *optional*, defaults to 224): output side length; saved as
            `{"height": size, "width": size}` (transformers' convention), read back from either form.
        do_normalize (`bool`, *optional*, defaults to `True`): `(x - image_mean) / image_std`; training
            fills both from the training split. With `False`, values are the window in [0, 1].
        image_mean, image_std (`List[float]` of length 3, *optional*): per-channel statistics.
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
        **kwargs,
    ):
        if float(window_width) <= 0:
            raise ValueError(f"`window_width` must be positive, got {window_width!r}.")
        size = square_side(size)
        super().__init__(**kwargs)
        self.window_center = float(window_center)
        self.window_width = float(window_width)
        self.do_resize = do_resize
        self.size = size
        self.do_normalize = do_normalize
        self.image_mean = list(image_mean) if image_mean is not None else list(IMAGENET_DEFAULT_MEAN)
        self.image_std = list(image_std) if image_std is not None else list(IMAGENET_DEFAULT_STD)

    def to_unit_range(self, image, window_center=None, window_width=None, frame=None) -> np.ndarray:
        """One image of any accepted kind -> the windowed slice, `float32` `(h, w)` in [0, 1]."""
        center = self.window_center if window_center is None else window_center
        width = self.window_width if window_width is None else window_width
        if isinstance(image, Image.Image):
            return pil_to_unit(image)
        if isinstance(image, np.ndarray):
            if image.ndim != 2:
                raise ValueError(f"a numpy image must be a 2-D array in HU, got shape {image.shape}")
            return apply_window(image, center, width)
        if isinstance(image, (str, os.PathLike)) and os.fspath(image).lower().endswith(IMAGE_SUFFIXES):
            return read_image_file(image)
        if isinstance(image, (str, os.PathLike)) or (pydicom is not None and isinstance(image, pydicom.Dataset)):
            return apply_window(read_ct_hu(image, frame=frame), center, width)
        raise ValueError(
            f"unsupported image type {type(image).__name__}; pass a DICOM path or dataset, an HU array or a PIL image"
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
        return_tensors: Optional[Union[str, "torch.TensorType"]] = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Returns a `BatchFeature` with `pixel_values` of shape `(batch_size, 3, size, size)`: a torch
        tensor (`return_tensors="pt"`, the default), a numpy array (`"np"`), or with `None` a list of
        `(3, size, size)` numpy arrays."""
        do_resize = self.do_resize if do_resize is None else do_resize
        size = self.size if size is None else square_side(size)
        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        image_mean = self.image_mean if image_mean is None else image_mean
        image_std = self.image_std if image_std is None else image_std
        if not isinstance(images, (list, tuple)):
            images = [images]
        slices = []
        for image in images:
            unit = torch.from_numpy(self.to_unit_range(image, window_center, window_width, frame))[None, None]
            if do_resize and tuple(unit.shape[-2:]) != (size, size):
                # antialias so that downsampling a 512 px slice does not alias fine structures
                unit = torch.nn.functional.interpolate(
                    unit, size=(size, size), mode="bilinear", align_corners=False, antialias=True
                ).clamp_(0.0, 1.0)
            slices.append(unit[0].expand(3, -1, -1))
        if len({tuple(s.shape) for s in slices}) > 1:
            raise ValueError("images differ in size; keep do_resize=True to batch them")
        pixel_values = torch.stack(slices)
        if do_normalize:
            mean = torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1)
            std = torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1)
            pixel_values = (pixel_values - mean) / std
        else:
            pixel_values = pixel_values.contiguous()
        if return_tensors is None:  # BaseImageProcessor's convention: one (3, size, size) array per image
            return BatchFeature({"pixel_values": list(pixel_values.numpy())})
        return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)

    def to_dict(self):
        output = super().to_dict()
        output["size"] = {"height": self.size, "width": self.size}
        return output
