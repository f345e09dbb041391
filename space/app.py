"""Gradio demo: upload one CT DICOM slice, see P(metastatic lymph node) with attention and Grad-CAM overlays.

Run from the repository (`python space/app.py --model RUN/best`) or as a Hugging Face Space, where
`modeling/` sits beside this file. The model comes from `--model`, else env `MODEL_ID` (Hub id or
local folder, `MODEL_REVISION` pins a Hub commit), else the quickstart's output if present.

Patient data: only an allow-list of technical tags is ever shown, nothing is logged, and each
upload is deleted as soon as it has been read.
"""

import argparse
import atexit
import filecmp
import os
import shutil
import sys
import tempfile
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

import gradio as gr  # noqa: E402
from gradio.components.label import LabelData  # noqa: E402
from transformers import AutoImageProcessor, AutoModelForImageClassification  # noqa: E402

from modeling.ct_dicom import read_ct_hu, read_dicom, technical_metadata  # noqa: E402
from modeling.explain import explain, overlay  # noqa: E402

QUICKSTART_MODEL = HERE.parent / "quickstart_output" / "run" / "best"
EXAMPLES_DIR = HERE / "examples"
MAX_FILE_SIZE = "20mb"
CONCURRENCY_LIMIT = 2  # requests computed at once; the rest wait in the queue
QUEUE_SIZE = 16  # waiting requests beyond this are refused, so a burst cannot exhaust memory
METASTATIC, NON_METASTATIC = "metastatic", "non-metastatic"

NOTICE = (
    "**Research use only. Not a medical device**: not for diagnosis or treatment decisions. "
    "The maps show where the model looked, not where disease is."
)
NO_MODEL_HELP = """**No model is configured.** Point the demo at a trained model in one of these ways:

- `python space/app.py --model RUN/best` (a folder written by `training.train`);
- `MODEL_ID=<Hub id or folder> python space/app.py` (with `MODEL_REVISION=<commit>` to pin a Hub model);
- `make demo` (trains on the phantom, then serves `quickstart_output/run/best`)."""


def _upload_folder() -> Path:
    return Path(os.environ["GRADIO_TEMP_DIR"]).resolve()


def _is_example_copy(path: Path) -> bool:
    """Gradio caches each example once at start-up; deleting that copy would break the example."""
    example = EXAMPLES_DIR / path.name
    return example.is_file() and path.is_file() and filecmp.cmp(path, example, shallow=False)


def _delete_upload(path) -> None:
    """Delete `path` if Gradio stored it (an upload); never touch files the caller owns."""
    if path is None:
        return
    path = Path(path).resolve()
    if _upload_folder() in path.parents and not _is_example_copy(path):
        path.unlink(missing_ok=True)


