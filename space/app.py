"""Gradio demo: upload a CT slice or series, see P(metastatic lymph node) with attention and Grad-CAM overlays.

Run from the repository (`python space/app.py --model RUN/best`) or as a Hugging Face Space, where
`modeling/` sits beside this file. The model comes from `--model`, else env `MODEL_ID` (Hub id or
local folder, `MODEL_REVISION` pins a Hub commit), else the quickstart's output if present.

Two endpoints: `/predict` (one DICOM slice) and `/predict_series` (the DICOM slices of one series, a
zip of them, or one NIfTI volume; the series' probability is the maximum over its slices).

Patient data: only an allow-list of technical tags is ever shown, nothing is logged, and each
upload (and whatever a zip held) is deleted as soon as it has been read.
"""

import argparse
import asyncio
import atexit
import filecmp
import hashlib
import io
import os
import shutil
import sys
import tempfile
import threading
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
# modeling/ is beside app.py in the Space and one level up in the repository.
for _root in (HERE, HERE.parent):
    if (_root / "modeling").is_dir():
        if str(_root) not in sys.path:
            sys.path.insert(0, str(_root))
        break

# Uploads and rendered overlays go to a private folder removed at exit, not the shared /tmp/gradio.
if "GRADIO_TEMP_DIR" not in os.environ:
    os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="pdac-demo-")
    atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], ignore_errors=True)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr
import numpy as np
from gradio.components.label import LabelData
from gradio.data_classes import ImageData
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

from modeling import METASTATIC_LABEL as METASTATIC
from modeling import NON_METASTATIC_LABEL as NON_METASTATIC
from modeling.ct_dicom import pixel_spacing_of, read_ct_hu, read_dicom, technical_metadata
from modeling.ct_volume import NIFTI_SUFFIXES, read_ct_volumes
from modeling.explain import explain, gradcam_contents, gradcam_title, overlay
from modeling.inference import (
    display_slice,
    format_threshold,
    grid_pixel_values,
    is_metastatic,
    model_grid,
    probability_curve,
    score_volume,
)

QUICKSTART_MODEL = HERE.parent / "quickstart_output" / "run" / "best"
EXAMPLES_DIR = HERE / "examples"
MAX_FILE_SIZE = "300mb"  # Gradio's limit on any one upload (a series' zip or NIfTI)
MAX_SLICE_MB = 20  # one file on `/predict`
MAX_SERIES_MB = 300  # all files of one `/predict_series` upload together
MAX_SLICES = 300  # slices of one series (its page keeps each on the model grid: `SeriesCache`)
SERIES_BATCH_SIZE = 16
SERIES_STATE_SECONDS = 1800  # a series' cached slices are dropped this long after its last use
CONCURRENCY_LIMIT = 2  # requests computed at once; the rest wait in the queue
QUEUE_SIZE = 16  # waiting requests beyond this are refused, so a burst cannot exhaust memory

NOTICE = (
    "**Research use only. Not a medical device**: not for diagnosis or treatment decisions. "
    "The maps show where the model looked, not where disease is."
)
NO_MODEL_HELP = """**No model is configured.** Point the demo at a trained model in one of these ways:

- `python space/app.py --model RUN/best` (a folder written by `training.train`);
- `MODEL_ID=<Hub id or folder> python space/app.py` (with `MODEL_REVISION=<commit>` to pin a Hub model);
- `make demo` (trains on the phantom, then serves `quickstart_output/run/best`)."""


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.0f} %" if fraction >= 0.01 or fraction == 0 else f"{100 * fraction:.1f} %"


