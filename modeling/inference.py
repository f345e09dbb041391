"""From CT slices to what a user is shown: probabilities, the decision, and maps on the right slice.

The command line (`modeling.predict`), the demo (`space/`) and the explanation panels all go through
these functions, so they give the same numbers and draw maps on the same anatomy:

- `forward_probabilities` / `score_volume`: P(metastatic) in float64 from the logits. float32 reads
  every logit above about 17 as exactly 1.0, and `training.evaluate` chooses the operating threshold
  in float64, so a threshold such as `1 - 1e-9` is only reached (and only missed) in float64.
- `is_metastatic` / `decision`: the call at the model's `decision_threshold`.
- `display_slice`: the windowed slice a map is laid over. Maps live on the model's input grid. Without
  `pixel_spacing_mm` the processor resizes the whole slice, so the native slice is that grid scaled
  and the maps are resized onto it; with it, the processor resamples and centre-crops (or pads), the
  native slice no longer lines up with the maps, and the model's own grid is shown instead.
- `probability_curve`, `explanation_panel`: the per-slice plot and the slice | attention | Grad-CAM panel.

Not imported by the model files: remote code must not need matplotlib.
"""

import dataclasses
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .configuration_dual_attention_resnet import METASTATIC_LABEL, NON_METASTATIC_LABEL
from .explain import overlay
from .image_processing_ct import resize_slice

GRID_LEVELS = 65535  # score_volume_and_grid stores [0, 1] in uint16
PANEL_MIN_WIDTH = 256  # explanation panels are enlarged to this width so their captions fit small slices
PANEL_GAP = 8  # white columns between side-by-side panels, so that their edges stay apart
CAPTION_LINE = 16  # pixels a caption line takes: PIL's default font draws about 12 px, descenders included
CAPTION_INSET = (4, 2)  # (x, y) of a caption's text within its line, off the panel's edge
PANEL_TOP = 2 * (CAPTION_LINE + CAPTION_INSET[1])  # the probability line and the panel titles above the panels


def probabilities_from_logits(logits: torch.Tensor) -> np.ndarray:
    """Metastasis logits `(n, 1)` or `(n,)` -> P(metastatic) `(n,)` float64 (sigmoid taken in float64)."""
    return torch.sigmoid(logits.detach().reshape(-1).double()).cpu().numpy()


def forward_probabilities(model, pixel_values: torch.Tensor) -> np.ndarray:
    """One batched forward pass: `(n, 3, S, S)` -> P(metastatic) `(n,)` float64."""
    with torch.no_grad():
        logits = model(pixel_values.to(device=model.device, dtype=model.dtype)).logits
    return probabilities_from_logits(logits[:, 0])


def score_volume(model, processor, volume, batch_size: int = 16) -> np.ndarray:
    """P(metastatic) of every slice of a `CTVolume`, `(slices,)` float64, `batch_size` slices a pass.

    `modeling.predict` batches slices across its inputs instead, through the same `forward_probabilities`.
    """
    return score_volume_and_grid(model, processor, volume, batch_size)[0]


def score_volume_and_grid(model, processor, volume, batch_size: int = 16) -> "tuple[np.ndarray, np.ndarray]":
    """`score_volume`'s probabilities `(slices,)` and, from the same processor pass, every slice as the
    model sees it before normalisation: windowed to [0, 1] on its input grid, in 16 bits, `(slices, S, S)`
    uint16 (`grid_pixel_values` turns slices of it back into model input).

    What the demo keeps of a scored series to redraw any slice's maps: at 224 px, 1,000 slices are
    100 MB, where the HU volume at 512 px is 1 GB in float32. Quantising [0, 1] to 65,535 steps moves
    a value by at most 8e-6 (0.003 HU in a 400 HU window); the probabilities come from the unquantised
    values, normalised as the processor does, so they equal the processor's to the bit.
    """
    probabilities, grid = [], []
    for start in range(0, volume.hu.shape[0], batch_size):
        unit = processor(volume_slices(volume, start, start + batch_size), do_normalize=False,
                         return_tensors="pt")["pixel_values"]
        probabilities.append(forward_probabilities(model, processor.normalize_pixel_values(unit)))
        grid.append(np.round(unit[:, 0].numpy() * GRID_LEVELS).astype(np.uint16))
    if not grid:
        return np.zeros(0), np.zeros((0, processor.size, processor.size), np.uint16)
    return np.concatenate(probabilities), np.concatenate(grid)


def volume_slices(volume, start: int, stop: int):
    """Slices `start:stop` of a `CTVolume` as a volume of their own (a view: nothing is copied)."""
    return dataclasses.replace(volume, hu=volume.hu[start:stop], positions_mm=volume.positions_mm[start:stop])


