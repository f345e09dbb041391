"""Batch inference over CT slices, series folders, zips and NIfTI volumes: one CSV row per slice, one per series.

    python -m modeling.predict PATH... --model M --output SLICES.csv [--series-output SERIES.csv] [--explain-dir DIR]
    accelerate launch -m modeling.predict PATH... --model M --output SLICES.csv --series-output SERIES.csv

How PATHs are read:
- Folders are walked recursively and every file is tried as DICOM (DICOMs often have no extension;
  hidden files and DICOMDIR indexes are skipped). The DICOM files of all PATHs together are grouped
  into series by SeriesInstanceUID and ordered by position along the slice normal
  (`modeling.ct_volume`), so a PACS export is scored series by series, and a folder of loose slices
  from different scans is scored slice by slice as before (each is a series of one).
- `.zip` files are read as folders of DICOM files; `.nii` / `.nii.gz` files as NIfTI volumes.
- With `--images`, PNG/JPEG/TIFF files are read as already-windowed slices (the paper's export);
  without it they are refused like any non-DICOM file.

SLICES.csv (`--output`): one row per file or slice: `path,status,probability,label,error,warning,
explanation,series,slice_index,z_mm`; a file that cannot be used gets `status=error` and a one-line
reason. SERIES.csv (`--series-output`): one row per volume: `source,series,n_slices,probability,
top_slice_index,top_z_mm,label,status,error`, where `probability` is the highest of the volume's slices
and `label` the decision at the model's `decision_threshold`. `--explain-dir` writes, per series, a plot
of probability against z (series of two slices or more) and slice | attention | Grad-CAM panels of its
most suspicious slices. Exit status: 0 when everything was scored, 1 when some file or series was
refused (all rows are still written), 2 for usage errors. Rows are written as each item is scored, so
a run that is stopped keeps them (all but the last batch's items).

Under `accelerate launch`, every process plans the same work, takes its share of the series with
Accelerate's `split_between_processes`, and the main process gathers the rows (`gather_object`) and
writes the same files as one process would, at the end. A launcher turns any non-zero status of its
processes into a traceback of its own (accelerate 1.16 also repeats their stderr), so there a run that
completed exits 0 even when files were refused: the summary line and the CSVs' `status` column say
which. Usage errors and crashes still exit non-zero.

No patient names or IDs are written: the CSVs hold paths as given and a series key (a salted hash,
never the UID); explanation images are named by the work item's number, the slice index and a hash.

The work is planned by `modeling.work_plan`, each item read by `modeling.work_reading`, its slices
batched across items by `BatchScheduler` here, and the rows written by `modeling.prediction_csv`.

Not imported by the model files: it needs matplotlib, tqdm and accelerate, which remote code must not.
"""

import argparse
import dataclasses
import hashlib
import os
import sys
from collections import deque
from typing import Callable, Deque, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .explain import explain, gradcam_title
from .inference import (
    decision,
    display_slice,
    explanation_panel,
    forward_probabilities,
    probability_curve,
    score_volume,  # importable from here as before: it lives in inference.py with the demo's other needs
)
from .prediction_csv import (
    CSV_COLUMNS,
    POSITION_MM_FORMAT,
    PROBABILITY_FORMAT,
    SERIES_COLUMNS,
    ItemResult,
    ResultWriter,
    series_row,
)
from .work_plan import WorkItem, plan_work
from .work_reading import OpenVolume, hu_warning, open_item, pixel_chunks

TOP_SLICES_EXPLAINED = 3
DEFAULT_BATCH_SIZE = 16  # slices per forward pass, as in inference.score_volume: any GPU holds 16 at 224 px
# Explanation names are zero-padded so that a folder listing sorts them by work item, then slice.
ITEM_NUMBER_DIGITS = 5
SLICE_INDEX_DIGITS = 4
PATH_HASH_CHARS = 10  # 40 bits of the path's SHA-1 tie a name to its row without making it long
CURVE_DPI = 100  # inference.probability_curve's 7 x 2.8 in figure as a 700 x 280 px PNG


def explanation_name(item_index: int, slice_index: int, path: str) -> str:
    """PNG name from the work item's number, the slice index and a hash of the path: never a file or folder
    name, which may hold a patient's."""
    path_hash = hashlib.sha1(path.encode("utf-8")).hexdigest()[:PATH_HASH_CHARS]
    return f"{item_index:0{ITEM_NUMBER_DIGITS}d}_{slice_index:0{SLICE_INDEX_DIGITS}d}_{path_hash}.png"