def localisation_caption(localisation, map_name: str, gradcam_stage: int = 4) -> str:
    """One sentence on how often `map_name`'s peak fell on the lesion when the model was evaluated.

    `localisation` is `model.config.localisation` (None when never measured):
    `{"attention"|"gradcam": {"pointing_game", "pointing_game_ci": [lo, hi], "energy_in_mask",
    "n_slices", "chance", "split"}}`, Grad-CAM's with the backbone `stage` it explained then (4 when
    absent); measured on another stage than the model's `gradcam_stage` now, it says nothing of this map.
    """
    measured = (localisation or {}).get(map_name)
    if measured and map_name == "gradcam" and measured.get("stage", 4) != gradcam_stage:
        return (f"This map (backbone stage {gradcam_stage}) was never evaluated: the measured localisation is "
                f"of stage {measured.get('stage', 4)}'s Grad-CAM.")
    if not measured:
        return "This map's localisation was never evaluated: how often it points at the lesion is unknown."
    details = []
    if measured.get("pointing_game_ci"):
        low, high = measured["pointing_game_ci"]
        details.append(f"95 % CI {100 * low:.0f}-{100 * high:.0f} %")
    if measured.get("chance") is not None:
        details.append(f"chance {_percent(measured['chance'])}")
    caption = (
        f"On its evaluation ({measured.get('split', 'held-out')} split, {measured.get('n_slices', '?')} "
        f"metastatic slices), this map's peak fell on the lesion in {_percent(measured['pointing_game'])} of them"
    )
    caption += f" ({'; '.join(details)})." if details else "."
    if measured.get("energy_in_mask") is not None:
        caption += f" {_percent(measured['energy_in_mask'])} of its mass lay inside the lesion."
    return caption


def decision_label(probability: float, threshold: float) -> dict:
    """`{label, confidences}` as `gr.Label` JSON: the decision at `threshold` and both classes' probabilities."""
    return {
        "label": METASTATIC if is_metastatic(probability, threshold) else NON_METASTATIC,
        "confidences": [
            {"label": METASTATIC, "confidence": probability},
            {"label": NON_METASTATIC, "confidence": 1.0 - probability},
        ],
    }


@dataclass
class SeriesCache:
    """One scored series, kept in the page's session so that browsing its slices recomputes nothing else.

    Only what the overlays need, not the HU volume: `grid` `(slices, S, S)` uint16, each slice on the
    model's input grid (`inference.model_grid`, 2 bytes a pixel: 300 slices at 224 px are 30 MB);
    `positions_mm` and `probabilities` `(slices,)`.
    """

    grid: np.ndarray
    positions_mm: np.ndarray
    probabilities: np.ndarray

    @property
    def top(self) -> int:
        return int(np.argmax(self.probabilities))


def _path_of(file) -> str:
    """A `gr.File` value (a path string, or an object with `.name` in older Gradio) or a path -> the path."""
    return os.fspath(file) if isinstance(file, (str, os.PathLike)) else file.name


def _upload_folder() -> Path:
    return Path(os.environ["GRADIO_TEMP_DIR"]).resolve()


def _is_example_copy(path: Path) -> bool:
    """Gradio caches each example once at start-up; deleting that copy would break the example."""
    example = EXAMPLES_DIR / path.name
    return example.is_file() and path.is_file() and filecmp.cmp(path, example, shallow=False)


class UploadCounts(set):
    """Gradio's set of uploaded paths (`Blocks.upload_file_set`) that also counts the uploads per path.

    Gradio stores an upload at `<temp dir>/<sha256 of the bytes>/<file name>`, so clients sending the
    same file share one path. A request that has read an upload releases it, and the path is deleted
    when the last request that uploaded those bytes has read them: no request finds it gone, and none
    is kept longer than its readers need. Uploads no request ever reads (a page closed after
    uploading) are removed by Gradio's cache sweep (`delete_cache`), which subtracts them from this set.

    Gradio's upload route renames the new file onto the shared path and then calls `update`, both on
    the server's event loop with no `await` between them. A request releases from a worker thread, so
    a delete done there could land between that rename and that `update` and remove a file another
    upload has just put back. The delete is therefore run on the event loop too, where it falls either
    before the rename (the upload writes the file anew) or after the `update` (the count keeps it).
    """

    def __init__(self, paths=()):
        super().__init__(paths)
        self.lock = threading.Lock()
        self.pending = Counter()  # resolved path -> uploads of it that no request has read yet
        self.loop = None  # the event loop Gradio's upload route runs on, once an upload has arrived

    def update(self, *groups):
        """Called by Gradio's upload route with the paths it has just written."""
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the server (start-up, tests)
            pass
        with self.lock:
            for group in groups:
                group = list(group)
                self.pending.update(str(Path(path).resolve()) for path in group)
                super().update(group)

    def __isub__(self, swept):
        with self.lock:
            for path in swept:
                self.pending.pop(str(Path(path).resolve()), None)
            return super().__isub__(swept)

    def release(self, path: Path) -> None:
        """One request has read the upload at `path` (resolved): delete it unless another upload awaits it.

        A path this set never saw (a file handed to `predict` directly) has one reader and is deleted.
        """
        with self.lock:
            key = str(path)
            if self.pending[key] > 1:
                self.pending[key] -= 1
                return
            self.pending.pop(key, None)
        try:
            self.loop.call_soon_threadsafe(self._delete_unless_uploaded_again, path)
        except (AttributeError, RuntimeError):  # no server, or its loop has closed
            self._delete_unless_uploaded_again(path)

    def _delete_unless_uploaded_again(self, path: Path) -> None:
        with self.lock:
            if self.pending[str(path)] == 0:
                self.pending.pop(str(path), None)
                path.unlink(missing_ok=True)


