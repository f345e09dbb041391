"""Reading one work item of `modeling.work_plan`: its refusals as rows, its volumes with a row per
slice (warnings filled in, probabilities left to the scorer), and their slices as model inputs."""

import os
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch

from .ct_dicom import read_ct_hu
from .ct_volume import CTVolume, load_dicom_series, read_ct_volumes, skip_warning
from .inference import volume_slices
from .prediction_csv import POSITION_MM_FORMAT, ItemResult, series_row, slice_row
from .work_plan import WorkItem, WorkKind

# Bulk of a calibrated CT slice: air at about -1000 HU up to dense bone and contrast.
CT_RANGE_HU = (-1100.0, 3500.0)
# Metal and its streaks put a few pixels outside CT_RANGE_HU; a wrong RescaleSlope/Intercept moves most.
UNCALIBRATED_FRACTION = 0.05
IMAGE_FILE_WARNING = "image file, not DICOM: read as an already-windowed slice; HU not checked"


def hu_warning(hu: np.ndarray, rescaled: bool = True) -> str:
    """A one-line warning when the pixel values do not look like calibrated Hounsfield units, else "".

    `rescaled`: whether the file said how to calibrate (RescaleIntercept). The constant fill outside the
    scan circle (often -2048 or -3024 HU) is left out of the check.
    """
    if not rescaled and hu.min() >= 0:
        return "no RescaleIntercept and no negative values: pixel values may be raw, not calibrated HU"
    body = hu[hu != hu.min()] if hu.min() < CT_RANGE_HU[0] else hu
    if body.size == 0:
        return "the image is one constant value"
    outside = np.mean((body < CT_RANGE_HU[0]) | (body > CT_RANGE_HU[1]))
    if outside > UNCALIBRATED_FRACTION:
        return (
            f"{outside:.0%} of pixels outside [{CT_RANGE_HU[0]:.0f}, {CT_RANGE_HU[1]:.0f}] HU: "
            "check RescaleSlope/RescaleIntercept"
        )
    return ""


@dataclass
class OpenVolume:
    """A volume being scored: its work item, its slice rows, where its pixels come from, its
    probabilities so far and how many of its slices are still to be scored."""

    item: WorkItem
    volume: Optional[CTVolume]  # None for an already-windowed image file
    rows: List[dict]
    image_path: str = ""
    probabilities: np.ndarray = field(init=False)
    remaining: int = field(init=False)

    def __post_init__(self):
        self.probabilities = np.zeros(len(self.rows))
        self.remaining = len(self.rows)


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def open_item(item: WorkItem, processor) -> Tuple[ItemResult, List[OpenVolume]]:
    """Read a work item: its refusals as rows, and the volumes (with one row per slice) left to score."""
    result = ItemResult()
    if item.kind is WorkKind.REFUSED:
        result.slice_rows.append(slice_row(path=item.path, status="error", error=item.reason))
        return result, []
    if item.kind is WorkKind.IMAGE:
        try:
            processor.to_unit_range(item.path)
        except (ValueError, OSError) as error:
            result.slice_rows.append(slice_row(path=item.path, status="error", error=_first_line(error)))
            return result, []
        result.slice_rows.append(slice_row(path=item.path, status="ok", warning=IMAGE_FILE_WARNING))
        return result, [OpenVolume(item, None, result.slice_rows[:], image_path=item.path)]
    try:
        volumes = [load_dicom_series(item.series)] if item.kind is WorkKind.SERIES else read_ct_volumes(item.path)
    except (ValueError, ImportError) as error:
        _add_unreadable(result, item, error)
        return result, []

    def file_path(name: str) -> str:
        """A slice's file as the user can find it: DICOM paths as given, zip members inside the zip's path."""
        if item.kind is WorkKind.SERIES:
            return name or item.source  # no single file: a slice across a sagittal or coronal series
        return os.path.join(item.path, name) if name else item.path

    opened, refusals = [], {}
    for volume in volumes:
        rescaled = "rescale_intercept" in volume.technical or volume.technical.get("format") == "NIfTI"
        skipped_lines = {skip_warning(name, reason) for name, reason in volume.skipped}
        geometry = [warning for warning in volume.warnings if warning not in skipped_lines]
        result.messages += [f"{item.source}: series {volume.key}: {warning}" for warning in geometry]
        rows = []
        for index, name in enumerate(volume.slice_names):
            warning = "; ".join(filter(None, [hu_warning(volume.hu[index], rescaled), *geometry]))
            rows.append(slice_row(path=file_path(name), status="ok", warning=warning, series=volume.key,
                                  slice_index=index, z_mm=format(volume.positions_mm[index], POSITION_MM_FORMAT)))
        result.slice_rows += rows
        opened.append(OpenVolume(item, volume, rows))
        for name, reason in volume.skipped:  # a zip's skipped files are noted in each of its volumes: one row each
            key = "" if (name, reason) in volume.source_skipped else volume.key  # a localizer is no series'
            refusals.setdefault(file_path(name), (reason, key))
    result.slice_rows += [
        slice_row(path=path, status="error", error=reason, series=key) for path, (reason, key) in refusals.items()
    ]
    return result, opened


def _add_unreadable(result: ItemResult, item: WorkItem, error: BaseException) -> None:
    """The rows of a series or volume file none of whose volumes could be read: each file refused, and
    one error row for the series (a volume file's is keyless)."""
    if item.kind is WorkKind.SERIES:
        key = item.series.key
        refusals = [(path, _refusal(path)) for path in item.series.paths] + list(item.series.skipped)
    else:
        key, refusals = "", [(item.path, _first_line(error))]
    result.slice_rows += [slice_row(path=path, status="error", error=reason, series=key) for path, reason in refusals]
    result.series_rows.append(
        series_row(source=item.source, series=key, n_slices=0, status="error", error=_first_line(error))
    )


def _refusal(path: str) -> str:
    """Why `path` could not be read as a CT slice (for the rows of a series none of whose slices could)."""
    try:
        read_ct_hu(path)
    except ValueError as error:
        return _first_line(error)
    return "not read with its series"


def pixel_chunks(volume: OpenVolume, processor, chunk: int) -> Iterator[Tuple[int, torch.Tensor]]:
    """`(first slice index, pixel_values (n, 3, S, S))` over the volume, `chunk` slices at a time."""
    if volume.volume is None:
        yield 0, processor(volume.image_path, return_tensors="pt")["pixel_values"]
        return
    for start in range(0, volume.volume.hu.shape[0], chunk):
        yield start, processor(volume_slices(volume.volume, start, start + chunk), return_tensors="pt")["pixel_values"]
