"""The paper's comparison: VGG16, ResNet-50, ViT-B/16 and ResNet-50 + dual attention under one protocol.

    python -m training.compare --data DS --output-dir CMP [--config YAML] [--models vgg16,resnet50,...]
        [--epochs N] [--image-size N] [--backbones vgg16=NAME,...] [--no-pretrained-backbone]

Every model trains with the same settings, split and seed (so the same shuffling and augmentation
draws) and is evaluated on the same test slices at its own validation operating point. Each baseline
is compared with the attention model by a paired patient bootstrap of the AUC difference (the same
resampled patients for both models). Writes `CMP/comparison.md`, `CMP/comparison.csv`, and per
model `CMP/runs/KEY/` (training) and `CMP/eval/KEY/` (evaluation).
"""

import argparse
import csv
import os
import sys

import numpy as np
import torch

from modeling import DualAttentionResNetConfig, DualAttentionResNetForImageClassification
from training.evaluate import evaluate
from training.metrics import METRIC_NAMES, paired_auc_difference
from training.paper import PAPER_RESULTS
from training.train import BackboneWeightsError, ConfigError, resolve_config, train

# key -> (name in the table, timm backbone, attention)
MODELS = {
    "vgg16": ("VGG16", "vgg16", "none"),
    "resnet50": ("ResNet-50", "resnet50", "none"),
    "vit_b16": ("ViT-B/16", "vit_base_patch16_224", "none"),
    "resnet50_dual": ("ResNet-50 + dual attention", "resnet50", "dual"),
}
REFERENCE = "resnet50_dual"
# The paper's test-set AUCs (150 slices), for orientation only.
PAPER_AUC = {key: PAPER_RESULTS[name]["auc_roc"] for key, (name, _, _) in MODELS.items()}


def parse_backbones(text: str) -> dict:
    """ "vgg16=resnet10t,vit_b16=resnet18" -> {"vgg16": "resnet10t", "vit_b16": "resnet18"}."""
    overrides = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, name = item.partition("=")
        if not sep or key not in MODELS or not name:
            raise ConfigError(f"--backbones takes KEY=TIMM_NAME with KEY in {sorted(MODELS)}, got {item!r}")
        overrides[key] = name
    return overrides


def check_model(key: str, backbone: str, attention: str, image_size: int) -> None:
    """Builds the model (random weights) and runs one forward at `image_size`, so that a model that
    cannot work (e.g. ViT-B/16 below 224 px) fails before hours of training the others."""
    try:
        model = DualAttentionResNetForImageClassification(
            DualAttentionResNetConfig(backbone=backbone, attention=attention, image_size=image_size)
        ).eval()
        with torch.no_grad():
            model(pixel_values=torch.zeros(1, 3, image_size, image_size))
    except Exception as error:  # noqa: BLE001 - timm raises assorted types for shape problems
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"model {key} ({backbone}, attention={attention}) cannot run at {image_size} px: {first_line}"
        ) from error


def read_probabilities(predictions_csv: str) -> np.ndarray:
    with open(predictions_csv, newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda row: int(row["index"]))
    return np.asarray([float(row["probability"]) for row in rows])


def _cell(metric: dict) -> str:
    if metric is None or metric.get("value") is None:
        return "n/a"
    return f"{metric['value']:.3f} ({metric['ci_low']:.3f}-{metric['ci_high']:.3f})"


def gradcam_localisation(metrics: dict) -> dict:
    """The Grad-CAM pointing-game and energy-in-mask results of one model, None where the split has no masks."""
    gradcam = (metrics.get("localisation") or {}).get("gradcam") or {}
    return {name: gradcam.get(name) for name in ("pointing_game", "energy_in_mask")}


def _write_csv(rows: list, path: str) -> None:
    """comparison.csv: one row per model, flat numbers (value and interval of each metric, ΔAUC, localisation)."""
    fields = ["key", "model", "backbone", "attention", "threshold", "n"]
    for name in METRIC_NAMES:
        fields += [name, f"{name}_ci_low", f"{name}_ci_high"]
    fields += [
        "delta_auc_vs_attention",
        "delta_auc_ci_low",
        "delta_auc_ci_high",
        "delta_auc_p",
        "gradcam_pointing_game",
        "gradcam_energy_in_mask",
        "paper_auc",
    ]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            m, delta = row["metrics"], row["delta"]
            flat = {
                "key": row["key"],
                "model": row["model"],
                "backbone": row["backbone"],
                "attention": row["attention"],
                "threshold": m["threshold"],
                "n": m["n"],
                "paper_auc": PAPER_AUC[row["key"]],
            }
            for name in METRIC_NAMES:
                flat.update(
                    {name: m[name]["value"], f"{name}_ci_low": m[name]["ci_low"], f"{name}_ci_high": m[name]["ci_high"]}
                )
            localisation = gradcam_localisation(m)
            flat.update({f"gradcam_{name}": (value or {}).get("value") for name, value in localisation.items()})
            if delta is not None:
                flat.update(
                    {
                        "delta_auc_vs_attention": delta["value"],
                        "delta_auc_ci_low": delta["ci_low"],
                        "delta_auc_ci_high": delta["ci_high"],
                        "delta_auc_p": delta["p_value"],
                    }
                )
            writer.writerow(flat)


