"""Damaged CT DICOMs (seeded mutations of valid ones): `python -m modeling.predict` gives one row per file,
every refusal a one-line reason, no traceback, exit status 0 or 1. And name-like values in every tag a
reader looks at: no reader, CSV, log or demo output echoes them."""

import csv
import json
import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import FUZZ_PATIENT, load_demo_app
from pydicom.dataelem import DataElement

from modeling.ct_dicom import read_ct_hu, read_dicom, technical_metadata
from modeling.ct_volume import read_ct_volumes
from modeling.predict import main
from training.dicom_writer import ct_dataset

ROOT = Path(__file__).resolve().parents[1]


def test_predict_survives_damaged_dicoms(fuzzed_dicoms, tiny_model_dir, tmp_path):
    folder, paths = fuzzed_dicoms
    assert len(paths) >= 200
    output = tmp_path / "fuzz.csv"
    command = [sys.executable, "-m", "modeling.predict", str(folder), "--model", str(tiny_model_dir),
               "--output", str(output), "--batch-size", "32"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)

    assert result.returncode in (0, 1), result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    with open(output, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["path"] for row in rows) == sorted(str(path) for path in paths)
    scored = [row for row in rows if row["status"] == "ok"]
    refused = [row for row in rows if row["status"] == "error"]
    assert len(scored) + len(refused) == len(rows)
    for row in refused:
        assert row["error"] and "\n" not in row["error"] and len(row["error"]) < 200, row
        # the decoders are installed here: damaged JPEG 2000 data must not be blamed on a missing package
        assert "no decoder installed" not in row["error"], row
    for row in scored:
        assert 0.0 <= float(row["probability"]) <= 1.0, row
    # every kind of damage is met: some files are refused, and damage that spares what is read still scores
    assert refused and scored
    assert f"{len(scored)} predicted, {len(refused)} refused" in result.stderr
    assert result.returncode == 1
    # damage can make a tag's value run into the next tags: refusals must not echo the patient's name or ID
    assert any(FUZZ_PATIENT.encode() in path.read_bytes() for path in paths)
    assert "FUZZ-4242" not in output.read_text() + result.stderr


# Name-like values and the parts of them that must never be echoed (whole words: "Does" is not "Doe").
NAMES = (FUZZ_PATIENT, "DOE^JANE", "DOE JANE 1961", "OT^DOE^JANE", "Jane Doe")
NAME_PARTS = re.compile(r"\b(ROE|FUZZ|4242|DOE|Doe|JANE|Jane|1961)\b")
# Every tag a reader looks at or shows, text and number alike; SeriesDescription and the rest are never read.
TEXT_TAGS = ("Modality", "PhotometricInterpretation", "ImageType", "Manufacturer", "ManufacturerModelName",
             "ConvolutionKernel", "BodyPartExamined", "SeriesDescription", "StationName", "InstitutionName")
NUMBER_TAGS = ("Rows", "Columns", "KVP", "SliceThickness", "PixelSpacing", "RescaleIntercept", "BitsStored")


def _named_file(path: Path, keyword: str, value: str) -> Path:
    """A valid CT slice of its own series whose patient is FUZZ_PATIENT and whose tag `keyword` holds
    `value`: as text where DICOM has a number (as a damaged file can), in the file meta for
    TransferSyntaxUID, next to two sound values for ImageType and ConvolutionKernel."""
    yy, xx = np.mgrid[:64, :64]
    ds = ct_dataset(np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 28**2, 40.0, -1000.0), patient_id=FUZZ_PATIENT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns, quoting the value, that it is invalid for the VR
        if keyword in NUMBER_TAGS:
            ds[keyword] = DataElement(ds[keyword].tag, "LO", [value, value] if keyword == "PixelSpacing" else value)
        elif keyword == "TransferSyntaxUID":
            ds.file_meta.TransferSyntaxUID = value
        elif keyword in ("ImageType", "ConvolutionKernel"):
            setattr(ds, keyword, ["ORIGINAL" if keyword == "ImageType" else "Br40d", value])
        else:
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def named_files(tmp_path_factory):
    """One file per (tag, name-like value), plus a control whose technical tags are all listed values."""
    folder = tmp_path_factory.mktemp("named")
    paths = [_named_file(folder / f"{keyword}_{index}.dcm", keyword, value)
             for keyword in TEXT_TAGS + NUMBER_TAGS + ("TransferSyntaxUID",)
             for index, value in enumerate(NAMES)]
    control = _named_file(folder / "control.dcm", "Manufacturer", "SIEMENS")
    return folder, paths, control