def _finish_volume(volume: OpenVolume, model, processor, threshold: float, explain_dir: Optional[str]):
    """Fill a scored volume's rows and its series row, write its explanations; returns the series row."""
    probabilities = volume.probabilities
    for row, probability in zip(volume.rows, probabilities, strict=True):
        row.update(probability=format(probability, PROBABILITY_FORMAT), label=decision(probability, threshold))
    top = int(np.argmax(probabilities))
    volume_row = None
    if volume.volume is not None:
        z_mm = volume.volume.positions_mm
        volume_row = series_row(
            source=volume.item.source, series=volume.volume.key, n_slices=len(probabilities),
            probability=format(probabilities[top], PROBABILITY_FORMAT), top_slice_index=top,
            top_z_mm=format(z_mm[top], POSITION_MM_FORMAT),
            label=decision(probabilities[top], threshold), status="ok",
        )
    if explain_dir:
        _write_explanations(volume, model, processor, threshold, explain_dir)
    volume.volume = None  # the HU are no longer needed
    return volume_row


def _write_explanations(volume: OpenVolume, model, processor, threshold: float, explain_dir: str) -> None:
    """Panels of the volume's most suspicious slices, each map on the slice it belongs to
    (`inference.display_slice`), and its probability-vs-z plot."""
    probabilities = volume.probabilities
    top_slices = [int(k) for k in np.argsort(-probabilities, kind="stable")[:TOP_SLICES_EXPLAINED]]
    if volume.volume is None:
        shown = [display_slice(processor, volume.image_path)]
        pixel_values = processor(volume.image_path, return_tensors="pt")["pixel_values"]
    else:
        spacing = volume.volume.spacing_mm[1:]
        shown = [display_slice(processor, volume.volume.hu[k], spacing) for k in top_slices]
        subset = dataclasses.replace(volume.volume, hu=volume.volume.hu[top_slices])
        pixel_values = processor(subset, return_tensors="pt")["pixel_values"]
    maps = explain(model, pixel_values)
    for position, k in enumerate(top_slices):
        row = volume.rows[k]
        row["explanation"] = explanation_name(volume.item.index, k, row["path"])
        attention = maps["attention"][position] if maps["attention"] is not None else None
        panel = explanation_panel(shown[position], attention, maps["gradcam"][position], probabilities[k],
                                  gradcam_title(model.config))
        Image.fromarray(panel).save(os.path.join(explain_dir, row["explanation"]))
    if volume.volume is not None and len(probabilities) > 1:
        name = f"{volume.item.index:0{ITEM_NUMBER_DIGITS}d}_{volume.volume.key}_probability.png"
        figure = probability_curve(volume.volume.positions_mm, probabilities, threshold, f"series {volume.volume.key}")
        figure.savefig(os.path.join(explain_dir, name), dpi=CURVE_DPI)


class BatchScheduler:
    """Slices of consecutive work items scored together in forward passes of `batch_size`, and each
    item's result handed to `on_result` in item order as soon as all of its slices are scored.

    `add_item` reads an item and queues its slices, running a forward pass whenever `batch_size` are
    queued; `flush` scores what is left and returns every item's result.
    """

    def __init__(self, model, processor, batch_size: int, explain_dir: Optional[str],
                 on_result: Optional[Callable[[ItemResult], None]]):
        self.model, self.processor, self.batch_size = model, processor, batch_size
        self.explain_dir, self.on_result = explain_dir, on_result
        self.threshold = float(model.config.decision_threshold)
        self.results: List[ItemResult] = []
        self.pending: List[Tuple[OpenVolume, int, torch.Tensor]] = []  # (volume, slice index, pixel values)
        self.open_volumes: Deque[Tuple[int, OpenVolume]] = deque()  # (result index, volume), in item order
        self.reported = 0  # results handed to on_result so far

    def add_item(self, item: WorkItem) -> None:
        result, volumes = open_item(item, self.processor)
        self.results.append(result)
        for message in result.messages:
            print(message, file=sys.stderr)
        # every volume of the item is open before any of its slices is scored, so that the item is not
        # reported when its first volume is finished and the next not yet read
        self.open_volumes.extend((len(self.results) - 1, volume) for volume in volumes)
        for volume in volumes:
            for start, pixel_values in pixel_chunks(volume, self.processor, self.batch_size):
                for offset, pixels in enumerate(pixel_values):
                    self.pending.append((volume, start + offset, pixels))
                    if len(self.pending) == self.batch_size:
                        self.run_batch()
        self._report_finished()

    def run_batch(self) -> None:
        """One forward pass over the queued slices, then finish the volumes it completed."""
        probabilities = forward_probabilities(self.model, torch.stack([pixels for _, _, pixels in self.pending]))
        for (volume, index, _), probability in zip(self.pending, probabilities, strict=True):
            volume.probabilities[index] = probability
            volume.remaining -= 1
        self.pending.clear()
        self.finish_scored()

    def finish_scored(self) -> None:
        """Finish the scored volumes at the front of the queue (in item order), then report their items."""
        while self.open_volumes and self.open_volumes[0][1].remaining == 0:
            number, volume = self.open_volumes.popleft()
            volume_row = _finish_volume(volume, self.model, self.processor, self.threshold, self.explain_dir)
            if volume_row is not None:
                self.results[number].series_rows.append(volume_row)
        self._report_finished()

    def flush(self) -> List[ItemResult]:
        """Score the slices still queued; every item's result, in item order."""
        if self.pending:
            self.run_batch()
        self.finish_scored()
        return self.results

    def _report_finished(self) -> None:
        """Hand on each result before the first open volume's: volumes finish in item order."""
        finished = self.open_volumes[0][0] if self.open_volumes else len(self.results)
        for result in self.results[self.reported : finished]:
            if self.on_result is not None:
                self.on_result(result)
            self.reported += 1