UPLOADS = UploadCounts()


def _delete_upload(path) -> None:
    """Release `path` if Gradio stored it (an upload, see `UploadCounts`); never touch files the caller owns."""
    if path is None:
        return
    path = Path(path).resolve()
    if _upload_folder() in path.parents and not _is_example_copy(path):
        UPLOADS.release(path)


class Predictor:
    """The model and its processor, loaded once; `predict` is the `/predict` endpoint."""

    def __init__(self, source: str, revision: str = None):
        self.source = str(source)
        self.model = AutoModelForImageClassification.from_pretrained(
            self.source, revision=revision, trust_remote_code=True
        ).eval()
        self.processor = AutoImageProcessor.from_pretrained(self.source, revision=revision, trust_remote_code=True)
        self.threshold = float(self.model.config.decision_threshold)
        self.threshold_note = getattr(self.model.config, "threshold_note", None)
        self.localisation = getattr(self.model.config, "localisation", None)
        # Grad-CAM hooks the shared model for the length of a forward, so two requests must not
        # overlap there; reading and decoding uploads still run side by side.
        self.model_lock = threading.Lock()

    def describe(self) -> str:
        config = self.model.config
        return (
            f"Model `{self.source}`: {config.backbone}, attention `{config.attention}`, "
            f"input {self.processor.size} px, HU window {self.processor.window_center:g} / "
            f"{self.processor.window_width:g}, decision threshold {format_threshold(self.threshold)}."
            + (f" {self.threshold_note}" if self.threshold_note else "")
        )

    def caption(self, map_name: str) -> str:
        config = self.model.config
        stage = getattr(config, "gradcam_stage", 4)
        caption = localisation_caption(self.localisation, map_name, stage)
        if map_name != "gradcam":
            return caption
        contents = gradcam_contents(stage, getattr(config, "spatial_attention_stages", [4]), config.attention)
        return f"{caption} {contents}"

    def _read(self, path, window_center, window_width):
        """DICOM path -> (`pixel_values` `(1, 3, S, S)`, shown slice in [0, 1], metadata).

        The dataset, which holds identifying tags, never leaves this function.
        """
        if os.path.getsize(path) > MAX_SLICE_MB * 2**20:
            raise ValueError(
                f"file too large ({os.path.getsize(path) / 2**20:.0f} MB; one slice may be up to {MAX_SLICE_MB} MB)"
            )
        ds = read_dicom(path)
        hu = read_ct_hu(ds)  # refuses what is not one CT slice; decoded once, for the model and the background
        return *self._model_input(hu, pixel_spacing_of(ds), window_center, window_width), technical_metadata(ds)

    def _model_input(self, hu, pixel_spacing, window_center=None, window_width=None):
        """One slice in HU `(rows, columns)` with its `(row, column)` spacing in mm (or None) ->
        (`pixel_values` `(1, 3, S, S)`, the slice its maps are shown on, in [0, 1]: `inference.display_slice`)."""
        pixel_values = self.processor(hu, pixel_spacing=pixel_spacing, return_tensors="pt")["pixel_values"]
        return pixel_values, display_slice(self.processor, hu, pixel_spacing, window_center, window_width)

    def predict(self, dicom_file, window_center=None, window_width=None):
        """A CT DICOM path -> (label, attention overlay or None, Grad-CAM overlay, metadata).

        `window_center`/`window_width` change the shown background only; the model always sees
        the processor's stored window.
        """
        if dicom_file is None:
            raise gr.Error("Upload a CT DICOM file first.")
        if window_width is not None and window_width <= 0:
            _delete_upload(dicom_file)
            raise gr.Error(f"display window width must be positive, got {window_width:g}")
        path = _path_of(dicom_file)
        if not os.path.exists(path):  # deleted after an earlier request; the name itself may identify
            raise gr.Error(
                "The uploaded file is no longer on the server (uploads are deleted after reading); upload it again."
            )
        try:
            pixel_values, background, metadata = self._read(path, window_center, window_width)
        except ValueError as error:
            raise gr.Error(str(error), print_exception=False) from None
        finally:
            _delete_upload(path)
        probability, attention_image, gradcam_image = self._explain(pixel_values, background)
        return decision_label(probability, self.threshold), attention_image, gradcam_image, metadata

    def _explain(self, pixel_values, background):
        """One slice's `pixel_values` `(1, 3, S, S)` and shown slice in [0, 1] -> (probability, attention
        overlay or None, Grad-CAM overlay), the overlays `uint8` RGB at the shown slice's size."""
        with self.model_lock:
            maps = explain(self.model, pixel_values)
        attention = maps["attention"]
        # maps are at model resolution; overlay resizes them onto the shown slice's grid
        attention_image = None if attention is None else overlay(background, attention[0])
        return float(maps["probability"][0]), attention_image, overlay(background, maps["gradcam"][0])

    def predict_series(self, files):
        """Uploaded files of one CT series -> (label, probability curve, attention overlay or None, Grad-CAM
        overlay, metadata, slider, slice note, `SeriesCache`), the overlays those of the most suspicious slice.

        `files`: the DICOM slices of one series (non-CT files among them are skipped and listed), one
        `.zip` of them, or one NIfTI volume. The series' probability is the maximum over its slices.
        """
        paths = [_path_of(file) for file in files or []]
        if not paths:
            raise gr.Error("Upload the DICOM slices of one CT series, a .zip of them, or one NIfTI volume.")
        try:
            volume = read_series(paths)
        except ValueError as error:
            raise gr.Error(str(error), print_exception=False) from None
        finally:
            for path in paths:
                _delete_upload(path)
        try:
            with self.model_lock:
                probabilities = score_volume(self.model, self.processor, volume, SERIES_BATCH_SIZE)
            grid = model_grid(self.processor, volume, SERIES_BATCH_SIZE)
        except ValueError as error:  # e.g. no pixel spacing where the processor resamples to one
            raise gr.Error(str(error), print_exception=False) from None
        cache = SeriesCache(grid, np.asarray(volume.positions_mm, dtype=np.float64), probabilities)
        top = cache.top
        if volume.skipped:
            names = ", ".join(name for name, _ in volume.skipped[:5]) + (" ..." if len(volume.skipped) > 5 else "")
            gr.Warning(f"{len(volume.skipped)} file(s) skipped (not CT slices of this series): {names}")
        metadata = {
            "slices": len(probabilities),
            "spacing_mm": {"slice": volume.spacing_mm[0], "row": volume.spacing_mm[1], "column": volume.spacing_mm[2]},
            "z_range_mm": [float(cache.positions_mm[0]), float(cache.positions_mm[-1])],
            "most_suspicious_slice": {"index": top, "z_mm": float(cache.positions_mm[top])},
            "technical": volume.technical,
            "skipped_files": [f"{name}: {reason}" for name, reason in volume.skipped],
            # the volume's other notes (gaps, orientation); its "skipped ..." notes are the list above
            "notes": [note for note in volume.warnings if not note.startswith("skipped ")],
        }
        probability = float(cache.probabilities[top])
        curve = probability_curve(cache.positions_mm, cache.probabilities, self.threshold)
        attention_image, gradcam_image, note = self.show_series_slice(top, cache)
        slider = gr.update(minimum=0, maximum=len(cache.probabilities) - 1, value=top)
        return (decision_label(probability, self.threshold), curve, attention_image, gradcam_image, metadata,
                slider, note, cache)

    def show_series_slice(self, index, cache: SeriesCache):
        """Slice `index` of a scored series -> (attention overlay or None, Grad-CAM overlay, one-line note);
        only this slice goes through the model again, for its maps."""
        if cache is None:
            raise gr.Error("Predict a series first; its slices are kept only while this page is open.")
        index = int(np.clip(int(index), 0, len(cache.probabilities) - 1))
        pixel_values, shown = grid_pixel_values(self.processor, cache.grid[index : index + 1])
        _, attention_image, gradcam_image = self._explain(pixel_values, shown[0])
        note = (f"Slice {index + 1} of {len(cache.probabilities)} (z = {cache.positions_mm[index]:.1f} mm): "
                f"P(metastatic) = {cache.probabilities[index]:.3f}"
                + (" (the most suspicious slice)" if index == cache.top else ""))
        return attention_image, gradcam_image, note


