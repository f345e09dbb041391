"""Does the spatial attention map point at the node? Each variant of the spatial branch, trained with the
quickstart's recipe on the phantom, measured on its test split and on a phantom it never saw.

    python benchmarks/attention_study.py [--output-dir attention_study] [--n-per-class 300] [--sizes 128 224]
        [--variants paper,s4-bn-replicate-k3,...] [--epochs N] [--size-224-variants paper,...]

1. Phantom (seed 0, the quickstart's field of view 300-500 mm) and a generalisation phantom (another
   seed and another field of view, `--other-field-of-view-mm`, so another pixel spacing), both prepared
   at the quickstart's pixel spacing (`training.quickstart.FIELD_MM` over the image size), as the
   spacing-aware processor would present a new scan.
2. Per variant and size: `training.train` with training/configs/cpu_small.yaml (resnet10t, random
   init) plus the variant's spatial-branch settings; `training.evaluate` on the test split (AUC and
   the pointing game / energy in mask of the attention map and Grad-CAM, 95 % patient-bootstrap
   intervals) and on the whole generalisation phantom.
3. The diagnosis of each variant's attention map on the test split, at the map's own resolution (4 x 4
   at 128 px on stage 4): where its peak falls (histogram of peak cells, against where the lesions
   are), the share of slices whose peak is at the most common cell, the mean correlation between the
   maps of two different slices (1: the same map whatever the image) and the mean range of a map.

Writes `OUT/attention_study.md` (the table and the diagnosis), `OUT/attention_peaks_<variant>_<size>.png`
and `OUT/results/<variant>_<size>.json`, and prints the table. A variant whose results file exists is
not trained again (delete the file, or OUT, to redo it). The phantom is synthetic: this compares the
variants with each other, not with what a model would do on patients.
"""

import argparse
import json
import os
import shutil
import sys
import time

import datasets
import numpy as np
import torch
from matplotlib.figure import Figure
from torch.nn import functional as F
from torch.utils.data import DataLoader

from modeling.image_processing_ct import resize_slice
from training.data import load_prepared
from training.evaluate import evaluate, load_model, model_inputs
from training.localisation import pointing_game_hits
from training.phantom import generate_phantom
from training.prepare import prepare_dataset
from training.quickstart import CPU_CONFIG, FIELD_MM
from training.train import train

# The paper's spatial branch, spelled out (not left to the YAML, which may name another recipe).
PAPER_SPATIAL = {
    "spatial_attention_stages": [4], "spatial_gate": "conv", "spatial_padding": "zeros", "spatial_kernel_size": 7,
    "attention_loss_weight": 0.0,
}
CBAM_GATE = {"spatial_gate": "conv_bn", "spatial_padding": "replicate", "spatial_kernel_size": 3}
VARIANTS = {
    "paper": PAPER_SPATIAL,
    "s4-bn-replicate-k3": {**PAPER_SPATIAL, **CBAM_GATE},
    "s3-bn-replicate-k3": {**PAPER_SPATIAL, **CBAM_GATE, "spatial_attention_stages": [3]},
    "s3-bn-replicate-k3-supervised": {**PAPER_SPATIAL, **CBAM_GATE, "spatial_attention_stages": [3],
                                      "attention_loss_weight": 1.0},
    "s34-bn-replicate-k3": {**PAPER_SPATIAL, **CBAM_GATE, "spatial_attention_stages": [3, 4]},
}
DEFAULT_VARIANTS = ("paper", "s4-bn-replicate-k3", "s3-bn-replicate-k3", "s3-bn-replicate-k3-supervised")
# The generalisation phantom: another seed, and fields of view the training phantom (300-500 mm) never drew.
OTHER_SEED = 1
OTHER_FIELD_OF_VIEW_MM = (500.0, 560.0)
POINTING_TOLERANCE = 0.03  # of the image side: localisation_metrics' default, which training.evaluate uses


def prepared_phantom(output_dir: str, name: str, n_per_class: int, seed: int, size: int, **phantom_options) -> str:
    """`OUT/<name>_phantom` generated once (`generate_phantom`'s options), prepared at `size` px at the
    quickstart's pixel spacing -> the prepared folder."""
    phantom_dir = os.path.join(output_dir, f"{name}_phantom")
    manifest = os.path.join(phantom_dir, "manifest.csv")
    if not os.path.exists(manifest):
        generate_phantom(phantom_dir, n_per_class, seed=seed, **phantom_options)
    data = prepared_path(output_dir, name, size)
    if not os.path.exists(os.path.join(data, "prepare_info.json")):
        prepare_dataset(manifest, data, size=size, seed=seed, pixel_spacing_mm=FIELD_MM / size)
    return data


