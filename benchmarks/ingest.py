"""Data-path throughput, measured in one run on the same files.

1. `training.prepare` with one reader (read, window, resize, masks, split, write Arrow) against bare
   `pydicom.dcmread(path).pixel_array` on the same 512 px slices, both in this process (interpreter
   start and imports excluded). Goal: >= 0.5x. Printed next to it: prepare's reading phase alone, and
   a floor, decode plus the processor's antialiased resize (the least any prepare must do per slice).
2. `training.prepare` (and its reading phase alone) with `--workers` readers against `--workers` x the
   one-reader rate: the scaling efficiency (near 1 = linear). It needs that many free cores to mean
   anything; splitting and writing the Arrow files stay in one process.
3. The training loader (augmented, normalised batches) against one ResNet-50 dual-attention training
   step on the CPU. Goal: the loader is never the bottleneck (ratio > 1 with one loader process).
4. Each in a fresh process, so that no run inherits another's heap or malloc settings:
   a. prepare's reading (one reader, the first pass of the process, as the CLI runs it) with glibc's
      default malloc against glibc tuned by `mallopt` as prepare once did (freed buffers of up to
      32 MB kept for reuse). Goal: the default within 5 % of the tuning, so that prepare sets none.
   b. Writing `--write-slices` model-size slices: prepare's `split_dataset` + `save_to_disk` against
      `datasets.Dataset.from_dict(..., features=...)` + `save_to_disk` on the same columns: wall time
      and peak resident memory above what the process held before (Linux). Goal: `from_dict` several
      times slower or larger, or prepare should use it.

Each timing is the best of `--repeats` rounds, taken in turn, so that a busy machine hurts all alike;
CPU time (this process and the reader pool) is printed next to wall time: other load disturbs it less.

    PYTHONPATH=. python benchmarks/ingest.py [--n-per-class 60] [--native-size 512] [--size 224] [--workers 2]
        [--repeats 3] [--write-slices 1000]
"""

import argparse
import ctypes
import multiprocessing
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import datasets
import numpy as np
import pydicom
import torch

from modeling import CTImageProcessor, DualAttentionResNetConfig, DualAttentionResNetForImageClassification
from modeling.image_processing_ct import resize_slice
from training.data import load_prepared, torch_splits
from training.phantom import generate_phantom
from training.prepare import (
    features,
    prepare_dataset,
    read_all,
    records_from_manifest,
    split_columns,
    split_dataset,
)

