"""python -m modeling.predict: a folder mixing good and bad files, labels at the model's threshold, exit codes."""

import csv
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_SIZE, tiny_model
from PIL import Image

from modeling import CTImageProcessor
from modeling.ct_dicom import read_ct_hu
from modeling.ct_volume import read_ct_volumes
from modeling.inference import score_volume
from modeling.predict import hu_warning, main
from modeling.work_plan import WorkKind
from training.dicom_writer import ct_dataset, write_ct_dicom, write_ct_nifti, write_ct_series

ROOT = Path(__file__).resolve().parents[1]
PATIENT_ID = "DOE^JANE-4711"  # a realistic tag that must not leak into the CSV or the image names


def slice_hu(seed: int) -> np.ndarray:
    """A 96 px abdominal-looking slice in HU: air outside an ellipse of soft tissue, a brighter organ."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:96, :96] / 96
    hu = np.where(((yy - 0.5) / 0.4) ** 2 + ((xx - 0.5) / 0.45) ** 2 <= 1, 40.0, -1000.0)
    cy, cx = rng.uniform(0.35, 0.65, 2)
    hu[(yy - cy) ** 2 + (xx - cx) ** 2 <= 0.01] = 180.0
    return np.maximum(hu + rng.normal(0, 10, hu.shape), -1024.0)  # scanners clip air at -1024


def probability_of(model, processor, path) -> float:
    with torch.no_grad():
        logits = model(processor(read_ct_hu(path), return_tensors="pt")["pixel_values"]).logits
    return float(torch.sigmoid(logits[0, 0]))


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """Two good CT slices (one without extension, in a sub-folder), an MR image, a truncated DICOM, a text
    file, and hidden files that are skipped."""
    folder = tmp_path_factory.mktemp("mixed")
    (folder / "series" / ".cache").mkdir(parents=True)
    write_ct_dicom(folder / "a.dcm", slice_hu(0), patient_id=PATIENT_ID)
    write_ct_dicom(folder / "series" / "IM0001", slice_hu(1), patient_id=PATIENT_ID)
    mr = ct_dataset(slice_hu(2), patient_id=PATIENT_ID)
    mr.Modality = "MR"
    mr.save_as(folder / "mr.dcm", enforce_file_format=True)
    write_ct_dicom(folder / "truncated.dcm", slice_hu(3), patient_id=PATIENT_ID)
    data = (folder / "truncated.dcm").read_bytes()
    (folder / "truncated.dcm").write_bytes(data[: len(data) // 2])
    (folder / "notes.txt").write_text("not an image\n")
    (folder / ".DS_Store").write_bytes(b"\0\1\2")
    (folder / "series" / ".cache" / "IM0001").write_bytes(b"cache")
    return folder


@pytest.fixture(scope="module")
def model_dir(mixed_folder, tmp_path_factory):
    """The tiny model with its operating threshold between the two good slices' probabilities."""
    model = tiny_model()
    processor = CTImageProcessor(size=TINY_SIZE, image_mean=[0.3] * 3, image_std=[0.25] * 3)
    low, high = sorted(probability_of(model, processor, mixed_folder / name) for name in ("a.dcm", "series/IM0001"))
    assert low < high
    model.config.decision_threshold = (low + high) / 2
    path = tmp_path_factory.mktemp("model")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_mixed_folder_gives_a_row_per_file_errors_for_bad_ones_and_exit_status_1(mixed_folder, model_dir, tmp_path):
    output, explain_dir = tmp_path / "out.csv", tmp_path / "explained"

    argv = [str(mixed_folder), "--model", str(model_dir), "--output", str(output), "--explain-dir", str(explain_dir)]
    status = main([*argv, "--batch-size", "2"])

    assert status == 1
    rows = read_rows(output)
    assert list(rows[0]) == [
        "path", "status", "probability", "label", "error", "warning", "explanation", "series", "slice_index", "z_mm"
    ]
    by_name = {Path(row["path"]).relative_to(mixed_folder).as_posix(): row for row in rows}
    assert list(by_name) == ["a.dcm", "mr.dcm", "notes.txt", "truncated.dcm", "series/IM0001"]
    assert by_name["mr.dcm"]["error"] == "modality is MR, not CT"
    assert by_name["notes.txt"]["error"] == "not a DICOM file (no DICM header)"
    assert "truncated" in by_name["truncated.dcm"]["error"]
    for name in ("mr.dcm", "notes.txt", "truncated.dcm"):
        assert by_name[name]["status"] == "error"
        assert by_name[name]["probability"] == by_name[name]["label"] == by_name[name]["explanation"] == ""

    import transformers

    model = transformers.AutoModelForImageClassification.from_pretrained(model_dir, trust_remote_code=True).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(model_dir, trust_remote_code=True)
    threshold = model.config.decision_threshold
    labels = set()
    for name in ("a.dcm", "series/IM0001"):
        row = by_name[name]
        expected = probability_of(model, processor, mixed_folder / name)
        assert row["status"] == "ok" and row["error"] == "" and row["warning"] == ""
        assert float(row["probability"]) == pytest.approx(expected, abs=1e-6)
        assert row["label"] == ("metastatic" if expected >= threshold else "non_metastatic")
        labels.add(row["label"])
        # slice | attention | Grad-CAM, each panel at least 256 px wide, under a caption
        with Image.open(explain_dir / row["explanation"]) as image:
            assert image.mode == "RGB" and image.width == 3 * 256 + 2 * 8 and image.height > 256
    assert labels == {"metastatic", "non_metastatic"}  # the threshold sits between the two
    written = sorted(p.name for p in explain_dir.iterdir())
    assert written == sorted(by_name[name]["explanation"] for name in ("a.dcm", "series/IM0001"))

    for text in (output.read_text(), " ".join(p.name for p in explain_dir.iterdir())):
        assert "DOE" not in text and "4711" not in text


