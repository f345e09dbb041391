"""Prepared splits -> torch-ready datasets with train-split normalisation, and the paper's augmentation on
whole batches (`BatchAugmentation`: in the training loop on the device, or in the train split's transform).

Items are `{"pixel_values": FloatTensor (3, S, S), "labels": int}`, so a `DataLoader` with the default
collate gives what `DualAttentionResNetForImageClassification(pixel_values, labels)` takes.
"""

import json
import os
from typing import Dict, Optional, Tuple

import datasets
import numpy as np
import torch
from torch.nn import functional as F
from torchvision.transforms import v2

from modeling import CTImageProcessor


def load_prepared(path) -> Tuple[datasets.DatasetDict, dict]:
    """`training.prepare`'s output folder -> (DatasetDict, prepare_info.json as a dict)."""
    with open(os.path.join(os.fspath(path), "prepare_info.json")) as handle:
        info = json.load(handle)
    return datasets.load_from_disk(os.fspath(path)), info


def processor_from_info(info: dict, image_size: Optional[int] = None) -> CTImageProcessor:
    """The model's processor with the dataset's window, size, pixel spacing and train-split mean/std."""
    size = image_size or info["size"]
    spacing = info.get("pixel_spacing_mm")
    return CTImageProcessor(
        window_center=info["window_center"], window_width=info["window_width"],
        size=size, image_mean=info["image_mean"], image_std=info["image_std"],
        # the loader resizes the prepared field of view to `size`: the same millimetres, other pixels
        pixel_spacing_mm=spacing * info["size"] / size if spacing else None,
    )