def prepared_path(output_dir: str, name: str, size: int) -> str:
    return os.path.join(output_dir, f"{name}_data_{size}")


def whole_dataset(data: str) -> str:
    """`data` with one more split, "all" (every slice): the generalisation phantom is never trained on, so
    all of it is test data. `evaluate` still takes its (unused) threshold from "validation"."""
    whole = data + "_all"
    if not os.path.exists(os.path.join(whole, "prepare_info.json")):
        dataset_dict, _ = load_prepared(data)
        everything = datasets.concatenate_datasets([dataset_dict[name] for name in sorted(dataset_dict)])
        datasets.DatasetDict({"validation": dataset_dict["validation"], "all": everything}).save_to_disk(whole)
        shutil.copy(os.path.join(data, "prepare_info.json"), whole)
    return whole


@torch.no_grad()
def attention_peak_diagnosis(model_dir: str, data: str, split: str = "test") -> dict:
    """`peak_statistics` of the model's spatial maps on `split`, at the map's own resolution."""
    model, processor = load_model(model_dir)
    dataset_dict, info = load_prepared(data)
    inputs = model_inputs(dataset_dict, info, processor)[split]
    maps = torch.cat([
        model(pixel_values=batch["pixel_values"]).spatial_attention[:, 0]
        for batch in DataLoader(inputs, batch_size=64)
    ])
    rows, masks = split_lesion_masks(data, split)
    return peak_statistics(maps, masks, rows)


def peak_statistics(maps: torch.Tensor, lesion_masks: torch.Tensor, lesion_rows) -> dict:
    """Where maps peak and whether they depend on the image.

    Args:
        maps: `(n, h, w)` spatial attention maps at their own resolution.
        lesion_masks: `(m, H, W)` lesion masks of the slices `lesion_rows` (m indices into `maps`), at
            input resolution; each is averaged onto the `(h, w)` grid.
    Returns `{"grid": [h, w], "n", "peak_counts": (h, w) list, "n_lesion", "lesion_counts": (h, w) list,
    "modal_peak_share", "mean_pairwise_correlation", "mean_range", "cell_hits"}`: `peak_counts` counts
    the peak cells over all maps; `lesion_counts` the cell holding most of each lesion;
    `modal_peak_share` the share of maps peaking at the most common cell; `mean_pairwise_correlation`
    the mean Pearson correlation between the maps of two different slices (1: one map whatever the
    image; constant maps left out); `mean_range` the mean of max - min; `cell_hits` the share of lesion
    slices whose peak cell holds lesion pixels.
    """
    maps = maps.double()
    n, h, w = maps.shape
    flat = maps.flatten(1)
    peaks = flat.argmax(1)
    peak_counts = torch.bincount(peaks, minlength=h * w)

    varied = flat[flat.std(1) > 0]
    standardised = (varied - varied.mean(1, keepdim=True)) / varied.std(1, correction=0, keepdim=True)
    correlation = standardised @ standardised.T / (h * w)
    off_diagonal = correlation[~torch.eye(len(varied), dtype=torch.bool)]

    share_in_cell = F.adaptive_avg_pool2d(lesion_masks[:, None].double(), (h, w)).flatten(1)  # (m, h * w)
    shown = share_in_cell.amax(1) > 0
    lesion_peaks = peaks[torch.as_tensor(lesion_rows, dtype=torch.long)][shown]
    cell_hits = share_in_cell[shown].gather(1, lesion_peaks[:, None])[:, 0] > 0
    return {
        "grid": [h, w],
        "n": n,
        "peak_counts": peak_counts.view(h, w).tolist(),
        "n_lesion": int(shown.sum()),
        "lesion_counts": torch.bincount(share_in_cell[shown].argmax(1), minlength=h * w).view(h, w).tolist(),
        "modal_peak_share": float(peak_counts.max() / n),
        "mean_pairwise_correlation": float(off_diagonal.mean()) if len(off_diagonal) else float("nan"),
        "mean_range": float((flat.amax(1) - flat.amin(1)).mean()),
        "cell_hits": float(cell_hits.double().mean()) if len(cell_hits) else float("nan"),
    }