def read_series(paths: list):
    """Uploaded files -> the one `CTVolume` they hold; a one-line `ValueError` for anything over the
    demo's limits, for no CT series, and for several series (the user is asked to upload one)."""
    missing = [path for path in paths if not os.path.exists(path)]
    if missing:  # deleted after an earlier request; the names themselves may identify
        raise ValueError("the uploaded files are no longer on the server (uploads are deleted after reading); "
                         "upload them again")
    total = sum(os.path.getsize(path) for path in paths)
    if total > MAX_SERIES_MB * 2**20:
        raise ValueError(f"upload too large ({total / 2**20:.0f} MB; a series may be up to {MAX_SERIES_MB} MB)")
    volume_files = [path for path in paths if str(path).lower().endswith((".zip", *NIFTI_SUFFIXES))]
    if volume_files and len(paths) > 1:
        raise ValueError("upload one .zip or one NIfTI volume on its own, or the DICOM slices themselves")
    if len(paths) > MAX_SLICES:
        raise ValueError(f"{len(paths)} files; a series may have up to {MAX_SLICES} slices")
    if volume_files:
        _check_volume_file(volume_files[0])
    volumes = read_ct_volumes(volume_files[0] if volume_files else list(paths))
    if len(volumes) > 1:
        found = ", ".join(f"{volume.hu.shape[0]} slices" for volume in volumes)
        raise ValueError(f"the upload holds {len(volumes)} CT series ({found}); upload one series at a time")
    volume = volumes[0]
    if volume.hu.shape[0] > MAX_SLICES:
        raise ValueError(f"the series has {volume.hu.shape[0]} slices; the demo takes up to {MAX_SLICES}")
    return volume


