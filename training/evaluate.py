"""Evaluate a saved model on one split of a prepared dataset, with intervals, calibration and an operating point.

    python -m training.evaluate --model RUN/best --data DS --split test --output-dir EVAL

The decision threshold is chosen on the validation split (highest threshold reaching the target
sensitivity, default 0.95) and written into the model's config.json (`decision_threshold`), so
inference uses it; the headline numbers use it, and the numbers at 0.5 are reported beside them.
Intervals are 95 % percentile intervals from a bootstrap that resamples patients.

Writes `EVAL/metrics.json`, `predictions.csv` (one row per slice; pseudonymous patient ids only),
`roc_curve.png`, `confusion_matrix.png`, `reliability_diagram.png` and `report.md`.
"""

import argparse
import csv
import json
import math
import os
import sys
import tempfile
from typing import Optional

import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import ConfusionMatrixDisplay, roc_curve
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from modeling import CLASS_NAMES, CTImageProcessor, DualAttentionResNetForImageClassification
from modeling.configuration_dual_attention_resnet import GRADCAM_STAGES
from modeling.inference import probabilities_from_logits
from training.data import load_prepared, torch_splits
from training.localisation import localisation_for_config, localisation_metrics
from training.metrics import (
    METRIC_NAMES,
    binary_confusion_matrix,
    calibration,
    choose_operating_point,
    metrics_with_intervals,
    patient_scores,
)
from training.paper import PAPER_ATTENTION_MODEL, PAPER_RESULTS


def load_model(model_dir):
    """A saved model folder -> (model in eval mode, its processor)."""
    model = DualAttentionResNetForImageClassification.from_pretrained(model_dir).eval()
    return model, CTImageProcessor.from_pretrained(model_dir)


def model_inputs(dataset_dict, info: dict, processor: CTImageProcessor) -> dict:
    """Each split as the model saw it in training: no augmentation, the processor's size and mean/std
    (the statistics of the split the model was trained on, which may differ from this dataset's)."""
    stats = {**info, "image_mean": processor.image_mean, "image_std": processor.image_std}
    return torch_splits(dataset_dict, stats, augment=False, image_size=processor.size)


@torch.no_grad()
def predict_probabilities(model, split, batch_size: int = 32, desc: str = "predicting") -> np.ndarray:
    """P(metastatic) for every item of a torch-ready split, in order: `(n,)` float64."""
    device = next(model.parameters()).device
    probabilities = []
    for batch in tqdm(DataLoader(split, batch_size=batch_size), desc=desc, leave=False):
        logits = model(pixel_values=batch["pixel_values"].to(device)).logits
        probabilities.append(probabilities_from_logits(logits))  # float64, as predict and the demo decide
    return np.concatenate(probabilities)


def localisation(model, split, raw_split, resamples: int, seed: int) -> Optional[dict]:
    """Attention / Grad-CAM localisation on positive slices that have lesion masks, or None if there are none."""
    labels_and_masks = zip(raw_split["label"], raw_split["has_mask"], strict=True)
    rows = [i for i, (label, has_mask) in enumerate(labels_and_masks) if label == 1 and has_mask]
    if not rows:
        return None
    pixel_values = torch.stack([split[i]["pixel_values"] for i in rows])
    masks = torch.as_tensor(np.stack([np.asarray(raw_split[i]["mask"]) for i in rows]))
    patients = [raw_split[i]["patient_id"] for i in rows]
    return localisation_metrics(model, pixel_values, masks, patient_ids=patients, resamples=resamples, seed=seed)


