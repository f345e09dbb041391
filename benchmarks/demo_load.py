"""Load on the served demo: N concurrent clients x M requests each, with identical and with distinct files.

    python benchmarks/demo_load.py [--clients 8] [--requests 20] [--backbone resnet50] [--image-size 224]

A random-weight dual-attention model is saved with its processor and served by `space/app.py` on a free
local port. Each of `--clients` threads holds its own gradio_client and posts `--requests` CT slices
(512 x 512 DICOM) to `/predict`, one after another, in two rounds:

- identical: every request carries the same slice (a copy of the demo's example: the same bytes, so
  Gradio stores all uploads at one path and the demo must keep it until the last of them has been read);
- distinct: every request carries a different slice (the example with one pixel changed).

Printed per round: requests, errors (with the first reason), p50 / p95 latency of one request as its
client saw it (upload, queue, predict, download), the uploads left on the server afterwards, and the
server's resident memory (RSS) after a warm-up and after each round, as growth over the warm-up.

Goal (issue 13): 0 errors, no upload left on disk, RSS growth < 10 % over 8 x 20 requests.
"""

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
from gradio_client import Client, handle_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from modeling import CTImageProcessor, DualAttentionResNetConfig, DualAttentionResNetForImageClassification
from modeling.ct_dicom import read_ct_hu
from serving import serve_demo
from training.dicom_writer import write_ct_dicom

EXAMPLE = ROOT / "space" / "examples" / "metastatic_phantom.dcm"
RSS_GOAL = 0.10
WARMUP_REQUESTS = 4


def distinct_slices(folder: Path, count: int) -> list:
    """`count` copies of the example slice, each with one pixel raised by its index: distinct bytes."""
    hu = read_ct_hu(str(EXAMPLE))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        changed = hu.copy()
        changed.flat[index] += 1 + index
        paths.append(write_ct_dicom(folder / f"slice_{index:04d}.dcm", changed))
    return paths


def run_round(url: str, files_per_client: list) -> dict:
    """Each client posts its list of files in turn, all clients at once -> latencies (s) and errors."""

    def client_session(files):
        client = Client(url, verbose=False)
        latencies, errors = [], []
        for path in files:
            start = time.perf_counter()
            try:
                client.predict(handle_file(str(path)), None, None, api_name="/predict")
                latencies.append(time.perf_counter() - start)
            except Exception as error:  # a refused or failed request is what this benchmark counts
                errors.append(f"{type(error).__name__}: {error}")
        return latencies, errors

    with ThreadPoolExecutor(len(files_per_client)) as pool:
        results = list(pool.map(client_session, files_per_client))
    return {
        "latencies": [value for latencies, _ in results for value in latencies],
        "errors": [error for _, errors in results for error in errors],
    }


def percentile(values: list, q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def uploads_left(upload_dir: Path) -> int:
    """DICOM files on the server, except the copies of the demo's examples that Gradio caches at start-up."""
    examples = {path.name for path in EXAMPLE.parent.glob("*.dcm")}
    return sum(1 for path in upload_dir.rglob("*.dcm") if path.is_file() and path.name not in examples)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=20, help="requests per client and round")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = DualAttentionResNetConfig(backbone=args.backbone, image_size=args.image_size)
        DualAttentionResNetForImageClassification(config).save_pretrained(tmp / "model")
        CTImageProcessor(size=args.image_size).save_pretrained(tmp / "model")
        identical = shutil.copy(EXAMPLE, tmp / "identical_slice.dcm")  # not the example's own cached path
        distinct = distinct_slices(tmp / "distinct", args.clients * args.requests)
        upload_dir = tmp / "server-temp"
        with serve_demo(tmp / "model", tmp / "server.log", upload_dir=upload_dir) as server:
            process = psutil.Process(server.process.pid)
            run_round(server.url, [[identical] * WARMUP_REQUESTS])  # loads lazy modules, allocator pools
            rss = {"after warm-up": process.memory_info().rss}
            rounds = {
                "identical": [[identical] * args.requests for _ in range(args.clients)],
                "distinct": [distinct[i * args.requests : (i + 1) * args.requests] for i in range(args.clients)],
            }
            results = {}
            for name, files_per_client in rounds.items():
                started = time.perf_counter()
                results[name] = run_round(server.url, files_per_client)
                results[name]["seconds"] = time.perf_counter() - started
                results[name]["uploads left"] = uploads_left(upload_dir)
                rss[f"after {name}"] = process.memory_info().rss
            alive = server.process.poll() is None

    print(f"model: {args.backbone} dual attention, random weights, {args.image_size} px input; slices 512 x 512")
    print(f"{args.clients} clients x {args.requests} requests per round, all clients at once")
    for name, result in results.items():
        latencies = result["latencies"]
        first_error = f" (first: {result['errors'][0][:120]})" if result["errors"] else ""
        print(
            f"{name:9s}: {len(latencies) + len(result['errors'])} requests in {result['seconds']:.1f} s, "
            f"errors {len(result['errors'])}{first_error}; latency p50 {percentile(latencies, 50):.2f} s, "
            f"p95 {percentile(latencies, 95):.2f} s, mean {statistics.fmean(latencies) if latencies else 0:.2f} s; "
            f"uploads left on the server {result['uploads left']}"
        )
    base = rss["after warm-up"]
    for name, value in rss.items():
        print(f"server RSS {name:18s}: {value / 2**20:8.1f} MiB  ({(value - base) / base:+.1%})")
    growth = (max(rss.values()) - base) / base
    errors = sum(len(result["errors"]) for result in results.values())
    left = max(result["uploads left"] for result in results.values())
    met = errors == 0 and left == 0 and growth < RSS_GOAL and alive
    print(
        f"errors {errors}, uploads left {left}, RSS growth {growth:.1%}, server alive {alive} "
        f"(goal: 0, 0, < {RSS_GOAL:.0%}: {'met' if met else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
