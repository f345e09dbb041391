"""training.data: augmentation on train only, normalisation with train statistics on every split."""

import datasets
import numpy as np
import pytest
import torch

from training.data import load_prepared, processor_from_info, torch_splits
from training.prepare import features

SIZE = 16
INFO = {"window_center": 60.0, "window_width": 400.0, "size": SIZE, "seed": 0,
        "image_mean": [0.2] * 3, "image_std": [0.1] * 3}


def split_of(values, label=1):
    """A prepared-schema split whose images are constant `values` (one image per value)."""
    n = len(values)
    return datasets.Dataset.from_dict({
        "image": np.stack([np.full((SIZE, SIZE), v, np.float32) for v in values]),
        "label": [label] * n, "patient_id": [f"p{i}" for i in range(n)], "source": [f"f{i}" for i in range(n)],
        "mask": np.zeros((n, SIZE, SIZE), np.uint8), "has_mask": [False] * n,
    }, features=features(SIZE))


def gradient_dataset_dict():
    """Every split holds the same left-to-right ramp, so flips and rotations change it visibly."""
    ramp = np.tile(np.linspace(0, 1, SIZE, dtype=np.float32), (SIZE, 1))
    split = split_of([0.0]).map(lambda row: {"image": ramp}, features=features(SIZE))
    return datasets.DatasetDict({"train": split, "validation": split, "test": split})


def test_every_split_is_normalised_with_the_train_statistics():
    # validation/test values far from train's: their own statistics would give another result
    dataset_dict = datasets.DatasetDict({"train": split_of([0.1, 0.3]), "validation": split_of([0.9]),
                                         "test": split_of([0.7], label=0)})
    splits = torch_splits(dataset_dict, INFO, augment=False)
    for name, value in (("train", 0.1), ("validation", 0.9), ("test", 0.7)):
        item = splits[name][0]
        assert item["pixel_values"].shape == (3, SIZE, SIZE)
        torch.testing.assert_close(item["pixel_values"], torch.full((3, SIZE, SIZE), (value - 0.2) / 0.1))
    assert splits["test"][0]["labels"] == 0 and splits["validation"][0]["labels"] == 1


def test_augmentation_changes_train_only():
    splits = torch_splits(gradient_dataset_dict(), INFO, augment=True)
    torch.manual_seed(0)
    train_draws = [splits["train"][0]["pixel_values"] for _ in range(8)]
    assert any(not torch.equal(train_draws[0], draw) for draw in train_draws[1:])
    for name in ("validation", "test"):
        draws = [splits[name][0]["pixel_values"] for _ in range(3)]
        assert all(torch.equal(draws[0], draw) for draw in draws[1:])
    low, high = (0 - 0.2) / 0.1, (1 - 0.2) / 0.1  # augmented values stay inside the window
    assert all(draw.min() >= low - 1e-5 and draw.max() <= high + 1e-5 for draw in train_draws)


def test_augmentation_includes_flips_and_is_seeded():
    splits = torch_splits(gradient_dataset_dict(), INFO, augment=True)
    torch.manual_seed(1)
    first = [splits["train"][0]["pixel_values"][0] for _ in range(20)]
    torch.manual_seed(1)
    second = [splits["train"][0]["pixel_values"][0] for _ in range(20)]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    # a horizontal flip turns the left-to-right ramp into a right-to-left one
    assert any(draw[:, 2:-2].diff(dim=1).mean() < 0 for draw in first)
    assert any(draw[:, 2:-2].diff(dim=1).mean() > 0 for draw in first)


def test_image_size_resizes_and_a_loader_batches(prepared_dataset):
    dataset_dict, info = load_prepared(prepared_dataset)
    splits = torch_splits(dataset_dict, info, augment=True, image_size=32)
    batch = next(iter(torch.utils.data.DataLoader(splits["train"], batch_size=4)))
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].tolist() == dataset_dict["train"]["label"][:4]


def test_processor_from_info_matches_the_prepared_validation_tensors(prepared_dataset, phantom_dir):
    dataset_dict, info = load_prepared(prepared_dataset)
    processor = processor_from_info(info)
    assert (processor.size, processor.window_center, processor.window_width) == (info["size"], 60.0, 400.0)
    assert processor.image_mean == info["image_mean"] and processor.image_std == info["image_std"]
    item = torch_splits(dataset_dict, info)["validation"][0]
    source = dataset_dict["validation"][0]["source"]
    expected = processor(str(phantom_dir / source))["pixel_values"][0]
    torch.testing.assert_close(item["pixel_values"], expected, atol=1e-5, rtol=0)


def test_load_prepared_needs_prepare_info(tmp_path):
    gradient_dataset_dict().save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(FileNotFoundError, match="prepare_info.json"):
        load_prepared(tmp_path / "ds")


def test_batch_augmentation_draws_per_image_and_its_flips_are_exact():
    from training.data import BatchAugmentation

    ramp = torch.linspace(0, 1, SIZE).expand(SIZE, SIZE)
    image = ramp * ramp.T  # (H, W): no symmetry, so the four flips differ
    batch = ((image - 0.2) / 0.1).expand(32, 3, SIZE, SIZE).contiguous()
    # No rotation, no scaling, no jitter: only the flips remain, and resampling on the unchanged grid is exact.
    flips_only = BatchAugmentation([0.2] * 3, [0.1] * 3, degrees=0.0, scale=(1.0, 1.0), jitter=0.0)
    torch.manual_seed(0)
    augmented, no_mask = flips_only(batch)
    assert no_mask is None
    candidates = [batch[0], batch[0].flip(-1), batch[0].flip(-2), batch[0].flip(-1, -2)]
    matches = [[torch.allclose(out, c, atol=1e-5) for c in candidates] for out in augmented]
    assert all(sum(m) == 1 for m in matches)
    assert all(any(m[k] for m in matches) for k in range(4))  # each image draws its own flips

    torch.manual_seed(0)
    full = BatchAugmentation([0.2] * 3, [0.1] * 3)(batch)[0]
    torch.manual_seed(0)
    assert torch.equal(full, BatchAugmentation([0.2] * 3, [0.1] * 3)(batch)[0])  # seeded
    assert full.shape == batch.shape and not torch.allclose(full[0], full[1])
    low, high = (0 - 0.2) / 0.1, (1 - 0.2) / 0.1  # values stay inside the window
    assert full.min() >= low - 1e-5 and full.max() <= high + 1e-5


def test_lesion_masks_move_with_their_images(signal_dataset):
    # signal_dataset: a positive slice is 0.9 on its lesion disc and 0.1-0.4 elsewhere.
    dataset_dict, info = load_prepared(signal_dataset)
    splits = torch_splits(dataset_dict, info, augment=True, image_size=48, train_masks=True)
    assert "lesion_mask" not in splits["validation"][0]
    torch.manual_seed(0)
    batch = next(iter(torch.utils.data.DataLoader(splits["train"], batch_size=24)))
    masks, labels = batch["lesion_mask"], batch["labels"]
    assert masks.shape == (24, 48, 48) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert masks[labels == 0].sum() == 0 and (masks[labels == 1].flatten(1).sum(1) > 0).all()
    unit = batch["pixel_values"][:, 0] * info["image_std"][0] + info["image_mean"][0]
    inside, outside = unit[masks > 0], unit[(masks == 0) & (labels == 1)[:, None, None]]
    # After flips, rotation and scaling (and 10 % jitter), the mask still covers the bright disc.
    assert inside.median() > 0.75 and outside.median() < 0.45
