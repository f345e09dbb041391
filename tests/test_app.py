"""The demo's predict function, in-process: pydicom's bundled CT slice, bad files, patient data."""

import importlib.util
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import gradio as gr
import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from modeling import CTImageProcessor
from modeling.ct_dicom import read_ct_hu
from training.dicom_writer import ct_dataset, write_ct_dicom

APP_PATH = Path(__file__).resolve().parents[1] / "space" / "app.py"
CT_SMALL = get_testdata_file("CT_small.dcm")
IDENTIFYING = {
    "PatientName": "DOE^JANE",
    "PatientID": "MRN-55501234",
    "PatientBirthDate": "19610214",
    "PatientAddress": "12 Harbour Road",
    "InstitutionName": "Saint Example Hospital",
    "AccessionNumber": "ACC-77889900",
    "StudyDate": "20240131",
    "ReferringPhysicianName": "HOUSE^GREGORY",
}


@pytest.fixture(scope="module")
def app(tiny_model_dir):
    """space/app.py imported as a module, configured through MODEL_ID as a Space would be."""
    previous = os.environ.get("MODEL_ID")
    os.environ["MODEL_ID"] = str(tiny_model_dir)
    try:
        spec = importlib.util.spec_from_file_location("space_app", APP_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules["space_app"] = module  # gradio inspects the source of the module's components
        spec.loader.exec_module(module)
    finally:
        if previous is None:
            os.environ.pop("MODEL_ID")
        else:
            os.environ["MODEL_ID"] = previous
    return module


@pytest.fixture(scope="module")
def predictor(app, tiny_model_dir):
    return app.Predictor(tiny_model_dir)


def _probability(label) -> float:
    confidences = {item["label"]: item["confidence"] for item in label["confidences"]}
    assert confidences["metastatic"] + confidences["non-metastatic"] == pytest.approx(1.0)
    return confidences["metastatic"]


def _abdomen_hu(size=96) -> np.ndarray:
    """A water disc with a brighter 'organ' in air: HU `(size, size)`."""
    yy, xx = np.mgrid[:size, :size]
    hu = np.full((size, size), -1000.0)
    hu[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2] = 40.0
    hu[(yy - 0.4 * size) ** 2 + (xx - 0.6 * size) ** 2 < (0.1 * size) ** 2] = 150.0
    return hu


def test_module_level_demo_serves_predict(app):
    assert isinstance(app.demo, gr.Blocks)
    api_names = [fn.api_name for fn in app.demo.fns.values()]
    assert "predict" in api_names


def test_predict_on_pydicom_ct_small(predictor, tiny_model_dir):
    label, attention, gradcam, metadata = predictor.predict(CT_SMALL)

    # the probability is the model's sigmoid on the processor's input, computed independently here
    processor = CTImageProcessor.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        logit = predictor.model(processor(CT_SMALL, return_tensors="pt")["pixel_values"]).logits[0, 0]
    assert _probability(label) == pytest.approx(torch.sigmoid(logit).item(), abs=1e-5)
    decision = "metastatic" if torch.sigmoid(logit).item() >= 0.5 else "non-metastatic"
    assert label["label"] == decision

    ds = pydicom.dcmread(CT_SMALL)
    for image in (attention, gradcam):
        assert image.dtype == np.uint8 and image.shape == (ds.Rows, ds.Columns, 3)
    assert metadata["modality"] == "CT"
    assert (metadata["rows"], metadata["columns"]) == (ds.Rows, ds.Columns)
    assert metadata["pixel_spacing_mm"] == [float(v) for v in ds.PixelSpacing]
    assert metadata["transfer_syntax"].startswith("Explicit VR Little Endian")
    assert os.path.exists(CT_SMALL), "a file the caller owns must never be deleted"


def test_decision_uses_the_stored_threshold(predictor):
    label, *_ = predictor.predict(CT_SMALL)
    probability = _probability(label)
    stored = predictor.threshold
    try:
        predictor.threshold = probability + 1e-3
        assert predictor.predict(CT_SMALL)[0]["label"] == "non-metastatic"
        predictor.threshold = probability - 1e-3
        assert predictor.predict(CT_SMALL)[0]["label"] == "metastatic"
    finally:
        predictor.threshold = stored


def test_display_window_changes_background_only(predictor):
    label, _, default_view, _ = predictor.predict(CT_SMALL)
    narrow_label, _, narrow_view, _ = predictor.predict(CT_SMALL, window_center=40, window_width=80)
    assert _probability(narrow_label) == _probability(label)
    assert np.abs(narrow_view.astype(int) - default_view.astype(int)).mean() > 1.0
    with pytest.raises(gr.Error, match="window width must be positive"):
        predictor.predict(CT_SMALL, window_center=40, window_width=0)


def test_attention_overlay_absent_without_spatial_branch(app, tmp_path):
    from conftest import TINY_SIZE, tiny_model

    tiny_model(attention="channel").save_pretrained(tmp_path)
    CTImageProcessor(size=TINY_SIZE).save_pretrained(tmp_path)
    label, attention, gradcam, _ = app.Predictor(tmp_path).predict(CT_SMALL)
    assert attention is None
    assert gradcam.shape == (128, 128, 3)


def _bad_files(folder: Path) -> dict:
    """name -> path of files the processor refuses, each for a different reason."""
    good = write_ct_dicom(folder / "good.dcm", _abdomen_hu())
    files = {"text": folder / "notes.txt", "empty": folder / "empty.dcm", "truncated": folder / "truncated.dcm"}
    files["text"].write_text("this is not a DICOM file\n")
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(Path(good).read_bytes()[:2000])
    files["mr"] = Path(shutil.copy(get_testdata_file("MR_small.dcm"), folder / "mr.dcm"))
    no_pixels = ct_dataset(_abdomen_hu())
    del no_pixels.PixelData
    files["no_pixels"] = folder / "no_pixels.dcm"
    no_pixels.save_as(files["no_pixels"], enforce_file_format=True)
    colour = ct_dataset(_abdomen_hu())
    colour.PhotometricInterpretation = "RGB"
    colour.SamplesPerPixel = 3
    files["colour"] = folder / "colour"  # no extension: the app must not rely on one
    colour.save_as(files["colour"], enforce_file_format=True)
    return files


def test_bad_files_get_the_processors_one_line_reason(predictor, tmp_path):
    for name, path in _bad_files(tmp_path).items():
        with pytest.raises(ValueError) as expected:
            read_ct_hu(path)
        with pytest.raises(gr.Error) as raised:
            predictor.predict(str(path))
        assert raised.value.message == str(expected.value), name
        assert "\n" not in raised.value.message
    with pytest.raises(gr.Error, match="Upload a CT DICOM"):
        predictor.predict(None)


def test_uploads_are_deleted_after_the_request(app, predictor, tmp_path):
    upload_dir = app._upload_folder() / "upload-under-test"
    upload_dir.mkdir(parents=True, exist_ok=True)
    good = Path(shutil.copy(CT_SMALL, upload_dir / "slice.dcm"))
    bad = upload_dir / "bad.dcm"
    bad.write_text("not DICOM")
    example = Path(shutil.copy(app.EXAMPLES_DIR / "metastatic_phantom.dcm", upload_dir))  # as Gradio caches it
    predictor.predict(str(good))
    predictor.predict(str(example))
    with pytest.raises(gr.Error):
        predictor.predict(str(bad))
    assert not good.exists() and not bad.exists()
    assert example.exists(), "the cached copy of an example serves every later click on it"
    # pressing Predict again on the same (now deleted) upload: a clear reason that does not echo the name
    with pytest.raises(gr.Error, match="upload it again") as raised:
        predictor.predict(str(good))
    assert "slice.dcm" not in raised.value.message


def test_identifying_tags_are_never_shown_or_logged(predictor, tmp_path, capsys, caplog):
    ds = ct_dataset(_abdomen_hu(), patient_id="PHANTOM-0001")
    for keyword, value in IDENTIFYING.items():
        setattr(ds, keyword, value)
    path = tmp_path / "identified.dcm"
    ds.save_as(path, enforce_file_format=True)

    with caplog.at_level(logging.DEBUG):
        label, _, _, metadata = predictor.predict(str(path))
    shown = json.dumps(metadata) + json.dumps(label)
    captured = capsys.readouterr()
    for value in IDENTIFYING.values():
        for text in (shown, captured.out, captured.err, caplog.text):
            assert value not in text and value.replace("^", " ") not in text
    assert set(metadata) == {
        "modality", "rows", "columns", "pixel_spacing_mm", "slice_thickness_mm", "kvp", "convolution_kernel",
        "manufacturer", "body_part", "photometric_interpretation", "bits_stored", "rescale_slope",
        "rescale_intercept", "transfer_syntax",
    }
    assert metadata["kvp"] == 120.0 and metadata["convolution_kernel"] == "STANDARD"


def test_page_without_a_model_says_how_to_configure_one(app):
    blocks = app.build_demo(None)
    markdown = " ".join(str(getattr(block, "value", "")) for block in blocks.blocks.values())
    assert "--model" in markdown and "MODEL_ID" in markdown
    with pytest.raises(gr.Error, match="No model is configured"):
        app.no_model(CT_SMALL)
