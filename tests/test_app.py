"""The demo's predict function, in-process: pydicom's bundled CT slice, bad files, patient data."""

import asyncio
import json
import logging
import os
import shutil
import sys
import threading
import warnings
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pydicom
import pytest
import torch
from conftest import TINY_SIZE, load_demo_app, tiny_model
from pydicom.data import get_testdata_file

import demo_components
import demo_layout
import demo_settings
import demo_text
import demo_uploads
from modeling import CTImageProcessor
from modeling.ct_dicom import read_ct_hu
from modeling.ct_volume import read_ct_volumes
from modeling.explain import explain
from modeling.inference import format_threshold, grid_pixel_values, score_volume
from training.dicom_writer import ct_dataset, write_ct_dicom, write_ct_nifti, write_ct_series

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
    return load_demo_app(tiny_model_dir)


@pytest.fixture(scope="module")
def predictor(app, tiny_model_dir):
    return app.Predictor(tiny_model_dir)


def _probability(label) -> float:
    confidences = {item["label"]: item["confidence"] for item in label["confidences"]}
    assert confidences["metastatic"] + confidences["non_metastatic"] == pytest.approx(1.0)
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
    decision = "metastatic" if torch.sigmoid(logit).item() >= 0.5 else "non_metastatic"
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
        assert predictor.predict(CT_SMALL)[0]["label"] == "non_metastatic"
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


def test_a_localizer_is_refused_not_scored(predictor, tmp_path):
    """A scout is a projection radiograph: the /predict endpoint refuses it as the series reader does."""
    scout = ct_dataset(_abdomen_hu())
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.save_as(tmp_path / "scout.dcm", enforce_file_format=True)
    with pytest.raises(gr.Error) as raised:
        predictor.predict(str(tmp_path / "scout.dcm"))
    assert raised.value.message == "localizer (scout) image"


def test_uploads_are_deleted_after_the_request(app, predictor, tmp_path):
    upload_dir = demo_uploads.upload_folder() / "upload-under-test"
    upload_dir.mkdir(parents=True, exist_ok=True)
    good = Path(shutil.copy(CT_SMALL, upload_dir / "slice.dcm"))
    bad = upload_dir / "bad.dcm"
    bad.write_text("not DICOM")
    # as Gradio caches it
    example = Path(shutil.copy(demo_settings.EXAMPLES_DIR / "metastatic_phantom.dcm", upload_dir))
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
    ds.Manufacturer = "philips  healthcare"  # a technical tag, from a listed maker: shown, as the list spells it
    path = tmp_path / "identified.dcm"
    ds.save_as(path, enforce_file_format=True)

    with caplog.at_level(logging.DEBUG):
        # positive controls: what the libraries log or print while predicting is captured below
        logging.getLogger("gradio").debug("MARKER-LOGGED")
        print("MARKER-PRINTED")
        print("MARKER-PRINTED", file=sys.stderr)
        label, _, _, metadata = predictor.predict(str(path))
    shown = json.dumps(metadata) + json.dumps(label)
    captured = capsys.readouterr()
    assert metadata["manufacturer"] == "Philips Healthcare" and "MARKER-LOGGED" in caplog.text
    assert "MARKER-PRINTED" in captured.out and "MARKER-PRINTED" in captured.err
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
        demo_layout.no_model(CT_SMALL)


DELETABLE_TAGS = (
    "Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel",
    "PhotometricInterpretation", "Modality", "PixelData", "RescaleSlope", "RescaleIntercept", "PixelSpacing",
)


