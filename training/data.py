"""Prepared splits -> torch-ready datasets: the paper's augmentation (train only), train-split normalisation.

Items are `{"pixel_values": FloatTensor (3, S, S), "labels": int}`, so a `DataLoader` with the default
collate gives what `DualAttentionResNetForImageClassification(pixel_values, labels)` takes.
"""

import json
import os
from typing import Dict, Optional, Tuple

import datasets
import numpy as np
import torch
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


def train_augmentation() -> v2.Compose:
    """The paper's augmentation on a windowed slice `(1, H, W)` in [0, 1]; the jitter amount (10 %) is ours."""
    return v2.Compose([
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomVerticalFlip(p=0.5),
        # fill 0 = air after windowing, which is what surrounds the body anyway
        v2.RandomAffine(degrees=15, scale=(0.9, 1.1), interpolation=v2.InterpolationMode.BILINEAR, fill=0.0),
        v2.ColorJitter(brightness=0.1, contrast=0.1),
    ])


def make_transform(info: dict, augment: bool, image_size: Optional[int] = None):
    """A batched `with_transform` function: `{"image", "label"}` -> `{"pixel_values", "labels"}`."""
    augmentation = train_augmentation() if augment else None
    resize = v2.Resize((image_size, image_size), antialias=True) if image_size and image_size != info["size"] else None
    normalize = v2.Normalize(mean=info["image_mean"], std=info["image_std"])

    def transform(batch):
        pixel_values = []
        for image in batch["image"]:
            # via numpy: the rows arrive as Python lists, which torch converts five times slower
            unit = torch.from_numpy(np.asarray(image, dtype=np.float32))[None]  # (1, S, S) in [0, 1]
            if augmentation is not None:
                unit = augmentation(unit).clamp_(0.0, 1.0)
            if resize is not None:
                unit = resize(unit).clamp_(0.0, 1.0)
            pixel_values.append(normalize(unit.expand(3, -1, -1)))
        return {"pixel_values": pixel_values, "labels": list(batch["label"])}

    return transform


def torch_splits(
    dataset_dict: datasets.DatasetDict, info: dict, augment: bool = True, image_size: Optional[int] = None
) -> Dict[str, datasets.Dataset]:
    """Every split with its transform: augmentation on `train` only (when `augment`), the train-split
    normalisation everywhere, and a resize to `image_size` when it differs from the prepared size."""
    return {
        name: split.with_format("numpy").with_transform(
            make_transform(info, augment and name == "train", image_size), columns=["image", "label"]
        )
        for name, split in dataset_dict.items()
    }