def _check_volume_file(path) -> None:
    """Refuse a zip or NIfTI that would expand beyond the demo's limits, before anything is extracted or decoded."""
    if str(path).lower().endswith(".zip"):
        try:
            with zipfile.ZipFile(path) as archive:
                members = [member for member in archive.infolist() if not member.is_dir()]
        except (zipfile.BadZipFile, OSError) as error:
            raise ValueError(f"not a readable zip file ({type(error).__name__})") from None
        expanded = sum(member.file_size for member in members)  # the reader stops at each member's stated size
        if len(members) > MAX_SLICES or expanded > 4 * MAX_SERIES_MB * 2**20:
            raise ValueError(f"the zip holds {len(members)} files, {expanded / 2**20:.0f} MB; a series may have up to "
                             f"{MAX_SLICES} slices and {4 * MAX_SERIES_MB} MB unpacked")
        return
    import nibabel  # only NIfTI uploads need it; read_ct_volumes says so if it is missing

    try:
        shape = nibabel.load(path).shape  # the header only
    except Exception as error:  # noqa: BLE001 - nibabel raises many types on damaged files
        raise ValueError(f"unreadable NIfTI file, truncated or corrupt ({type(error).__name__})") from None
    if int(np.prod(shape)) > MAX_SLICES * 512 * 512:
        raise ValueError(f"the NIfTI volume is {' x '.join(map(str, shape))} voxels; the demo takes up to "
                         f"{MAX_SLICES} slices of 512 x 512")


class DecisionLabel(gr.Label):
    """A `gr.Label` whose heading is the decision at the model's threshold, not the likelier class.

    `postprocess` takes the label JSON itself (`{"label": decision, "confidences": [...]}`), the same
    shape API clients receive, because `gr.Label` would put the most probable class in the heading.
    """

    is_template = True  # drawn by the frontend's Label component

    def postprocess(self, value):
        if isinstance(value, dict) and isinstance(value.get("confidences"), list):
            return LabelData(**value)
        return super().postprocess(value)


