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
import os
import sys
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, roc_curve  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from modeling import CLASS_NAMES, CTImageProcessor, DualAttentionResNetForImageClassification  # noqa: E402
from training.data import load_prepared, torch_splits  # noqa: E402
from training.localisation import localisation_metrics  # noqa: E402
from training.metrics import (  # noqa: E402
    METRIC_NAMES,
    binary_confusion_matrix,
    calibration,
    metrics_with_intervals,
    operating_point,
    patient_scores,
)
from training.paper import PAPER_ATTENTION_MODEL, PAPER_RESULTS  # noqa: E402


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
        logits = model(pixel_values=batch["pixel_values"].to(device)).logits.float().view(-1)
        probabilities.append(torch.sigmoid(logits).cpu().numpy())
    return np.concatenate(probabilities).astype(np.float64)


def localisation(model, split, raw_split, resamples: int, seed: int) -> Optional[dict]:
    """Attention / Grad-CAM localisation on positive slices that have lesion masks, or None if there are none."""
    rows = [i for i, (label, has_mask) in enumerate(zip(raw_split["label"], raw_split["has_mask"])) if label == 1 and has_mask]
    if not rows:
        return None
    pixel_values = torch.stack([split[i]["pixel_values"] for i in rows])
    masks = torch.as_tensor(np.stack([np.asarray(raw_split[i]["mask"]) for i in rows]))
    patients = [raw_split[i]["patient_id"] for i in rows]
    return localisation_metrics(model, pixel_values, masks, patient_ids=patients, resamples=resamples, seed=seed)