def write_tables(rows: list, output_dir: str, settings: dict) -> str:
    """comparison.csv (flat numbers) and comparison.md (the paper-style table); returns the markdown."""
    _write_csv(rows, os.path.join(output_dir, "comparison.csv"))
    header = (
        "| model | "
        + " | ".join(METRIC_NAMES)
        + " | ΔAUC attention − model (95 % CI, p) | Grad-CAM pointing game | Grad-CAM energy in mask | paper AUC |"
    )
    lines = [
        "# Model comparison",
        "",
        f"Test split, {rows[0]['metrics']['n']} slices from {rows[0]['metrics']['n_patients']} patients; every model "
        f"trained with the same settings and seed ({settings}) and called at its own validation operating point "
        f"(sensitivity {rows[0]['metrics']['operating_point']['target_sensitivity']:.2f}). "
        "Cells: value (95 % patient-bootstrap "
        "interval). ΔAUC: paired bootstrap on the same resampled patients.",
        "",
        header,
        "|---|" + "---|" * (len(METRIC_NAMES) + 4),
    ]
    for row in rows:
        delta = row["delta"]
        delta_cell = (
            "reference"
            if row["key"] == REFERENCE
            else "n/a"
            if delta is None
            else f"{delta['value']:+.3f} ({delta['ci_low']:+.3f} to {delta['ci_high']:+.3f}, p={delta['p_value']:.3f})"
        )
        name = row["model"] if row["backbone"] == MODELS[row["key"]][1] else f"{row['model']} [{row['backbone']}]"
        cells = [_cell(row["metrics"][metric]) for metric in METRIC_NAMES]
        cells += [delta_cell, *(_cell(value) for value in gradcam_localisation(row["metrics"]).values())]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {PAPER_AUC[row['key']]:.2f} |")
    lines += [
        "",
        "Paper AUCs are the paper's own test set (150 slices, no intervals); they are not comparable across datasets.",
        "Grad-CAM localisation (positive test slices with lesion masks): pointing game = share of slices whose map "
        "peaks in the lesion; energy in mask = share of the map inside the lesion; n/a without masks.",
        "",
    ]
    markdown = "\n".join(lines)
    with open(os.path.join(output_dir, "comparison.md"), "w") as handle:
        handle.write(markdown)
    return markdown


def compare(data, output_dir, models=tuple(MODELS), backbones=None, settings=None, resamples=1000, seed=0) -> list:
    """Trains and evaluates each model key in `models` on `data`; `settings` are train() settings shared
    by all (e.g. {"config": YAML, "epochs": 3}); `backbones` replaces default timm names per key.
    Returns one row per model (with its metrics.json content and the paired AUC difference)."""
    backbones = {**{key: MODELS[key][1] for key in MODELS}, **(backbones or {})}
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ConfigError(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    output_dir = os.fspath(output_dir)
    shared = resolve_config({**(settings or {}), "data": data, "output_dir": output_dir})
    for key in models:
        check_model(key, backbones[key], MODELS[key][2], shared["image_size"])

    rows, probabilities = [], {}
    for key in models:
        name, _, attention = MODELS[key]
        print(f"== {name} ({backbones[key]}) ==")
        run_dir = train(
            {
                **shared,
                "output_dir": os.path.join(output_dir, "runs", key),
                "backbone": backbones[key],
                "attention": attention,
            }
        )
        eval_dir = os.path.join(output_dir, "eval", key)
        metrics = evaluate(os.path.join(run_dir, "best"), data, "test", eval_dir, resamples=resamples, seed=seed)
        probabilities[key] = read_probabilities(os.path.join(eval_dir, "predictions.csv"))
        rows.append(
            {
                "key": key,
                "model": name,
                "backbone": backbones[key],
                "attention": attention,
                "metrics": metrics,
                "delta": None,
            }
        )

    if REFERENCE in probabilities:
        from training.data import load_prepared

        test = load_prepared(data)[0]["test"]
        labels, patients = np.asarray(test["label"]), np.asarray(test["patient_id"])
        for row in rows:
            if row["key"] != REFERENCE:
                row["delta"] = paired_auc_difference(
                    labels, probabilities[REFERENCE], probabilities[row["key"]], patients, resamples, seed
                )
    described = ", ".join(
        f"{k} {shared[k]}" for k in ("image_size", "epochs", "batch_size", "lr", "seed", "pretrained_backbone")
    )
    print(write_tables(rows, output_dir, described))
    return rows


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="prepared dataset folder")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--config", help="YAML training settings shared by all models (default: the paper's)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument("--backbones", help="replace timm backbones, e.g. vgg16=vgg11,vit_b16=vit_small_patch16_224")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--frozen-stages", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--no-pretrained-backbone", dest="pretrained_backbone", action="store_false", default=None)
    parser.add_argument("--bootstrap-resamples", type=int, default=1000)
    args = parser.parse_args(argv)
    settings = {
        key: getattr(args, key)
        for key in (
            "config",
            "epochs",
            "image_size",
            "batch_size",
            "lr",
            "frozen_stages",
            "seed",
            "pretrained_backbone",
        )
    }
    try:
        return compare(
            args.data,
            args.output_dir,
            [m.strip() for m in args.models.split(",") if m.strip()],
            parse_backbones(args.backbones),
            settings,
            args.bootstrap_resamples,
            args.seed or 0,
        )
    except (ConfigError, BackboneWeightsError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