class OverlayImage(gr.Image):
    """A `gr.Image` that writes its PNG atomically.

    Gradio names an output file after a hash of its bytes and rewrites it in place, so two requests
    that produce the same overlay (the same slice uploaded twice) would truncate the file while the
    first one's client is downloading it. Here the PNG is written beside its final name and moved
    onto it, so every reader sees a whole file.
    """

    is_template = True  # drawn by the frontend's Image component

    def postprocess(self, value):
        if not isinstance(value, np.ndarray):
            return super().postprocess(value)
        buffer = io.BytesIO()
        Image.fromarray(value).save(buffer, format="PNG")
        data = buffer.getvalue()
        folder = Path(self.GRADIO_CACHE) / hashlib.sha256(data).hexdigest()
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".part", delete=False) as part:
            part.write(data)
        os.replace(part.name, folder / "overlay.png")
        return ImageData(path=str(folder / "overlay.png"), orig_name="overlay.png")


NO_MODEL_ERROR = "No model is configured: start the app with --model PATH or set MODEL_ID."


def no_model(dicom_file, window_center=None, window_width=None):
    _delete_upload(dicom_file)
    raise gr.Error(NO_MODEL_ERROR)


def no_model_series(files):
    for file in files or []:
        _delete_upload(file)
    raise gr.Error(NO_MODEL_ERROR)


def _caption(predictor, map_name: str, elem_id: str) -> gr.Markdown:
    """The overlay's measured localisation (or "never evaluated") under it."""
    return gr.Markdown(predictor.caption(map_name) if predictor else "", elem_id=elem_id)


def _overlays(predictor, prefix: str = "") -> tuple:
    """The attention and Grad-CAM overlays side by side, each captioned; element ids start with `prefix`."""
    with gr.Row():
        with gr.Column():
            attention = OverlayImage(label="Spatial attention", format="png", elem_id=f"{prefix}attention-overlay")
            _caption(predictor, "attention", f"{prefix}attention-caption")
        with gr.Column():
            title = gradcam_title(predictor.model.config) if predictor else "Grad-CAM"
            gradcam = OverlayImage(label=title, format="png", elem_id=f"{prefix}gradcam-overlay")
            _caption(predictor, "gradcam", f"{prefix}gradcam-caption")
    return attention, gradcam


def _slice_tab(predictor, threshold: str) -> dict:
    """The "One slice" tab's components, by name."""
    window = (predictor.processor.window_center, predictor.processor.window_width) if predictor else (60.0, 400.0)
    with gr.Row():
        with gr.Column(scale=1):
            dicom_file = gr.File(
                label=f"CT DICOM slice (any extension, up to {MAX_SLICE_MB} MB; deleted after reading)",
                file_count="single",
                elem_id="dicom-file",
            )
            examples = sorted(EXAMPLES_DIR.glob("*.dcm"))
            if examples:
                gr.Examples([[str(path)] for path in examples], inputs=[dicom_file], label="Synthetic phantom slices")
            with gr.Row():
                # start at the model's own window; changing them redraws the background only
                window_center = gr.Number(window[0], label="Display window centre (HU)")
                window_width = gr.Number(window[1], label="Display window width (HU)")
            run = gr.Button("Predict", variant="primary")
            label = DecisionLabel(label=f"Decision{threshold}", elem_id="probability")
            metadata = gr.JSON(label="Technical metadata (allow-listed tags only)")
        with gr.Column(scale=2):
            attention, gradcam = _overlays(predictor)
    return dict(file=dicom_file, window_center=window_center, window_width=window_width, run=run, label=label,
                metadata=metadata, attention=attention, gradcam=gradcam)


def _series_tab(predictor, threshold: str) -> dict:
    """The "Whole series" tab's components, by name."""
    with gr.Row():
        with gr.Column(scale=1):
            files = gr.File(
                label=(
                    "The DICOM slices of one CT series, one .zip of them, or one NIfTI volume "
                    f"(up to {MAX_SERIES_MB} MB and {MAX_SLICES} slices; deleted after reading)"
                ),
                file_count="multiple",
                elem_id="series-files",
            )
            examples = sorted(EXAMPLES_DIR.glob("*.zip"))
            if examples:
                gr.Examples([[[str(path)]] for path in examples], inputs=[files], label="Synthetic phantom series")
            run = gr.Button("Predict series", variant="primary")
            label = DecisionLabel(label=f"Series decision{threshold}", elem_id="series-probability")
            gr.Markdown(
                "The series' probability is the **maximum over its slices**: the most suspicious "
                "slice decides. Its maps are shown first; the slider shows any other slice's.",
                elem_id="series-rule",
            )
            metadata = gr.JSON(label="Series: technical metadata (allow-listed) and skipped files")
        with gr.Column(scale=2):
            curve = gr.Plot(label="P(metastatic) per slice", elem_id="series-curve")
            slice_index = gr.Slider(0, 1, value=0, step=1, label="Slice (inferior to superior)", elem_id="series-slice")
            slice_note = gr.Markdown(elem_id="series-slice-note")
            attention, gradcam = _overlays(predictor, prefix="series-")
    cache = gr.State(time_to_live=SERIES_STATE_SECONDS)
    return dict(files=files, run=run, label=label, metadata=metadata, curve=curve, slice_index=slice_index,
                slice_note=slice_note, attention=attention, gradcam=gradcam, cache=cache)


