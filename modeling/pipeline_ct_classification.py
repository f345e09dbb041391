"""A transformers pipeline that takes CT slices as they come: DICOM files and datasets, HU arrays,
windowed PNGs.

Saved with the model as remote code: config.json names it under `custom_pipelines`, so in any
Python, without this repository:

    classify = pipeline(model=model_dir, trust_remote_code=True)
    classify("slice.dcm")  # [{"label": "metastatic", "score": P(metastatic)}]

The score is the sigmoid of the model's logit, as for transformers' image-classification pipeline,
but taken in float64: float32 reads every logit above about 17 as 1.0, and the model's
`decision_threshold` is chosen in float64 (`score >= model.config.decision_threshold` is the call).
"""

import os

from transformers.pipelines import ImageClassificationPipeline


class CTMetastasisClassificationPipeline(ImageClassificationPipeline):
    """`ImageClassificationPipeline` whose inputs go to the CT image processor as they are.

    Each input is one slice: a path to a DICOM file (any extension) or to a windowed PNG/JPEG/TIFF,
    a `pydicom.Dataset`, a numpy array in Hounsfield units `(h, w)`, or a windowed `PIL.Image`; a
    list of them is a batch. `window_center`, `window_width` (HU) and `frame` (of a multi-frame
    DICOM) override the processor's for one call. A file that is not a usable CT slice raises a
    `ValueError` with a one-line reason.
    """

    def _sanitize_parameters(self, window_center=None, window_width=None, frame=None, **kwargs):
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(**kwargs)
        preprocess_params.pop("timeout", None)  # no URLs: nothing is fetched
        for name, value in (("window_center", window_center), ("window_width", window_width), ("frame", frame)):
            if value is not None:
                preprocess_params[name] = value
        return preprocess_params, forward_params, postprocess_params

    def preprocess(self, image, window_center=None, window_width=None, frame=None):
        if isinstance(image, os.PathLike):
            image = os.fspath(image)
        model_inputs = self.image_processor(
            image, window_center=window_center, window_width=window_width, frame=frame, return_tensors="pt"
        )
        return model_inputs.to(self.dtype)

    def postprocess(self, model_outputs, function_to_apply=None, top_k=5):
        model_outputs["logits"] = model_outputs["logits"].double()  # the sigmoid below is then float64
        return super().postprocess(model_outputs, function_to_apply=function_to_apply, top_k=top_k)