def plot_roc(labels, probabilities, threshold: float, auc: float, path: str) -> None:
    fpr, tpr, _ = roc_curve(labels, probabilities)
    figure = Figure(figsize=(5, 5))
    axis = figure.subplots()
    axis.plot(fpr, tpr, label=f"model (AUC {auc:.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    points = ((threshold, "o", f"operating point {threshold_text(threshold)}"), (0.5, "s", "threshold 0.5"))
    for t, marker, name in points:
        called = probabilities >= t
        point_tpr = called[labels == 1].mean() if (labels == 1).any() else np.nan
        point_fpr = called[labels == 0].mean() if (labels == 0).any() else np.nan
        axis.plot(point_fpr, point_tpr, marker=marker, linestyle="none", markersize=8, label=name)
    axis.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC curve", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    axis.legend(loc="lower right")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_confusion_matrices(matrices: dict, path: str) -> None:
    """One panel per threshold: {title: [[tn, fp], [fn, tp]]}."""
    figure = Figure(figsize=(5 * len(matrices), 4.2))
    axes = figure.subplots(1, len(matrices))
    for axis, (title, matrix) in zip(np.atleast_1d(axes), matrices.items(), strict=True):
        display = ConfusionMatrixDisplay(np.asarray(matrix), display_labels=CLASS_NAMES)
        display.plot(ax=axis, colorbar=False, cmap="Blues")
        axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_reliability(labels, probabilities, path: str, bins: int = 10) -> None:
    """Observed positive rate against mean predicted probability per bin, with the histogram below."""
    observed, predicted = calibration_curve(labels, probabilities, n_bins=bins, strategy="uniform")
    figure = Figure(figsize=(5, 6))
    curve, histogram = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    curve.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    curve.plot(predicted, observed, marker="o", label="model")
    curve.set(ylabel="observed fraction metastatic", title="Reliability diagram", ylim=(-0.02, 1.02))
    curve.legend(loc="upper left")
    curve.grid(alpha=0.3)
    histogram.hist(probabilities, bins=bins, range=(0, 1), color="tab:blue", alpha=0.7)
    histogram.set(xlabel="predicted P(metastatic)", ylabel="slices")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def write_predictions(path: str, raw_split, probabilities, threshold: float) -> None:
    """One row per slice: source file, pseudonymous patient id, label, probability, call at the threshold."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "source", "patient_id", "label", "probability", "prediction"])
        for i, (source, patient, label, p) in enumerate(
            zip(raw_split["source"], raw_split["patient_id"], raw_split["label"], probabilities, strict=True)
        ):
            writer.writerow([i, source, patient, label, f"{p:.6f}", int(p >= threshold)])


def json_safe(value):
    """NaN (a metric undefined on this split) -> None, so metrics.json is strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def _metric_table(rows: dict) -> str:
    """Markdown table: one column per entry of `rows` ({column title: metrics with intervals})."""
    header = "| metric | " + " | ".join(rows) + " |\n|---|" + "---|" * len(rows) + "\n"
    lines = []
    for name in METRIC_NAMES:
        cells = [f"{m[name]['value']:.3f} ({m[name]['ci_low']:.3f}-{m[name]['ci_high']:.3f})" for m in rows.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return header + "\n".join(lines) + "\n"


def _threshold_section(metrics: dict) -> list:
    point = metrics["operating_point"]
    previous, new = threshold_text(point["previous_threshold"]), threshold_text(point["threshold"])
    if point["written_to_config"]:
        written = "written into the model's config.json as `decision_threshold`"
    else:
        written = "not written (--no-write-threshold): the model's config.json keeps the previous one"
    return [
        "## Decision threshold",
        "",
        f"Operating point **{new}**, chosen on the {point['chosen_on']} split: {point['note']}.",
        "",
        f"Previous threshold {previous}; new threshold {new}, {written}. Results at 0.5 are shown beside it.",
        "",
    ]


def _localisation_section(loc: Optional[dict]) -> list:
    lines = ["## Localisation", ""]
    if loc is None:
        return lines + ["Not measured: no positive slices with lesion masks in this split."]
    lines += [
        f"{loc['n']} positive slices with lesion masks; Grad-CAM explains backbone stage "
        f"{loc.get('gradcam_stage', 4)}. Chance levels: energy in mask "
        f"{loc['mask_area_fraction']:.3f} (a uniform map), pointing game {loc['pointing_chance']:.3f} "
        "(a random point).",
        "",
        "| map | metric | value (95 % CI) |",
        "|---|---|---|",
    ]
    for method in ("attention", "gradcam"):
        for name, value in (loc.get(method) or {}).items():
            interval = f"{value['ci_low']:.3f}-{value['ci_high']:.3f}"
            lines.append(f"| {method} | {name} | {value['value']:.3f} ({interval}) |")
    return lines


def write_report(path: str, metrics: dict, model_dir: str, data: str) -> None:
    t = threshold_text(metrics["threshold"])
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    bootstrap = metrics["bootstrap"]
    lines = [
        f"# Evaluation: {metrics['split']} split",
        "",
        f"Model `{model_dir}`, data `{data}`: {metrics['n']} slices from {metrics['n_patients']} patients. "
        f"Intervals are 95 % bootstrap percentile intervals ({bootstrap['resamples']} resamples of "
        f"patients, seed {bootstrap['seed']}).",
        "",
        *_threshold_section(metrics),
        "## Slice level",
        "",
        _metric_table({f"threshold {t}": metrics, "threshold 0.5": metrics["at_0.5"]}),
        f"Confusion matrix at {t}: TN {tn}, FP {fp}, FN {fn}, TP {tp}.",
        "",
        "![Confusion matrices](confusion_matrix.png)",
        "",
        "![ROC curve](roc_curve.png)",
        "",
        "## Patient level",
        "",
        f"A patient's score is the maximum over its slices ({metrics['patient_level']['n']} patients).",
        "",
        _metric_table({f"threshold {t}": metrics["patient_level"]}),
        "## Calibration",
        "",
        f"Expected calibration error (10 bins) {metrics['calibration']['ece']:.3f}; "
        f"Brier score {metrics['calibration']['brier']:.3f}.",
        "",
        "![Reliability diagram](reliability_diagram.png)",
        "",
        *_localisation_section(metrics["localisation"]),
        "",
        "## For reference: the paper",
        "",
        "The paper reports, for ResNet-50 + dual attention on its own 150 test slices (no intervals, no "
        "patient-grouped split): "
        + ", ".join(f"{k} {v:.3f}" for k, v in PAPER_RESULTS[PAPER_ATTENTION_MODEL].items())
        + ". "
        "Numbers on other data, and on the synthetic phantom in particular, are not comparable to these.",
        "",
    ]
    with open(path, "w") as handle:
        handle.write("\n".join(lines))


def threshold_text(threshold: float) -> str:
    """A threshold with enough decimals that it reads as neither 0 nor 1 (0.9963, 0.9999871)."""
    distance = min(threshold, 1.0 - threshold)
    decimals = 4 if distance >= 1e-3 or distance <= 0 else min(15, 2 - math.floor(math.log10(distance)))
    return f"{threshold:.{decimals}f}"


def write_config_atomically(config, model_dir: str) -> None:
    """`config.json` written to a temporary file in the same folder, then renamed over the old one:
    a crash leaves either the old or the new file, never half of one."""
    path = os.path.join(model_dir, "config.json")
    descriptor, temporary = tempfile.mkstemp(prefix=".config.json.", suffix=".tmp", dir=model_dir)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(config.to_json_string(use_diff=True))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def split_metrics(raw, split: str, probabilities: np.ndarray, threshold: float, resamples: int, seed: int) -> dict:
    """Slice-level metrics at `threshold` and at 0.5, patient-level metrics and calibration for one split."""
    labels = np.asarray(raw["label"])
    patients = np.asarray(raw["patient_id"])
    patient_labels, patient_max, patient_ids = patient_scores(labels, probabilities, patients)
    return {
        "split": split,
        "n": int(len(labels)),
        "n_patients": int(len(patient_ids)),
        "threshold": threshold,
        **metrics_with_intervals(labels, probabilities, patients, threshold, resamples, seed),
        "confusion_matrix": binary_confusion_matrix(labels, probabilities, threshold),
        "at_0.5": {
            "threshold": 0.5,
            **metrics_with_intervals(labels, probabilities, patients, 0.5, resamples, seed),
            "confusion_matrix": binary_confusion_matrix(labels, probabilities, 0.5),
        },
        "patient_level": {
            "n": int(len(patient_ids)),
            **metrics_with_intervals(patient_labels, patient_max, patient_ids, threshold, resamples, seed),
        },
        "calibration": calibration(labels, probabilities),
    }


def write_outputs(output_dir: str, metrics: dict, raw, probabilities: np.ndarray, model_dir: str, data: str) -> None:
    """metrics.json, predictions.csv, the three figures and report.md into `output_dir`."""
    os.makedirs(output_dir, exist_ok=True)
    labels, threshold = np.asarray(raw["label"]), metrics["threshold"]
    with open(os.path.join(output_dir, "metrics.json"), "w") as handle:
        json.dump(json_safe(metrics), handle, indent=2, allow_nan=False)
    write_predictions(os.path.join(output_dir, "predictions.csv"), raw, probabilities, threshold)
    plot_roc(labels, probabilities, threshold, metrics["auc_roc"]["value"], os.path.join(output_dir, "roc_curve.png"))
    plot_confusion_matrices(
        {f"threshold {threshold_text(threshold)} (operating point)": metrics["confusion_matrix"],
         "threshold 0.5": metrics["at_0.5"]["confusion_matrix"]},
        os.path.join(output_dir, "confusion_matrix.png"),
    )
    plot_reliability(labels, probabilities, os.path.join(output_dir, "reliability_diagram.png"))
    write_report(os.path.join(output_dir, "report.md"), metrics, model_dir, data)


def evaluate(
    model_dir,
    data,
    split: str = "test",
    output_dir=None,
    target_sensitivity: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
    batch_size: int = 32,
    write_threshold: bool = True,
    gradcam_stage: Optional[int] = None,
) -> dict:
    """Evaluates `model_dir` on `split` of the prepared dataset `data`; writes the files into
    `output_dir` when given and returns the metrics.json content.

    With `write_threshold`, the model's config.json gets the operating point (`decision_threshold`,
    `threshold_note`) and, when the split has lesion masks, the measured `localisation`. `gradcam_stage`
    (3 or 4) moves Grad-CAM to that backbone stage before measuring it, and is written with it."""
    model_dir, data = os.fspath(model_dir), os.fspath(data)
    dataset_dict, info = load_prepared(data)  # before the model: a wrong path fails fast
    for needed in (split, "validation"):
        if needed not in dataset_dict:
            raise ValueError(f"{data} has no {needed!r} split (has {sorted(dataset_dict)})")
    model, processor = load_model(model_dir)
    if gradcam_stage is not None:
        model.config.gradcam_stage = gradcam_stage
    splits = model_inputs(dataset_dict, info, processor)

    validation_probabilities = predict_probabilities(model, splits["validation"], batch_size, "validation")
    chosen = choose_operating_point(dataset_dict["validation"]["label"], validation_probabilities, target_sensitivity)
    probabilities = validation_probabilities
    if split != "validation":
        probabilities = predict_probabilities(model, splits[split], batch_size, split)
    raw = dataset_dict[split]
    metrics = split_metrics(raw, split, probabilities, chosen["threshold"], resamples, seed)
    metrics["operating_point"] = {
        **chosen, "target_sensitivity": target_sensitivity, "chosen_on": "validation",
        "previous_threshold": float(model.config.decision_threshold), "written_to_config": write_threshold,
    }
    metrics["localisation"] = localisation(model, splits[split], raw, resamples, seed)
    if metrics["localisation"] is not None:
        metrics["localisation"]["gradcam_stage"] = model.config.gradcam_stage
    metrics["bootstrap"] = {"resamples": resamples, "seed": seed, "unit": "patient"}
    if write_threshold:
        model.config.decision_threshold = chosen["threshold"]
        model.config.threshold_note = chosen["note"]
        if metrics["localisation"] is not None:
            model.config.localisation = localisation_for_config(metrics["localisation"], split,
                                                                model.config.gradcam_stage)
        write_config_atomically(model.config, model_dir)
    if output_dir is not None:
        write_outputs(os.fspath(output_dir), metrics, raw, probabilities, model_dir, data)
    return metrics


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="saved model folder (RUN/best)")
    parser.add_argument("--data", required=True, help="prepared dataset folder")
    parser.add_argument("--split", default="test", help="a split of the dataset (default test)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--target-sensitivity", type=float, default=0.95, help="for the operating point (default 0.95)")
    parser.add_argument("--bootstrap-resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-write-threshold", dest="write_threshold", action="store_false",
                        help="leave the model's config.json unchanged (threshold and localisation)")
    parser.add_argument("--gradcam-stage", type=int, choices=GRADCAM_STAGES,
                        help="explain this backbone stage with Grad-CAM (default: the model's gradcam_stage)")
    args = parser.parse_args(argv)
    try:
        metrics = evaluate(
            args.model, args.data, args.split, args.output_dir, args.target_sensitivity,
            args.bootstrap_resamples, args.seed, args.batch_size, args.write_threshold, args.gradcam_stage,
        )
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    summary = ", ".join(f"{name} {metrics[name]['value']:.3f}" for name in METRIC_NAMES)
    print(f"{args.split} ({metrics['n']} slices, threshold {threshold_text(metrics['threshold'])}): {summary}")
    print(f"wrote {os.path.join(args.output_dir, 'report.md')}")
    return metrics


if __name__ == "__main__":
    main()