def build_demo(predictor: Predictor = None) -> gr.Blocks:
    """The page; without a predictor it explains how to configure one and both endpoints say so."""
    threshold = f" at threshold {format_threshold(predictor.threshold)}" if predictor else ""
    with gr.Blocks(title="PDAC lymph-node metastasis: CT demo", delete_cache=(300, 600)) as blocks:
        gr.Markdown("# Lymph-node metastasis of pancreatic cancer on CT")
        gr.Markdown(NOTICE, elem_id="notice")
        gr.Markdown(predictor.describe() if predictor else NO_MODEL_HELP, elem_id="model-info")
        with gr.Tab("One slice"):
            one = _slice_tab(predictor, threshold)
        with gr.Tab("Whole series"):
            series = _series_tab(predictor, threshold)
        # one model for both endpoints: at most CONCURRENCY_LIMIT requests use it at once
        on_model = dict(concurrency_limit=CONCURRENCY_LIMIT, concurrency_id="model")
        one["run"].click(
            predictor.predict if predictor else no_model,
            inputs=[one["file"], one["window_center"], one["window_width"]],
            outputs=[one["label"], one["attention"], one["gradcam"], one["metadata"]],
            api_name="predict",
            **on_model,
        ).then(lambda: None, outputs=one["file"], api_visibility="private")  # the upload is gone; clear its box
        series["run"].click(
            predictor.predict_series if predictor else no_model_series,
            inputs=[series["files"]],
            outputs=[series[name] for name in ("label", "curve", "attention", "gradcam", "metadata", "slice_index",
                                                "slice_note", "cache")],
            api_name="predict_series",
            **on_model,
        ).then(lambda: None, outputs=series["files"], api_visibility="private")
        if predictor:
            series["slice_index"].release(
                predictor.show_series_slice,
                inputs=[series["slice_index"], series["cache"]],
                outputs=[series["attention"], series["gradcam"], series["slice_note"]],
                api_visibility="private",
                **on_model,
            )
    _count_uploads(blocks)
    blocks.queue(max_size=QUEUE_SIZE)
    return blocks


def _count_uploads(blocks: gr.Blocks) -> None:
    """Let Gradio record this page's uploads in `UPLOADS`, which its cache sweep also reads."""
    UPLOADS.update(blocks.upload_file_set)
    blocks.temp_file_sets = [UPLOADS if paths is blocks.upload_file_set else paths for paths in blocks.temp_file_sets]
    blocks.upload_file_set = UPLOADS


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder or Hub id (default: env MODEL_ID, then the quickstart's)")
    parser.add_argument("--revision", default=os.environ.get("MODEL_REVISION"), help="Hub commit to pin")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    return parser.parse_args(argv)


def model_source(args: argparse.Namespace):
    """`--model`, else env MODEL_ID, else the quickstart's model if it exists, else None."""
    if args.model:
        return args.model
    if os.environ.get("MODEL_ID"):
        return os.environ["MODEL_ID"]
    return str(QUICKSTART_MODEL) if (QUICKSTART_MODEL / "config.json").is_file() else None


# Command-line flags only when run as a script; importers (tests, `gradio app.py`) get env and defaults.
ARGS = parse_args(sys.argv[1:] if __name__ == "__main__" else [])
_source = model_source(ARGS)
demo = build_demo(Predictor(_source, ARGS.revision) if _source else None)

if __name__ == "__main__":
    demo.launch(server_name=ARGS.host, server_port=ARGS.port, max_file_size=MAX_FILE_SIZE)
