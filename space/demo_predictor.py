"""The model behind both endpoints: `Predictor.predict` (`/predict`) and `Predictor.predict_series`
(`/predict_series`), through `modeling.inference` and `modeling.explain` as the command line is."""

import os
import threading
from dataclasses import dataclass

import gradio as gr
import numpy as np
from transformers import AutoImageProcessor, AutoModelForImageClassification

import demo_settings as settings
from demo_series import read_series
from demo_text import localisation_caption
from demo_uploads import delete_upload, path_of
from modeling import METASTATIC_LABEL as METASTATIC
from modeling import NON_METASTATIC_LABEL as NON_METASTATIC
from modeling.ct_dicom import pixel_spacing_of, read_ct_hu, read_dicom, technical_metadata
from modeling.explain import explain, gradcam_contents, overlay
from modeling.inference import (
    display_slice,
    format_threshold,
    grid_pixel_values,
    is_metastatic,
    probability_curve,
    score_volume_and_grid,
)


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
    model's input grid (`inference.score_volume_and_grid`, 2 bytes a pixel: 300 slices at 224 px are 30 MB);
    `positions_mm` and `probabilities` `(slices,)`.
    """

    grid: np.ndarray
    positions_mm: np.ndarray
    probabilities: np.ndarray

    @property
    def top(self) -> int:
        return int(np.argmax(self.probabilities))


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
        size_mb = os.path.getsize(path) / 2**20
        if size_mb > settings.MAX_SLICE_MB:
            raise ValueError(f"file too large ({size_mb:.0f} MB; one slice may be up to {settings.MAX_SLICE_MB} MB)")
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
            delete_upload(dicom_file)
            raise gr.Error(f"display window width must be positive, got {window_width:g}")
        path = path_of(dicom_file)
        if not os.path.exists(path):  # deleted after an earlier request; the name itself may identify
            raise gr.Error(
                "The uploaded file is no longer on the server (uploads are deleted after reading); upload it again."
            )
        try:
            pixel_values, background, metadata = self._read(path, window_center, window_width)
        except ValueError as error:
            raise gr.Error(str(error), print_exception=False) from None
        finally:
            delete_upload(path)
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
        paths = [path_of(file) for file in files or []]
        if not paths:
            raise gr.Error("Upload the DICOM slices of one CT series, a .zip of them, or one NIfTI volume.")
        try:
            volume = read_series(paths)
        except ValueError as error:
            raise gr.Error(str(error), print_exception=False) from None
        finally:
            for path in paths:
                delete_upload(path)
        try:
            with self.model_lock:
                probabilities, grid = score_volume_and_grid(self.model, self.processor, volume,
                                                            settings.SERIES_BATCH_SIZE)
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
