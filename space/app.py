"""Gradio demo: upload a CT slice or series, see P(metastatic lymph node) with attention and Grad-CAM overlays.

Run from the repository (`python space/app.py --model RUN/best`) or as a Hugging Face Space, where
`modeling/` sits beside this file. The model comes from `--model`, else env `MODEL_ID` (Hub id or
local folder, `MODEL_REVISION` pins a Hub commit), else the quickstart's output if present.

Two endpoints: `/predict` (one DICOM slice) and `/predict_series` (the DICOM slices of one series, a
zip of them, or one NIfTI volume; the series' probability is the maximum over its slices).

Patient data: only an allow-list of technical tags is ever shown, nothing is logged, and each
upload (and whatever a zip held) is deleted as soon as it has been read.

This file reads the settings, builds `demo` and launches it. Beside it: `demo_layout.py` (the page),
`demo_predictor.py` (the endpoints), `demo_series.py` (what a series upload may be),
`demo_uploads.py` (deleting uploads), `demo_components.py`, `demo_text.py`, `demo_settings.py`
(limits); the model, scoring and maps come from `modeling/` (`inference.py`, `explain.py`).
"""

import argparse
import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The demo's modules are beside app.py; modeling/ is beside it in the Space and one level up in the
# repository. Both are put on the path also when app.py is imported (tests, `gradio app.py`).
for _root in (HERE, HERE.parent):
    if (_root / "modeling").is_dir() and str(_root) not in sys.path:
        sys.path.insert(0, str(_root))
        break
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# Uploads and rendered overlays go to a private folder removed at exit, not the shared /tmp/gradio;
# set before Gradio is imported, which reads it.
if "GRADIO_TEMP_DIR" not in os.environ:
    os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="pdac-demo-")
    atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], ignore_errors=True)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import demo_settings as settings
from demo_layout import build_demo
from demo_predictor import Predictor


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
    return str(settings.QUICKSTART_MODEL) if (settings.QUICKSTART_MODEL / "config.json").is_file() else None


# Command-line flags only when run as a script; importers (tests, `gradio app.py`) get env and defaults.
ARGS = parse_args(sys.argv[1:] if __name__ == "__main__" else [])
_source = model_source(ARGS)
demo = build_demo(Predictor(_source, ARGS.revision) if _source else None)

if __name__ == "__main__":
    demo.launch(server_name=ARGS.host, server_port=ARGS.port, max_file_size=settings.MAX_FILE_SIZE)
