"""The demo's limits and places, in one file: what an upload may be, and how much the server takes on at once."""

from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES_DIR = HERE / "examples"
QUICKSTART_MODEL = HERE.parent / "quickstart_output" / "run" / "best"
MAX_FILE_SIZE = "300mb"  # Gradio's limit on any one upload (a series' zip or NIfTI)
MAX_SLICE_MB = 20  # one file on `/predict`
MAX_SERIES_MB = 300  # all files of one `/predict_series` upload together
MAX_SLICES = 300  # slices of one series (its page keeps each on the model grid: `SeriesCache`)
ZIP_EXPANSION = 4  # a series' zip may unpack to this many times MAX_SERIES_MB (DICOM compresses about 2-4x)
SERIES_BATCH_SIZE = 16
SERIES_STATE_SECONDS = 1800  # a series' cached slices are dropped this long after its last use
CONCURRENCY_LIMIT = 2  # requests computed at once; the rest wait in the queue
QUEUE_SIZE = 16  # waiting requests beyond this are refused, so a burst cannot exhaust memory
# Gradio's sweep of its cache folder: every 5 minutes, files older than 10 (uploads no request read)
CACHE_SWEEP_SECONDS = (300, 600)
