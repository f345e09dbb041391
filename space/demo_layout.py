"""The page: two tabs (one slice, a whole series), their overlays and captions, and the endpoints."""

import gradio as gr

import demo_settings as settings
from demo_components import DecisionLabel, OverlayImage
from demo_predictor import Predictor
from demo_text import NO_MODEL_ERROR, NO_MODEL_HELP, NOTICE
from demo_uploads import count_uploads, delete_upload
from modeling.explain import gradcam_title
from modeling.inference import format_threshold


def no_model(dicom_file, window_center=None, window_width=None):
    delete_upload(dicom_file)
    raise gr.Error(NO_MODEL_ERROR)


def no_model_series(files):
    for file in files or []:
        delete_upload(file)
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
                label=f"CT DICOM slice (any extension, up to {settings.MAX_SLICE_MB} MB; deleted after reading)",
                file_count="single",
                elem_id="dicom-file",
            )
            examples = sorted(settings.EXAMPLES_DIR.glob("*.dcm"))
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
                    f"(up to {settings.MAX_SERIES_MB} MB and {settings.MAX_SLICES} slices; deleted after reading)"
                ),
                file_count="multiple",
                elem_id="series-files",
            )
            examples = sorted(settings.EXAMPLES_DIR.glob("*.zip"))
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
    cache = gr.State(time_to_live=settings.SERIES_STATE_SECONDS)
    return dict(files=files, run=run, label=label, metadata=metadata, curve=curve, slice_index=slice_index,
                slice_note=slice_note, attention=attention, gradcam=gradcam, cache=cache)


def build_demo(predictor: Predictor = None) -> gr.Blocks:
    """The page; without a predictor it explains how to configure one and both endpoints say so."""
    threshold = f" at threshold {format_threshold(predictor.threshold)}" if predictor else ""
    with gr.Blocks(title="PDAC lymph-node metastasis: CT demo", delete_cache=settings.CACHE_SWEEP_SECONDS) as blocks:
        gr.Markdown("# Lymph-node metastasis of pancreatic cancer on CT")
        gr.Markdown(NOTICE, elem_id="notice")
        gr.Markdown(predictor.describe() if predictor else NO_MODEL_HELP, elem_id="model-info")
        with gr.Tab("One slice"):
            one = _slice_tab(predictor, threshold)
        with gr.Tab("Whole series"):
            series = _series_tab(predictor, threshold)
        # one model for both endpoints: at most settings.CONCURRENCY_LIMIT requests use it at once
        on_model = dict(concurrency_limit=settings.CONCURRENCY_LIMIT, concurrency_id="model")
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
    count_uploads(blocks)
    blocks.queue(max_size=settings.QUEUE_SIZE)
    return blocks
