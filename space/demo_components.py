"""Two Gradio components with one change each: a Label headed by the decision, an Image written atomically."""

import hashlib
import io
import os
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np
from gradio.components.label import LabelData
from gradio.data_classes import ImageData
from PIL import Image


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
