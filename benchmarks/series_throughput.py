"""Scoring a whole series: `modeling.predict` against a bare batched forward of the same slices, in one run.

    python benchmarks/series_throughput.py [--slices 300] [--native 512] [--size 224] [--batch-size 16]
        [--backbone resnet50] [--repeats 3] [--threads N] [--device cpu]

Writes a synthetic CT series (`--slices` DICOM files of `--native` px, scrambled names) and a random
dual-attention model, then times, interleaved round after round:
  predict   what `python -m modeling.predict SERIES_FOLDER` does after loading the model: group the
            files into a series, read and order the slices, HU, window, resize, batched forwards, rows;
  bare      a no-grad forward of the same number of already-prepared slices in batches of the same size.
Prints slices/s of each and predict / bare (goal >= 0.8: reading and preparing the slices costs under a
quarter of the model's own time).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from modeling import CTImageProcessor, DualAttentionResNetConfig, DualAttentionResNetForImageClassification
from modeling.predict import plan_work, predict_items
from training.dicom_writer import write_ct_series


def synthetic_series(slices: int, native: int) -> np.ndarray:
    """`(slices, native, native)` HU: a body ellipse of soft tissue in air, a node moving along z."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:native, :native] / native
    body = np.where(((yy - 0.5) / 0.4) ** 2 + ((xx - 0.5) / 0.45) ** 2 <= 1, 40.0, -1000.0)
    volume = np.repeat(body[None], slices, axis=0) + rng.normal(0.0, 10.0, (slices, native, native))
    for k in range(slices):
        centre = int(native * (0.4 + 0.2 * k / max(slices - 1, 1)))
        volume[k, centre - 5 : centre + 5, centre - 5 : centre + 5] = 180.0
    return np.maximum(volume, -1024.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--native", type=int, default=512, help="side of the stored slices in pixels")
    parser.add_argument("--size", type=int, default=224, help="model input size")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = DualAttentionResNetConfig(backbone=args.backbone, image_size=args.size)
    model = DualAttentionResNetForImageClassification(config).to(args.device).eval()
    processor = CTImageProcessor(size=args.size)
    with tempfile.TemporaryDirectory() as folder:
        hu = synthetic_series(args.slices, args.native)
        write_ct_series(Path(folder) / "series", hu, (1.0, 0.7, 0.7), scramble=0)
        prepared = torch.randn(args.slices, 3, args.size, args.size, device=args.device)

        def predict():
            [result] = predict_items(plan_work([folder]), model, processor, batch_size=args.batch_size, progress=False)
            assert len(result.series_rows) == 1 and len(result.slice_rows) == args.slices

        def bare():
            with torch.no_grad():
                for start in range(0, args.slices, args.batch_size):
                    torch.sigmoid(model(prepared[start : start + args.batch_size]).logits)

        def synchronise():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()

        cases = {"predict": predict, "bare": bare}
        for run in cases.values():  # warm-up: first-call allocations, file cache
            run()
        seconds = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name, run in cases.items():
                synchronise()
                start = time.perf_counter()
                run()
                synchronise()
                seconds[name].append(time.perf_counter() - start)

    print(
        f"{args.backbone} dual attention, {args.slices} slices of {args.native} px -> {args.size} px, "
        f"batch {args.batch_size}, {args.device}, {torch.get_num_threads()} threads, {args.repeats} interleaved rounds"
    )
    rates = {name: args.slices / statistics.median(times) for name, times in seconds.items()}
    for name, rate in rates.items():
        print(f"{name:<8} {rate:8.1f} slices/s (median of {args.repeats})")
    print(f"predict / bare = {rates['predict'] / rates['bare']:.2f} (goal >= 0.8)")


if __name__ == "__main__":
    main()