def predict_items(
    items: Sequence[WorkItem],
    model,
    processor,
    explain_dir: Optional[str] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    on_result: Optional[Callable[[ItemResult], None]] = None,
) -> List[ItemResult]:
    """Score work items; slices of consecutive items share forward passes of `batch_size` slices.

    `on_result` is called with each item's result, in item order, as soon as all of its slices are
    scored (a CSV writer, so that an interrupted run keeps what it has scored).
    """
    if explain_dir:
        os.makedirs(explain_dir, exist_ok=True)
    scheduler = BatchScheduler(model, processor, batch_size, explain_dir, on_result)
    for item in tqdm(items, desc="predict", unit="item", disable=not progress):
        scheduler.add_item(item)
    return scheduler.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modeling.predict",
        description="P(metastatic lymph node) for CT slices, series, zips and NIfTI volumes, as CSVs.",
    )
    parser.add_argument(
        "paths", nargs="+", metavar="PATH",
        help="DICOM files (any extension) or folders (walked recursively), .zip of DICOMs, .nii / .nii.gz volumes",
    )
    parser.add_argument("--model", required=True, help="a saved model folder (RUN/best) or a Hugging Face Hub id")
    parser.add_argument("--output", required=True, help="CSV to write, one row per slice: " + ",".join(CSV_COLUMNS))
    parser.add_argument("--series-output", help="CSV to write, one row per series: " + ",".join(SERIES_COLUMNS))
    parser.add_argument(
        "--explain-dir", help="write per series a probability-vs-z plot and slice | attention | Grad-CAM PNGs here"
    )
    parser.add_argument(
        "--images", action="store_true", help="also read PNG/JPEG/TIFF as already-windowed slices (HU not checked)"
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"slices per forward pass (default {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # paths may follow the options
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    missing = [path for path in args.paths if not os.path.exists(path)]
    if missing:
        parser.error(f"no such file or folder: {', '.join(missing)}")
    for output in filter(None, (args.output, args.series_output)):
        if not os.path.isdir(os.path.dirname(os.path.abspath(output))):
            parser.error(f"the folder of {output} does not exist")

    from accelerate import PartialState
    from accelerate.utils import gather_object
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    state = PartialState()
    items = plan_work(args.paths, args.images)
    if not items:
        parser.error("no files found in the given folders")
    try:
        model = AutoModelForImageClassification.from_pretrained(args.model, trust_remote_code=True)
        processor = AutoImageProcessor.from_pretrained(args.model, trust_remote_code=True)
    except (OSError, ValueError) as error:
        parser.error(f"cannot load model {args.model!r}: {str(error).splitlines()[0]}")
    model.to(state.device if state.num_processes > 1 else args.device).eval()

    with state.split_between_processes(items) as share:
        if state.num_processes == 1:  # rows reach the CSVs as items finish
            with ResultWriter(args.output, args.series_output) as writer:
                results = predict_items(share, model, processor, args.explain_dir, args.batch_size, True, writer.write)
        else:
            results = predict_items(share, model, processor, args.explain_dir, args.batch_size, state.is_main_process)
    if state.num_processes > 1:
        results = gather_object(results)  # each process's list, concatenated in process order = item order
        if state.is_main_process:
            with ResultWriter(args.output, args.series_output) as writer:
                for result in results:
                    writer.write(result)
    slice_rows = [row for result in results for row in result.slice_rows]
    series_rows = [row for result in results for row in result.series_rows]
    n_ok = sum(row["status"] == "ok" for row in slice_rows)
    n_error = len(slice_rows) - n_ok
    if state.is_main_process:
        written = f"{args.output}" + (f" and {args.series_output}" if args.series_output else "")
        print(f"{n_ok} predicted, {n_error} refused, {len(series_rows)} series; wrote {written}", file=sys.stderr)
    state.wait_for_everyone()
    refused = n_error or any(row["status"] == "error" for row in series_rows)
    return 1 if refused and not under_launcher() else 0


def under_launcher() -> bool:
    """Whether this process was started by `accelerate launch` (which sets its ACCELERATE_* settings
    for every launcher) or by torchrun, either of which reports a non-zero status as a traceback."""
    return "ACCELERATE_MIXED_PRECISION" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ


__all__ = [
    "CSV_COLUMNS", "SERIES_COLUMNS", "ResultWriter", "hu_warning", "main", "plan_work", "predict_items", "score_volume"
]


if __name__ == "__main__":
    sys.exit(main())
