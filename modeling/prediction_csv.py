"""The two CSVs of `modeling.predict`: their columns, one item's rows, and a writer that flushes each item.

SLICES.csv has a row per file or slice (`CSV_COLUMNS`), SERIES.csv a row per volume (`SERIES_COLUMNS`);
`modeling.predict`'s docstring says what each column holds.
"""

import csv
from dataclasses import dataclass, field
from typing import List, Optional

CSV_COLUMNS = (
    "path", "status", "probability", "label", "error", "warning", "explanation", "series", "slice_index", "z_mm"
)
SERIES_COLUMNS = (
    "source", "series", "n_slices", "probability", "top_slice_index", "top_z_mm", "label", "status", "error"
)
# Six decimals of a probability and 0.01 mm of a position are enough to rank slices and find one by
# its position; the label is decided on the float64 probability, not on the written one.
PROBABILITY_FORMAT = ".6f"
POSITION_MM_FORMAT = ".2f"


def slice_row(**values) -> dict:
    """A SLICES.csv row: `values`, every other column empty."""
    row = dict.fromkeys(CSV_COLUMNS, "")
    row.update(values)
    return row


def series_row(**values) -> dict:
    """A SERIES.csv row: `values`, every other column empty."""
    row = dict.fromkeys(SERIES_COLUMNS, "")
    row.update(values)
    return row


@dataclass
class ItemResult:
    """What one work item adds to the two CSVs, and the warnings it prints."""

    slice_rows: List[dict] = field(default_factory=list)
    series_rows: List[dict] = field(default_factory=list)
    messages: List[str] = field(default_factory=list)


class ResultWriter:
    """SLICES.csv (and SERIES.csv when a path is given), a header first and each item's rows as it is
    written, flushed: a run that stops half-way (interrupted, out of memory) leaves what it scored."""

    def __init__(self, slices_path: str, series_path: Optional[str] = None):
        self.handles, self.writers = [], []
        try:
            for path, columns in ((slices_path, CSV_COLUMNS), (series_path, SERIES_COLUMNS)):
                if path is None:
                    self.writers.append(None)
                    continue
                handle = open(path, "w", newline="")
                self.handles.append(handle)
                self.writers.append(csv.DictWriter(handle, fieldnames=columns))
                self.writers[-1].writeheader()
                handle.flush()
        except BaseException:  # the second file cannot be opened: the first is not left open
            self.close()
            raise

    def write(self, result: ItemResult) -> None:
        for writer, rows in zip(self.writers, (result.slice_rows, result.series_rows), strict=True):
            if writer is not None:
                writer.writerows(rows)
        for handle in self.handles:
            handle.flush()

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        for handle in self.handles:
            handle.close()
