"""The DICOM pipeline saved with the model: `pipeline(model=dir, trust_remote_code=True)` in a process
that cannot import this repository takes a DICOM path, a pydicom dataset, an HU array and a windowed
PNG, and its "metastatic" score is the sigmoid of the model's logit."""

import json
import textwrap

import numpy as np
import pytest
import torch
from conftest import run_user_script, user_inputs
from PIL import Image

from modeling import PIPELINE_TASK, CTImageProcessor, DualAttentionResNetForImageClassification
from training.dicom_writer import ct_dataset

# A fresh interpreter in an empty folder; `sys.modules[name] = None` makes importing the repo fail.
USER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling"] = None
    sys.modules["training"] = None
    import numpy as np
    import pydicom
    from transformers import pipeline

    model_dir, dicom_path, png_path, hu_path, localizer_path = sys.argv[1:]
    classify = pipeline(model=model_dir, trust_remote_code=True)
    results = {
        "dicom_path": classify(dicom_path),
        "dataset": classify(pydicom.dcmread(dicom_path)),
        "hu_array": classify(np.load(hu_path)),
        "png": classify(png_path),
        "narrow_window": classify(dicom_path, window_center=40, window_width=80),
        "batch": classify([dicom_path, png_path]),
    }
    try:
        classify(png_path + ".missing.dcm")
    except ValueError as error:
        results["refusal"] = str(error)
    try:
        results["localizer_scored"] = classify(localizer_path)
    except ValueError as error:
        results["localizer_refusal"] = str(error)
    print(json.dumps({
        "results": results,
        "pipeline_module": type(classify).__module__,
        "task": classify.task,
        "repo_imported": [name for name in ("modeling", "training") if sys.modules.get(name) is not None],
    }))
    """
)


@pytest.fixture(scope="module")
def pipeline_run(tiny_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline_user")
    hu, dicom_path, png_path = user_inputs(work, seed=1)
    hu_path = work / "slice_hu.npy"
    np.save(hu_path, hu.astype(np.float32))
    scout = ct_dataset(hu)
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.save_as(work / "scout.dcm", enforce_file_format=True)
    report = run_user_script(USER_SCRIPT, work, tiny_model_dir, dicom_path, png_path, hu_path, work / "scout.dcm")
    return {"dicom": dicom_path, "png": png_path, "hu": hu}, report


def _expected_probability(model_dir, image, **processor_kwargs):
    model = DualAttentionResNetForImageClassification.from_pretrained(model_dir)
    processor = CTImageProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        logits = model(**processor(image, return_tensors="pt", **processor_kwargs)).logits
    return torch.sigmoid(logits)[0, 0].item()


def test_saved_model_names_its_pipeline_and_carries_the_file(tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["custom_pipelines"] == {
        PIPELINE_TASK: {
            "impl": "pipeline_ct_classification.CTMetastasisClassificationPipeline",
            "pt": ["AutoModelForImageClassification"],
            "type": "image",
        }
    }
    assert (tiny_model_dir / "pipeline_ct_classification.py").is_file()


def test_pipeline_runs_as_remote_code_without_the_repo(pipeline_run):
    _, report = pipeline_run
    assert report["repo_imported"] == []
    assert report["pipeline_module"].startswith("transformers_modules.")
    assert report["task"] == PIPELINE_TASK


def test_pipeline_score_is_the_sigmoid_for_every_kind_of_input(pipeline_run, tiny_model_dir):
    inputs, report = pipeline_run
    results = report["results"]
    dicom_probability = _expected_probability(tiny_model_dir, inputs["dicom"])
    png_probability = _expected_probability(tiny_model_dir, Image.open(inputs["png"]))
    narrow_probability = _expected_probability(tiny_model_dir, inputs["dicom"], window_center=40, window_width=80)

    for kind in ("dicom_path", "dataset", "hu_array"):
        [prediction] = results[kind]
        assert prediction["label"] == "metastatic"
        assert prediction["score"] == pytest.approx(dicom_probability, abs=1e-6), kind
    assert results["png"][0]["score"] == pytest.approx(png_probability, abs=1e-6)
    assert results["narrow_window"][0]["score"] == pytest.approx(narrow_probability, abs=1e-6)
    assert narrow_probability != pytest.approx(dicom_probability, abs=1e-6)  # the window reached the processor
    assert [r[0]["score"] for r in results["batch"]] == pytest.approx([dicom_probability, png_probability], abs=1e-6)


def test_pipeline_refuses_a_missing_file_in_one_line(pipeline_run):
    _, report = pipeline_run
    assert "missing.dcm" in report["results"]["refusal"] and "\n" not in report["results"]["refusal"]


def test_pipeline_score_is_taken_in_float64_so_a_threshold_near_one_can_be_missed(tmp_path):
    """float32 reads a logit of 19 as probability 1.0, above any threshold below 1; the pipeline's
    score is 1 - 5.6e-9, below the threshold 1 - 1e-9 that evaluate may choose on a saturated split."""
    from conftest import TINY_SIZE, tiny_model
    from transformers import pipeline

    model = tiny_model()
    model.classifier.weight.data.zero_()
    model.classifier.bias.data.fill_(19.0)
    model.save_pretrained(tmp_path)
    CTImageProcessor(size=TINY_SIZE).save_pretrained(tmp_path)
    (result,) = pipeline(model=str(tmp_path), trust_remote_code=True)(np.zeros((32, 32), np.float32))
    assert result["label"] == "metastatic" and result["score"] == pytest.approx(1 / (1 + np.exp(-19.0)), abs=1e-15)
    assert result["score"] < 1 - 1e-9


def test_pipeline_refuses_a_localizer(pipeline_run):
    """The remote-code pipeline (its own copy of ct_dicom) refuses a scout rather than scoring it."""
    _, report = pipeline_run
    assert "localizer_scored" not in report["results"]
    assert report["results"]["localizer_refusal"] == "localizer (scout) image"