def grid_pointing_ceiling(lesion_masks: torch.Tensor, grid) -> float:
    """The pointing game of the ideal one-cell map on a `grid` = `(h, w)`: 1 on the cell with most of the
    lesion, 0 elsewhere, enlarged to the masks' `(H, W)` as `modeling.explain` enlarges maps (bilinear)
    and scored as `training.evaluate` scores them (`localisation_metrics`' default tolerance). A coarse
    grid peaks at a cell's centre, which a small lesion in the cell may not reach. A practical ceiling,
    not a strict one: a map spread over neighbouring cells can peak between them and score a little
    more. `lesion_masks`: `(m, H, W)`."""
    masks = lesion_masks[lesion_masks.flatten(1).amax(1) > 0].float()
    share_in_cell = F.adaptive_avg_pool2d(masks[:, None], tuple(grid)).flatten(1)
    best_cell = F.one_hot(share_in_cell.argmax(1), share_in_cell.shape[1]).float().view(-1, *grid)
    maps = resize_slice(best_cell, masks.shape[-2:])
    hits = pointing_game_hits(maps, masks > 0, POINTING_TOLERANCE * max(masks.shape[-2:]))
    return float(hits.mean())


def split_lesion_masks(data: str, split: str = "test"):
    """(row indices, `(m, H, W)` masks) of the metastatic slices of `split` that have a mask."""
    raw = load_prepared(data)[0][split]
    rows = [i for i, (label, has_mask) in enumerate(zip(raw["label"], raw["has_mask"], strict=True))
            if label == 1 and has_mask]
    return rows, torch.as_tensor(np.stack([np.asarray(raw[i]["mask"]) for i in rows]))


def plot_peaks(diagnosis: dict, title: str, path: str) -> None:
    """Two count grids side by side: where the attention map peaks, and where the lesions are."""
    figure = Figure(figsize=(9, 4.2))
    panels = (("peak_counts", f"attention peak, {diagnosis['n']} test slices"),
              ("lesion_counts", f"lesion, {diagnosis['n_lesion']} metastatic slices"))
    for axis, (key, name) in zip(figure.subplots(1, 2), panels, strict=True):
        counts = np.asarray(diagnosis[key])
        axis.imshow(counts, cmap="viridis")
        for (row, column), count in np.ndenumerate(counts):
            if counts.size <= 64 or count:
                colour = "black" if count > counts.max() / 2 else "white"  # readable on viridis' yellow and purple
                axis.text(column, row, str(count), ha="center", va="center", color=colour, fontsize=8)
        axis.set(title=name, xticks=[], yticks=[])
    figure.suptitle(f"{title}: cells of the {diagnosis['grid'][0]} x {diagnosis['grid'][1]} attention map")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def run_variant(output_dir: str, name: str, size: int, data: str, other: str, args) -> dict:
    """Trains and evaluates one variant at one size; returns (and stores) its results."""
    key = f"{name}_{size}" + ("" if args.gradcam_stage == 4 else f"_gradcam{args.gradcam_stage}")
    result_path = os.path.join(output_dir, "results", f"{key}.json")
    if os.path.exists(result_path):
        with open(result_path) as handle:
            return json.load(handle)
    run_dir = os.path.join(output_dir, "runs", key)
    settings = {"config": CPU_CONFIG, "data": data, "output_dir": run_dir, "seed": args.seed, "image_size": size,
                **VARIANTS[name]}
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    started = time.perf_counter()
    train(settings)
    train_s = time.perf_counter() - started
    model_dir = os.path.join(run_dir, "best")
    # Grad-CAM on the stage --gradcam-stage names (the study's table: 4, the paper's), whatever the YAML says
    test = evaluate(model_dir, data, "test", os.path.join(output_dir, "eval", key), resamples=args.resamples,
                    seed=args.seed, gradcam_stage=args.gradcam_stage)
    other_metrics = evaluate(model_dir, other, "all", os.path.join(output_dir, "eval_other", key),
                             resamples=args.resamples, seed=args.seed, write_threshold=False,
                             gradcam_stage=args.gradcam_stage)
    diagnosis = attention_peak_diagnosis(model_dir, data)
    plot_peaks(diagnosis, key, os.path.join(output_dir, f"attention_peaks_{key}.png"))
    result = {
        "variant": name, "size": size, "settings": VARIANTS[name], "train_s": train_s,
        "test": {"auc": test["auc_roc"], "n": test["n"], "threshold": test["threshold"],
                 "localisation": test["localisation"]},
        "other": {"auc": other_metrics["auc_roc"], "n": other_metrics["n"],
                  "localisation": other_metrics["localisation"]},
        "diagnosis": diagnosis,
    }
    os.makedirs(os.path.dirname(result_path), exist_ok=True)
    with open(result_path, "w") as handle:
        json.dump(result, handle, indent=2)
    return result


def with_interval(metric: dict) -> str:
    return f"{metric['value']:.3f} ({metric['ci_low']:.3f}-{metric['ci_high']:.3f})"


