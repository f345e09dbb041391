"""The demo served in a subprocess (`python space/app.py --model ...`), driven over HTTP with gradio_client:
`/predict` (one slice) and `/predict_series` (slices, a zip or a NIfTI)."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from gradio_client import Client, handle_file
from PIL import Image
from pydicom.data import get_testdata_file

from modeling import CTImageProcessor, DualAttentionResNetForImageClassification
from modeling.ct_volume import read_ct_volumes
from modeling.inference import score_volume
from training.dicom_writer import ct_dataset, write_ct_nifti, write_ct_series

IDENTIFYING = {"PatientName": "ROE^RICHARD", "PatientID": "MRN-90817263", "PatientBirthDate": "19540709"}
SHOWN_MARKER = "Siemens Healthineers"  # a listed maker (dicom_vocabulary): a technical tag that is shown


@pytest.fixture(scope="module")
def client(demo_server):
    return Client(demo_server.url, verbose=False)


def _identified_slice(path):
    """A 96 x 96 synthetic CT slice whose file carries a name, an ID and a birth date."""
    yy, xx = np.mgrid[:96, :96]
    hu = np.where((yy - 48) ** 2 + (xx - 48) ** 2 < 38**2, 40.0, -1000.0)
    ds = ct_dataset(hu, patient_id="PHANTOM-0002")
    for keyword, value in IDENTIFYING.items():
        setattr(ds, keyword, value)
    ds.Manufacturer = SHOWN_MARKER  # a technical tag: it must be shown
    ds.save_as(path, enforce_file_format=True)
    return path


def _first_half(path) -> bytes:
    data = Path(path).read_bytes()
    return data[: len(data) // 2]


def _predict(client, path):
    return client.predict(handle_file(str(path)), None, None, api_name="/predict")


def test_predict_over_http(client, demo_server, tmp_path):
    label, attention_path, gradcam_path, metadata = _predict(client, _identified_slice(tmp_path / "slice.dcm"))

    confidences = {item["label"]: item["confidence"] for item in label["confidences"]}
    assert 0.0 <= confidences["metastatic"] <= 1.0
    assert label["label"] == ("metastatic" if confidences["metastatic"] >= 0.5 else "non_metastatic")
    assert confidences["non_metastatic"] == pytest.approx(1.0 - confidences["metastatic"])
    for path in (attention_path, gradcam_path):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (96, 96)
    assert metadata["modality"] == "CT" and metadata["rows"] == 96

    shown = json.dumps(metadata) + json.dumps(label)
    served_log = demo_server.log.read_text()
    # positive controls: the shown metadata comes from this file, and the log is this server's (unbuffered) output
    assert SHOWN_MARKER in shown and demo_server.url.rstrip("/") in served_log
    for value in IDENTIFYING.values():
        assert value not in shown and value not in served_log
    assert not list(demo_server.upload_dir.rglob("slice.dcm")), "the upload must be deleted after the request"


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"hello, not an image", "not a DICOM file"),
        (b"", "empty file"),
        (_first_half(get_testdata_file("CT_small.dcm")), "pixel data is truncated or corrupt"),
        (Path(get_testdata_file("MR_small.dcm")).read_bytes(), "modality is MR, not CT"),
    ],
)
def test_bad_files_raise_with_a_reason_and_the_server_stays_up(client, demo_server, tmp_path, content, reason):
    bad = tmp_path / "upload.dcm"
    bad.write_bytes(content)
    with pytest.raises(Exception, match=reason):
        _predict(client, bad)
    assert demo_server.process.poll() is None
    label, *_ = _predict(client, _identified_slice(tmp_path / "after.dcm"))
    assert label["confidences"]


def test_oversized_upload_is_refused(client, demo_server, tmp_path):
    big = tmp_path / "big.dcm"
    big.write_bytes(b"\0" * (21 * 1024 * 1024))
    with pytest.raises(Exception, match="(?i)size|large"):
        _predict(client, big)
    assert demo_server.process.poll() is None


def test_identical_concurrent_uploads_are_all_answered_and_none_kept(demo_server, tmp_path):
    """Gradio stores uploads by content hash, so eight clients sending the same file share one path."""
    from concurrent.futures import ThreadPoolExecutor

    path = _identified_slice(tmp_path / "same.dcm")
    clients = [Client(demo_server.url, verbose=False) for _ in range(8)]

    def send_three_times(client):
        return [_predict(client, path)[0]["label"] for _ in range(3)]

    with ThreadPoolExecutor(len(clients)) as pool:
        futures = [pool.submit(send_three_times, client) for client in clients]
    errors = [future.exception() for future in futures if future.exception() is not None]
    assert errors == []
    assert len({label for future in futures for label in future.result()}) == 1, "same bytes, same decision"
    assert not list(demo_server.upload_dir.rglob("same.dcm")), "every upload is deleted once its requests are done"
    assert demo_server.process.poll() is None


def _series(folder):
    """A 5-slice synthetic CT series (64 x 64, 2 mm apart) whose files carry `IDENTIFYING` -> (paths, HU volume)."""
    yy, xx = np.mgrid[:64, :64]
    hu = np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 26**2, 40.0, -1000.0)
    volume = np.stack([np.where((yy - 30) ** 2 + (xx - 20) ** 2 < (2 * k + 2) ** 2, 150.0, hu) for k in range(5)])
    paths = write_ct_series(folder, volume, (2.0, 0.8, 0.8), patient_id="PHANTOM-0005")
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in IDENTIFYING.items():
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
    return paths, volume


def test_predict_series_over_http_files_zip_and_nifti_agree_with_score_volume(client, demo_server, tiny_model_dir,
                                                                               tmp_path):
    slices, volume = _series(tmp_path / "series")
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in slices:
            handle.write(path, Path(path).name)
    nifti = write_ct_nifti(tmp_path / "series.nii.gz", volume, (2.0, 0.8, 0.8))
    model = DualAttentionResNetForImageClassification.from_pretrained(tiny_model_dir).eval()
    processor = CTImageProcessor.from_pretrained(tiny_model_dir)
    expected = score_volume(model, processor, read_ct_volumes(slices)[0], batch_size=2)
    report = tmp_path / "ROE_RICHARD_report.txt"  # a file name can identify too: shown to its uploader only
    report.write_text("a radiology report, not an image")

    for kind, files in {"files": [*slices, report], "zip": [archive], "nifti": [nifti]}.items():
        label, curve, attention_path, gradcam_path, metadata, slider, note = client.predict(
            [handle_file(str(path)) for path in files], api_name="/predict_series"
        )
        confidences = {item["label"]: item["confidence"] for item in label["confidences"]}
        assert confidences["metastatic"] == pytest.approx(float(expected.max()), abs=1e-5), kind
        assert label["label"] == ("metastatic" if confidences["metastatic"] >= 0.5 else "non_metastatic")
        assert curve["type"] == "matplotlib" and curve["plot"].startswith("data:image/"), kind
        for path in (attention_path, gradcam_path):
            with Image.open(path) as image:
                assert image.format == "PNG" and image.size == (64, 64)
        assert metadata["slices"] == 5 and metadata["most_suspicious_slice"]["index"] == int(expected.argmax())
        assert slider["value"] == int(expected.argmax()) and slider["maximum"] == 4 and "most suspicious" in note
        shown = json.dumps(metadata) + json.dumps(label) + note
        for value in IDENTIFYING.values():
            assert value not in shown and value not in demo_server.log.read_text()
        if kind == "files":
            assert [entry.split(":")[0] for entry in metadata["skipped_files"]] == [report.name]
    assert report.name not in demo_server.log.read_text()
    uploaded = {Path(path).name for path in [*slices, archive, nifti, report]}
    assert not [path for path in demo_server.upload_dir.rglob("*") if path.name in uploaded], "uploads must be deleted"


def test_series_refusal_over_http_is_one_line_and_the_server_stays_up(client, demo_server, tmp_path):
    notes = tmp_path / "notes.zip"
    with zipfile.ZipFile(notes, "w") as handle:
        handle.writestr("report.txt", "a radiology report, not an image")
    with pytest.raises(Exception, match="no CT series found") as raised:
        client.predict([handle_file(str(notes))], api_name="/predict_series")
    assert "\n" not in str(raised.value)
    assert demo_server.process.poll() is None
