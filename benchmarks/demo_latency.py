"""Served demo latency against bare forwards of the same model, measured in one run: one slice, then a series.

    python benchmarks/demo_latency.py [--repeats 10] [--backbone resnet50] [--series-slices 100] [--series-repeats 3]

A random-weight dual-attention ResNet-50 (224 px) is saved with its processor; `space/app.py` serves it
on a free local port; gradio_client posts a 512 x 512 CT DICOM (a phantom slice, uncompressed) to
`/predict`. Printed: the median of each, and ratios to the bare `torch.no_grad()` forward of the
processed slice:

- in-process predict: `Predictor.predict` (DICOM read, HU window, forward with Grad-CAM, two PNG overlays'
  arrays, metadata), no HTTP;
- served request: upload, queue, the same predict, PNG encoding, download of both images.

Goal: median served request <= 2.5 x the bare forward.

Then a series of `--series-slices` 512 x 512 slices (one DICOM file each) against the bare no-grad forwards
of its processed slices in batches of the demo's size:

- in-process predict_series: `Predictor.predict_series` (read and order the files, process, score every
  slice with `score_volume`, Grad-CAM and overlays of the most suspicious slice, the probability curve);
- served /predict_series: the same plus uploading every file, the plot and both images over HTTP.

Goal: in-process series <= 1.5 x the bare batched forwards.
"""

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np
import torch
from gradio_client import Client, handle_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modeling import CTImageProcessor, DualAttentionResNetConfig, DualAttentionResNetForImageClassification
from modeling.ct_dicom import read_ct_hu
from serving import serve_demo
from timing import interleaved
from training.dicom_writer import write_ct_series
from training.phantom import generate_phantom

GOAL = 2.5
SERIES_GOAL = 1.5
# OpenMP worker threads spin for a while after parallel work; let the other process's go idle so that
# no variant pays for the one timed before it.
SETTLE_SECONDS = 0.5


def load_app():
    spec = importlib.util.spec_from_file_location("space_app", ROOT / "space" / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["space_app"] = module
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--series-slices", type=int, default=100, help="0 skips the series")
    parser.add_argument("--series-repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = DualAttentionResNetForImageClassification(DualAttentionResNetConfig(backbone=args.backbone)).eval()
        processor = CTImageProcessor()
        model.save_pretrained(tmp / "model")
        processor.save_pretrained(tmp / "model")
        manifest = generate_phantom(
            tmp / "phantom", n_per_class=1, image_size=512, slices_per_patient=1, progress=False
        )
        dicom = tmp / "phantom" / next(line.split(",")[0] for line in open(manifest).read().splitlines()[1:])

        pixel_values = processor(str(dicom), return_tensors="pt")["pixel_values"]

        def bare_forward():
            with torch.no_grad():
                model(pixel_values)

        app = load_app()
        predictor = app.Predictor(tmp / "model")
        series = phantom_series(tmp / "series", dicom, args.series_slices) if args.series_slices else []
        series_inputs = processor(series, return_tensors="pt")["pixel_values"] if series else None

        def bare_series_forwards():
            with torch.no_grad():
                for batch in series_inputs.split(sys.modules['demo_settings'].SERIES_BATCH_SIZE):
                    model(batch)

        with serve_demo(tmp / "model", tmp / "server.log") as server:
            client = Client(server.url, verbose=False)
            times = interleaved(
                {
                    "bare no-grad forward": bare_forward,
                    "in-process predict": lambda: predictor.predict(str(dicom)),
                    "served /predict": lambda: client.predict(handle_file(str(dicom)), None, None, api_name="/predict"),
                },
                args.repeats, warmup=2, settle_s=SETTLE_SECONDS, desc="rounds",
            )
            series_times = interleaved(
                {
                    "bare batched forwards": bare_series_forwards,
                    "in-process series": lambda: predictor.predict_series(series),
                    "served /predict_series": lambda: client.predict(
                        [handle_file(path) for path in series], api_name="/predict_series"
                    ),
                },
                args.series_repeats, warmup=1, settle_s=SETTLE_SECONDS, desc="series rounds",
            ) if series else {}

    print(f"model: {args.backbone} dual attention, random weights, 224 px input; slices 512 x 512 CT DICOM")
    print(f"torch threads: {torch.get_num_threads()} per process (the server's too, unless OMP_NUM_THREADS is set)")
    report(times, "bare no-grad forward", "served /predict", GOAL, f"one slice, {args.repeats} interleaved rounds")
    if series_times:
        report(series_times, "bare batched forwards", "in-process series", SERIES_GOAL,
               f"a series of {len(series)} slices, {args.series_repeats} interleaved rounds")


def phantom_series(folder: Path, dicom: Path, slices: int) -> list:
    """`slices` DICOM files of one series: the phantom slice with a few HU added per slice, 2.5 mm apart."""
    hu = read_ct_hu(str(dicom))
    volume = np.stack([hu + (k % 7) for k in range(slices)]).astype(np.float32)
    return write_ct_series(folder, volume, (2.5, 0.6, 0.6), patient_id="PHANTOM-0100")


def report(times: dict, baseline: str, goal_name: str, goal: float, title: str) -> None:
    """Medians of `times` and their ratios to `baseline`; whether `goal_name` met `goal`."""
    reference = statistics.median(times[baseline])
    print(f"-- {title} (medians)")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:24s}: {median * 1000:9.1f} ms   {median / reference:.2f}x")
    ratio = statistics.median(times[goal_name]) / reference
    print(f"{goal_name} / {baseline}: {ratio:.2f}x (goal <= {goal}x: {'met' if ratio <= goal else 'NOT met'})")


if __name__ == "__main__":
    main()
