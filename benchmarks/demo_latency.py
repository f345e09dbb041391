"""Served demo latency against a bare forward of the same model, measured in one run.

    python benchmarks/demo_latency.py [--repeats 10] [--backbone resnet50]

A random-weight dual-attention ResNet-50 (224 px) is saved with its processor; `space/app.py` serves it
on a free local port; gradio_client posts a 512 x 512 CT DICOM (a phantom slice, uncompressed) to
`/predict`. Printed: the median of each, and ratios to the bare `torch.no_grad()` forward of the
processed slice:

- in-process predict: `Predictor.predict` (DICOM read, HU window, forward with Grad-CAM, two PNG overlays'
  arrays, metadata), no HTTP;
- served request: upload, queue, the same predict, PNG encoding, download of both images.

Goal (issue 6): median served request <= 2.5 x the bare forward.
"""

import argparse
import importlib.util
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modeling import CTImageProcessor, DualAttentionResNetConfig, DualAttentionResNetForImageClassification  # noqa: E402
from training.phantom import generate_phantom  # noqa: E402

GOAL = 2.5
SETTLE_SECONDS = 0.5


def seconds(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def interleaved(calls: dict, repeats: int, warmup: int = 2) -> dict:
    """name -> wall times in seconds of `repeats` calls, taken in turn so that load from other
    processes on the machine hits every variant alike."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times = {name: [] for name in calls}
    for _ in tqdm(range(repeats), desc="rounds", unit="round"):
        for name, call in calls.items():
            # OpenMP worker threads spin for a while after parallel work; let the other process's go
            # idle so that no variant pays for the one timed before it
            time.sleep(SETTLE_SECONDS)
            times[name].append(seconds(call))
    return times


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model_dir: Path, port: int, log_path: Path, env: dict = None) -> subprocess.Popen:
    """`space/app.py` serving `model_dir` on `port`, once it answers; `env` adds environment variables."""
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, str(ROOT / "space" / "app.py"), "--model", str(model_dir), "--port", str(port)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )
    deadline = time.monotonic() + 300
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).close()
            return server
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(f"the demo did not start:\n{log_path.read_text()[-2000:]}") from None
            time.sleep(0.5)


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

        predictor = load_app().Predictor(tmp / "model")
        port = free_port()
        server = start_server(tmp / "model", port, tmp / "server.log")
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            times = interleaved(
                {
                    "bare no-grad forward": bare_forward,
                    "in-process predict": lambda: predictor.predict(str(dicom)),
                    "served /predict": lambda: client.predict(handle_file(str(dicom)), None, None, api_name="/predict"),
                },
                args.repeats,
            )
        finally:
            server.terminate()
            server.wait(timeout=30)

    forward = statistics.median(times["bare no-grad forward"])
    print(f"model: {args.backbone} dual attention, random weights, 224 px input; slice 512 x 512 CT DICOM")
    print(f"torch threads: {torch.get_num_threads()} per process; {args.repeats} interleaved rounds (medians)")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:22s}: {median * 1000:8.1f} ms   {median / forward:.2f}x")
    ratio = statistics.median(times["served /predict"]) / forward
    print(f"served / bare forward: {ratio:.2f}x (goal <= {GOAL}x: {'met' if ratio <= GOAL else 'NOT met'})")


if __name__ == "__main__":
    main()