class BatchAugmentation(torch.nn.Module):
    """The paper's augmentation on a whole normalised batch, each image with its own random draw.

    Horizontal and vertical flips (p = 0.5 each), rotation within +-15 degrees and scaling within
    0.9-1.1 (one bilinear resampling, air (0 after windowing) outside the image), then brightness and
    contrast jitter of 10 % (the jitter amount is ours). Works in the windowed [0, 1] range, so the
    image is un-normalised with `image_mean`/`image_std`, clamped and normalised again. All tensor
    operations on the batch's device, no host synchronisation; draws come from torch's global RNG, so
    `set_seed` and a resumed run's restored RNG state reproduce them.
    """

    def __init__(self, image_mean, image_std, degrees: float = 15.0, scale=(0.9, 1.1), jitter: float = 0.1):
        super().__init__()
        self.register_buffer("mean", torch.tensor(image_mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.degrees, self.scale, self.jitter = degrees, scale, jitter

    def _uniform(self, low: float, high: float, n: int, device) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, device=device)

    def forward(
        self, pixel_values: torch.Tensor, lesion_mask: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """`(B, C, H, W)` normalised -> `(B, C, H, W)` normalised and augmented; `lesion_mask` `(B, H, W)`,
        when given, moves with its image (same flips, rotation and scale; nearest sampling)."""
        n, device = pixel_values.shape[0], pixel_values.device
        unit = pixel_values * self.std + self.mean
        angle = torch.deg2rad(self._uniform(-self.degrees, self.degrees, n, device))
        scale = self._uniform(*self.scale, n, device)
        flip_x = torch.where(torch.rand(n, device=device) < 0.5, -1.0, 1.0)
        flip_y = torch.where(torch.rand(n, device=device) < 0.5, -1.0, 1.0)
        # output -> input sampling coordinates: rotation @ flips / scale, no translation
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([
            torch.stack([cos * flip_x, -sin * flip_y, torch.zeros_like(cos)], dim=1),
            torch.stack([sin * flip_x, cos * flip_y, torch.zeros_like(cos)], dim=1),
        ], dim=1)
        grid = F.affine_grid(theta, list(unit.shape), align_corners=False)
        unit = F.grid_sample(unit, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if lesion_mask is not None:
            mask = F.grid_sample(lesion_mask[:, None].float(), grid, mode="nearest", align_corners=False)
            lesion_mask = mask[:, 0].to(lesion_mask.dtype)
        brightness = self._uniform(1 - self.jitter, 1 + self.jitter, n, device).view(-1, 1, 1, 1)
        unit = (unit * brightness).clamp_(0.0, 1.0)
        contrast = self._uniform(1 - self.jitter, 1 + self.jitter, n, device).view(-1, 1, 1, 1)
        grey_mean = unit.mean(dim=(1, 2, 3), keepdim=True)
        unit = ((unit - grey_mean) * contrast + grey_mean).clamp_(0.0, 1.0)
        return (unit - self.mean) / self.std, lesion_mask


def make_transform(info: dict, augment: bool, image_size: Optional[int] = None, masks: bool = False):
    """A batch function: `{"image": (B, S, S) in [0, 1], "label": (B,)[, "mask": (B, S, S)]}` ->
    `{"pixel_values", "labels"[, "lesion_mask"]}`, resized to `image_size` when it differs from the
    prepared size (masks: nearest), normalised with the train-split statistics and, with `augment`,
    augmented (`BatchAugmentation`, masks moving with their images)."""
    augmentation = BatchAugmentation(info["image_mean"], info["image_std"]) if augment else None
    size = image_size if image_size and image_size != info["size"] else None
    resize = v2.Resize((size, size), antialias=True) if size else None
    normalize = v2.Normalize(mean=info["image_mean"], std=info["image_std"])

    def transform(batch):
        units = torch.from_numpy(np.asarray(batch["image"], dtype=np.float32))[:, None]  # (B, 1, S, S)
        lesion_mask = torch.from_numpy(np.asarray(batch["mask"], dtype=np.float32)) if masks else None
        if resize is not None:
            units = resize(units).clamp_(0.0, 1.0)
            if lesion_mask is not None:
                lesion_mask = F.interpolate(lesion_mask[:, None], size=(size, size), mode="nearest")[:, 0]
        pixel_values = normalize(units.expand(-1, 3, -1, -1))
        if augmentation is not None:
            pixel_values, lesion_mask = augmentation(pixel_values, lesion_mask)
        items = {"pixel_values": pixel_values, "labels": torch.as_tensor(batch["label"])}
        if lesion_mask is not None:
            items["lesion_mask"] = lesion_mask
        return items

    return transform


class TorchSplit(torch.utils.data.Dataset):
    """A prepared split as torch items `{"pixel_values": (3, S, S), "labels": int tensor}` (plus
    `"lesion_mask": (S, S)` when the transform reads masks).

    A `DataLoader` fetches whole batches through `__getitems__`: one Arrow read of the batch's rows as
    numpy arrays and one tensor transform, instead of per-row Python lists (which `with_transform` gives).
    """

    def __init__(self, split: datasets.Dataset, transform, columns=("image", "label")):
        self.split = split.with_format("numpy", columns=list(columns))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitems__(self, indices) -> list:
        batch = self.transform(self.split[list(indices)])
        names = list(batch)
        return [dict(zip(names, values, strict=True)) for values in zip(*batch.values(), strict=True)]

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]


def torch_splits(
    dataset_dict: datasets.DatasetDict,
    info: dict,
    augment: bool = True,
    image_size: Optional[int] = None,
    train_masks: bool = False,
) -> Dict[str, TorchSplit]:
    """Every split as a `TorchSplit`: augmentation on `train` only (when `augment`), the train-split
    normalisation everywhere, and a resize to `image_size` when it differs from the prepared size.
    With `train_masks`, train items also carry their `lesion_mask` (for attention supervision)."""
    splits = {}
    for name, split in dataset_dict.items():
        masks = train_masks and name == "train"
        transform = make_transform(info, augment and name == "train", image_size, masks)
        splits[name] = TorchSplit(split, transform, ("image", "label", "mask") if masks else ("image", "label"))
    return splits