@pytest.mark.parametrize("attention", ["channel", "none"])
def test_a_model_without_a_spatial_branch_gets_slice_and_gradcam_panels(mixed_folder, tmp_path, attention):
    model = tiny_model(attention=attention)
    processor = CTImageProcessor(size=TINY_SIZE, image_mean=[0.3] * 3, image_std=[0.25] * 3)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    output, explain_dir = tmp_path / "out.csv", tmp_path / "explained"

    argv = [str(mixed_folder / "a.dcm"), "--model", str(tmp_path / "model"), "--output", str(output),
            "--explain-dir", str(explain_dir)]
    assert main(argv) == 0
    (row,) = read_rows(output)
    assert row["status"] == "ok" and row["error"] == ""
    expected = probability_of(model, processor, mixed_folder / "a.dcm")
    assert float(row["probability"]) == pytest.approx(expected, abs=1e-6)
    with Image.open(explain_dir / row["explanation"]) as image:
        assert image.width == 2 * 256 + 8  # slice | Grad-CAM: no attention panel


def test_predictions_do_not_depend_on_batching(mixed_folder, model_dir, tmp_path):
    runs = {}
    for batch_size in ("1", "16"):
        output = tmp_path / f"out{batch_size}.csv"
        paths = [str(mixed_folder / "a.dcm"), str(mixed_folder / "series")]
        assert main([*paths, "--model", str(model_dir), "--output", str(output), "--batch-size", batch_size]) == 0
        runs[batch_size] = read_rows(output)

    assert [row["path"] for row in runs["1"]] == [str(mixed_folder / "a.dcm"), str(mixed_folder / "series" / "IM0001")]
    for one, many in zip(runs["1"], runs["16"], strict=True):
        assert float(one["probability"]) == pytest.approx(float(many["probability"]), abs=1e-5)
        assert one["explanation"] == ""


