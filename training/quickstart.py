"""The main job on the embedded default data: phantom -> prepare -> train -> evaluate -> report.

    python -m training.quickstart [--output-dir quickstart_output]

Minutes on a laptop CPU, no download: a small ResNet with dual attention trained from random
initialisation (training/configs/cpu_small.yaml) on the synthetic CT phantom. The phantom is synthetic:
the numbers show that the pipeline works, not how the model would do on patients.
"""

import argparse
import json
import os
import time

from training.evaluate import evaluate, threshold_text
from training.phantom import generate_phantom
from training.prepare import prepare_dataset
from training.train import CONFIG_DIR, resolve_config, train

CPU_CONFIG = os.path.join(CONFIG_DIR, "cpu_small.yaml")
# The phantom's field of view varies (300-500 mm), as real scans do; preparing every slice at the pixel
# spacing that fits this field into the training size keeps a node the same size in pixels throughout.
FIELD_MM = 320.0


def quickstart(
    output_dir="quickstart_output",
    n_per_class: int = 300,
    phantom_size: int = 256,
    epochs=None,
    image_size=None,
    seed: int = 0,
    bootstrap_resamples: int = 1000,
) -> dict:
    """Runs the four steps into `output_dir` (phantom/, data/, run/, eval/); returns the test metrics.

    `epochs` and `image_size` default to training/configs/cpu_small.yaml.
    """
    output_dir = os.fspath(output_dir)
    paths = {name: os.path.join(output_dir, name) for name in ("phantom", "data", "run", "eval")}
    timings = {}

    started = time.perf_counter()
    print(f"[1/4] synthetic CT phantom: {n_per_class} slices per class -> {paths['phantom']}")
    manifest = generate_phantom(paths["phantom"], n_per_class, seed=seed, image_size=phantom_size)
    timings["phantom_s"] = time.perf_counter() - started

    overrides = {"config": CPU_CONFIG, "data": paths["data"], "output_dir": paths["run"], "seed": seed}
    if epochs is not None:
        overrides["epochs"] = epochs
    if image_size is not None:
        overrides["image_size"] = image_size
    started = time.perf_counter()
    print(f"[2/4] prepare: patient-grouped train/validation/test splits -> {paths['data']}")
    # Prepared at the training size, so the loader does no resizing.
    train_size = resolve_config(overrides)["image_size"]
    prepare_dataset(manifest, paths["data"], size=train_size, seed=seed, pixel_spacing_mm=FIELD_MM / train_size)
    timings["prepare_s"] = time.perf_counter() - started

    started = time.perf_counter()
    print(f"[3/4] train ({os.path.relpath(CPU_CONFIG)}) -> {paths['run']}")
    train(overrides)
    timings["train_s"] = time.perf_counter() - started

    started = time.perf_counter()
    model_dir = os.path.join(paths["run"], "best")
    print(f"[4/4] evaluate on the test split -> {paths['eval']}")
    metrics = evaluate(model_dir, paths["data"], "test", paths["eval"], resamples=bootstrap_resamples, seed=seed)
    timings["evaluate_s"] = time.perf_counter() - started
    with open(os.path.join(output_dir, "timings.json"), "w") as handle:
        json.dump(timings, handle, indent=2)

    auc = metrics["auc_roc"]
    print(
        f"\nTest AUC {auc['value']:.3f} (95 % CI {auc['ci_low']:.3f}-{auc['ci_high']:.3f}), "
        f"accuracy {metrics['accuracy']['value']:.3f} at threshold {threshold_text(metrics['threshold'])}, "
        f"{metrics['n']} slices of {metrics['n_patients']} phantom patients; "
        f"{sum(timings.values()) / 60:.1f} min in all."
    )
    print(f"  threshold:    {metrics['operating_point']['note']}")
    print(f"  report:       {os.path.join(paths['eval'], 'report.md')}")
    print(f"  model:        {model_dir}")
    print(f"  loss curve:   {os.path.join(paths['run'], 'loss_curve.png')}")
    print(f"  open the demo: python space/app.py --model {model_dir}")
    return metrics


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="quickstart_output")
    parser.add_argument("--n-per-class", type=int, default=300, help="phantom slices per class (default 300)")
    parser.add_argument("--phantom-size", type=int, default=256, help="phantom rows/columns (default 256)")
    parser.add_argument("--epochs", type=int, help="default: training/configs/cpu_small.yaml")
    parser.add_argument("--image-size", type=int, help="default: training/configs/cpu_small.yaml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap-resamples", type=int, default=1000)
    args = parser.parse_args(argv)
    return quickstart(
        args.output_dir, args.n_per_class, args.phantom_size, args.epochs, args.image_size, args.seed,
        args.bootstrap_resamples,
    )


if __name__ == "__main__":
    main()