def _leaks(text: str, folder: Path) -> list:
    """Name parts in `text`, once pytest's temporary folder (its path, not read from a file) is removed."""
    return NAME_PARTS.findall(text.replace(str(folder.parent), "TMP"))


def test_named_files_hold_the_names(named_files):
    """The check below is not vacuous: every file carries a name-like value and the patient's name."""
    _, paths, _ = named_files
    for path in paths:
        assert FUZZ_PATIENT.encode() in path.read_bytes()
        assert any(name.encode() in path.read_bytes() for name in NAMES[1:]) or "_0." in path.name


def test_readers_never_echo_a_name_from_any_tag(named_files, caplog, capsys):
    folder, paths, control = named_files
    said = []
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        for path in paths + [control]:
            try:
                read_ct_hu(path)
            except ValueError as error:
                said.append(str(error))
            said.append(json.dumps(technical_metadata(read_dicom(path))))
        volumes = read_ct_volumes(folder)
    said += [repr((v.key, v.warnings, v.technical, v.skipped, v.slice_names)) for v in volumes]
    said += [str(warning.message) for warning in warned]
    text = "\n".join(said) + caplog.text + str(capsys.readouterr())
    assert not _leaks(text, folder)
    # positive controls: refusals were met, and a listed maker is shown
    assert "modality is an unlisted value, not CT" in text and "colour image (an unlisted value" in text
    assert any(volume.technical.get("manufacturer") == "SIEMENS" for volume in volumes)


def test_predict_csvs_never_echo_a_name_from_any_tag(named_files, tiny_model_dir, tmp_path, caplog, capsys):
    folder, paths, _ = named_files
    slices, series = tmp_path / "slices.csv", tmp_path / "series.csv"
    with caplog.at_level(logging.DEBUG):
        status = main([str(folder), "--model", str(tiny_model_dir), "--output", str(slices),
                       "--series-output", str(series)])
    assert status == 1  # the named Modality and PhotometricInterpretation files are refused, the rest scored
    rows = list(csv.DictReader(slices.open(newline="")))
    assert len(rows) == len(paths) + 1 and {row["status"] for row in rows} == {"ok", "error"}
    text = slices.read_text() + series.read_text() + caplog.text + str(capsys.readouterr())
    assert not _leaks(text, folder)


def test_demo_never_shows_a_name_from_any_tag(named_files, tiny_model_dir, caplog, capsys):
    """The single-slice tab (label, metadata or the refusal) and the series tab for each file."""
    import gradio as gr

    folder, paths, _ = named_files
    predictor = load_demo_app(tiny_model_dir).Predictor(tiny_model_dir)
    shown = []
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        for path in paths:
            for predict in (predictor.predict, lambda path: predictor.predict_series([path])):
                try:
                    output = predict(str(path))
                    shown.append(json.dumps([item for item in output if isinstance(item, (dict, str))]))
                except gr.Error as error:
                    shown.append(error.message)
    shown += [str(warning.message) for warning in warned]
    text = "\n".join(shown) + caplog.text + str(capsys.readouterr())
    assert not _leaks(text, folder)
    assert "an unlisted value" in text  # the metadata of a scored file with a named Manufacturer
