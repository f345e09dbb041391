"""Batch inference over CT DICOM files and folders: one CSV row per file, optional explanation PNGs.

    python -m modeling.predict PATH... --model M --output CSV [--explain-dir DIR]

Folders are walked recursively and every file is tried as DICOM (DICOMs often have no extension);
hidden files and DICOMDIR indexes are skipped, anything else that is not a CT slice becomes an
`error` row with a one-line reason. With `--images`, PNG/JPEG/TIFF files are read as
already-windowed slices (the paper's export); without it they are refused like any non-DICOM file.
Exit status: 0 when every file gave a prediction, 1 when some were refused (all rows are still
written), 2 for usage errors.

No patient names or IDs are written: the CSV holds the path as given, and explanation images are
named by row number and a hash of the path.

Not imported by the model files: it needs matplotlib and tqdm, which remote code must not.
"""

import argparse
import csv
import hashlib
import os
import sys
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from .configuration_dual_attention_resnet import NON_METASTATIC_LABEL
from .ct_dicom import read_ct_hu, read_dicom
from .explain import explain, overlay
from .image_processing_ct import IMAGE_SUFFIXES

CSV_COLUMNS = ("path", "status", "probability", "label", "error", "warning", "explanation")
# Bulk of a calibrated CT slice: air at about -1000 HU up to dense bone and contrast.
CT_RANGE_HU = (-1100.0, 3500.0)
SKIPPED_NAMES = ("DICOMDIR",)


