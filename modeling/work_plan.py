"""What `modeling.predict` has to score: the files under its PATHs as a list of work items.

Every process of an `accelerate launch` plans the same list from the same PATHs (the plan reads file
headers only), so splitting it between processes and gathering the results keeps item order.
"""

import dataclasses
import enum
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .ct_volume import DicomSeries, find_files, group_dicom_series, is_volume_file
from .image_processing_ct import IMAGE_SUFFIXES


class WorkKind(enum.Enum):
    """What a work item is, which decides how it is read and which rows it gets."""

    SERIES = "series"  # DICOM files grouped by SeriesInstanceUID: one volume
    VOLUME_FILE = "volume_file"  # a .zip of DICOMs (any number of series) or a NIfTI volume
    IMAGE = "image"  # an already-windowed PNG/JPEG/TIFF slice, read with --images
    REFUSED = "refused"  # a file refused from its header alone: one error row


@dataclass
class WorkItem:
    """One piece of work of kind `kind`. `source` is the PATH argument (a file's folder for file
    arguments); `path` the file of a volume file, image or refusal; `series` the files of a series;
    `reason` why a file was refused; `index` the item's number in the plan."""

    kind: WorkKind
    source: str
    path: str = ""
    series: Optional[DicomSeries] = None
    reason: str = ""
    index: int = 0


def plan_work(paths: Sequence[str], images: bool = False) -> List[WorkItem]:
    """Find the files under `paths` and group them into work items, in the order of their first file."""
    files, sources = [], []
    for path in paths:
        found = find_files([path])
        files += found
        sources += [path if os.path.isdir(path) else (os.path.dirname(path) or ".")] * len(found)
    first_index: Dict[str, int] = {}
    for index, path in enumerate(files):
        first_index.setdefault(path, index)
    ordered: List[Tuple[int, WorkItem]] = []
    dicom_files = []
    for index, (path, source) in enumerate(zip(files, sources, strict=True)):
        if first_index[path] != index:
            continue  # named twice (a file and its folder)
        suffix = os.path.splitext(path)[1].lower()
        if is_volume_file(path):
            ordered.append((index, WorkItem(WorkKind.VOLUME_FILE, path, path=path)))
        elif suffix in IMAGE_SUFFIXES and images:
            ordered.append((index, WorkItem(WorkKind.IMAGE, source, path=path)))
        elif suffix in IMAGE_SUFFIXES:
            reason = f"not a DICOM file ({suffix} image; --images reads already-windowed images)"
            ordered.append((index, WorkItem(WorkKind.REFUSED, source, path=path, reason=reason)))
        else:
            dicom_files.append(path)
    series, skipped = group_dicom_series(dicom_files)
    for group in series:
        first = min(first_index[path] for path in group.paths + [name for name, _ in group.skipped])
        ordered.append((first, WorkItem(WorkKind.SERIES, sources[first], series=group)))
    for path, reason in skipped:
        refused = WorkItem(WorkKind.REFUSED, sources[first_index[path]], path=path, reason=reason)
        ordered.append((first_index[path], refused))
    ordered.sort(key=lambda pair: pair[0])
    return [dataclasses.replace(item, index=number) for number, (_, item) in enumerate(ordered)]