def _damaged_dicoms(good: Path, folder: Path, count: int, seed: int = 0) -> list:
    """`count` seeded mutations of the DICOM `good`, cycling through truncation at a random offset,
    byte flips in the header, byte flips in the pixel data, a spliced chunk, and a deleted tag."""
    rng = np.random.default_rng(seed)
    data = good.read_bytes()
    pixel_start = len(data) - len(pydicom.dcmread(good).PixelData)  # uncompressed: pixels come last
    paths = []
    for index in range(count):
        kind = index % 5
        damaged = bytearray(data)
        if kind == 0:
            damaged = damaged[: int(rng.integers(1, len(data)))]
        elif kind in (1, 2):
            low, high = (0, pixel_start) if kind == 1 else (pixel_start, len(data))
            for offset in rng.integers(low, high, size=int(rng.integers(1, 9))):
                damaged[offset] ^= 1 << int(rng.integers(0, 8))
        elif kind == 3:
            start, source = rng.integers(0, len(data), size=2)
            length = int(rng.integers(4, 256))
            damaged[start : start + length] = data[source : source + length]
        path = folder / f"damaged_{index:03d}.dcm"
        if kind == 4:
            ds = pydicom.dcmread(good)
            delattr(ds, DELETABLE_TAGS[index // 5 % len(DELETABLE_TAGS)])
            ds.save_as(path)
        else:
            path.write_bytes(bytes(damaged))
        paths.append(path)
    return paths


def test_damaged_dicoms_get_a_one_line_error_and_the_demo_keeps_serving(predictor, tmp_path, capsys, caplog):
    ds = ct_dataset(_abdomen_hu(), patient_id="PHANTOM-0003")
    for keyword, value in IDENTIFYING.items():
        setattr(ds, keyword, value)
    good = tmp_path / "good.dcm"
    ds.save_as(good, enforce_file_format=True)
    scored, refused, shown = 0, 0, []
    with warnings.catch_warnings(record=True) as warned, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        for path in _damaged_dicoms(good, tmp_path, count=60):
            try:
                label, _, gradcam, metadata = predictor.predict(str(path))
            except gr.Error as error:  # any other exception fails the test with its traceback
                assert error.message and "\n" not in error.message, path.name
                shown.append(error.message)
                refused += 1
            else:
                assert 0.0 <= _probability(label) <= 1.0 and gradcam.dtype == np.uint8, path.name
                shown.append(json.dumps(metadata))
                scored += 1
    assert scored + refused == 60 and refused >= 12, (scored, refused)  # every truncation at least is refused
    # a damaged tag may make pydicom warn about its value: nothing identifying may reach the server's output
    said = " ".join(shown + [str(warning.message) for warning in warned]) + caplog.text + str(capsys.readouterr())
    for value in IDENTIFYING.values():
        assert value not in said and value.replace("^", " ") not in said
    label, *_ = predictor.predict(str(good))
    assert 0.0 <= _probability(label) <= 1.0


# --- /predict_series ---------------------------------------------------------------------------------

SERIES_SPACING = (2.5, 0.9, 0.9)


def _series_hu(slices=6, size=64) -> np.ndarray:
    """`(slices, size, size)` HU: the abdomen phantom with its bright 'organ' growing from slice to slice."""
    yy, xx = np.mgrid[:size, :size]
    volume = np.stack([_abdomen_hu(size) for _ in range(slices)])
    for k in range(slices):
        volume[k][(yy - 0.6 * size) ** 2 + (xx - 0.4 * size) ** 2 < (0.03 * size * (k + 1)) ** 2] = 120.0
    return volume


def _identified_series(folder: Path, slices=6, **kwargs) -> list:
    """A DICOM series whose files also carry a name, an ID, a birth date, an institution... (`IDENTIFYING`)."""
    paths = write_ct_series(folder, _series_hu(slices), SERIES_SPACING, patient_id="PHANTOM-0004", **kwargs)
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in IDENTIFYING.items():
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
    return paths


def _zip(path: Path, files) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for file in files:
            archive.write(file, Path(file).name)
    return path


def _as_uploads(app, paths, name) -> list:
    """Copies of `paths` where Gradio would store uploads (a folder each), so the app may (and must) delete them."""
    copies = []
    for index, path in enumerate(paths):
        folder = demo_uploads.upload_folder() / name / str(index)
        folder.mkdir(parents=True, exist_ok=True)
        copies.append(shutil.copy(path, folder / Path(path).name))
    return copies


def _series_probabilities(model_dir, source) -> np.ndarray:
    """P(metastatic) of each slice of the one volume in `source`, as `modeling.predict --series-output` scores it."""
    from modeling import DualAttentionResNetForImageClassification

    (volume,) = read_ct_volumes(source)
    model = DualAttentionResNetForImageClassification.from_pretrained(model_dir).eval()
    return score_volume(model, CTImageProcessor.from_pretrained(model_dir), volume, batch_size=4)


def test_predict_series_from_files_zip_and_nifti(app, predictor, tiny_model_dir, tmp_path):
    slices = _identified_series(tmp_path / "series", scramble=3)
    expected = _series_probabilities(tiny_model_dir, slices)
    sources = {
        "files": slices,
        "zip": [_zip(tmp_path / "series.zip", slices)],
        "nifti": [write_ct_nifti(tmp_path / "volume.nii.gz", _series_hu(), SERIES_SPACING)],
    }
    for kind, paths in sources.items():
        uploads = _as_uploads(app, paths, f"series-{kind}")
        label, curve, attention, gradcam, metadata, slider, note, cache = predictor.predict_series(uploads)

        # the series' probability is the max over its slices, and the curve shows every slice
        assert _probability(label) == pytest.approx(float(expected.max()), abs=1e-5), kind
        np.testing.assert_allclose(cache.probabilities, expected, atol=1e-5)
        line = curve.axes[0].lines[0]
        np.testing.assert_allclose(line.get_xdata(), cache.positions_mm)
        np.testing.assert_allclose(line.get_ydata(), expected, atol=1e-5)
        assert np.all(np.diff(cache.positions_mm) == pytest.approx(SERIES_SPACING[0]))
        threshold_line = curve.axes[0].lines[1]
        assert list(threshold_line.get_ydata()) == [predictor.threshold] * 2
        top = int(np.argmax(expected))
        assert slider["value"] == top and slider["maximum"] == len(expected) - 1
        assert metadata["slices"] == 6 and metadata["most_suspicious_slice"]["index"] == top
        assert f"Slice {top + 1} of 6" in note and "most suspicious" in note
        for image in (attention, gradcam):
            assert image.dtype == np.uint8 and image.shape == (64, 64, 3)
        shown = json.dumps(metadata) + json.dumps(label) + note
        for value in IDENTIFYING.values():
            assert value not in shown and value.replace("^", " ") not in shown
        assert not any(Path(upload).exists() for upload in uploads), f"{kind}: uploads must be deleted"


def test_series_slider_recomputes_only_the_slice_shown(predictor, tiny_model_dir, tmp_path):
    *_, cache = predictor.predict_series(_identified_series(tmp_path / "series"))
    calls = []
    model_forward = predictor.model.forward
    predictor.model.forward = lambda pixel_values, **kwargs: calls.append(len(pixel_values)) or model_forward(
        pixel_values, **kwargs
    )
    try:
        attention, gradcam, note = predictor.show_series_slice(2, cache)
    finally:
        del predictor.model.forward
    assert calls == [1], "one forward of the one slice shown"
    pixel_values, _ = grid_pixel_values(CTImageProcessor.from_pretrained(tiny_model_dir), cache.grid[2:3])
    maps = explain(predictor.model, pixel_values)
    assert float(maps["probability"][0]) == pytest.approx(cache.probabilities[2], abs=1e-5)
    assert gradcam.shape == (64, 64, 3) and "Slice 3 of 6" in note and f"{cache.positions_mm[2]:.1f} mm" in note
    with pytest.raises(gr.Error, match="Predict a series first"):
        predictor.show_series_slice(0, None)


def test_series_limits_each_get_a_one_line_reason(app, predictor, tmp_path, monkeypatch):
    slices = _identified_series(tmp_path / "one")
    other = write_ct_series(tmp_path / "other", _series_hu(4), SERIES_SPACING)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    cases = {
        "several series": (slices + other, "holds 2 CT series (6 slices, 4 slices); upload one series at a time"),
        "zip without CT": ([_zip(tmp_path / "text.zip", [notes])], "no CT series found"),
        "zip among slices": ([_zip(tmp_path / "s.zip", slices)] + slices[:2], "upload one .zip or one NIfTI"),
        "nothing": ([], "Upload the DICOM slices of one CT series"),
    }
    for name, (paths, reason) in cases.items():
        with pytest.raises(gr.Error) as raised:
            predictor.predict_series(_as_uploads(app, paths, name.replace(" ", "-")))
        assert reason in raised.value.message and "\n" not in raised.value.message, name
    monkeypatch.setattr(demo_settings, "MAX_SLICES", 5)
    with pytest.raises(gr.Error, match="6 files; a series may have up to 5 slices"):
        predictor.predict_series(slices)
    with pytest.raises(gr.Error, match="a series may have up to 5 slices"):
        predictor.predict_series([_zip(tmp_path / "big.zip", slices)])
    monkeypatch.setattr(demo_settings, "MAX_SERIES_MB", 0.001)
    with pytest.raises(gr.Error, match=r"upload too large \(0 MB; a series may be up to 0.001 MB\)"):
        predictor.predict_series(slices)


def test_non_ct_files_among_the_slices_are_skipped_and_listed(predictor, tmp_path):
    slices = _identified_series(tmp_path / "series")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    mr = shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "mr.dcm")
    label, *_, metadata, _, _, cache = predictor.predict_series(slices + [str(notes), mr])
    assert len(cache.probabilities) == 6
    skipped = " ".join(metadata["skipped_files"])
    assert "notes.txt" in skipped and "mr.dcm" in skipped and "MR" in skipped


# --- what the page says about the threshold and the maps ----------------------------------------------

LOCALISATION = {
    "attention": {"pointing_game": 0.93, "pointing_game_ci": [0.85, 0.98], "energy_in_mask": 0.41,
                  "n_slices": 51, "chance": 0.018, "split": "test"},
}


def test_threshold_is_shown_with_enough_digits(app):
    assert format_threshold(0.9963) == "0.9963"
    assert format_threshold(0.99996) == "0.99996", "a threshold below 1 is never shown as 1"
    assert format_threshold(0.5) == "0.5"
    assert format_threshold(0.123456) == "0.1235"
    assert format_threshold(1.0) == "1"


def test_overlay_captions_give_the_measured_localisation(app):
    assert demo_text.localisation_caption(LOCALISATION, "attention") == (
        "On its evaluation (test split, 51 metastatic slices), this map's peak fell on the lesion in 93 % of "
        "them (95 % CI 85-98 %; chance 2 %). 41 % of its mass lay inside the lesion."
    )
    caption = demo_text.localisation_caption
    for absent in (caption(LOCALISATION, "gradcam"), caption(None, "attention")):
        assert "never evaluated" in absent
    small_chance = {"gradcam": {"pointing_game": 0.0, "n_slices": 7, "chance": 0.004, "split": "validation"}}
    assert demo_text.localisation_caption(small_chance, "gradcam") == (
        "On its evaluation (validation split, 7 metastatic slices), this map's peak fell on the lesion in 0 % of "
        "them (chance 0.4 %)."
    )
    # measured on stage 3, shown on a model that now explains stage 4 (or the reverse): not this map's numbers
    stage_3 = {"gradcam": {**small_chance["gradcam"], "stage": 3}}
    assert demo_text.localisation_caption(stage_3, "gradcam", gradcam_stage=3).startswith("On its evaluation")
    assert demo_text.localisation_caption(stage_3, "gradcam") == (
        "This map (backbone stage 4) was never evaluated: the measured localisation is of stage 3's Grad-CAM."
    )


def test_page_shows_threshold_note_and_captions_from_the_config(app, tiny_model_dir, tmp_path):
    from conftest import tiny_model

    model = tiny_model()
    model.config.decision_threshold = 0.99631
    model.config.threshold_note = "Chosen on a validation split that separates perfectly (saturated)."
    model.config.localisation = LOCALISATION
    model.save_pretrained(tmp_path)
    CTImageProcessor.from_pretrained(tiny_model_dir).save_pretrained(tmp_path)
    blocks = app.build_demo(app.Predictor(tmp_path))
    shown = {getattr(block, "elem_id", None): str(getattr(block, "value", "")) for block in blocks.blocks.values()}
    assert "decision threshold 0.9963." in shown["model-info"] and "separates perfectly" in shown["model-info"]
    assert shown["attention-caption"] == shown["series-attention-caption"] == demo_text.localisation_caption(
        LOCALISATION, "attention"
    )
    assert "never evaluated" in shown["gradcam-caption"] and "never evaluated" in shown["series-gradcam-caption"]
    assert "before the attention module" in shown["gradcam-caption"]  # the paper's layout: stage 4, ungated
    labels = [block.label for block in blocks.blocks.values() if isinstance(block, demo_components.DecisionLabel)]
    assert labels == ["Decision at threshold 0.9963", "Series decision at threshold 0.9963"]
    gradcam_labels = [block.label for block in blocks.blocks.values() if getattr(block, "elem_id", "") and
                      block.elem_id.endswith("gradcam-overlay")]
    assert gradcam_labels == ["Grad-CAM (last backbone stage)"] * 2


def test_an_upload_shared_by_identical_requests_is_deleted_by_its_last_reader(app, tmp_path):
    uploads = demo_uploads.UploadCounts()
    shared = tmp_path / "sha" / "slice.dcm"
    shared.parent.mkdir()
    shared.write_bytes(b"same bytes")
    uploads.update([str(shared)])  # Gradio's upload route, once per request carrying these bytes
    uploads.update([str(shared)])
    uploads.release(shared.resolve())
    assert shared.exists(), "the second request has not read it yet"
    uploads.release(shared.resolve())
    assert not shared.exists()
    # the cache sweep forgets what it removed, so a later upload of the same bytes has one reader again
    shared.write_bytes(b"same bytes")
    uploads.update([str(shared)])
    uploads -= {str(shared)}
    shared.write_bytes(b"same bytes")
    uploads.update([str(shared)])
    uploads.release(shared.resolve())
    assert not shared.exists() and str(shared) in uploads


def test_a_release_racing_an_identical_upload_never_deletes_the_new_upload(app, tmp_path):
    """The failure CI caught: a reader's delete landing between Gradio's rename of a new identical upload
    onto the shared path and its `update` call. Here the server's loop is held inside that gap while the
    first reader releases, so the order is forced rather than hoped for."""
    uploads = demo_uploads.UploadCounts()
    shared = tmp_path / "sha" / "slice.dcm"
    shared.parent.mkdir()
    loop = asyncio.new_event_loop()
    server = threading.Thread(target=loop.run_forever, daemon=True)
    server.start()
    in_the_gap, released = threading.Event(), threading.Event()

    def upload(hold_in_the_gap):
        """Gradio's upload route: rename the received file onto the path, then record it (one loop step)."""
        incoming = tmp_path / f"incoming-{hold_in_the_gap}"
        incoming.write_bytes(b"same bytes")
        os.rename(incoming, shared)
        if hold_in_the_gap:
            in_the_gap.set()
            released.wait(5)
        uploads.update([str(shared)])

    try:
        loop.call_soon_threadsafe(upload, False)  # client A uploads
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(5)
        loop.call_soon_threadsafe(upload, True)  # client B uploads the same bytes ...
        assert in_the_gap.wait(5)
        uploads.release(shared.resolve())  # ... while A's request finishes reading
        released.set()
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(5)
        assert shared.exists(), "B's upload must survive A's release"
        uploads.release(shared.resolve())  # B's request reads it
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(5)
        assert not shared.exists(), "deleted once its last reader is done"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        server.join(5)
        loop.close()


def test_a_threshold_near_one_is_decided_in_float64(app, tmp_path):
    """A logit of 19 is P = 1 - 5.6e-9: below the threshold 1 - 1e-9, though float32 reads it as 1.0."""
    model = tiny_model()
    model.classifier.weight.data.zero_()
    model.classifier.bias.data.fill_(19.0)
    model.config.decision_threshold = 1 - 1e-9
    model.save_pretrained(tmp_path / "model")
    CTImageProcessor(size=TINY_SIZE).save_pretrained(tmp_path / "model")
    label, *_ = app.Predictor(tmp_path / "model").predict(write_ct_dicom(tmp_path / "slice.dcm", _abdomen_hu()))
    assert label["label"] == "non_metastatic" and _probability(label) < 1 - 1e-9


def test_a_gated_stage_3_gradcam_is_captioned_as_no_independent_evidence(app, tiny_model_dir, tmp_path):
    """The quickstart's layout: the spatial gate multiplies stage 3, and Grad-CAM explains stage 3."""
    tiny_model(spatial_attention_stages=[3], gradcam_stage=3).save_pretrained(tmp_path)
    CTImageProcessor.from_pretrained(tiny_model_dir).save_pretrained(tmp_path)
    caption = app.Predictor(tmp_path).caption("gradcam")
    assert "already multiplied" in caption and "no independent evidence" in caption


def test_a_series_page_keeps_the_model_grid_in_16_bits_not_the_hu_volume(predictor, tmp_path):
    """What a session holds for 30 minutes: 2 bytes a pixel of the model's input grid per slice."""
    *_, cache = predictor.predict_series(_identified_series(tmp_path / "series"))
    size = predictor.processor.size
    assert cache.grid.dtype == np.uint16 and cache.grid.shape == (6, size, size)
    held = sum(np.asarray(value).nbytes for value in vars(cache).values())
    assert held == 6 * size * size * 2 + 2 * 6 * 8, "grid, probabilities and positions only"