def test_png_slices_are_refused_unless_images_are_asked_for(model_dir, tmp_path):
    unit = np.clip((slice_hu(4) + 140.0) / 400.0, 0.0, 1.0)  # the paper's export: window 60/400 as 8-bit PNG
    Image.fromarray(np.round(unit * 255).astype(np.uint8)).save(tmp_path / "slice.png")
    output = tmp_path / "out.csv"

    assert main([str(tmp_path / "slice.png"), "--model", str(model_dir), "--output", str(output)]) == 1
    refused = read_rows(output)[0]
    assert refused["status"] == "error"
    assert refused["error"] == "not a DICOM file (.png image; --images reads already-windowed images)"

    assert main([str(tmp_path / "slice.png"), "--model", str(model_dir), "--output", str(output), "--images"]) == 0
    row = read_rows(output)[0]
    processor = CTImageProcessor.from_pretrained(model_dir)
    model = tiny_model()  # the same seed and weights as the saved model
    with torch.no_grad():
        expected = torch.sigmoid(model(processor(str(tmp_path / "slice.png"))["pixel_values"]).logits[0, 0])
    assert row["status"] == "ok" and row["warning"].startswith("image file, not DICOM")
    assert float(row["probability"]) == pytest.approx(float(expected), abs=1e-6)