def grid_pixel_values(processor, grid: np.ndarray) -> "tuple[torch.Tensor, np.ndarray]":
    """Grid slices `(n, S, S)` uint16 (`score_volume_and_grid`) -> (`pixel_values` `(n, 3, S, S)`, shown
    slices `(n, S, S)` in [0, 1])."""
    unit = torch.from_numpy(grid.astype(np.float32) / GRID_LEVELS)
    return processor.normalize_pixel_values(unit[:, None].expand(-1, 3, -1, -1)), unit.numpy()


def is_metastatic(probability: float, threshold: float) -> bool:
    """The call at `threshold` (at or above it is metastatic), compared in float64."""
    return float(probability) >= float(threshold)


def decision(probability: float, threshold: float) -> str:
    """The class name called at `threshold`: `METASTATIC_LABEL` or `NON_METASTATIC_LABEL`."""
    return METASTATIC_LABEL if is_metastatic(probability, threshold) else NON_METASTATIC_LABEL


def format_threshold(value: float) -> str:
    """4 significant digits, more where 4 would round a threshold below 1 up to "1" (0.99996 -> "0.99996")."""
    for digits in range(4, 17):
        text = f"{value:.{digits}g}"
        if float(text) != 1.0 or value == 1.0:
            return text
    return repr(value)


def display_slice(processor, image, pixel_spacing: Optional[Sequence[float]] = None, window_center=None,
                  window_width=None) -> np.ndarray:
    """The windowed slice `(h, w)` in [0, 1] that the model's maps line up with (see the module docstring).

    `image` is one slice of any kind the processor accepts (HU array, DICOM path or dataset, image
    file); `pixel_spacing` `(row, column)` mm goes with HU arrays. The window changes what is shown only.
    """
    if processor.pixel_spacing_mm is None:
        return processor.to_unit_range(image, window_center, window_width)
    grid = processor(image, pixel_spacing=pixel_spacing, window_center=window_center, window_width=window_width,
                     do_normalize=False, return_tensors="pt")["pixel_values"]
    return grid[0, 0].numpy()


def probability_curve(positions_mm: np.ndarray, probabilities: np.ndarray, threshold: float, title: str = None):
    """P(metastatic) against slice position `(slices,)`, with the threshold and the most suspicious slice:
    a matplotlib `Figure` (no pyplot, so it is safe in a server's threads)."""
    from matplotlib.figure import Figure  # lazy: only plots need matplotlib

    top = int(np.argmax(probabilities))
    figure = Figure(figsize=(7, 2.8), layout="constrained")
    axes = figure.add_subplot()
    axes.plot(positions_mm, probabilities, marker=".", color="tab:blue", label="P(metastatic) of each slice")
    axes.axhline(threshold, color="tab:red", linestyle="--", label=f"decision threshold {format_threshold(threshold)}")
    axes.plot(positions_mm[top], probabilities[top], "o", color="tab:red", markersize=9,
              label=f"most suspicious slice ({probabilities[top]:.3f})")
    axes.set(xlabel="slice position z (mm, inferior to superior)", ylabel="P(metastatic)", ylim=(-0.02, 1.02))
    if title:
        axes.set_title(title)
    axes.legend(loc="best", fontsize="small")
    return figure


def explanation_panel(shown: np.ndarray, attention, gradcam, probability: float, gradcam_label: str) -> np.ndarray:
    """Slice | attention overlay | Grad-CAM overlay side by side under a caption: `uint8` RGB image.

    `shown` is the `display_slice` the maps belong to, enlarged to `PANEL_MIN_WIDTH` when narrower;
    the attention panel is left out when the model has no spatial branch (`attention` None);
    `gradcam_label` names the Grad-CAM panel (`explain.gradcam_title`).
    """
    if shown.shape[1] < PANEL_MIN_WIDTH:
        scale = PANEL_MIN_WIDTH / shown.shape[1]
        shown = resize_slice(shown, (round(shown.shape[0] * scale), PANEL_MIN_WIDTH))
    grey = np.round(np.clip(shown, 0.0, 1.0) * 255.0).astype(np.uint8)
    panels = [("CT slice", np.repeat(grey[..., None], 3, axis=2))]
    if attention is not None:
        panels.append(("spatial attention", overlay(shown, attention)))
    panels.append((gradcam_label, overlay(shown, gradcam)))
    height, width = grey.shape
    canvas = Image.new("RGB", (len(panels) * width + (len(panels) - 1) * PANEL_GAP, height + PANEL_TOP), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text(CAPTION_INSET, f"P(metastatic) = {probability:.3f}", fill="black")
    for index, (title, array) in enumerate(panels):
        left = index * (width + PANEL_GAP)
        draw.text((left + CAPTION_INSET[0], CAPTION_LINE + CAPTION_INSET[1]), title, fill="black")
        canvas.paste(Image.fromarray(array), (left, PANEL_TOP))
    return np.asarray(canvas)


__all__ = [
    "decision",
    "display_slice",
    "explanation_panel",
    "format_threshold",
    "forward_probabilities",
    "grid_pixel_values",
    "is_metastatic",
    "probabilities_from_logits",
    "probability_curve",
    "score_volume",
    "score_volume_and_grid",
    "volume_slices",
]
