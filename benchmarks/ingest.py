"""Data-path throughput, measured in one run on the same files.

1. `training.prepare` (read, window, resize, split, save) against bare `pydicom.dcmread(...).pixel_array`,
   per core. Goal: prepare >= 0.5x the bare decode rate per core.
2. The training loader (augmented, normalised batches) against one ResNet-50 dual-attention training
   step on the CPU. Goal: the loader is never the bottleneck (ratio > 1 with one loader process).

    python benchmarks/ingest.py [--n-per-class 40] [--native-size 512] [--size 224] [--workers 2]
"""

import argparse
import os
import tempfile
import time

import numpy as np
import pydicom
import torch

from modeling import DualAttentionResNetConfig, DualAttentionResNetForImageClassification
from training.data import load_prepared, torch_splits
from training.phantom import generate_phantom
from training.prepare import prepare_dataset


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-per-class", type=int, default=40)
    parser.add_argument("--native-size", type=int, default=512, help="rows = columns of the DICOMs (CT: 512)")
    parser.add_argument("--size", type=int, default=224, help="model input size")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="prepare's reader processes")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as scratch:
        phantom = os.path.join(scratch, "phantom")
        generate_phantom(phantom, args.n_per_class, seed=0, image_size=args.native_size, progress=False)
        paths = [os.path.join(root, name) for root, _, names in os.walk(phantom) for name in names if name.endswith(".dcm")]

        _, bare_s = timed(lambda: [pydicom.dcmread(path).pixel_array for path in paths])
        bare_rate = len(paths) / bare_s
        output = os.path.join(scratch, "ds")
        _, prepare_s = timed(lambda: prepare_dataset(
            os.path.join(phantom, "manifest.csv"), output, size=args.size, num_workers=args.workers))
        prepare_rate = len(paths) / prepare_s
        workers = min(args.workers, max(1, len(paths) // 8))  # as prepare caps it

        dataset_dict, info = load_prepared(output)
        loader = torch.utils.data.DataLoader(
            torch_splits(dataset_dict, info)["train"], batch_size=args.batch_size, shuffle=True, num_workers=0)
        batches = iter(loader)
        next(batches)  # warm-up
        _, load_s = timed(lambda: [next(batches) for _ in range(args.batches)])
        load_rate = args.batches * args.batch_size / load_s

        config = DualAttentionResNetConfig(backbone="resnet50", image_size=args.size)
        model = DualAttentionResNetForImageClassification(config).train()
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        batch = next(iter(loader))

        def step():
            loss = model(batch["pixel_values"], labels=batch["labels"]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        step()  # warm-up
        _, step_s = timed(lambda: [step() for _ in range(args.batches)])
        train_rate = args.batches * args.batch_size / step_s

    print(f"\nfiles: {len(paths)} CT DICOMs {args.native_size}x{args.native_size}, model size {args.size}, "
          f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    print(f"bare pydicom decode (1 process):   {bare_rate:8.1f} slices/s")
    print(f"prepare end to end ({workers} processes): {prepare_rate:8.1f} slices/s = {prepare_rate / workers:.1f} per core")
    print(f"prepare per core / bare decode:    {prepare_rate / workers / bare_rate:8.2f}x  (goal >= 0.5)")
    print(f"loader, augmented (1 process):     {load_rate:8.1f} images/s")
    print(f"ResNet-50 dual-attention training: {train_rate:8.1f} images/s (batch {args.batch_size})")
    print(f"loader / training step:            {load_rate / train_rate:8.2f}x  (goal > 1: loader not the bottleneck)")


if __name__ == "__main__":
    main()