@pytest.mark.parametrize(
    "argv_tail, message",
    [
        (["--output", "out.csv"], "the following arguments are required: --model"),
        (["--model", "m", "--output", "out.csv", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["--model", "m", "--output", "out.csv", "no/such/folder"], "no such file or folder: no/such/folder"),
        (["--model", "m", "--output", "no/such/out.csv"], "the folder of no/such/out.csv does not exist"),
        (["--model", "m", "--output", "out.csv", "--series-output", "gone/s.csv"],
         "the folder of gone/s.csv does not exist"),
    ],
)
def test_usage_errors_exit_with_status_2_and_say_why(mixed_folder, argv_tail, message, capsys):
    with pytest.raises(SystemExit) as raised:
        main([str(mixed_folder / "a.dcm"), *argv_tail])

    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_a_folder_that_is_not_a_model_is_a_usage_error(mixed_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        main([str(mixed_folder / "a.dcm"), "--model", str(tmp_path), "--output", str(tmp_path / "out.csv")])

    assert raised.value.code == 2
    assert f"cannot load model '{tmp_path}'" in capsys.readouterr().err


def test_hu_warning_flags_uncalibrated_values_and_ignores_padding():
    hu = slice_hu(0)
    assert hu_warning(hu) == ""

    raw = ct_dataset(hu)  # stored values (HU + 1024) without the tags that calibrate them
    del raw.RescaleIntercept, raw.RescaleSlope
    assert hu_warning(read_ct_hu(raw), rescaled=False).startswith("no RescaleIntercept and no negative values")

    wrong_slope = ct_dataset(hu)
    wrong_slope.RescaleSlope = 25  # stored values around 1000 now read as about 25 000 HU
    assert hu_warning(read_ct_hu(wrong_slope)).endswith("HU: check RescaleSlope/RescaleIntercept")

    padded = hu.copy()
    padded[:, :30] = -3024.0  # the constant fill outside the scan circle is not a calibration problem
    assert hu_warning(padded) == ""


def test_command_line_entry_point_on_a_mixed_folder(mixed_folder, model_dir, tmp_path):
    output = tmp_path / "out.csv"
    result = subprocess.run(
        [sys.executable, "-m", "modeling.predict", str(mixed_folder), "--model", str(model_dir), "--output", output],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 1, result.stderr[-2000:]
    assert "2 predicted, 3 refused" in result.stderr
    assert [row["status"] for row in read_rows(output)] == ["ok", "error", "error", "error", "ok"]


# ---------------------------------------------------------------------------------------------------
# Whole series, zips and NIfTI volumes


def series_hu(seed: int, slices: int) -> np.ndarray:
    """`(slices, 48, 48)` HU whose bright node grows and moves from slice to slice (different scores)."""
    volume = np.stack([slice_hu(seed * 100 + k)[24:72, 24:72] for k in range(slices)])
    for k in range(slices):
        volume[k, 10 : 12 + 3 * k, 30 : 33 + k] = 250.0
    return volume


@pytest.fixture(scope="module")
def pacs_export(tmp_path_factory):
    """A PACS-like folder: an 8-slice series with scrambled names, a 3-slice series, a localizer and an MR."""
    folder = tmp_path_factory.mktemp("export")
    write_ct_series(folder / "1", series_hu(1, 8), (2.5, 0.8, 0.8), scramble=5, patient_id=PATIENT_ID,
                    origin_mm=(0.0, 0.0, -40.0))
    write_ct_series(folder / "2", series_hu(2, 3), (5.0, 0.8, 0.8), patient_id=PATIENT_ID)
    scout = ct_dataset(slice_hu(9), patient_id=PATIENT_ID)
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.save_as(folder / "scout", enforce_file_format=True)
    mr = ct_dataset(slice_hu(8), patient_id=PATIENT_ID)
    mr.Modality = "MR"
    mr.save_as(folder / "2" / "mr", enforce_file_format=True)
    return folder


def zipped(folder: Path, archive: Path) -> Path:
    """`folder`'s files in a zip at `archive`, named by their paths inside `folder`."""
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                handle.write(path, path.relative_to(folder).as_posix())
    return archive


def count_forward_passes(model) -> list:
    """Wrap `model.forward` (an instance attribute: `del model.forward` unwraps it) to record each
    pass's batch size in the returned list."""
    sizes, real_forward = [], model.forward

    def counting_forward(pixel_values, *args, **kwargs):
        sizes.append(len(pixel_values))
        return real_forward(pixel_values, *args, **kwargs)

    model.forward = counting_forward
    return sizes


def run_series(paths, model_dir, folder, *extra):
    slices, series = folder / "slices.csv", folder / "series.csv"
    status = main([*map(str, paths), "--model", str(model_dir), "--output", str(slices), "--series-output",
                   str(series), *extra])
    return status, read_rows(slices), read_rows(series)


def test_each_series_scores_its_slices_in_anatomical_order_and_takes_their_maximum(
    pacs_export, tiny_model_dir, tmp_path
):
    explain_dir = tmp_path / "explained"
    status, slices, series = run_series([pacs_export], tiny_model_dir, tmp_path, "--batch-size", "3",
                                        "--explain-dir", str(explain_dir))
    assert status == 1  # the localizer and the MR are refused
    errors = {Path(row["path"]).name: row["error"] for row in slices if row["status"] == "error"}
    assert errors == {"scout": "localizer (scout) image", "mr": "modality is MR, not CT"}
    assert [row["source"] for row in series] == [str(pacs_export)] * 2
    assert [int(row["n_slices"]) for row in series] == [8, 3]

    model = tiny_model()
    processor = CTImageProcessor.from_pretrained(tiny_model_dir)
    volumes = read_ct_volumes(pacs_export)
    for row, volume, hu in zip(series, volumes, (series_hu(1, 8), series_hu(2, 3)), strict=True):
        assert row["series"] == volume.key and row["status"] == "ok" and row["error"] == ""
        rows = [r for r in slices if r["series"] == volume.key and r["status"] == "ok"]
        assert [int(r["slice_index"]) for r in rows] == list(range(len(hu)))
        assert [float(r["z_mm"]) for r in rows] == pytest.approx(list(volume.positions_mm))
        # the written slices, scored one by one in anatomical order, whatever the file names said
        expected = [probability_of_hu(model, processor, np.round(hu[k])) for k in range(len(hu))]
        probabilities = [float(r["probability"]) for r in rows]
        assert probabilities == pytest.approx(expected, abs=1e-5)
        assert probabilities == pytest.approx(list(score_volume(model, processor, volume, batch_size=4)), abs=1e-5)
        top = int(np.argmax(probabilities))
        assert float(row["probability"]) == pytest.approx(max(probabilities), abs=1e-6)
        assert int(row["top_slice_index"]) == top and float(row["top_z_mm"]) == pytest.approx(volume.positions_mm[top])
        positive = max(probabilities) >= model.config.decision_threshold
        assert row["label"] == ("metastatic" if positive else "non_metastatic")
        explained = [r["explanation"] for r in rows if r["explanation"]]
        assert len(explained) == 3 and rows[top]["explanation"] in explained
    plots = sorted(p.name for p in explain_dir.glob("*_probability.png"))
    # work items in the order of their first file: scout, series 1, 2/mr, series 2
    assert plots == [f"{index:05d}_{volume.key}_probability.png" for index, volume in zip((1, 3), volumes, strict=True)]
    for text in (
        (tmp_path / "slices.csv").read_text(), (tmp_path / "series.csv").read_text(),
        " ".join(p.name for p in explain_dir.iterdir()),
    ):
        assert "DOE" not in text and "4711" not in text


def probability_of_hu(model, processor, hu) -> float:
    with torch.no_grad():
        return float(torch.sigmoid(model(processor(hu, return_tensors="pt")["pixel_values"]).logits[0, 0]))


def test_zip_and_nifti_of_a_series_score_like_its_folder(tmp_path, tiny_model_dir):
    hu = series_hu(3, 5)
    paths = write_ct_series(tmp_path / "folder", hu, (2.0, 0.8, 0.8), scramble=1)
    with zipfile.ZipFile(tmp_path / "series.zip", "w") as archive:
        for path in paths:
            archive.write(path, f"export/{Path(path).name}")
    write_ct_nifti(tmp_path / "series.nii.gz", np.round(hu), (2.0, 0.8, 0.8), axcodes=("L", "P", "I"))
    status, slices, series = run_series(
        [tmp_path / "folder", tmp_path / "series.zip", tmp_path / "series.nii.gz"], tiny_model_dir, tmp_path
    )
    assert status == 0 and len(series) == 3 and len(slices) == 15
    sources = [str(tmp_path / name) for name in ("folder", "series.zip", "series.nii.gz")]
    assert [row["source"] for row in series] == sources
    by_source = [[float(r["probability"]) for r in slices[5 * k : 5 * (k + 1)]] for k in range(3)]
    assert by_source[1] == pytest.approx(by_source[0], abs=1e-6)
    assert by_source[2] == pytest.approx(by_source[0], abs=1e-6)
    assert slices[5]["path"].startswith(str(tmp_path / "series.zip" / "export"))
    assert {slices[10]["path"]} == {str(tmp_path / "series.nii.gz")}


def test_a_damaged_zip_is_one_error_row_in_each_csv(tmp_path, tiny_model_dir):
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not really a zip")
    status, slices, series = run_series([tmp_path / "broken.zip"], tiny_model_dir, tmp_path)
    assert status == 1
    assert [(r["status"], r["error"]) for r in slices] == [("error", "not a readable zip file (BadZipFile)")]
    assert [(r["source"], r["status"], r["error"]) for r in series] == [
        (str(tmp_path / "broken.zip"), "error", "not a readable zip file (BadZipFile)")
    ]


def test_two_processes_write_the_same_csvs_as_one(pacs_export, tiny_model_dir, tmp_path):
    nifti = write_ct_nifti(tmp_path / "volume.nii", series_hu(4, 4), (3.0, 0.8, 0.8))
    outputs = {}
    for processes in (1, 2):
        slices, series = tmp_path / f"slices{processes}.csv", tmp_path / f"series{processes}.csv"
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes), "--cpu",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
            "-m", "modeling.predict", str(pacs_export), nifti, "--model", str(tiny_model_dir),
            "--output", str(slices), "--series-output", str(series), "--batch-size", "4",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        # The localizer and the MR are refused: under a launcher that is exit status 0 and the summary
        # says so, since a launcher reports any non-zero status of its processes with a traceback.
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr and "CalledProcessError" not in result.stderr
        summaries = [line for line in result.stderr.splitlines() if " predicted, " in line]
        assert len(summaries) == 1 and " 2 refused, " in summaries[0], summaries  # only the main process reports
        outputs[processes] = (read_rows(slices), read_rows(series))
    for one, two in zip(outputs[1], outputs[2], strict=True):
        assert len(one) == len(two) and len(one) > 0
        for row_one, row_two in zip(one, two, strict=True):
            assert float(row_one["probability"] or 0) == pytest.approx(float(row_two["probability"] or 0), abs=1e-6)
            assert {k: v for k, v in row_one.items() if k != "probability"} == {
                k: v for k, v in row_two.items() if k != "probability"
            }
    assert len(outputs[1][1]) == 3  # two series in the folder and the NIfTI volume


def test_rows_reach_the_csvs_as_items_finish_so_an_interrupted_run_keeps_them(pacs_export, tiny_model_dir,
                                                                             tmp_path, monkeypatch):
    """A run stopped while reading its third item (a KeyboardInterrupt there) leaves the rows of the first
    two, which were scored already, in both CSVs: the same rows an uninterrupted run writes first."""
    import modeling.predict as predict_module

    _, all_slices, all_series = run_series([pacs_export], tiny_model_dir, tmp_path, "--batch-size", "1")
    items = predict_module.plan_work([str(pacs_export)])
    real_open_item, opened = predict_module.open_item, []

    def open_item(item, processor):
        if len(opened) == 2:
            raise KeyboardInterrupt
        opened.append(item)
        return real_open_item(item, processor)

    monkeypatch.setattr(predict_module, "open_item", open_item)
    (tmp_path / "stopped").mkdir()
    with pytest.raises(KeyboardInterrupt):
        run_series([pacs_export], tiny_model_dir, tmp_path / "stopped", "--batch-size", "1")

    slices, series = read_rows(tmp_path / "stopped" / "slices.csv"), read_rows(tmp_path / "stopped" / "series.csv")
    n_series = sum(item.kind is not WorkKind.REFUSED for item in items[:2])
    n_slices = sum(len(item.series.paths) if item.kind is WorkKind.SERIES else 1 for item in items[:2])
    assert 0 < len(slices) == n_slices < len(all_slices) and len(series) == n_series
    assert slices == all_slices[:n_slices] and series == all_series[:n_series]


def test_slices_of_consecutive_items_share_forward_passes_and_each_item_is_reported_once_scored(tmp_path):
    """Series of 5, 1 and 7 slices with a refused file between the first two, batch size 4: 13 slices in
    forward passes of 4, 4, 4 and 1. The first series' last slice shares the second pass with the one-slice
    series and the third's first two, so the first three items are reported after it, the third series
    after the last pass, in item order; each slice scores as it does on its own."""
    from modeling.predict import plan_work, predict_items

    for seed, (name, slices) in enumerate((("a", 5), ("b", 1), ("c", 7))):
        write_ct_series(tmp_path / name, series_hu(seed, slices), (2.0, 0.8, 0.8))
    (tmp_path / "notes.txt").write_text("not an image\n")
    model, processor = tiny_model(), CTImageProcessor(size=TINY_SIZE)
    batch_sizes, passes_when_reported = count_forward_passes(model), []
    items = plan_work([str(tmp_path / name) for name in ("a", "notes.txt", "b", "c")])
    reported = []

    def on_result(result):
        reported.append(result)
        passes_when_reported.append(len(batch_sizes))

    results = predict_items(items, model, processor, batch_size=4, progress=False, on_result=on_result)

    assert batch_sizes == [4, 4, 4, 1]
    assert passes_when_reported == [2, 2, 2, 4]
    assert len(reported) == len(results) == 4 and all(one is two for one, two in zip(reported, results, strict=True))
    assert [len(result.slice_rows) for result in results] == [5, 1, 1, 7]
    assert [row["error"] for row in results[1].slice_rows] == ["not a DICOM file (no DICM header)"]
    del model.forward  # the counting wrapper
    for result, name in zip((results[0], results[2], results[3]), ("a", "b", "c"), strict=True):
        (volume,) = read_ct_volumes(tmp_path / name)
        expected = score_volume(model, processor, volume)
        assert [float(row["probability"]) for row in result.slice_rows] == pytest.approx(list(expected), abs=1e-5)
        assert [row["series"] for row in result.series_rows] == [volume.key]


def test_a_zip_of_two_series_is_reported_once_both_are_scored(pacs_export, tiny_model_dir, tmp_path):
    """One slice a forward pass: the zip's first series is finished while its second is still being
    scored, and the zip's result is handed on once, with both series rows, after the last pass."""
    from modeling.predict import plan_work, predict_items

    study = zipped(pacs_export, tmp_path / "study.zip")
    model, processor = tiny_model(), CTImageProcessor.from_pretrained(tiny_model_dir)
    passes, series_rows_when_reported = count_forward_passes(model), []
    predict_items(plan_work([str(study)]), model, processor, batch_size=1, progress=False,
                  on_result=lambda result: series_rows_when_reported.append((len(passes), len(result.series_rows))))
    assert passes == [1] * 11 and series_rows_when_reported == [(11, 2)]  # series of 8 and 3 slices


def _jet_heat(panel_rgb: np.ndarray, grey: np.ndarray) -> np.ndarray:
    """Undo `explain.overlay` (0.6 grey + 0.4 jet colour): the map's value `(H, W)` at each pixel, by the
    nearest of 256 jet colours to what is left once the grey slice is taken out."""
    from matplotlib import colormaps

    colour = (panel_rgb.astype(np.float64) / 255.0 - 0.6 * grey[..., None].astype(np.float64) / 255.0) / 0.4
    lut = colormaps["jet"](np.linspace(0, 1, 256))[:, :3]
    distances = ((colour[:, :, None, :] - lut[None, None]) ** 2).sum(axis=-1)
    return distances.argmin(axis=-1) / 255.0


def test_explanation_panels_put_the_map_on_the_anatomy_the_model_saw(tmp_path):
    """A processor that resamples to 1 mm and crops to 128 px (a 128 mm field) and a slice of another
    field (512 px at 0.5 mm, 256 mm): the panel's Grad-CAM peak lies on the lesion of the panel's CT
    slice. The model looks only under last-stage cell (1, 3) of its grid, where the lesion is."""
    from conftest import GATED_SIZE, region_gated_model

    from modeling.inference import PANEL_GAP, PANEL_TOP
    from modeling.predict import plan_work, predict_items

    model = region_gated_model((1, 3))
    processor = CTImageProcessor(size=GATED_SIZE, pixel_spacing_mm=1.0, image_mean=[0.3] * 3, image_std=[0.25] * 3)
    # cell (1, 3) of the 128 px grid is rows 32-64, columns 96-128, centre (48, 112); before the centre
    # crop (64 px a side) of the 256 px slice at 1 mm that is (112, 176), i.e. (224, 352) at 0.5 mm.
    # Stretched over the native slice instead, the cell's centre would fall at (192, 448).
    yy, xx = np.mgrid[:512, :512]
    hu = np.where(((yy - 256) / 240) ** 2 + ((xx - 256) / 250) ** 2 <= 1, 40.0, -1000.0)
    hu[(yy - 224) ** 2 + (xx - 352) ** 2 <= 12**2] = 250.0
    write_ct_dicom(tmp_path / "slice.dcm", hu, pixel_spacing=(0.5, 0.5))
    explained = tmp_path / "explained"
    predict_items(plan_work([str(tmp_path / "slice.dcm")]), model, processor, str(explained), progress=False)
    (name,) = [path.name for path in explained.glob("*.png")]
    panel = np.asarray(Image.open(explained / name).convert("RGB"))
    width = (panel.shape[1] - 2 * PANEL_GAP) // 3  # inference.explanation_panel's layout: three panels
    gradcam_left = 2 * (width + PANEL_GAP)
    ct, gradcam = panel[PANEL_TOP:, :width], panel[PANEL_TOP:, gradcam_left : gradcam_left + width]
    grey = ct[..., 0]
    lesion = np.argwhere(grey > 0.9 * grey.max()).mean(axis=0)
    heat = _jet_heat(gradcam, grey)
    peak = np.argwhere(heat >= 0.95 * heat.max()).mean(axis=0)  # upsampled, the peak is a plateau
    cell_in_panel = width / 4
    assert np.hypot(*(peak - lesion)) < cell_in_panel / 2, (peak, lesion, width)


@pytest.mark.parametrize("logit, expected", [(19.0, "non_metastatic"), (21.5, "metastatic")])
def test_a_threshold_near_one_is_decided_in_float64(tmp_path, logit, expected):
    """Threshold 1 - 1e-9 (logit 20.7): float32 reads both logits as probability 1.0 and calls both
    metastatic; in float64 P = 1 - 5.6e-9 is below it and 1 - 4.6e-10 above it."""
    model = tiny_model()
    model.classifier.weight.data.zero_()
    model.classifier.bias.data.fill_(logit)
    model.config.decision_threshold = 1 - 1e-9
    model.save_pretrained(tmp_path / "model")
    CTImageProcessor(size=TINY_SIZE).save_pretrained(tmp_path / "model")
    write_ct_dicom(tmp_path / "slice.dcm", slice_hu(0))
    status, slices, series = run_series([tmp_path / "slice.dcm"], tmp_path / "model", tmp_path)
    assert status == 0 and [row["label"] for row in slices] == [expected] and series[0]["label"] == expected


def test_refused_files_of_a_zipped_study_belong_to_no_series(pacs_export, tiny_model_dir, tmp_path):
    """The localizer and the MR of a zipped export are refused with no series key: they are in none of
    its two CT series (they used to carry the first series' key)."""
    study = zipped(pacs_export, tmp_path / "study.zip")
    status, slices, series = run_series([study], tiny_model_dir, tmp_path)
    refused = {Path(row["path"]).name: row["series"] for row in slices if row["status"] == "error"}
    assert status == 1 and refused == {"scout": "", "mr": ""}
    assert {row["series"] for row in slices if row["status"] == "ok"} == {row["series"] for row in series}


def test_result_writer_closes_the_first_csv_when_the_second_cannot_be_opened(tmp_path, monkeypatch):
    from modeling.predict import ResultWriter

    opened, real_open = [], open

    def recording_open(*args, **kwargs):
        opened.append(real_open(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr("builtins.open", recording_open)
    with pytest.raises(FileNotFoundError):
        ResultWriter(str(tmp_path / "slices.csv"), str(tmp_path / "missing" / "series.csv"))
    assert len(opened) == 1 and opened[0].closed


def test_score_volume_and_its_grid_come_from_one_processor_pass_equal_to_the_processors(tmp_path):
    """The demo keeps the grid it scored from: the probabilities equal a plain processor pass to the bit,
    and the 16-bit grid gives back the model input within the quantisation step."""
    from modeling.inference import forward_probabilities, grid_pixel_values, score_volume_and_grid

    (volume,) = read_ct_volumes(write_ct_series(tmp_path, series_hu(3, 5), (2.5, 0.8, 0.8)))
    model, processor = tiny_model(), CTImageProcessor(size=TINY_SIZE, image_mean=[0.3] * 3, image_std=[0.25] * 3)
    probabilities, grid = score_volume_and_grid(model, processor, volume, batch_size=5)  # one pass, as below
    expected = processor(volume, return_tensors="pt")["pixel_values"]
    assert np.array_equal(probabilities, forward_probabilities(model, expected))
    assert grid.dtype == np.uint16 and grid.shape == (5, TINY_SIZE, TINY_SIZE)
    restored, _ = grid_pixel_values(processor, grid)
    assert float((restored - expected).abs().max()) <= 0.5 / 65535 / 0.25 + 1e-6