def find_files(paths: Sequence[str]) -> List[str]:
    """Files named in `paths` plus every non-hidden file below the folders among them, in a stable order."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            for folder, subfolders, names in os.walk(path):
                subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
                files.extend(
                    os.path.join(folder, name)
                    for name in sorted(names)
                    if not name.startswith(".") and name not in SKIPPED_NAMES
                )
        else:
            files.append(path)
    return files


def hu_warning(ds, hu: np.ndarray) -> str:
    """A one-line warning when the pixel values do not look like calibrated Hounsfield units, else "".

    The constant fill outside the scan circle (often -2048 or -3024 HU) is left out of the check.
    """
    if "RescaleIntercept" not in ds and hu.min() >= 0:
        return "no RescaleIntercept and no negative values: pixel values may be raw, not calibrated HU"
    body = hu[hu != hu.min()] if hu.min() < CT_RANGE_HU[0] else hu
    if body.size == 0:
        return "the image is one constant value"
    outside = np.mean((body < CT_RANGE_HU[0]) | (body > CT_RANGE_HU[1]))
    if outside > 0.05:
        return (
            f"{outside:.0%} of pixels outside [{CT_RANGE_HU[0]:.0f}, {CT_RANGE_HU[1]:.0f}] HU: "
            "check RescaleSlope/RescaleIntercept"
        )
    return ""


def load_slice(path: str, processor, images: bool = False) -> Tuple[torch.Tensor, np.ndarray, str]:
    """One file -> `(pixel_values (3, S, S), windowed slice (h, w) in [0, 1], warning)`.

    `images`: read PNG/JPEG/TIFF files as already-windowed slices instead of refusing them.
    Raises a one-line `ValueError` (or `OSError` for unreadable images) when the file is refused.
    """
    suffix = os.path.splitext(path)[1].lower()
    if suffix in IMAGE_SUFFIXES and not images:
        raise ValueError(f"not a DICOM file ({suffix} image; --images reads already-windowed images)")
    if suffix in IMAGE_SUFFIXES:
        image = path
        warning = "image file, not DICOM: read as an already-windowed slice; HU not checked"
    else:
        ds = read_dicom(path)
        image = read_ct_hu(ds)
        warning = hu_warning(ds, image)
    unit = processor.to_unit_range(image)
    pixel_values = processor(image, return_tensors="pt")["pixel_values"][0]
    return pixel_values, unit, warning


def explanation_panel(unit: np.ndarray, attention, gradcam, probability: float, min_width: int = 256) -> np.ndarray:
    """Slice | attention overlay | Grad-CAM overlay side by side under a caption: `uint8` RGB image.

    Panels are shown at the slice's resolution, enlarged to `min_width` so captions fit small slices;
    the attention panel is left out when the model has no spatial branch.
    """
    if unit.shape[1] < min_width:
        scale = min_width / unit.shape[1]
        display = Image.fromarray(np.asarray(unit, dtype=np.float32)).resize(
            (min_width, round(unit.shape[0] * scale)), Image.BILINEAR
        )
        unit = np.asarray(display)
    grey = np.round(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)
    panels = [("CT slice", np.repeat(grey[..., None], 3, axis=2))]
    if attention is not None:
        panels.append(("spatial attention", overlay(unit, attention)))
    panels.append(("Grad-CAM (last backbone stage)", overlay(unit, gradcam)))
    height, width = grey.shape
    gap, line = 8, 16
    canvas = Image.new("RGB", (len(panels) * width + (len(panels) - 1) * gap, height + 2 * line + 4), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), f"P(metastatic) = {probability:.3f}", fill="black")
    for index, (title, array) in enumerate(panels):
        left = index * (width + gap)
        draw.text((left + 4, line + 2), title, fill="black")
        canvas.paste(Image.fromarray(array), (left, 2 * line + 4))
    return np.asarray(canvas)


def explanation_name(index: int, path: str) -> str:
    """PNG name from the row number and a hash of the path: never a file or folder name, which may hold a patient's."""
    return f"{index:05d}_{hashlib.sha1(path.encode('utf-8')).hexdigest()[:10]}.png"


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict_files(
    files: Sequence[str],
    model,
    processor,
    output: str,
    explain_dir: Optional[str] = None,
    batch_size: int = 16,
    images: bool = False,
) -> Tuple[int, int]:
    """Predict every file, writing one CSV row each to `output` as it goes; returns `(n_ok, n_error)`."""
    threshold = float(model.config.decision_threshold)
    positive_label = model.config.id2label[0]
    if explain_dir:
        os.makedirs(explain_dir, exist_ok=True)
    n_ok = n_error = 0
    with open(output, "w", newline="") as handle, tqdm(total=len(files), desc="predict", unit="file") as progress:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        index = 0
        for batch in _batches(files, batch_size):
            rows, loaded = [], []
            for path in batch:
                row = dict.fromkeys(CSV_COLUMNS, "")
                row.update(path=path)
                try:
                    pixel_values, unit, warning = load_slice(path, processor, images)
                except (ValueError, OSError) as error:
                    row.update(status="error", error=str(error).splitlines()[0] or type(error).__name__)
                else:
                    row.update(status="ok", warning=warning)
                    loaded.append((index + len(rows), row, pixel_values, unit))
                rows.append(row)
            if loaded:
                pixel_values = torch.stack([item[2] for item in loaded])
                if explain_dir:
                    maps = explain(model, pixel_values)
                    probabilities = maps["probability"].cpu()
                else:
                    with torch.no_grad():
                        logits = model(pixel_values.to(device=model.device, dtype=model.dtype)).logits
                    probabilities = torch.sigmoid(logits[:, 0].float()).cpu()
                for position, (row_number, row, _, unit) in enumerate(loaded):
                    probability = float(probabilities[position])
                    row.update(
                        probability=f"{probability:.6f}",
                        label=positive_label if probability >= threshold else NON_METASTATIC_LABEL,
                    )
                    if explain_dir:
                        row["explanation"] = explanation_name(row_number, row["path"])
                        attention = maps["attention"][position] if maps["attention"] is not None else None
                        panel = explanation_panel(unit, attention, maps["gradcam"][position], probability)
                        Image.fromarray(panel).save(os.path.join(explain_dir, row["explanation"]))
            for row in rows:
                writer.writerow(row)
                n_ok += row["status"] == "ok"
                n_error += row["status"] == "error"
            handle.flush()
            index += len(rows)
            progress.update(len(rows))
    return n_ok, n_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modeling.predict",
        description="P(metastatic lymph node) for CT DICOM slices in files and folders, as a CSV.",
    )
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="DICOM files (any extension) or folders, walked recursively"
    )
    parser.add_argument("--model", required=True, help="a saved model folder (RUN/best) or a Hugging Face Hub id")
    parser.add_argument(
        "--output", required=True, help="CSV to write: path,status,probability,label,error,warning,explanation"
    )
    parser.add_argument("--explain-dir", help="write slice | attention | Grad-CAM PNGs here, one per predicted file")
    parser.add_argument(
        "--images", action="store_true", help="also read PNG/JPEG/TIFF as already-windowed slices (HU not checked)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="slices per forward pass (default 16)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # paths may follow the options
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    missing = [path for path in args.paths if not os.path.exists(path)]
    if missing:
        parser.error(f"no such file or folder: {', '.join(missing)}")
    files = find_files(args.paths)
    if not files:
        parser.error("no files found in the given folders")

    from transformers import AutoImageProcessor, AutoModelForImageClassification

    try:
        model = AutoModelForImageClassification.from_pretrained(args.model, trust_remote_code=True)
        processor = AutoImageProcessor.from_pretrained(args.model, trust_remote_code=True)
    except (OSError, ValueError) as error:
        parser.error(f"cannot load model {args.model!r}: {str(error).splitlines()[0]}")
    model.to(args.device).eval()

    n_ok, n_error = predict_files(files, model, processor, args.output, args.explain_dir, args.batch_size, args.images)
    print(f"{n_ok} predicted, {n_error} refused; wrote {args.output}", file=sys.stderr)
    return 1 if n_error else 0


if __name__ == "__main__":
    sys.exit(main())