# glibc's mallopt parameters (malloc.h) and the values prepare set in its readers until part 4a found
# glibc's default as fast.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
TUNED_MALLOC = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20}


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (prepare's reader pool), user + system."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def wall_and_cpu(function):
    """(wall seconds, CPU seconds) of `function()`."""
    cpu = cpu_seconds()
    _, wall = timed(function)
    return wall, cpu_seconds() - cpu


def bare_decode(paths, resize_to: int = 0) -> None:
    """Decode every file, each array dropped before the next (as prepare drops its native slices);
    with `resize_to`, also the processor's antialiased resize of each slice to that size, on one
    thread like a reader of prepare's."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for path in paths:
            pixels = pydicom.dcmread(path).pixel_array
            if resize_to:
                resize_slice(pixels, (resize_to, resize_to))
    finally:
        torch.set_num_threads(threads)


def _busy_work(_) -> float:
    """Seconds taken by a fixed CPU-bound job (a Python loop and a few numpy passes), timed where it runs."""
    started = time.perf_counter()
    total, values = 0, np.random.default_rng(0).random(1 << 20, dtype=np.float32)
    for i in range(1_000_000):
        total += i
    for _ in range(20):
        values = np.sqrt(values * values + 1.0)
    return time.perf_counter() - started


def machine_parallel_efficiency(workers: int) -> float:
    """How much of `workers` x one process's speed this machine gives `workers` processes busy at once
    (1 = independent cores; shared cores or throttling give less): the ceiling for reader scaling."""
    with ProcessPoolExecutor(1) as pool:
        alone = min(pool.map(_busy_work, range(3)))
    with ProcessPoolExecutor(workers) as pool:
        pool.submit(_busy_work, 0).result()  # every worker started before the timed round
        together = max(pool.map(_busy_work, range(workers)))
    return alone / together


def in_fresh_process(function, *args):
    """`function(*args)` in a new interpreter (spawned): what it measures owes nothing to this process."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def peak_rss_growth_mb(function) -> float:
    """MB of resident memory at the peak of `function()` above what the process held before; NaN where
    the peak cannot be reset (not Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets the peak (VmHWM) to the current resident size
        before = _status_kb("VmRSS")
    except OSError:
        function()
        return float("nan")
    function()
    return (_status_kb("VmHWM") - before) / 1024


def cold_read(manifest: str, size: int, tuned_malloc: bool):
    """(wall s, CPU s, minor page faults) of prepare's reading with one reader, the first in this process."""
    if tuned_malloc:
        libc = ctypes.CDLL("libc.so.6")
        for parameter, value in TUNED_MALLOC.items():
            libc.mallopt(parameter, value)
    records, _ = records_from_manifest(manifest)
    processor = CTImageProcessor(size=size, do_normalize=False)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    wall, cpu = wall_and_cpu(lambda: read_all(records, processor, None, num_workers=1))
    return wall, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def write_splits(manifest: str, size: int, n_slices: int, how: str):
    """(wall s, peak RSS growth MB) of one split of `n_slices` slices (the phantom's, repeated) to disk:
    `how` "ours" is prepare's `split_dataset`, "from_dict" is `datasets.Dataset.from_dict`."""
    records, _ = records_from_manifest(manifest)
    slices, _ = read_all(records, CTImageProcessor(size=size, do_normalize=False), None, num_workers=1)
    members = (slices * (n_slices // len(slices) + 1))[:n_slices]
    images = np.stack([s.image for s in members])
    with tempfile.TemporaryDirectory() as scratch:
        def write():
            if how == "ours":
                dataset = split_dataset(members, images, salt="bench")
            else:
                dataset = datasets.Dataset.from_dict(split_columns(members, images, "bench"), features=features(size))
            dataset.save_to_disk(os.path.join(scratch, "split"))

        started = time.perf_counter()
        growth = peak_rss_growth_mb(write)
        return time.perf_counter() - started, growth


def fresh_process_comparisons(manifest: str, args) -> None:
    """Part 4: the malloc tuning and `Dataset.from_dict`, each run in a fresh process, best of `--repeats`."""
    reads = {"default": [], "tuned": []}
    writes = {"ours": [], "from_dict": []}
    for _ in range(args.repeats):
        for name in reads:
            reads[name].append(in_fresh_process(cold_read, manifest, args.size, name == "tuned"))
        for name in writes:
            writes[name].append(in_fresh_process(write_splits, manifest, args.size, args.write_slices, name))
    best = {name: [min(column) for column in zip(*runs, strict=True)] for name, runs in {**reads, **writes}.items()}
    print("\nfresh process per run (best of each column)   wall s    CPU s   minor faults")
    for name, label in (("default", "reading, 1 reader, glibc's default malloc"),
                        ("tuned", "reading, 1 reader, mallopt as prepare had")):
        wall, cpu, faults = best[name]
        print(f"{label:44s} {wall:8.3f} {cpu:8.3f} {faults:14d}")
    print(f"default / tuned:                             wall {best['default'][0] / best['tuned'][0]:.2f}x, "
          f"CPU {best['default'][1] / best['tuned'][1]:.2f}x  (goal <= 1.05: no tuning needed)")
    print(f"writing {args.write_slices} slices of {args.size} px                 wall s   peak RSS growth MB")
    for name, label in (("ours", "split_dataset + save_to_disk"), ("from_dict", "Dataset.from_dict + save_to_disk")):
        print(f"{label:44s} {best[name][0]:8.3f} {best[name][1]:18.0f}")
    print(f"from_dict / ours:                            wall {best['from_dict'][0] / best['ours'][0]:.2f}x, "
          f"peak RSS growth {best['from_dict'][1] / best['ours'][1]:.2f}x")


def loader_against_training_step(data_dir: str, size: int, batch_size: int, batches: int):
    """(loader images/s, ResNet-50 dual-attention training images/s) on the prepared train split."""
    dataset_dict, info = load_prepared(data_dir)
    loader = torch.utils.data.DataLoader(
        torch_splits(dataset_dict, info)["train"], batch_size=batch_size, shuffle=True, num_workers=0)
    stream = iter(loader)
    next(stream)  # warm-up
    _, load_s = timed(lambda: [next(stream) for _ in range(batches)])

    model = DualAttentionResNetForImageClassification(DualAttentionResNetConfig(backbone="resnet50", image_size=size))
    optimizer = torch.optim.Adam([p for p in model.train().parameters() if p.requires_grad], lr=1e-4)
    batch = next(iter(loader))

    def step():
        loss = model(batch["pixel_values"], labels=batch["labels"]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up
    _, step_s = timed(lambda: [step() for _ in range(batches)])
    return batches * batch_size / load_s, batches * batch_size / step_s


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-per-class", type=int, default=60)
    parser.add_argument("--native-size", type=int, default=512, help="rows = columns of the DICOMs (CT: 512)")
    parser.add_argument("--size", type=int, default=224, help="model input size")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="readers for the scaling run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=3, help="loader/training batches timed (0: skip part 3)")
    parser.add_argument("--write-slices", type=int, default=1000, help="slices written in part 4b (0: skip part 4)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as scratch:
        phantom = os.path.join(scratch, "phantom")
        manifest = generate_phantom(phantom, args.n_per_class, seed=0, image_size=args.native_size, progress=False)
        paths = [os.path.join(root, name) for root, _, names in os.walk(phantom) for name in names
                 if name.endswith(".dcm")]
        processor = CTImageProcessor(size=args.size, do_normalize=False)
        records, _ = records_from_manifest(manifest)
        runs = {
            "bare": lambda: bare_decode(paths),
            "floor": lambda: bare_decode(paths, resize_to=args.size),
            "read": lambda: read_all(records, processor, None, num_workers=1),
            "read_many": lambda: read_all(records, processor, None, num_workers=args.workers),
            "one": lambda: prepare_dataset(manifest, os.path.join(scratch, "ds1"), size=args.size, num_workers=1),
            "many": lambda: prepare_dataset(manifest, os.path.join(scratch, "ds_many"), size=args.size,
                                            num_workers=args.workers),
        }
        wall, cpu = {name: float("inf") for name in runs}, {name: float("inf") for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                run_wall, run_cpu = wall_and_cpu(run)
                wall[name], cpu[name] = min(wall[name], run_wall), min(cpu[name], run_cpu)
        efficiency = machine_parallel_efficiency(args.workers)
        rates = None
        if args.batches:
            rates = loader_against_training_step(os.path.join(scratch, "ds1"), args.size, args.batch_size, args.batches)
        print_throughput(len(paths), wall, cpu, efficiency, rates, args)
        if args.write_slices:
            fresh_process_comparisons(manifest, args)


def print_throughput(n: int, wall: dict, cpu: dict, efficiency: float, rates, args) -> None:
    """Parts 1 to 3: `wall` and `cpu` seconds per run name, `rates` (loader, training) images/s or None."""
    print(f"\nfiles: {n} CT DICOMs {args.native_size}x{args.native_size} with lesion masks, model size "
          f"{args.size}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}, best of {args.repeats}")
    print("                                   wall slices/s   CPU ms/slice")
    rows = (("bare", "bare pydicom decode (1 process)"), ("floor", "decode + resize only (floor)"),
            ("read", "prepare's reading, 1 reader"), ("read_many", f"prepare's reading, {args.workers} readers"),
            ("one", "prepare, 1 reader"), ("many", f"prepare, {args.workers} readers"))
    for name, label in rows:
        print(f"{label:34s} {n / wall[name]:10.1f} {1000 * cpu[name] / n:14.2f}")
    print(f"prepare 1 reader / bare decode:    wall {wall['bare'] / wall['one']:.2f}x, "
          f"CPU {cpu['bare'] / cpu['one']:.2f}x  (goal >= 0.5)")
    print(f"floor / bare decode:               wall {wall['bare'] / wall['floor']:.2f}x  (the best any prepare "
          f"that resizes like the processor can reach, before masks and writing)")
    print(f"this machine, {args.workers} busy processes / ({args.workers} x 1): {efficiency:.2f}  "
          "(the ceiling for the two lines below)")
    for name, phase in (("read", "reading"), ("one", "prepare")):
        many = "read_many" if name == "read" else "many"
        scaling = wall[name] / (args.workers * wall[many])
        print(f"{phase}, {args.workers} readers / ({args.workers} x 1):  wall {scaling:.2f}, "
              f"CPU per slice {cpu[name] / cpu[many]:.2f}  (1 = linear; wall needs {args.workers} idle cores)")
    if rates:
        load_rate, train_rate = rates
        print(f"loader, augmented (1 process):         {load_rate:8.1f} images/s")
        print(f"ResNet-50 dual-attention training:     {train_rate:8.1f} images/s (batch {args.batch_size})")
        print(f"loader / training step:                {load_rate / train_rate:8.2f}x  (goal > 1)")

if __name__ == "__main__":
    main()