def plot_roc(labels, probabilities, threshold: float, auc: float, path: str) -> None:
    fpr, tpr, _ = roc_curve(labels, probabilities)
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot(fpr, tpr, label=f"model (AUC {auc:.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    for t, marker, name in ((threshold, "o", f"operating point {threshold:.3f}"), (0.5, "s", "threshold 0.5")):
        called = probabilities >= t
        point_tpr = called[labels == 1].mean() if (labels == 1).any() else np.nan
        point_fpr = called[labels == 0].mean() if (labels == 0).any() else np.nan
        axis.plot(point_fpr, point_tpr, marker=marker, linestyle="none", markersize=8, label=name)
    axis.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC curve", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    axis.legend(loc="lower right")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_confusion_matrices(matrices: dict, path: str) -> None:
    """One panel per threshold: {title: [[tn, fp], [fn, tp]]}."""
    figure, axes = plt.subplots(1, len(matrices), figsize=(5 * len(matrices), 4.2))
    for axis, (title, matrix) in zip(np.atleast_1d(axes), matrices.items()):
        ConfusionMatrixDisplay(np.asarray(matrix), display_labels=CLASS_NAMES).plot(ax=axis, colorbar=False, cmap="Blues")
        axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_reliability(labels, probabilities, path: str, bins: int = 10) -> None:
    """Observed positive rate against mean predicted probability per bin, with the histogram below."""
    observed, predicted = calibration_curve(labels, probabilities, n_bins=bins, strategy="uniform")
    figure, (curve, histogram) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    curve.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    curve.plot(predicted, observed, marker="o", label="model")
    curve.set(ylabel="observed fraction metastatic", title="Reliability diagram", ylim=(-0.02, 1.02))
    curve.legend(loc="upper left")
    curve.grid(alpha=0.3)
    histogram.hist(probabilities, bins=bins, range=(0, 1), color="tab:blue", alpha=0.7)
    histogram.set(xlabel="predicted P(metastatic)", ylabel="slices")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_predictions(path: str, raw_split, probabilities, threshold: float) -> None:
    """One row per slice: source file, pseudonymous patient id, label, probability, call at the threshold."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "source", "patient_id", "label", "probability", "prediction"])
        for i, (source, patient, label, p) in enumerate(
            zip(raw_split["source"], raw_split["patient_id"], raw_split["label"], probabilities)
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


def write_report(path: str, metrics: dict, model_dir: str, data: str) -> None:
    t = metrics["threshold"]
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    loc = metrics["localisation"]
    lines = [
        f"# Evaluation: {metrics['split']} split",
        "",
        f"Model `{model_dir}`, data `{data}`: {metrics['n']} slices from {metrics['n_patients']} patients. "
        f"Intervals are 95 % bootstrap percentile intervals ({metrics['bootstrap']['resamples']} resamples of "
        f"patients, seed {metrics['bootstrap']['seed']}).",
        "",
        "## Decision threshold",
        "",
        f"Operating point **{t:.4f}**: the highest threshold reaching sensitivity "
        f"{metrics['operating_point']['target_sensitivity']:.2f} on the {metrics['operating_point']['chosen_on']} split; "
        "written into the model's config.json as `decision_threshold`. Results at 0.5 are shown beside it.",
        "",
        "## Slice level",
        "",
        _metric_table({f"threshold {t:.3f}": metrics, "threshold 0.5": metrics["at_0.5"]}),
        f"Confusion matrix at {t:.3f}: TN {tn}, FP {fp}, FN {fn}, TP {tp}.",
        "",
        "![Confusion matrices](confusion_matrix.png)",
        "",
        "![ROC curve](roc_curve.png)",
        "",
        "## Patient level",
        "",
        f"A patient's score is the maximum over its slices ({metrics['patient_level']['n']} patients).",
        "",
        _metric_table({f"threshold {t:.3f}": metrics["patient_level"]}),
        "## Calibration",
        "",
        f"Expected calibration error (10 bins) {metrics['calibration']['ece']:.3f}; "
        f"Brier score {metrics['calibration']['brier']:.3f}.",
        "",
        "![Reliability diagram](reliability_diagram.png)",
        "",
        "## Localisation",
        "",
    ]
    if loc is None:
        lines.append("Not measured: no positive slices with lesion masks in this split (or no localisation module).")
    else:
        lines += [
            f"{loc['n']} positive slices with lesion masks. Chance levels: energy in mask "
            f"{loc['mask_area_fraction']:.3f} (a uniform map), pointing game {loc['pointing_chance']:.3f} (a random point).",
            "",
            "| map | metric | value (95 % CI) |",
            "|---|---|---|",
        ]
        for method in ("attention", "gradcam"):
            for name, value in (loc.get(method) or {}).items():
                if isinstance(value, dict) and "value" in value:
                    lines.append(f"| {method} | {name} | {value['value']:.3f} ({value['ci_low']:.3f}-{value['ci_high']:.3f}) |")
    lines += [
        "",
        "## For reference: the paper",
        "",
        "The paper reports, for ResNet-50 + dual attention on its own 150 test slices (no intervals, no "
        "patient-grouped split): " + ", ".join(f"{k} {v:.3f}" for k, v in PAPER_RESULTS[PAPER_ATTENTION_MODEL].items()) + ". "
        "Numbers on other data, and on the synthetic phantom in particular, are not comparable to these.",
        "",
    ]
    with open(path, "w") as handle:
        handle.write("\n".join(lines))


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
) -> dict:
    """Evaluates `model_dir` on `split` of the prepared dataset `data`; writes the files into
    `output_dir` when given and returns the metrics.json content."""
    model_dir, data = os.fspath(model_dir), os.fspath(data)
    dataset_dict, info = load_prepared(data)  # before the model: a wrong path fails fast
    for needed in (split, "validation"):
        if needed not in dataset_dict:
            raise ValueError(f"{data} has no {needed!r} split (has {sorted(dataset_dict)})")
    model, processor = load_model(model_dir)
    splits = model_inputs(dataset_dict, info, processor)

    validation_labels = np.asarray(dataset_dict["validation"]["label"])
    validation_probabilities = predict_probabilities(model, splits["validation"], batch_size, "validation")
    threshold = operating_point(validation_labels, validation_probabilities, target_sensitivity)
    if write_threshold:
        model.config.decision_threshold = threshold
        model.config.save_pretrained(model_dir)

    raw = dataset_dict[split]
    labels = np.asarray(raw["label"])
    patients = np.asarray(raw["patient_id"])
    probabilities = (
        validation_probabilities if split == "validation" else predict_probabilities(model, splits[split], batch_size, split)
    )
    patient_labels, patient_max, patient_ids = patient_scores(labels, probabilities, patients)
    metrics = {
        "split": split,
        "n": int(len(labels)),
        "n_patients": int(len(patient_ids)),
        "threshold": threshold,
        "operating_point": {"threshold": threshold, "target_sensitivity": target_sensitivity, "chosen_on": "validation"},
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
        "localisation": localisation(model, splits[split], raw, resamples, seed),
        "bootstrap": {"resamples": resamples, "seed": seed, "unit": "patient"},
    }
    if output_dir is not None:
        output_dir = os.fspath(output_dir)
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "metrics.json"), "w") as handle:
            json.dump(json_safe(metrics), handle, indent=2, allow_nan=False)
        write_predictions(os.path.join(output_dir, "predictions.csv"), raw, probabilities, threshold)
        plot_roc(labels, probabilities, threshold, metrics["auc_roc"]["value"], os.path.join(output_dir, "roc_curve.png"))
        plot_confusion_matrices(
            {f"threshold {threshold:.3f} (operating point)": metrics["confusion_matrix"],
             "threshold 0.5": metrics["at_0.5"]["confusion_matrix"]},
            os.path.join(output_dir, "confusion_matrix.png"),
        )
        plot_reliability(labels, probabilities, os.path.join(output_dir, "reliability_diagram.png"))
        write_report(os.path.join(output_dir, "report.md"), metrics, model_dir, data)
    return metrics


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="saved model folder (RUN/best)")
    parser.add_argument("--data", required=True, help="prepared dataset folder")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--target-sensitivity", type=float, default=0.95, help="for the operating point (default 0.95)")
    parser.add_argument("--bootstrap-resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-write-threshold", dest="write_threshold", action="store_false",
                        help="leave the model's config.json unchanged")
    args = parser.parse_args(argv)
    try:
        metrics = evaluate(
            args.model, args.data, args.split, args.output_dir, args.target_sensitivity,
            args.bootstrap_resamples, args.seed, args.batch_size, args.write_threshold,
        )
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    summary = ", ".join(f"{name} {metrics[name]['value']:.3f}" for name in METRIC_NAMES)
    print(f"{args.split} ({metrics['n']} slices, threshold {metrics['threshold']:.3f}): {summary}")
    print(f"wrote {os.path.join(args.output_dir, 'report.md')}")
    return metrics


if __name__ == "__main__":
    main()