def table(results: list) -> str:
    """The markdown comparison: one row per variant and size."""
    header = (
        "| variant | px | test AUC | attention pointing | attention energy | Grad-CAM pointing | Grad-CAM energy "
        "| other: AUC | other: attention pointing | other: Grad-CAM pointing | peak at modal cell "
        "| map correlation | train s |\n" + "|---" * 13 + "|\n"
    )
    rows = []
    for r in results:
        test, other, diagnosis = r["test"]["localisation"], r["other"]["localisation"], r["diagnosis"]
        cells = [
            r["variant"], str(r["size"]), with_interval(r["test"]["auc"]),
            with_interval(test["attention"]["pointing_game"]), with_interval(test["attention"]["energy_in_mask"]),
            with_interval(test["gradcam"]["pointing_game"]), with_interval(test["gradcam"]["energy_in_mask"]),
            with_interval(r["other"]["auc"]), with_interval(other["attention"]["pointing_game"]),
            with_interval(other["gradcam"]["pointing_game"]), f"{diagnosis['modal_peak_share']:.2f}",
            f"{diagnosis['mean_pairwise_correlation']:.2f}", f"{r['train_s']:.0f}",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return header + "\n".join(rows) + "\n"


def diagnosis_lines(results: list, output_dir: str) -> list:
    lines = ["| variant | px | map grid | peak at modal cell | mean pairwise correlation | mean map range "
             "| peak cell holds lesion | ideal one-cell map's pointing |", "|---|---|---|---|---|---|---|---|"]
    ceilings = {}
    for r in results:
        d = r["diagnosis"]
        key = (r["size"], tuple(d["grid"]))
        if key not in ceilings:
            _, masks = split_lesion_masks(prepared_path(output_dir, "train", r["size"]))
            ceilings[key] = grid_pointing_ceiling(masks, d["grid"])
        lines.append(
            f"| {r['variant']} | {r['size']} | {d['grid'][0]} x {d['grid'][1]} | {d['modal_peak_share']:.2f} "
            f"({max(map(max, d['peak_counts']))}/{d['n']}) | {d['mean_pairwise_correlation']:.2f} "
            f"| {d['mean_range']:.3f} | {d['cell_hits']:.2f} ({d['n_lesion']} slices) | {ceilings[key]:.2f} |"
        )
    return lines


def write_report(output_dir: str, results: list, command: str) -> str:
    first = results[0]
    chance = first["test"]["localisation"]["pointing_chance"]
    text = "\n".join([
        "# Spatial-attention variants on the phantom",
        "",
        f"`{command}`",
        "",
        f"Test split: {first['test']['n']} slices ({first['test']['localisation']['n']} metastatic with masks; "
        f"pointing-game chance {chance:.3f}). Other: the whole generalisation phantom, {first['other']['n']} "
        "slices. Values with 95 % patient-bootstrap intervals.",
        "",
        table(results),
        "## Diagnosis: does the map depend on the image?",
        "",
        *diagnosis_lines(results, output_dir),
        "",
    ])
    path = os.path.join(output_dir, "attention_study.md")
    with open(path, "w") as handle:
        handle.write(text)
    return text


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="attention_study")
    parser.add_argument("--n-per-class", type=int, default=300, help="phantom slices per class (the quickstart's 300)")
    parser.add_argument("--other-n-per-class", type=int, default=150, help="generalisation phantom, per class")
    parser.add_argument("--other-field-of-view-mm", type=float, nargs=2, default=OTHER_FIELD_OF_VIEW_MM)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"any of {sorted(VARIANTS)}")
    parser.add_argument("--size-224-variants", help="at 224 px only these (default: all of --variants)")
    parser.add_argument("--epochs", type=int, help="default: training/configs/cpu_small.yaml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--gradcam-stage", type=int, choices=(3, 4), default=4,
                        help="backbone stage Grad-CAM explains in the evaluations (default 4, the paper's)")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {sorted(VARIANTS)}")
    variants_224 = [v.strip() for v in args.size_224_variants.split(",")] if args.size_224_variants else variants

    command = "python benchmarks/attention_study.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = []
    for size in args.sizes:
        data = prepared_phantom(args.output_dir, "train", args.n_per_class, args.seed, size)
        other = whole_dataset(prepared_phantom(args.output_dir, "other", args.other_n_per_class, OTHER_SEED, size,
                                               field_of_view_mm=tuple(args.other_field_of_view_mm)))
        for name in variants if size != 224 else variants_224:
            print(f"=== {name} at {size} px")
            results.append(run_variant(args.output_dir, name, size, data, other, args))
            write_report(args.output_dir, results, command)
    print(write_report(args.output_dir, results, command))
    return results


if __name__ == "__main__":
    main()
