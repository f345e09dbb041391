"""Does the map point at the lesion? Pointing game and energy-in-mask for attention and Grad-CAM.

Pointing game (Zhang et al., https://arxiv.org/abs/1608.00507): a hit when the map's maximum lies
within a small tolerance of the lesion mask. Energy in mask: the share of the map's total that lies
inside the mask. Both are measured on the maps as `modeling.explain` returns them (min-max scaled
to [0, 1] at model resolution), on positive slices with lesion masks; `training.evaluate` reports them.
"""

from typing import Optional, Sequence

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from modeling.explain import explain
from training.metrics import patient_bootstrap_weights, percentile_interval

MAP_NAMES = ("attention", "gradcam")


def pointing_game_hits(maps: torch.Tensor, masks: torch.Tensor, tolerance_px: float) -> np.ndarray:
    """`maps` `(n, H, W)`, `masks` `(n, H, W)` -> `(n,)` bool: the map's maximum within `tolerance_px`
    (Euclidean) of a mask pixel. A constant map points nowhere and counts as a miss."""
    hits = np.zeros(len(maps), dtype=bool)
    for index, (heat, mask) in enumerate(zip(maps, masks, strict=True)):
        if heat.max() == heat.min():
            continue
        peak = torch.stack(torch.unravel_index(heat.argmax(), heat.shape)).float()
        lesion = mask.nonzero().float()
        hits[index] = bool(torch.cdist(peak[None], lesion).min() <= tolerance_px)
    return hits


def energy_in_mask(maps: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """`(n,)` share of each map's sum inside its mask; 0 for an all-zero map."""
    maps = maps.double()
    total = maps.sum(dim=(1, 2))
    inside = (maps * (masks > 0)).sum(dim=(1, 2))
    return torch.where(total > 0, inside / total.clamp_min(1e-300), 0.0).numpy()


def pointing_chance(masks: torch.Tensor, tolerance_px: float) -> np.ndarray:
    """`(n,)` share of pixels within `tolerance_px` of the mask: the hit rate of a uniformly random point."""
    radius = int(np.floor(tolerance_px))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    disc = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= tolerance_px**2).float()
    dilated = F.conv2d(masks[:, None].float(), disc[None, None], padding=radius)[:, 0] > 0
    return dilated.flatten(1).float().mean(dim=1).numpy()


def _summary(values: np.ndarray, weights: np.ndarray) -> dict:
    """Mean of per-slice `values` with a 95 % bootstrap interval from resample `weights` `(r, n)`."""
    draws = weights @ values / weights.sum(axis=1)
    low, high = percentile_interval(draws)
    return {"value": float(np.mean(values)), "ci_low": low, "ci_high": high}


def explained_maps(model, pixel_values: torch.Tensor, batch_size: int) -> dict:
    """`{name: (n, H, W) map on the CPU, or None when the model has no such map}` for `MAP_NAMES`."""
    maps = {name: [] for name in MAP_NAMES}
    for start in tqdm(range(0, len(pixel_values), batch_size), desc="localisation", leave=False):
        explained = explain(model, pixel_values[start : start + batch_size])
        for name in MAP_NAMES:
            if explained[name] is not None:
                maps[name].append(explained[name].cpu())
    return {name: torch.cat(batches) if batches else None for name, batches in maps.items()}


def localisation_metrics(
    model,
    pixel_values: torch.Tensor,
    masks: torch.Tensor,
    batch_size: int = 16,
    patient_ids: Optional[Sequence[str]] = None,
    tolerance: float = 0.03,
    resamples: int = 1000,
    seed: int = 0,
) -> Optional[dict]:
    """Pointing game and energy in mask, for the attention map and Grad-CAM, with 95 % bootstrap intervals.

    Args:
        model: a `DualAttentionResNetForImageClassification`.
        pixel_values (`torch.FloatTensor` of shape `(n, 3, H, W)`): positive slices, as the model takes them.
        masks (`(n, h, w)`, nonzero = lesion): resized (nearest) to `(H, W)` when their size differs.
        patient_ids: `(n,)`; when given, the bootstrap resamples patients, otherwise slices.
        tolerance: pointing-game tolerance as a fraction of the image side (0.03 is about 7 px at 224).

    Returns `{"n", "tolerance_px", "mask_area_fraction", "pointing_chance", "attention", "gradcam"}` where
    each map entry is `{"pointing_game": {"value", "ci_low", "ci_high"}, "energy_in_mask": {...}}`,
    `attention` None when the model has no spatial branch. `mask_area_fraction` (the energy a uniform
    map would get) and `pointing_chance` (the hit rate of a random point) are the baselines to beat.
    Slices whose mask is empty at model resolution are left out; None when none is left.
    """
    masks = torch.as_tensor(np.asarray(masks)) if not isinstance(masks, torch.Tensor) else masks
    size = tuple(pixel_values.shape[-2:])
    if tuple(masks.shape[-2:]) != size:
        masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0]
    masks = masks > 0
    keep = masks.flatten(1).any(dim=1)
    if not keep.any():
        return None
    pixel_values, masks = pixel_values[keep], masks[keep]
    groups = np.asarray(patient_ids)[keep.numpy()] if patient_ids is not None else np.arange(len(masks))
    tolerance_px = tolerance * max(size)

    maps = explained_maps(model, pixel_values, batch_size)
    weights = patient_bootstrap_weights(groups, resamples, seed)
    result = {
        "n": int(len(masks)),
        "tolerance_px": float(tolerance_px),
        "mask_area_fraction": float(masks.float().mean()),
        "pointing_chance": float(np.mean(pointing_chance(masks, tolerance_px))),
    }
    for name in MAP_NAMES:
        if maps[name] is None:
            result[name] = None
            continue
        stacked = maps[name]
        result[name] = {
            "pointing_game": _summary(pointing_game_hits(stacked, masks, tolerance_px).astype(float), weights),
            "energy_in_mask": _summary(energy_in_mask(stacked, masks), weights),
        }
    return result


def localisation_for_config(result: dict, split: str, gradcam_stage: int = 4) -> dict:
    """`localisation_metrics`' result -> the compact form stored in the model's config.json
    (`config.localisation`): per evaluated map, `{"pointing_game", "pointing_game_ci": [lo, hi],
    "energy_in_mask", "n_slices", "chance", "split"}`, where `chance` is the pointing game of a random
    point, and for Grad-CAM the backbone `stage` it explained (`config.gradcam_stage`), so that a map
    later moved to another stage is not captioned with these numbers. Maps that were not evaluated (no
    spatial branch) are absent."""
    summary = {}
    for name in MAP_NAMES:
        measured = result.get(name)
        if measured is None:
            continue
        pointing = measured["pointing_game"]
        summary[name] = {
            "pointing_game": pointing["value"],
            "pointing_game_ci": [pointing["ci_low"], pointing["ci_high"]],
            "energy_in_mask": measured["energy_in_mask"]["value"],
            "n_slices": result["n"],
            "chance": result["pointing_chance"],
            "split": split,
        }
        if name == "gradcam":
            summary[name]["stage"] = gradcam_stage
    return summary