class Predictor:
    """The model and its processor, loaded once; `predict` is the `/predict` endpoint."""

    def __init__(self, source: str, revision: str = None):
        self.source = str(source)
        self.model = AutoModelForImageClassification.from_pretrained(
            self.source, revision=revision, trust_remote_code=True
        ).eval()
        self.processor = AutoImageProcessor.from_pretrained(self.source, revision=revision, trust_remote_code=True)
        self.threshold = float(self.model.config.decision_threshold)

    def describe(self) -> str:
        config = self.model.config
        return (
            f"Model `{self.source}`: {config.backbone}, attention `{config.attention}`, "
            f"input {self.processor.size} px, HU window {self.processor.window_center:g} / "
            f"{self.processor.window_width:g}, decision threshold {self.threshold:.2f}."
        )

    def _read(self, path, window_center, window_width):
        """DICOM path -> (`pixel_values` `(1, 3, S, S)`, shown slice `(rows, columns)` in [0, 1], metadata).

        The dataset, which holds identifying tags, never leaves this function.
        """
        ds = read_dicom(path)
        hu = read_ct_hu(ds)  # refuses what is not one CT slice; decoded once, for the model and the background
        pixel_values = self.processor(hu, return_tensors="pt")["pixel_values"]
        background = self.processor.to_unit_range(hu, window_center, window_width)
        return pixel_values, background, technical_metadata(ds)

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
        path = getattr(dicom_file, "name", dicom_file)
        if not os.path.exists(path):  # deleted after an earlier request; the name itself may identify
            raise gr.Error("The uploaded file is no longer on the server (uploads are deleted after reading); upload it again.")
        try:
            pixel_values, background, metadata = self._read(path, window_center, window_width)
        except ValueError as error:
            raise gr.Error(str(error), print_exception=False) from None
        finally:
            _delete_upload(path)
        maps = explain(self.model, pixel_values)
        probability = float(maps["probability"][0])
        decision = METASTATIC if probability >= self.threshold else NON_METASTATIC
        label = {
            "label": decision,
            "confidences": [
                {"label": METASTATIC, "confidence": probability},
                {"label": NON_METASTATIC, "confidence": 1.0 - probability},
            ],
        }
        attention = maps["attention"]
        # maps are at model resolution; overlay upsamples them onto the slice's native grid
        attention_image = None if attention is None else overlay(background, attention[0])
        gradcam_image = overlay(background, maps["gradcam"][0])
        return label, attention_image, gradcam_image, metadata


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


def no_model(dicom_file, window_center=None, window_width=None):
    _delete_upload(dicom_file)
    raise gr.Error("No model is configured: start the app with --model PATH or set MODEL_ID.")


def build_demo(predictor: Predictor = None) -> gr.Blocks:
    """The page; without a predictor it explains how to configure one and `/predict` says so."""
    processor_window = (
        (predictor.processor.window_center, predictor.processor.window_width) if predictor else (60.0, 400.0)
    )
    with gr.Blocks(title="PDAC lymph-node metastasis: CT slice demo", delete_cache=(300, 600)) as blocks:
        gr.Markdown("# Lymph-node metastasis of pancreatic cancer on one CT slice")
        gr.Markdown(NOTICE, elem_id="notice")
        gr.Markdown(predictor.describe() if predictor else NO_MODEL_HELP, elem_id="model-info")
        with gr.Row():
            with gr.Column(scale=1):
                dicom_file = gr.File(
                    label=f"CT DICOM slice (any extension, up to {MAX_FILE_SIZE.upper()}; deleted after reading)",
                    file_count="single",
                    elem_id="dicom-file",
                )
                examples = sorted(EXAMPLES_DIR.glob("*.dcm"))
                if examples:
                    gr.Examples([[str(path)] for path in examples], inputs=[dicom_file], label="Synthetic phantom slices")
                with gr.Row():
                    # start at the model's own window; changing them redraws the background only
                    window_center = gr.Number(processor_window[0], label="Display window centre (HU)")
                    window_width = gr.Number(processor_window[1], label="Display window width (HU)")
                run = gr.Button("Predict", variant="primary")
                label = DecisionLabel(
                    label=f"Decision at threshold {predictor.threshold:.2f}" if predictor else "Decision",
                    elem_id="probability",
                )
                metadata = gr.JSON(label="Technical metadata (allow-listed tags only)")
            with gr.Column(scale=2):
                with gr.Row():
                    attention = gr.Image(label="Spatial attention", format="png", elem_id="attention-overlay")
                    gradcam = gr.Image(label="Grad-CAM (last backbone stage)", format="png", elem_id="gradcam-overlay")
        run.click(
            predictor.predict if predictor else no_model,
            inputs=[dicom_file, window_center, window_width],
            outputs=[label, attention, gradcam, metadata],
            api_name="predict",
            concurrency_limit=CONCURRENCY_LIMIT,
        ).then(lambda: None, outputs=dicom_file, api_name=False)  # the upload is gone; clear its box
    blocks.queue(max_size=QUEUE_SIZE)
    return blocks


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
